//! The `handlers` target: sequences of requests, decoded from the fuzzer's bytes with
//! `arbitrary`, sent to the daemon's real gRPC routes (message limit, decoding,
//! authorization, `LocalStore`) in-process, over one root kept on tmpfs for the whole
//! run and put back after any input that changed it.
//!
//! Each request is also decoded by realize-proto's conversions, as the daemon decodes
//! it, and what decodes must encode back to the same message: the daemon serves what
//! the client sent.
//!
//! Each input asserts: nothing outside the root changes (the root holds a symlink to
//! a directory outside it), the symlinks in the root stay, a read-only peer changes
//! nothing, and no call answers with more than a call may hold in memory.

use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::Arbitrary;
use bytes::Bytes;
use realize_daemon::config::{Access, DaemonLimits, MIN_MESSAGE_SIZE};
use realize_daemon::fuzzing::{DIR, Harness};
use realize_proto::pb;
use requests::request;
use sha2::{Digest, Sha256};

mod requests;
mod seeds;

pub use seeds::{Encode, seeds};

/// Paths worth trying most often; any string is tried too.
pub const PATHS: [&str; 13] = [
    "f",
    "a/g",
    "a/b/h",
    "link/secret",
    "link/new",
    "../outside/secret",
    "a/.g.part",
    "a",
    "new/dir/file",
    "",
    BIG,
    "a/ln",
    "link",
];

/// A final file of exactly `MAX_WHOLE_FILE` (256 KiB), the size issue 14's ReadFiles
/// overflow named 1023 times.
pub const BIG: &str = "big";
const BIG_SIZE: usize = 256 * 1024;

/// Operations of one input that are run; the rest are ignored, so that an input's
/// cost stays bounded.
const MAX_OPS: usize = 8;
/// File references of a ReadFiles or DeleteFiles call: one more than the daemon
/// takes, so that its refusal of too many is reached, and no more, since every
/// reference is encoded, decoded and looked up.
const MAX_REFS: usize = 1025;
/// Files of a WriteFiles call.
const MAX_WRITE_FILES: usize = 16;
/// The most any call may answer with: the 16 MiB a ReadFiles call or a Diff range may
/// hold, plus framing. A call that answers more holds more than the daemon allows
/// (issue 14, item 1: an overflowed sum let ReadFiles answer 256 MiB).
const MAX_REPLY: usize = 17 * 1024 * 1024;

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum PathChoice {
    Known(u8),
    Any(String),
}

impl PathChoice {
    fn get(&self) -> String {
        match self {
            PathChoice::Known(i) => PATHS[usize::from(*i) % PATHS.len()].to_string(),
            PathChoice::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum DirChoice {
    Served,
    Any(String),
}

impl DirChoice {
    fn get(&self) -> String {
        match self {
            DirChoice::Served => DIR.to_string(),
            DirChoice::Any(s) => s.clone(),
        }
    }
}

/// A stamp as a client sends it: the file's real one is what a random one almost
/// never is, and what reaches the reads and deletes behind the stamp check.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum StampChoice {
    /// The final file's stamp at the time of the call (zeros if there is none).
    Real,
    /// The real mtime and inode with this size.
    Size(u64),
    Any(u64, i64, u64),
}

impl StampChoice {
    fn get(&self, root: &Path, path: &str) -> pb::FileStamp {
        let real = root
            .join(path)
            .symlink_metadata()
            .map(|m| pb::FileStamp {
                size: m.len(),
                mtime_unix_nanos: m
                    .mtime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(m.mtime_nsec()),
                inode: m.ino(),
            })
            .unwrap_or_default();
        match *self {
            StampChoice::Real => real,
            StampChoice::Size(size) => pb::FileStamp { size, ..real },
            StampChoice::Any(size, mtime_unix_nanos, inode) => pb::FileStamp {
                size,
                mtime_unix_nanos,
                inode,
            },
        }
    }
}

/// The SHA-256 sent with whole files: the data's own, to reach the write, or any.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum DigestChoice {
    OfData,
    Any(Vec<u8>),
}

impl DigestChoice {
    fn get<'a>(&self, data: impl IntoIterator<Item = &'a Vec<u8>>) -> Option<pb::Digest> {
        let value = match self {
            DigestChoice::OfData => {
                let mut hasher = Sha256::new();
                data.into_iter().for_each(|d| hasher.update(d));
                Bytes::copy_from_slice(&hasher.finalize())
            }
            DigestChoice::Any(d) => Bytes::from(d.clone()),
        };
        Some(pb::Digest {
            algorithm: pb::DigestAlgorithm::Sha256.into(),
            value,
        })
    }
}

