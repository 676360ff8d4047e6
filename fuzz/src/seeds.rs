//! The seed corpus of the `handlers` target (`fuzz/seeds/handlers/`): inputs that
//! reach each handler past its checks, written in the bytes `arbitrary` decodes them
//! from, so that a change of the input types that would silently change their meaning
//! fails `cargo test` here instead (see the tests below; `REALIZE_WRITE_SEEDS=1`
//! rewrites the files).

use super::{
    BIG, BIG_SIZE, DigestChoice, DirChoice, FileRef, Input, Op, PATHS, PathChoice, StampChoice,
    WholeFile,
};

/// The bytes `arbitrary` decodes a value from. Strings are not encoded: their length
/// is taken from the end of the input, so the seeds name known paths and the served
/// directory only.
pub trait Encode {
    fn encode(&self, out: &mut Vec<u8>);
}

macro_rules! little_endian {
    ($($t:ty),*) => {
        $(impl Encode for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        })*
    };
}

little_endian!(u8, u16, u32, u64, i32, i64);

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.is_some().encode(out);
        if let Some(value) = self {
            value.encode(out);
        }
    }
}

/// Each element follows a `true`, and a `false` ends the list.
impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        for value in self {
            true.encode(out);
            value.encode(out);
        }
        false.encode(out);
    }
}

impl<A: Encode, B: Encode> Encode for (A, B) {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        self.1.encode(out);
    }
}

/// Variant `index` of `count`: `arbitrary` picks `(u32 * count) >> 32`, so the
/// smallest u32 that picks it.
fn variant(out: &mut Vec<u8>, index: u64, count: u64) {
    let tag = u32::try_from((index << 32).div_ceil(count)).expect("a variant index");
    tag.encode(out);
}

impl Encode for PathChoice {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            PathChoice::Known(i) => {
                variant(out, 0, 2);
                i.encode(out);
            }
            PathChoice::Any(_) => panic!("seeds name known paths"),
        }
    }
}

impl Encode for DirChoice {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            DirChoice::Served => variant(out, 0, 2),
            DirChoice::Any(_) => panic!("seeds name the served directory"),
        }
    }
}

impl Encode for StampChoice {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            StampChoice::Real => variant(out, 0, 3),
            StampChoice::Size(size) => {
                variant(out, 1, 3);
                size.encode(out);
            }
            StampChoice::Any(size, mtime, inode) => {
                variant(out, 2, 3);
                size.encode(out);
                mtime.encode(out);
                inode.encode(out);
            }
        }
    }
}

impl Encode for DigestChoice {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            DigestChoice::OfData => variant(out, 0, 2),
            DigestChoice::Any(bytes) => {
                variant(out, 1, 2);
                bytes.encode(out);
            }
        }
    }
}

impl Encode for FileRef {
    fn encode(&self, out: &mut Vec<u8>) {
        self.path.encode(out);
        self.stamp.encode(out);
        self.repeat.encode(out);
    }
}

impl Encode for WholeFile {
    fn encode(&self, out: &mut Vec<u8>) {
        self.dir.encode(out);
        self.path.encode(out);
        self.data.encode(out);
        self.digest.encode(out);
    }
}

impl Encode for Op {
    fn encode(&self, out: &mut Vec<u8>) {
        const OPS: u64 = 15;
        match self {
            Op::List {
                dir,
                include_partial,
            } => {
                variant(out, 0, OPS);
                dir.encode(out);
                include_partial.encode(out);
            }
            Op::Read {
                dir,
                path,
                offset,
                length,
                if_stamp,
            } => {
                variant(out, 1, OPS);
                dir.encode(out);
                path.encode(out);
                offset.encode(out);
                length.encode(out);
                if_stamp.encode(out);
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
                variant(out, 2, OPS);
                dir.encode(out);
                path.encode(out);
                offset.encode(out);
                file_size.encode(out);
                whole_file.encode(out);
                chunks.encode(out);
                finish.encode(out);
                second_header.encode(out);
            }
            Op::WriteFiles { files } => {
                variant(out, 3, OPS);
                files.encode(out);
            }
            Op::ReadFiles { dir, files } => {
                variant(out, 4, OPS);
                dir.encode(out);
                files.encode(out);
            }
            Op::DeleteFiles { dir, files } => {
                variant(out, 5, OPS);
                dir.encode(out);
                files.encode(out);
            }
            Op::Signature {
                dir,
                path,
                start,
                end,
                block_size,
            } => {
                variant(out, 6, OPS);
                dir.encode(out);
                path.encode(out);
                start.encode(out);
                end.encode(out);
                block_size.encode(out);
            }
            Op::Diff {
                dir,
                path,
                start,
                end,
                signature,
            } => {
                variant(out, 7, OPS);
                dir.encode(out);
                path.encode(out);
                start.encode(out);
                end.encode(out);
                signature.encode(out);
            }
            Op::ApplyDelta {
                dir,
                path,
                start,
                end,
                file_size,
                delta,
            } => {
                variant(out, 8, OPS);
                dir.encode(out);
                path.encode(out);
                start.encode(out);
                end.encode(out);
                file_size.encode(out);
                delta.encode(out);
            }
            Op::Hash {
                dir,
                path,
                range,
                kind,
            } => {
                variant(out, 9, OPS);
                dir.encode(out);
                path.encode(out);
                range.encode(out);
                kind.encode(out);
            }
            Op::Finish { dir, path, sha256 } => {
                variant(out, 10, OPS);
                dir.encode(out);
                path.encode(out);
                sha256.encode(out);
            }
            Op::Delete {
                dir,
                path,
                if_stamp,
            } => {
                variant(out, 11, OPS);
                dir.encode(out);
                path.encode(out);
                if_stamp.encode(out);
            }
            Op::Info => variant(out, 12, OPS),
            Op::Configure { send_limit } => {
                variant(out, 13, OPS);
                send_limit.encode(out);
            }
            Op::Raw { method, body } => {
                variant(out, 14, OPS);
                method.encode(out);
                body.encode(out);
            }
        }
    }
}

