//! The values every message is made of (ranges, kinds, stamps, entries,
//! hashes, directory information), both ways.

use realize_core::{
    ByteRange, Digest, DigestAlgorithm, DirId, DirInfo, Entry, FileKind, FileStamp, HashResult,
    RelPath, ServiceInfo,
};

use crate::{DecodeError, pb};

pub(crate) fn dir_id(dir: &str) -> Result<DirId, DecodeError> {
    Ok(DirId::new(dir)?)
}

pub(crate) fn rel_path(path: &str) -> Result<RelPath, DecodeError> {
    Ok(RelPath::new(path)?)
}

/// The directory and path a request names; a bad path is said with its directory.
pub(crate) fn target(dir: &str, path: &str) -> Result<(DirId, RelPath), DecodeError> {
    let dir = dir_id(dir)?;
    match RelPath::new(path) {
        Ok(path) => Ok((dir, path)),
        Err(source) => Err(DecodeError::PathIn { dir, source }),
    }
}

impl From<DigestAlgorithm> for pb::DigestAlgorithm {
    fn from(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Blake3 => pb::DigestAlgorithm::Blake3,
            DigestAlgorithm::Sha256 => pb::DigestAlgorithm::Sha256,
        }
    }
}

/// The wire value of an algorithm field.
pub(crate) fn algorithm_value(algorithm: DigestAlgorithm) -> i32 {
    pb::DigestAlgorithm::from(algorithm).into()
}

/// A required algorithm field: unset is missing, an unknown value invalid.
pub(crate) fn digest_algorithm(
    field: &'static str,
    value: i32,
) -> Result<DigestAlgorithm, DecodeError> {
    match pb::DigestAlgorithm::try_from(value) {
        Ok(pb::DigestAlgorithm::Blake3) => Ok(DigestAlgorithm::Blake3),
        Ok(pb::DigestAlgorithm::Sha256) => Ok(DigestAlgorithm::Sha256),
        Ok(pb::DigestAlgorithm::Unspecified) => Err(DecodeError::Missing(field)),
        Err(_) => Err(DecodeError::Invalid {
            field,
            reason: format!("unknown digest algorithm {value}"),
        }),
    }
}

/// The digest a request carries about a file: a known algorithm and 32 bytes.
pub(crate) fn digest(
    dir: &DirId,
    path: &RelPath,
    digest: Option<pb::Digest>,
) -> Result<Digest, DecodeError> {
    let digest = digest.ok_or(DecodeError::Missing("digest"))?;
    let algorithm = digest_algorithm("digest.algorithm", digest.algorithm)?;
    Digest::from_slice(algorithm, &digest.value).ok_or_else(|| DecodeError::Digest {
        dir: dir.clone(),
        path: path.clone(),
        len: digest.value.len(),
    })
}

impl From<Digest> for pb::Digest {
    fn from(digest: Digest) -> Self {
        pb::Digest {
            algorithm: algorithm_value(digest.algorithm),
            value: bytes::Bytes::copy_from_slice(&digest.value),
        }
    }
}

impl From<ByteRange> for pb::ByteRange {
    fn from(r: ByteRange) -> Self {
        pb::ByteRange {
            start: r.start,
            end: r.end,
        }
    }
}

impl From<pb::ByteRange> for ByteRange {
    fn from(r: pb::ByteRange) -> Self {
        ByteRange::new(r.start, r.end)
    }
}

impl From<FileKind> for pb::FileKind {
    fn from(kind: FileKind) -> Self {
        match kind {
            FileKind::Final => pb::FileKind::Final,
            FileKind::Partial => pb::FileKind::Partial,
        }
    }
}

impl From<pb::FileKind> for FileKind {
    fn from(kind: pb::FileKind) -> Self {
        match kind {
            pb::FileKind::Final => FileKind::Final,
            pb::FileKind::Partial => FileKind::Partial,
        }
    }
}

/// Reads a `FileKind` enum field, rejecting unknown values.
pub(crate) fn file_kind(value: i32) -> Result<FileKind, DecodeError> {
    pb::FileKind::try_from(value)
        .map(FileKind::from)
        .map_err(|_| DecodeError::Invalid {
            field: "kind",
            reason: format!("unknown file kind {value}"),
        })
}