/// `repeat` copies of one file reference, so that many references cost the fuzzer a
/// few bytes; a byte, so that most calls name few files, as most real ones do.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    pub path: PathChoice,
    pub stamp: StampChoice,
    pub repeat: u8,
}

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct WholeFile {
    pub dir: DirChoice,
    pub path: PathChoice,
    pub data: Vec<u8>,
    pub digest: DigestChoice,
}

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    List {
        dir: DirChoice,
        include_partial: bool,
    },
    Read {
        dir: DirChoice,
        path: PathChoice,
        offset: u64,
        length: Option<u64>,
        if_stamp: Option<StampChoice>,
    },
    Write {
        dir: DirChoice,
        path: PathChoice,
        offset: u64,
        file_size: u32,
        whole_file: bool,
        chunks: Vec<Vec<u8>>,
        finish: Option<DigestChoice>,
        second_header: bool,
    },
    WriteFiles {
        files: Vec<WholeFile>,
    },
    ReadFiles {
        dir: DirChoice,
        files: Vec<FileRef>,
    },
    DeleteFiles {
        dir: DirChoice,
        files: Vec<FileRef>,
    },
    Signature {
        dir: DirChoice,
        path: PathChoice,
        start: u64,
        end: u64,
        block_size: u32,
    },
    Diff {
        dir: DirChoice,
        path: PathChoice,
        start: u64,
        end: u64,
        signature: Vec<u8>,
    },
    ApplyDelta {
        dir: DirChoice,
        path: PathChoice,
        start: u64,
        end: u64,
        file_size: u32,
        delta: Vec<Vec<u8>>,
    },
    Hash {
        dir: DirChoice,
        path: PathChoice,
        range: Option<(u64, u64)>,
        kind: i32,
    },
    Finish {
        dir: DirChoice,
        path: PathChoice,
        sha256: Vec<u8>,
    },
    Delete {
        dir: DirChoice,
        path: PathChoice,
        if_stamp: Option<StampChoice>,
    },
    Info,
    Configure {
        send_limit: Option<u64>,
    },
    Raw {
        method: u8,
        body: Vec<u8>,
    },
}

pub const METHODS: [&str; 14] = [
    "List",
    "Read",
    "Write",
    "WriteFiles",
    "ReadFiles",
    "DeleteFiles",
    "Signature",
    "Diff",
    "ApplyDelta",
    "Hash",
    "Finish",
    "Delete",
    "Info",
    "Configure",
];

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub read_only: bool,
    pub ops: Vec<Op>,
}

/// One entry of a directory tree as far as telling whether it changed: its metadata
/// (inode, size, times, mode), and its content if it is small or a symlink's target.
/// The store only ever changes partial files in place, and those are small here; a
/// final file is replaced (a new inode) or removed, so the content of `big` need not
/// be read after every input.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    path: String,
    meta: [i64; 7],
    content: Vec<u8>,
}

const SMALL: u64 = 64 * 1024;

fn tree(dir: &Path) -> Vec<Node> {
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<Node>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let path = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let meta = entry.path().symlink_metadata().expect("lstat");
        let content = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path()).expect("readlink");
            target.to_string_lossy().into_owned().into_bytes()
        } else if meta.is_file() && meta.len() < SMALL {
            std::fs::read(entry.path()).expect("read")
        } else {
            Vec::new()
        };
        if meta.is_dir() {
            walk(&entry.path(), &format!("{path}/"), out);
        }
        out.push(Node {
            path,
            meta: [
                meta.ino() as i64,
                meta.len() as i64,
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec(),
                i64::from(meta.mode()),
            ],
            content,
        });
    }
}

