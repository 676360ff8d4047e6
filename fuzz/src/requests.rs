//! The gRPC body of each operation, and the check that realize-proto decodes each
//! request as the daemon does and encodes it back to the same message.

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use realize_daemon::fuzzing::frame;
use realize_proto::pb;
use realize_proto::request::{
    self, FileRefs, Files, HashedFiles, Named, ReadFiles, WriteFile, WritePiece,
};

use crate::{FileRef, MAX_REFS, MAX_WRITE_FILES, METHODS, Op};

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
pub(crate) fn request(op: &Op, root: &Path) -> (&'static str, Bytes) {
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
                include_partial: *include_partial,
                prefix: String::new(),
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
                digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
            };
            let message = |m: W| pb::WriteRequest { message: Some(m) };
            round_trip::<request::WriteHeader, _, _>(&header, message(W::Header(header.clone())));
            let mut messages = vec![message(W::Header(header.clone())).encode_to_vec()];
            messages.extend(chunks.iter().map(|c| {
                pb::WriteRequest::from(WritePiece::Data(Bytes::from(c.clone()))).encode_to_vec()
            }));
            if let Some(digest) = finish {
                let finish = message(W::Finish(pb::WriteFinish {
                    digest: digest.get(chunks),
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
                        digest: file.digest.get([&file.data]),
                    };
                    if let Ok(decoded) = Named::<WriteFile>::from(message.clone()).request {
                        assert_eq!(pb::WriteFilesRequest::from(decoded), message);
                    }
                    message.encode_to_vec()
                })
                .collect();
            ("WriteFiles", frame(&messages))
        }
        Op::ReadFiles { dir, files } => {
            let message = pb::ReadFilesRequest {
                dir: dir.get(),
                files: refs(root, files),
                digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
            };
            if let Ok(read) = ReadFiles::try_from(message.clone())
                && read.refs.files.iter().all(|file| file.request.is_ok())
            {
                let files = read.refs.valid();
                let again = pb::ReadFilesRequest::from(HashedFiles {
                    files: Files {
                        dir: &read.refs.dir,
                        files: &files,
                    },
                    algorithm: read.algorithm,
                });
                assert_eq!(again, message, "realize-proto changed the request");
            }
            ("ReadFiles", frame(&[message.encode_to_vec()]))
        }
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
                algorithm: pb::DigestAlgorithm::Sha256.into(),
            }),
        ),
        Op::Finish { dir, path, sha256 } => (
            "Finish",
            one::<request::Finish, _>(pb::FinishRequest {
                dir: dir.get(),
                path: path.get(),
                digest: (!sha256.is_empty()).then(|| pb::Digest {
                    algorithm: pb::DigestAlgorithm::Sha256.into(),
                    value: Bytes::from(sha256.clone()),
                }),
                legacy_sha256: Default::default(),
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
