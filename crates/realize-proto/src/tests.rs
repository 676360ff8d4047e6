//! The codec both ways: what the client sends decodes to what it meant,
//! what breaks the contract is refused with the message the daemon has
//! always given, and a file's outcome survives its trip as code and message.

use bytes::Bytes;
use realize_core::{
    ByteRange, Digest, DigestAlgorithm, DirId, ErrorCode, FileKind, FileStamp, RelPath,
    ServiceError, WholeFile,
};

use crate::request::{
    self, FileRefs, Files, HashedFiles, MAX_CHUNK, Named, ReadFiles, WriteFile, WriteHeader,
    WritePiece,
};
use crate::response::FileAnswer;
use crate::{DecodeError, pb};

fn dir() -> DirId {
    DirId::new("d").unwrap_or_else(|e| panic!("{e}"))
}

fn path(p: &str) -> RelPath {
    RelPath::new(p).unwrap_or_else(|e| panic!("{e}"))
}

fn stamp(size: u64) -> FileStamp {
    FileStamp {
        size,
        mtime_unix_nanos: 1,
        inode: 2,
    }
}

fn digest(algorithm: DigestAlgorithm, byte: u8) -> Digest {
    Digest {
        algorithm,
        value: [byte; 32],
    }
}

fn refused(error: DecodeError) -> (tonic::Code, String) {
    let status = tonic::Status::from(error);
    (status.code(), status.message().to_string())
}

#[test]
fn requests_decode_to_what_was_encoded() {
    let hash = request::Hash {
        dir: dir(),
        path: path("a/b"),
        kind: FileKind::Partial,
        range: Some(ByteRange::new(1, 5)),
        algorithm: DigestAlgorithm::Blake3,
    };
    let wire = pb::HashRequest::from(hash.clone());
    assert_eq!(request::Hash::try_from(wire).ok(), Some(hash));
    let finish = request::Finish {
        dir: dir(),
        path: path("f"),
        verified: None,
    };
    let wire = pb::FinishRequest::from(finish.clone());
    assert_eq!(request::Finish::try_from(wire).ok(), Some(finish));
    let finish = request::Finish {
        dir: dir(),
        path: path("f"),
        verified: Some(digest(DigestAlgorithm::Sha256, 9)),
    };
    let wire = pb::FinishRequest::from(finish.clone());
    assert_eq!(request::Finish::try_from(wire).ok(), Some(finish));
    let diff = request::Diff {
        dir: dir(),
        path: path("f"),
        range: ByteRange::new(0, 9),
        signature: Bytes::from_static(b"sig"),
    };
    let wire = pb::DiffRequest::from(diff.clone());
    assert_eq!(request::Diff::try_from(wire).ok(), Some(diff));
    for prefix in [None, Some(path("2024/may"))] {
        let list = request::List {
            dir: dir(),
            prefix,
            include_partial: true,
        };
        let wire = pb::ListRequest::from(list.clone());
        assert_eq!(request::List::try_from(wire).ok(), Some(list));
    }
}

#[test]
fn a_hostile_list_prefix_is_refused() {
    for prefix in ["..", "../x", "/etc", "a//b", "a/./b"] {
        let wire = pb::ListRequest {
            dir: "d".into(),
            prefix: prefix.into(),
            include_partial: false,
        };
        let (code, message) = refused(request::List::try_from(wire).unwrap_err());
        assert_eq!(code, tonic::Code::InvalidArgument, "{prefix}");
        assert!(
            message.starts_with("d: invalid path"),
            "{prefix}: {message}"
        );
    }
}

#[test]
fn bad_fields_are_refused_with_their_message() {
    let bad_path = pb::ReadRequest {
        dir: "d".into(),
        path: "../x".into(),
        ..Default::default()
    };
    let (code, message) = refused(request::Read::try_from(bad_path).unwrap_err());
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.starts_with("d: invalid path \"../x\""), "{message}");
    let no_range = pb::SignatureRequest {
        dir: "d".into(),
        path: "f".into(),
        ..Default::default()
    };
    let error = request::Signature::try_from(no_range).unwrap_err();
    assert_eq!(refused(error).1, "missing field range");
    let short = pb::FinishRequest {
        dir: "d".into(),
        path: "f".into(),
        digest: Some(pb::Digest {
            algorithm: pb::DigestAlgorithm::Blake3.into(),
            value: Bytes::from_static(b"123"),
        }),
        legacy_sha256: Default::default(),
    };
    let error = request::Finish::try_from(short).unwrap_err();
    assert_eq!(refused(error).1, "d/f: a digest must be 32 bytes, got 3");
    let unknown = pb::FinishRequest {
        dir: "d".into(),
        path: "f".into(),
        digest: Some(pb::Digest {
            algorithm: 9,
            value: Bytes::from_static(&[0; 32]),
        }),
        legacy_sha256: Default::default(),
    };
    let error = request::Finish::try_from(unknown).unwrap_err();
    assert_eq!(
        refused(error),
        (
            tonic::Code::InvalidArgument,
            "invalid field digest.algorithm: unknown digest algorithm 9".into()
        )
    );
    let unnamed = pb::HashRequest {
        dir: "d".into(),
        path: "f".into(),
        ..Default::default()
    };
    let error = request::Hash::try_from(unnamed).unwrap_err();
    assert_eq!(refused(error).1, "missing field algorithm");
    let whole_unnamed = pb::WriteHeader {
        dir: "d".into(),
        path: "f".into(),
        whole_file: true,
        ..Default::default()
    };
    let error = WriteHeader::try_from(whole_unnamed).unwrap_err();
    assert_eq!(refused(error).1, "missing field digest_algorithm");
    let offset = pb::WriteHeader {
        dir: "d".into(),
        path: "f".into(),
        offset: 4,
        whole_file: true,
        ..Default::default()
    };
    let error = WriteHeader::try_from(offset).unwrap_err();
    assert_eq!(
        refused(error).1,
        "d/f: a whole-file write starts at offset 0, not 4"
    );
}

