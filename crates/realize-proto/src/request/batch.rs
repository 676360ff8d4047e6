//! The batch requests: whole small files to write (WriteFiles), and files
//! named with their stamps to read or delete (ReadFiles, DeleteFiles).
//! A file that breaks the contract is refused alone: its answer says why.

use realize_core::{DigestAlgorithm, DirId, FileStamp, RelPath, WholeFile};

use crate::values::{algorithm_value, digest, digest_algorithm, dir_id, target};
use crate::{DecodeError, pb};

/// Files a ReadFiles or DeleteFiles call may name at most.
pub const MAX_FILES_PER_CALL: usize = 1024;

/// A file named in a batch call: its path as sent, which its answer
/// repeats, and what is asked of it, or why that is refused.
#[derive(Debug)]
pub struct Named<T> {
    /// The path as sent.
    pub path: String,
    /// What is asked of the file, or why it is refused.
    pub request: Result<T, DecodeError>,
}

/// One message of WriteFiles: a whole file of `dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFile {
    /// The directory.
    pub dir: DirId,
    /// The file.
    pub file: WholeFile,
}

impl From<pb::WriteFilesRequest> for Named<WriteFile> {
    fn from(m: pb::WriteFilesRequest) -> Self {
        let request = target(&m.dir, &m.path).and_then(|(dir, path)| {
            let digest = digest(&dir, &path, m.digest)?;
            let file = WholeFile {
                path,
                data: m.data,
                digest,
            };
            Ok(WriteFile { dir, file })
        });
        Named {
            path: m.path,
            request,
        }
    }
}

impl From<WriteFile> for pb::WriteFilesRequest {
    fn from(r: WriteFile) -> Self {
        pb::WriteFilesRequest {
            dir: r.dir.to_string(),
            path: r.file.path.to_string(),
            data: r.file.data,
            digest: Some(r.file.digest.into()),
        }
    }
}

/// A ReadFiles or DeleteFiles request, as the daemon serves it: the
/// directory, and each file with its stamp.
#[derive(Debug)]
pub struct FileRefs {
    /// The directory.
    pub dir: DirId,
    /// The files, in order.
    pub files: Vec<Named<(RelPath, FileStamp)>>,
}

impl FileRefs {
    fn decode(dir: &str, files: Vec<pb::FileRef>) -> Result<Self, DecodeError> {
        let dir = dir_id(dir)?;
        if files.len() > MAX_FILES_PER_CALL {
            return Err(DecodeError::TooManyFiles {
                dir,
                count: files.len(),
            });
        }
        let files = files
            .into_iter()
            .map(|file| {
                let request = match (RelPath::new(&file.path), file.stamp) {
                    (Err(source), _) => Err(DecodeError::PathIn {
                        dir: dir.clone(),
                        source,
                    }),
                    (Ok(path), None) => Err(DecodeError::NoStamp {
                        dir: dir.clone(),
                        path,
                    }),
                    (Ok(path), Some(stamp)) => Ok((path, FileStamp::from(stamp))),
                };
                Named {
                    path: file.path,
                    request,
                }
            })
            .collect();
        Ok(FileRefs { dir, files })
    }

    /// The files that passed the checks, for the store.
    pub fn valid(&self) -> Vec<(RelPath, FileStamp)> {
        self.files
            .iter()
            .filter_map(|file| file.request.as_ref().ok().cloned())
            .collect()
    }
}

/// A ReadFiles request, as the daemon serves it: the files, and the digest
/// each is sent with.
#[derive(Debug)]
pub struct ReadFiles {
    /// The files, each with its stamp.
    pub refs: FileRefs,
    /// The digest each file is sent with.
    pub algorithm: DigestAlgorithm,
}

impl TryFrom<pb::ReadFilesRequest> for ReadFiles {
    type Error = DecodeError;
    fn try_from(m: pb::ReadFilesRequest) -> Result<Self, DecodeError> {
        Ok(ReadFiles {
            refs: FileRefs::decode(&m.dir, m.files)?,
            algorithm: digest_algorithm("digest_algorithm", m.digest_algorithm)?,
        })
    }
}

impl TryFrom<pb::DeleteFilesRequest> for FileRefs {
    type Error = DecodeError;
    fn try_from(m: pb::DeleteFilesRequest) -> Result<Self, DecodeError> {
        FileRefs::decode(&m.dir, m.files)
    }
}

/// A ReadFiles or DeleteFiles request, as the client makes it.
#[derive(Clone, Copy, Debug)]
pub struct Files<'a> {
    /// The directory.
    pub dir: &'a DirId,
    /// The files, in order.
    pub files: &'a [(RelPath, FileStamp)],
}

impl Files<'_> {
    fn refs(&self) -> Vec<pb::FileRef> {
        self.files
            .iter()
            .map(|(path, stamp)| pb::FileRef {
                path: path.to_string(),
                stamp: Some((*stamp).into()),
            })
            .collect()
    }
}

/// A ReadFiles request, as the client makes it: the files, and the digest
/// each is to be sent with.
#[derive(Clone, Copy, Debug)]
pub struct HashedFiles<'a> {
    /// The files, each with its stamp.
    pub files: Files<'a>,
    /// The digest each file is to be sent with.
    pub algorithm: DigestAlgorithm,
}

impl From<HashedFiles<'_>> for pb::ReadFilesRequest {
    fn from(r: HashedFiles<'_>) -> Self {
        pb::ReadFilesRequest {
            dir: r.files.dir.to_string(),
            files: r.files.refs(),
            digest_algorithm: algorithm_value(r.algorithm),
        }
    }
}

impl From<Files<'_>> for pb::DeleteFilesRequest {
    fn from(r: Files<'_>) -> Self {
        pb::DeleteFilesRequest {
            dir: r.dir.to_string(),
            files: r.refs(),
        }
    }
}
