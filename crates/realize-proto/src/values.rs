//! The values every message is made of (ranges, kinds, stamps, entries,
//! hashes, directory information), both ways.

use realize_core::{
    ByteRange, DirId, DirInfo, Entry, FileKind, FileStamp, HashResult, RelPath, ServiceInfo,
    Digest,
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

/// A SHA-256 a request carries, 32 bytes.
pub(crate) fn digest(dir: &DirId, path: &RelPath, bytes: &[u8]) -> Result<Digest, DecodeError> {
    Digest::from_slice(bytes).ok_or_else(|| DecodeError::Digest {
        dir: dir.clone(),
        path: path.clone(),
        len: bytes.len(),
    })
}

/// The bytes of a SHA-256 on the wire.
pub(crate) fn digest_bytes(hash: &Digest) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&hash.0)
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
            sha256: h.hash.0.to_vec().into(),
            stamp: Some(h.stamp.into()),
        }
    }
}

impl TryFrom<pb::HashResponse> for HashResult {
    type Error = DecodeError;
    fn try_from(h: pb::HashResponse) -> Result<Self, DecodeError> {
        Ok(HashResult {
            hash: Digest::from_slice(&h.sha256).ok_or(DecodeError::Invalid {
                field: "sha256",
                reason: format!("{} bytes instead of 32", h.sha256.len()),
            })?,
            stamp: h.stamp.ok_or(DecodeError::Missing("stamp"))?.into(),
        })
    }
}

impl From<ServiceInfo> for pb::InfoResponse {
    fn from(info: ServiceInfo) -> Self {
        pb::InfoResponse {
            send_limit: None,
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
            sha256: vec![1, 2, 3].into(),
            stamp: Some(pb::FileStamp::default()),
        };
        assert!(HashResult::try_from(wire).is_err());
    }
}