#[test]
fn a_stream_after_its_header_is_data_and_a_finish_only_when_whole() {
    let header = |whole_file| WriteHeader {
        dir: dir(),
        path: path("f"),
        offset: 0,
        file_size: 3,
        whole_file,
    };
    let whole = header(Some(DigestAlgorithm::Blake3));
    let hash = digest(DigestAlgorithm::Blake3, 7);
    let finish = pb::WriteRequest::from(WritePiece::Finish(hash));
    let piece = finish.clone().into_piece(&whole);
    assert_eq!(piece.ok(), Some(WritePiece::Finish(hash)));
    let error = finish.clone().into_data(&header(None)).unwrap_err();
    assert_eq!(refused(error).1, "d/f: expected data after the header");
    // A finish must use the algorithm the header announced, the one the
    // daemon hashed the data with.
    let error = finish
        .into_piece(&header(Some(DigestAlgorithm::Sha256)))
        .unwrap_err();
    assert_eq!(
        refused(error).1,
        "invalid field finish.digest.algorithm: blake3 is not the header's digest_algorithm"
    );
    let big = pb::WriteRequest::from(WritePiece::Data(vec![0; MAX_CHUNK + 1].into()));
    let error = big.into_data(&header(None)).unwrap_err();
    assert_eq!(
        refused(error).1,
        "d/f: data chunk of 1048577 bytes is larger than 1048576 bytes"
    );
}

#[test]
fn batch_files_are_refused_alone_and_answered_in_order() {
    let files = [(path("a"), stamp(1)), (path("b"), stamp(2))];
    let mut wire = pb::ReadFilesRequest::from(HashedFiles {
        files: Files {
            dir: &dir(),
            files: &files,
        },
        algorithm: DigestAlgorithm::Sha256,
    });
    wire.files.insert(
        1,
        pb::FileRef {
            path: "c".into(),
            stamp: None,
        },
    );
    let read = ReadFiles::try_from(wire).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read.algorithm, DigestAlgorithm::Sha256);
    let refs = read.refs;
    assert_eq!(refs.valid(), files);
    let read = |p: &str| {
        Ok(WholeFile {
            path: path(p),
            data: Bytes::from_static(b"x"),
            digest: digest(DigestAlgorithm::Sha256, 1),
        })
    };
    let answers: Vec<pb::ReadFilesResponse> = refs
        .answers(vec![read("a")])
        .into_iter()
        .map(Into::into)
        .collect();
    let outcome = |i: usize, p: &str| answers[i].clone().into_whole_file(&dir(), &path(p));
    assert_eq!(outcome(0, "a").ok(), read("a").ok());
    let no_stamp = outcome(1, "c").unwrap_err();
    assert_eq!(no_stamp.code(), ErrorCode::InvalidArgument);
    assert_eq!(no_stamp.to_string(), "d/c: no stamp");
    // The store answered one file of two: the other is its bug, said alone.
    assert_eq!(outcome(2, "b").unwrap_err().code(), ErrorCode::Internal);
}

#[test]
fn too_many_files_refuse_the_call() {
    let files = vec![(path("a"), stamp(1)); request::MAX_FILES_PER_CALL + 1];
    let wire = pb::DeleteFilesRequest::from(Files {
        dir: &dir(),
        files: &files,
    });
    let error = FileRefs::try_from(wire).unwrap_err();
    assert_eq!(refused(error).1, "d: 1025 files in one call, at most 1024");
}

#[test]
fn written_files_round_trip_and_their_outcomes_too() {
    let file = WriteFile {
        dir: dir(),
        file: WholeFile {
            path: path("f"),
            data: Bytes::from_static(b"abc"),
            digest: digest(DigestAlgorithm::Blake3, 3),
        },
    };
    let wire = pb::WriteFilesRequest::from(file.clone());
    let named = Named::<WriteFile>::from(wire);
    assert_eq!(named.request.ok(), Some(file));
    let answer = |outcome| {
        pb::WriteFilesResponse::from(FileAnswer {
            path: "f".into(),
            outcome,
        })
        .into_outcome()
    };
    assert_eq!(answer(Ok(3)).ok(), Some(3));
    let busy = answer(Err(tonic::Status::aborted("d/f: busy")));
    assert!(matches!(
        busy,
        Err(ServiceError::Remote { code: ErrorCode::Aborted, ref message }) if message == "d/f: busy"
    ));
}

#[test]
fn a_finish_from_a_client_before_digests_is_refused_not_unchecked() {
    let old = pb::FinishRequest {
        dir: "d".into(),
        path: "f".into(),
        legacy_sha256: Bytes::from_static(&[1; 32]),
        ..Default::default()
    };
    let error = request::Finish::try_from(old).unwrap_err();
    assert_eq!(
        refused(error),
        (
            tonic::Code::InvalidArgument,
            "invalid field legacy_sha256: a client older than 0.1.0 sends its digest here: upgrade it"
                .into()
        )
    );
}