/// The root every input starts from, and the directory outside it.
struct Fixture {
    /// The content of [`BIG`], made once: the root is rebuilt after most inputs
    /// that write.
    big: Vec<u8>,
    work: PathBuf,
    root: PathBuf,
    outside: PathBuf,
    root_tree: Vec<Node>,
    outside_tree: Vec<Node>,
    read_write: Harness,
    read_only: Harness,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Fixture {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        // tmpfs: inputs write, rename and delete files, and a disk would make that
        // most of the time spent.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_stale(&base);
        let work = base.join(format!(
            "realize-fuzz-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let (root, outside) = (work.join("root"), work.join("outside"));
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), b"secret").expect("write");
        let big: Vec<u8> = (0..BIG_SIZE).map(|i| (i % 251) as u8).collect();
        build_root(&root, &outside, &big);
        let limits = DaemonLimits {
            max_message_size: MIN_MESSAGE_SIZE,
            // Keeps files small enough to hash at fuzzing speed.
            max_file_size: 1 << 20,
            ..DaemonLimits::default()
        };
        let harness = |access| Harness::new(&root, access, limits).expect("harness");
        Fixture {
            root_tree: tree(&root),
            outside_tree: tree(&outside),
            read_write: harness(Access::ReadWrite),
            read_only: harness(Access::ReadOnly),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            big,
            work,
            root,
            outside,
        }
    }

    fn run(&mut self, input: &Input) {
        let harness = if input.read_only {
            &mut self.read_only
        } else {
            &mut self.read_write
        };
        harness.reconnect();
        let (harness, root) = (&*harness, &self.root);
        self.runtime.block_on(async {
            for op in input.ops.iter().take(MAX_OPS) {
                let (method, body) = request(op, root);
                let reply = harness.call(method, body).await;
                assert!(
                    reply.body_len <= MAX_REPLY,
                    "{method} answered {} bytes",
                    reply.body_len
                );
            }
        });
        assert_eq!(
            tree(&self.outside),
            self.outside_tree,
            "something outside the root changed"
        );
        for link in ["link", "a/ln"] {
            let meta = self.root.join(link).symlink_metadata();
            assert!(meta.is_ok_and(|m| m.file_type().is_symlink()), "{link}");
        }
        if tree(&self.root) != self.root_tree {
            assert!(!input.read_only, "a read-only peer changed the root");
            std::fs::remove_dir_all(&self.root).expect("rm root");
            build_root(&self.root, &self.outside, &self.big);
            self.root_tree = tree(&self.root);
        }
    }

    /// Runs `op` alone, for tests.
    #[cfg(test)]
    fn call(&mut self, op: &Op) -> realize_daemon::fuzzing::Reply {
        let (method, body) = request(op, &self.root);
        self.runtime.block_on(self.read_write.call(method, body))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn build_root(root: &Path, outside: &Path, big: &[u8]) {
    std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
    std::fs::write(root.join("f"), b"final file").expect("write");
    std::fs::write(root.join("a/g"), vec![7u8; 5000]).expect("write");
    std::fs::write(root.join("a/.g.part"), b"partial").expect("write");
    std::fs::write(root.join(BIG), big).expect("write");
    std::os::unix::fs::symlink(outside, root.join("link")).expect("symlink");
    std::os::unix::fs::symlink("../f", root.join("a/ln")).expect("symlink");
}

/// Removes the work directories of runs that are gone: libFuzzer ends a run with
/// `exit`, which runs no destructor.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("realize-fuzz-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

/// Runs one input against this thread's fixture, made at the first input.
pub fn run(input: &Input) {
    FIXTURE.with_borrow_mut(|fixture| fixture.get_or_insert_with(Fixture::new).run(input));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overflow_of_issue_14_is_refused_and_sane_reads_are_answered() {
        let mut fixture = Fixture::new();
        let seeds = seeds();
        let overflow = &seeds
            .iter()
            .find(|(name, _)| *name == "read-files-overflow")
            .expect("seed")
            .1;
        assert_eq!(
            fixture.call(&overflow.ops[0]).status,
            Some(3),
            "InvalidArgument"
        );
        let sane = Op::ReadFiles {
            dir: DirChoice::Served,
            files: vec![FileRef {
                path: seeds::known(BIG),
                stamp: StampChoice::Real,
                repeat: 2,
            }],
        };
        let reply = fixture.call(&sane);
        assert_eq!(reply.status, Some(0));
        assert!(reply.body_len > 2 * BIG_SIZE, "{reply:?}");
    }

    #[test]
    fn every_seed_runs() {
        for (name, input) in seeds() {
            eprintln!("{name}");
            run(&input);
        }
    }
}