impl From<FileStamp> for pb::FileStamp {
    fn from(s: FileStamp) -> Self {
        pb::FileStamp {
            size: s.size,
            mtime_unix_nanos: s.mtime_unix_nanos,
            inode: s.inode,
        }
    }
}

impl From<pb::FileStamp> for FileStamp {
    fn from(s: pb::FileStamp) -> Self {
        FileStamp {
            size: s.size,
            mtime_unix_nanos: s.mtime_unix_nanos,
            inode: s.inode,
        }
    }
}

impl From<Entry> for pb::ListResponse {
    fn from(e: Entry) -> Self {
        pb::ListResponse {
            path: e.path.to_string(),
            kind: pb::FileKind::from(e.kind).into(),
            stamp: Some(e.stamp.into()),
        }
    }
}

impl TryFrom<pb::ListResponse> for Entry {
    type Error = DecodeError;
    fn try_from(e: pb::ListResponse) -> Result<Self, DecodeError> {
        Ok(Entry {
            path: rel_path(&e.path)?,
            kind: file_kind(e.kind)?,
            stamp: e.stamp.ok_or(DecodeError::Missing("stamp"))?.into(),
        })
    }
}

impl From<HashResult> for pb::HashResponse {
    fn from(h: HashResult) -> Self {
        pb::HashResponse {
            digest: Some(h.hash.into()),
            stamp: Some(h.stamp.into()),
        }
    }
}

impl TryFrom<pb::HashResponse> for HashResult {
    type Error = DecodeError;
    fn try_from(h: pb::HashResponse) -> Result<Self, DecodeError> {
        let digest = h.digest.ok_or(DecodeError::Missing("digest"))?;
        let algorithm = digest_algorithm("digest.algorithm", digest.algorithm)?;
        Ok(HashResult {
            hash: Digest::from_slice(algorithm, &digest.value).ok_or(DecodeError::Invalid {
                field: "digest",
                reason: format!("{} bytes instead of 32", digest.value.len()),
            })?,
            stamp: h.stamp.ok_or(DecodeError::Missing("stamp"))?.into(),
        })
    }
}

impl From<ServiceInfo> for pb::InfoResponse {
    fn from(info: ServiceInfo) -> Self {
        pb::InfoResponse {
            send_limit: None,
            digests: info.digests.into_iter().map(algorithm_value).collect(),
            version: info.version,
            dirs: info
                .dirs
                .into_iter()
                .map(|d| pb::DirInfo {
                    id: d.id.to_string(),
                    identity: d.identity,
                    ancestors: d.ancestors,
                    read_only: d.read_only,
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::InfoResponse> for ServiceInfo {
    type Error = DecodeError;
    fn try_from(info: pb::InfoResponse) -> Result<Self, DecodeError> {
        Ok(ServiceInfo {
            version: info.version,
            dirs: info
                .dirs
                .into_iter()
                .map(|d| {
                    Ok(DirInfo {
                        id: dir_id(&d.id)?,
                        identity: d.identity,
                        ancestors: d.ancestors,
                        read_only: d.read_only,
                    })
                })
                .collect::<Result<_, DecodeError>>()?,
            // A digest this build does not know is one it cannot use.
            digests: info
                .digests
                .into_iter()
                .filter_map(|value| digest_algorithm("digests", value).ok())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_paths_are_refused() {
        let entry = Entry {
            path: RelPath::new("a/b.txt").unwrap(),
            kind: FileKind::Partial,
            stamp: FileStamp {
                size: 3,
                mtime_unix_nanos: -5,
                inode: 7,
            },
        };
        let wire = pb::ListResponse::from(entry.clone());
        assert_eq!(Entry::try_from(wire.clone()).unwrap(), entry);
        let bad = pb::ListResponse {
            path: "../etc/passwd".into(),
            ..wire
        };
        assert!(matches!(Entry::try_from(bad), Err(DecodeError::Path(_))));
    }

    #[test]
    fn short_hash_is_refused() {
        let wire = pb::HashResponse {
            digest: Some(pb::Digest {
                algorithm: pb::DigestAlgorithm::Sha256.into(),
                value: vec![1, 2, 3].into(),
            }),
            stamp: Some(pb::FileStamp::default()),
        };
        assert!(HashResult::try_from(wire).is_err());
    }
}
