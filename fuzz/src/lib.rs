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
use prost::Message;
use realize_daemon::config::{Access, DaemonLimits, MIN_MESSAGE_SIZE};
use realize_daemon::fuzzing::{DIR, Harness, frame};
use realize_proto::pb;
use realize_proto::request::{self, FileRefs, Files, Named, WriteFile, WritePiece};
use sha2::{Digest, Sha256};

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
    fn get<'a>(&self, data: impl IntoIterator<Item = &'a Vec<u8>>) -> Bytes {
        match self {
            DigestChoice::OfData => {
                let mut hasher = Sha256::new();
                data.into_iter().for_each(|d| hasher.update(d));
                Bytes::copy_from_slice(&hasher.finalize())
            }
            DigestChoice::Any(d) => Bytes::from(d.clone()),
        }
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

fn range(start: u64, end: u64) -> Option<pb::ByteRange> {
    Some(pb::ByteRange { start, end })
}

fn refs(root: &Path, files: &[FileRef]) -> Vec<pb::FileRef> {
    files
        .iter()
        .flat_map(|file| {
            let path = file.path.get();
            let stamp = file.stamp.get(root, &path);
            std::iter::repeat_n(
                pb::FileRef {
                    path,
                    stamp: Some(stamp),
                },
                usize::from(file.repeat),
            )
        })
        .take(MAX_REFS)
        .collect()
}

/// The method and gRPC body of `op` against the files in `root` as they are now.
fn request(op: &Op, root: &Path) -> (&'static str, Bytes) {
    use pb::apply_delta_request::Message as D;
    use pb::write_request::Message as W;
    match op {
        Op::List {
            dir,
            include_partial,
        } => (
            "List",
            one::<request::List, _>(pb::ListRequest {
                dir: dir.get(),
                prefix: String::new(),
                include_partial: *include_partial,
            }),
        ),
        Op::Read {
            dir,
            path,
            offset,
            length,
            if_stamp,
        } => {
            let path = path.get();
            let if_stamp = if_stamp.as_ref().map(|s| s.get(root, &path));
            (
                "Read",
                one::<request::Read, _>(pb::ReadRequest {
                    dir: dir.get(),
                    path,
                    offset: *offset,
                    length: *length,
                    if_stamp,
                }),
            )
        }
        Op::Write {
            dir,
            path,
            offset,
            file_size,
            whole_file,
            chunks,
            finish,
            second_header,
        } => {
            let header = pb::WriteHeader {
                dir: dir.get(),
                path: path.get(),
                offset: *offset,
                file_size: u64::from(*file_size),
                whole_file: *whole_file,
            };
            let message = |m: W| pb::WriteRequest { message: Some(m) };
            round_trip::<request::WriteHeader, _, _>(&header, message(W::Header(header.clone())));
            let mut messages = vec![message(W::Header(header.clone())).encode_to_vec()];
            messages.extend(chunks.iter().map(|c| {
                pb::WriteRequest::from(WritePiece::Data(Bytes::from(c.clone()))).encode_to_vec()
            }));
            if let Some(digest) = finish {
                let finish = message(W::Finish(pb::WriteFinish {
                    sha256: digest.get(chunks),
                }));
                messages.push(finish.encode_to_vec());
            }
            if *second_header {
                messages.push(message(W::Header(header)).encode_to_vec());
            }
            ("Write", frame(&messages))
        }
        Op::WriteFiles { files } => {
            let messages: Vec<Vec<u8>> = files
                .iter()
                .take(MAX_WRITE_FILES)
                .map(|file| {
                    let message = pb::WriteFilesRequest {
                        dir: file.dir.get(),
                        path: file.path.get(),
                        data: Bytes::from(file.data.clone()),
                        sha256: file.digest.get([&file.data]),
                    };
                    if let Ok(decoded) = Named::<WriteFile>::from(message.clone()).request {
                        assert_eq!(pb::WriteFilesRequest::from(decoded), message);
                    }
                    message.encode_to_vec()
                })
                .collect();
            ("WriteFiles", frame(&messages))
        }
        Op::ReadFiles { dir, files } => (
            "ReadFiles",
            files_one(pb::ReadFilesRequest {
                dir: dir.get(),
                files: refs(root, files),
            }),
        ),
        Op::DeleteFiles { dir, files } => (
            "DeleteFiles",
            files_one(pb::DeleteFilesRequest {
                dir: dir.get(),
                files: refs(root, files),
            }),
        ),
        Op::Signature {
            dir,
            path,
            start,
            end,
            block_size,
        } => (
            "Signature",
            one::<request::Signature, _>(pb::SignatureRequest {
                dir: dir.get(),
                path: path.get(),
                range: range(*start, *end),
                block_size: *block_size,
            }),
        ),
        Op::Diff {
            dir,
            path,
            start,
            end,
            signature,
        } => (
            "Diff",
            one::<request::Diff, _>(pb::DiffRequest {
                dir: dir.get(),
                path: path.get(),
                range: range(*start, *end),
                signature: Bytes::from(signature.clone()),
            }),
        ),
        Op::ApplyDelta {
            dir,
            path,
            start,
            end,
            file_size,
            delta,
        } => {
            let header = pb::ApplyDeltaHeader {
                dir: dir.get(),
                path: path.get(),
                range: range(*start, *end),
                file_size: u64::from(*file_size),
            };
            let first = pb::ApplyDeltaRequest {
                message: Some(D::Header(header.clone())),
            };
            round_trip::<request::ApplyDeltaHeader, _, _>(&header, first.clone());
            let mut messages = vec![first.encode_to_vec()];
            messages.extend(
                delta
                    .iter()
                    .map(|c| pb::ApplyDeltaRequest::from(Bytes::from(c.clone())).encode_to_vec()),
            );
            ("ApplyDelta", frame(&messages))
        }
        Op::Hash {
            dir,
            path,
            range: r,
            kind,
        } => (
            "Hash",
            one::<request::Hash, _>(pb::HashRequest {
                dir: dir.get(),
                path: path.get(),
                range: r.and_then(|(s, e)| range(s, e)),
                kind: *kind,
            }),
        ),
        Op::Finish { dir, path, sha256 } => (
            "Finish",
            one::<request::Finish, _>(pb::FinishRequest {
                dir: dir.get(),
                path: path.get(),
                sha256: Bytes::from(sha256.clone()),
            }),
        ),
        Op::Delete {
            dir,
            path,
            if_stamp,
        } => {
            let path = path.get();
            let if_stamp = if_stamp.as_ref().map(|s| s.get(root, &path));
            (
                "Delete",
                one::<request::Delete, _>(pb::DeleteRequest {
                    dir: dir.get(),
                    path,
                    if_stamp,
                }),
            )
        }
        Op::Info => ("Info", one::<request::Info, _>(pb::InfoRequest {})),
        Op::Configure { send_limit } => (
            "Configure",
            one::<request::Configure, _>(pb::ConfigureRequest {
                send_limit: *send_limit,
            }),
        ),
        Op::Raw { method, body } => (
            METHODS[usize::from(*method) % METHODS.len()],
            Bytes::from(body.clone()),
        ),
    }
}

/// The body of a call of one message, which decodes as `Q` and back ([`round_trip`]).
fn one<Q, M>(message: M) -> Bytes
where
    M: Message + Clone + PartialEq + std::fmt::Debug + From<Q>,
    Q: TryFrom<M>,
{
    round_trip::<Q, M, M>(&message, message.clone());
    frame(&[message.encode_to_vec()])
}

/// If realize-proto decodes `message` as the daemon does, it must encode the request
/// it made back to `sent`.
fn round_trip<Q, M, S>(message: &M, sent: S)
where
    M: Clone,
    Q: TryFrom<M>,
    S: From<Q> + PartialEq + std::fmt::Debug,
{
    if let Ok(decoded) = Q::try_from(message.clone()) {
        assert_eq!(S::from(decoded), sent, "realize-proto changed the request");
    }
}

/// [`one`] for ReadFiles and DeleteFiles, whose files are each refused alone: a
/// request whose files all decode encodes back to itself.
fn files_one<M>(message: M) -> Bytes
where
    M: Message + Clone + PartialEq + std::fmt::Debug + for<'a> From<Files<'a>>,
    FileRefs: TryFrom<M>,
{
    if let Ok(refs) = FileRefs::try_from(message.clone())
        && refs.files.iter().all(|file| file.request.is_ok())
    {
        let files = refs.valid();
        let again = M::from(Files {
            dir: &refs.dir,
            files: &files,
        });
        assert_eq!(again, message, "realize-proto changed the request");
    }
    frame(&[message.encode_to_vec()])
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
