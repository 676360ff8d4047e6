//! The gRPC handler fed arbitrary decoded requests (and arbitrary bytes) against a
//! temporary root holding files, partial files and a symlink to a directory
//! outside it: nothing may panic, and nothing outside the root may change.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use realize_daemon::config::{Access, Limits, MIN_MESSAGE_SIZE};
use realize_daemon::fuzzing::{DIR, Harness, frame};
use realize_proto::pb;

/// Paths worth trying most often; any string is tried too.
const PATHS: [&str; 10] = [
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
];

#[derive(Arbitrary, Debug)]
enum PathChoice {
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

#[derive(Arbitrary, Debug)]
enum DirChoice {
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

#[derive(Arbitrary, Debug)]
enum Op {
    List {
        dir: DirChoice,
        include_partial: bool,
    },
    Read {
        dir: DirChoice,
        path: PathChoice,
        offset: u64,
        length: Option<u64>,
    },
    Write {
        dir: DirChoice,
        path: PathChoice,
        offset: u64,
        file_size: u32,
        chunks: Vec<Vec<u8>>,
        second_header: bool,
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
        if_stamp: Option<(u64, i64, u64)>,
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

const METHODS: [&str; 11] = [
    "List",
    "Read",
    "Write",
    "Signature",
    "Diff",
    "ApplyDelta",
    "Hash",
    "Finish",
    "Delete",
    "Info",
    "Configure",
];

#[derive(Arbitrary, Debug)]
struct Input {
    read_only: bool,
    ops: Vec<Op>,
}

fn range(start: u64, end: u64) -> Option<pb::ByteRange> {
    Some(pb::ByteRange { start, end })
}

fn request(op: &Op) -> (&'static str, Bytes) {
    use pb::apply_delta_request::Message as D;
    use pb::write_request::Message as W;
    match op {
        Op::List {
            dir,
            include_partial,
        } => (
            "List",
            frame(&[pb::ListRequest {
                dir: dir.get(),
                include_partial: *include_partial,
            }
            .encode_to_vec()]),
        ),
        Op::Read {
            dir,
            path,
            offset,
            length,
        } => (
            "Read",
            frame(&[pb::ReadRequest {
                dir: dir.get(),
                path: path.get(),
                offset: *offset,
                length: *length,
                if_stamp: None,
            }
            .encode_to_vec()]),
        ),
        Op::Write {
            dir,
            path,
            offset,
            file_size,
            chunks,
            second_header,
        } => {
            let header = pb::WriteHeader {
                dir: dir.get(),
                path: path.get(),
                offset: *offset,
                file_size: u64::from(*file_size),
                whole_file: false,
            };
            let mut messages = vec![
                pb::WriteRequest {
                    message: Some(W::Header(header.clone())),
                }
                .encode_to_vec(),
            ];
            messages.extend(chunks.iter().map(|c| {
                pb::WriteRequest {
                    message: Some(W::Data(Bytes::from(c.clone()))),
                }
                .encode_to_vec()
            }));
            if *second_header {
                messages.push(
                    pb::WriteRequest {
                        message: Some(W::Header(header)),
                    }
                    .encode_to_vec(),
                );
            }
            ("Write", frame(&messages))
        }
        Op::Signature {
            dir,
            path,
            start,
            end,
            block_size,
        } => (
            "Signature",
            frame(&[pb::SignatureRequest {
                dir: dir.get(),
                path: path.get(),
                range: range(*start, *end),
                block_size: *block_size,
            }
            .encode_to_vec()]),
        ),
        Op::Diff {
            dir,
            path,
            start,
            end,
            signature,
        } => (
            "Diff",
            frame(&[pb::DiffRequest {
                dir: dir.get(),
                path: path.get(),
                range: range(*start, *end),
                signature: Bytes::from(signature.clone()),
            }
            .encode_to_vec()]),
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
            let mut messages = vec![
                pb::ApplyDeltaRequest {
                    message: Some(D::Header(header)),
                }
                .encode_to_vec(),
            ];
            messages.extend(delta.iter().map(|c| {
                pb::ApplyDeltaRequest {
                    message: Some(D::Delta(Bytes::from(c.clone()))),
                }
                .encode_to_vec()
            }));
            ("ApplyDelta", frame(&messages))
        }
        Op::Hash {
            dir,
            path,
            range: r,
            kind,
        } => (
            "Hash",
            frame(&[pb::HashRequest {
                dir: dir.get(),
                path: path.get(),
                range: r.and_then(|(s, e)| range(s, e)),
                kind: *kind,
            }
            .encode_to_vec()]),
        ),
        Op::Finish { dir, path, sha256 } => (
            "Finish",
            frame(&[pb::FinishRequest {
                dir: dir.get(),
                path: path.get(),
                sha256: Bytes::from(sha256.clone()),
            }
            .encode_to_vec()]),
        ),
        Op::Delete {
            dir,
            path,
            if_stamp,
        } => (
            "Delete",
            frame(&[pb::DeleteRequest {
                dir: dir.get(),
                path: path.get(),
                if_stamp: if_stamp.map(|(size, mtime_unix_nanos, inode)| pb::FileStamp {
                    size,
                    mtime_unix_nanos,
                    inode,
                }),
            }
            .encode_to_vec()]),
        ),
        Op::Info => ("Info", frame(&[pb::InfoRequest {}.encode_to_vec()])),
        Op::Configure { send_limit } => (
            "Configure",
            frame(&[pb::ConfigureRequest {
                send_limit: *send_limit,
            }
            .encode_to_vec()]),
        ),
        Op::Raw { method, body } => (
            METHODS[usize::from(*method) % METHODS.len()],
            Bytes::from(body.clone()),
        ),
    }
}

/// Every file under `dir`, with its content, following nothing.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read outside") {
        let entry = entry.expect("entry");
        let meta = entry.path().symlink_metadata().expect("lstat");
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path()).expect("readlink");
            out.push((name, target.to_string_lossy().into_owned().into_bytes()));
        } else if meta.is_dir() {
            out.extend(
                snapshot(&entry.path())
                    .into_iter()
                    .map(|(n, c)| (format!("{name}/{n}"), c)),
            );
        } else {
            out.push((name, std::fs::read(entry.path()).expect("read")));
        }
    }
    out.sort();
    out
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|input: Input| {
    let work = tempfile::tempdir().expect("tempdir");
    let (root, outside) = (work.path().join("root"), work.path().join("outside"));
    std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(root.join("f"), b"final file").expect("write");
    std::fs::write(root.join("a/g"), vec![7u8; 5000]).expect("write");
    std::fs::write(root.join("a/.g.part"), b"partial").expect("write");
    std::fs::write(outside.join("secret"), b"secret").expect("write");
    std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
    let before = snapshot(&outside);
    let limits = Limits {
        max_message_size: MIN_MESSAGE_SIZE,
        // Keeps files small enough to hash at fuzzing speed.
        max_file_size: 1 << 20,
        ..Limits::default()
    };
    let access = if input.read_only {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let harness = Harness::new(&root, access, limits).expect("harness");
    let read_only_before = input.read_only.then(|| snapshot(&root));
    runtime().block_on(async {
        for op in input.ops.iter().take(8) {
            let (method, body) = request(op);
            harness.call(method, body).await;
        }
    });
    assert_eq!(
        snapshot(&outside),
        before,
        "something outside the root changed"
    );
    assert!(
        root.join("link")
            .symlink_metadata()
            .expect("link")
            .file_type()
            .is_symlink()
    );
    if let Some(before) = read_only_before {
        assert_eq!(snapshot(&root), before, "a read-only peer changed the root");
    }
});