/// The operations are the last field, read to the end of the input: each follows a
/// `true`, and the input's end ends them.
impl Encode for Input {
    fn encode(&self, out: &mut Vec<u8>) {
        self.read_only.encode(out);
        for op in &self.ops {
            true.encode(out);
            op.encode(out);
        }
    }
}

/// `path`, one of [`PATHS`].
pub fn known(path: &str) -> PathChoice {
    let index = PATHS.iter().position(|p| *p == path).expect("a known path");
    PathChoice::Known(u8::try_from(index).expect("few paths"))
}

/// The seeds, by file name.
pub fn seeds() -> Vec<(&'static str, Input)> {
    let served = || DirChoice::Served;
    let rw = |ops| Input {
        read_only: false,
        ops,
    };
    let read = |path, offset, length, if_stamp| Op::Read {
        dir: served(),
        path: known(path),
        offset,
        length,
        if_stamp,
    };
    let write = |path, offset, file_size, whole_file, data: &[u8], finish| Op::Write {
        dir: served(),
        path: known(path),
        offset,
        file_size,
        whole_file,
        chunks: vec![data.to_vec()],
        finish,
        second_header: false,
    };
    let refs = |path, stamp, repeat| FileRef {
        path: known(path),
        stamp,
        repeat,
    };
    let hash = |path, range, kind| Op::Hash {
        dir: served(),
        path: known(path),
        range,
        kind,
    };
    let finish = |path| Op::Finish {
        dir: served(),
        path: known(path),
        sha256: Vec::new(),
    };
    let delete = |path, if_stamp| Op::Delete {
        dir: served(),
        path: known(path),
        if_stamp,
    };
    vec![
        (
            "list",
            rw(vec![Op::List {
                dir: served(),
                include_partial: true,
            }]),
        ),
        ("read", rw(vec![read("a/g", 100, Some(1000), None)])),
        (
            "read-stamped",
            rw(vec![read(BIG, 0, None, Some(StampChoice::Real))]),
        ),
        (
            "read-outside",
            rw(vec![
                read("link/secret", 0, None, None),
                read("../outside/secret", 0, None, None),
            ]),
        ),
        (
            "write-finish-read",
            rw(vec![
                write("new/dir/file", 0, 5, false, b"hello", None),
                finish("new/dir/file"),
                read("new/dir/file", 0, None, None),
                hash("new/dir/file", None, 0),
            ]),
        ),
        (
            "write-whole-file",
            rw(vec![write(
                "f",
                0,
                3,
                true,
                b"abc",
                Some(DigestChoice::OfData),
            )]),
        ),
        (
            "write-whole-file-wrong-digest",
            rw(vec![write(
                "a/g",
                0,
                3,
                true,
                b"abc",
                Some(DigestChoice::Any(vec![0; 32])),
            )]),
        ),
        (
            "write-second-header",
            rw(vec![Op::Write {
                dir: served(),
                path: known("a/g"),
                offset: 4,
                file_size: 5000,
                whole_file: false,
                chunks: vec![b"xy".to_vec(), Vec::new()],
                finish: None,
                second_header: true,
            }]),
        ),
        (
            "write-through-link",
            rw(vec![
                write("link/new", 0, 1, false, b"x", None),
                write("a/ln", 0, 1, true, b"x", Some(DigestChoice::OfData)),
            ]),
        ),
        (
            "write-files",
            rw(vec![Op::WriteFiles {
                files: vec![
                    WholeFile {
                        dir: served(),
                        path: known("a/b/h"),
                        data: b"small".to_vec(),
                        digest: DigestChoice::OfData,
                    },
                    WholeFile {
                        dir: served(),
                        path: known("f"),
                        data: b"other".to_vec(),
                        digest: DigestChoice::Any(vec![1; 32]),
                    },
                ],
            }]),
        ),
        (
            "read-files",
            rw(vec![Op::ReadFiles {
                dir: served(),
                files: vec![
                    refs("f", StampChoice::Real, 1),
                    refs("a/g", StampChoice::Real, 2),
                    refs("a/ln", StampChoice::Real, 1),
                    refs("a/b/h", StampChoice::Size(3), 1),
                ],
            }]),
        ),
        (
            // Issue 14, item 1: 1023 references to a 256 KiB file with its real
            // stamp, and one claiming 2^64 - 1023 * 256 KiB bytes, so that the
            // claimed total wraps to 0 where it is not checked.
            "read-files-overflow",
            rw(vec![Op::ReadFiles {
                dir: served(),
                files: vec![
                    refs(BIG, StampChoice::Real, 255),
                    refs(BIG, StampChoice::Real, 255),
                    refs(BIG, StampChoice::Real, 255),
                    refs(BIG, StampChoice::Real, 255),
                    refs(BIG, StampChoice::Real, 3),
                    refs(
                        BIG,
                        StampChoice::Size(0u64.wrapping_sub(1023 * BIG_SIZE as u64)),
                        1,
                    ),
                ],
            }]),
        ),
        (
            "read-files-too-many",
            rw(vec![Op::ReadFiles {
                dir: served(),
                files: vec![
                    refs("f", StampChoice::Real, 255),
                    refs("a/g", StampChoice::Real, 255),
                    refs("f", StampChoice::Real, 255),
                    refs("a/g", StampChoice::Real, 255),
                    refs("f", StampChoice::Real, 5),
                ],
            }]),
        ),
        (
            "delete-files",
            rw(vec![Op::DeleteFiles {
                dir: served(),
                files: vec![
                    refs("f", StampChoice::Real, 1),
                    refs("a/g", StampChoice::Size(1), 1),
                    refs("a/ln", StampChoice::Real, 1),
                    refs("link/secret", StampChoice::Real, 1),
                ],
            }]),
        ),
        (
            "signature-diff",
            rw(vec![
                Op::Signature {
                    dir: served(),
                    path: known("a/g"),
                    start: 0,
                    end: 5000,
                    block_size: 512,
                },
                Op::Diff {
                    dir: served(),
                    path: known(BIG),
                    start: 0,
                    end: 4096,
                    signature: Vec::new(),
                },
            ]),
        ),
        (
            "apply-delta",
            rw(vec![Op::ApplyDelta {
                dir: served(),
                path: known("a/g"),
                start: 0,
                end: 3,
                file_size: 5000,
                // An rsync delta: its magic, a literal of 3 bytes, the end.
                delta: vec![vec![0x72, 0x73, 0x02, 0x36, 0x03, b'x', b'y', b'z', 0]],
            }]),
        ),
        (
            "hash",
            rw(vec![
                hash(BIG, Some((10, 70_000)), 0),
                hash("a/g", None, 1),
                hash("a/.g.part", None, 0),
            ]),
        ),
        ("finish-partial", rw(vec![finish("a/g"), finish("a/b/h")])),
        (
            "delete",
            rw(vec![
                delete("f", None),
                delete("a/g", Some(StampChoice::Real)),
                delete("a/ln", None),
                delete("link", None),
                delete("a", None),
            ]),
        ),
        (
            "info-configure",
            rw(vec![
                Op::Configure {
                    send_limit: Some(1000),
                },
                Op::Info,
                Op::Configure { send_limit: None },
            ]),
        ),
        (
            "read-only-writes",
            Input {
                read_only: true,
                ops: vec![
                    write("f", 0, 1, false, b"x", None),
                    delete(BIG, None),
                    finish("a/g"),
                    Op::DeleteFiles {
                        dir: served(),
                        files: vec![refs("f", StampChoice::Real, 1)],
                    },
                    read("f", 0, None, None),
                ],
            },
        ),
        (
            "raw",
            rw(vec![
                Op::Raw {
                    method: 4,
                    body: vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff],
                },
                Op::Raw {
                    method: 2,
                    body: vec![0, 0xff, 0xff, 0xff, 0xff],
                },
            ]),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arbitrary::{Arbitrary, Unstructured};

    use super::*;

    #[test]
    fn seeds_decode_to_themselves_and_are_in_the_corpus() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/handlers");
        let write = std::env::var_os("REALIZE_WRITE_SEEDS").is_some();
        for (name, input) in seeds() {
            let mut bytes = Vec::new();
            input.encode(&mut bytes);
            let decoded = Input::arbitrary_take_rest(Unstructured::new(&bytes)).unwrap();
            assert_eq!(decoded, input, "{name}");
            assert!(bytes.len() <= 4096, "{name}: {} bytes", bytes.len());
            let file = corpus.join(name);
            if write {
                std::fs::create_dir_all(&corpus).unwrap();
                std::fs::write(&file, &bytes).unwrap();
            }
            assert_eq!(
                std::fs::read(&file).ok(),
                Some(bytes),
                "{name}: run with REALIZE_WRITE_SEEDS=1 to rewrite the corpus"
            );
        }
    }
}
