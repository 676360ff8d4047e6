//! Answers as the daemon gives them and the client reads them: the
//! conversions of each response message both ways, and the outcome of each
//! file of a batch call (a code and a message on the wire).

use bytes::Bytes;
use realize_core::{DirId, RelPath, ServiceError, ServiceInfo, WholeFile};

use crate::request::FileRefs;
use crate::status::{code_and_message, outcome, status_from_error};
use crate::{DecodeError, pb};

/// The answer for one file of a batch call: its path as its request gave
/// it, and what became of it.
#[derive(Debug)]
pub struct FileAnswer<T> {
    /// The path as the request gave it.
    pub path: String,
    /// What became of it.
    pub outcome: Result<T, tonic::Status>,
}

/// A store that answered fewer files than it was given: a bug, said per file.
pub fn no_answer() -> tonic::Status {
    tonic::Status::internal("the store gave no answer for this file")
}

impl FileRefs {
    /// Each file with its outcome: its refusal, or the store's answer for
    /// it (given in order for the files of [`FileRefs::valid`]).
    pub fn answers<T>(self, answers: Vec<Result<T, ServiceError>>) -> Vec<FileAnswer<T>> {
        let mut answers = answers.into_iter();
        self.files
            .into_iter()
            .map(|file| {
                let outcome = match file.request {
                    Err(refused) => Err(refused.into()),
                    Ok(_) => match answers.next() {
                        Some(answer) => answer.map_err(|e| status_from_error(&e)),
                        None => Err(no_answer()),
                    },
                };
                FileAnswer {
                    path: file.path,
                    outcome,
                }
            })
            .collect()
    }
}

impl From<FileAnswer<u64>> for pb::WriteFilesResponse {
    fn from(answer: FileAnswer<u64>) -> Self {
        let (code, message) = code_and_message(&answer.outcome);
        pb::WriteFilesResponse {
            path: answer.path,
            code,
            message,
            bytes_written: answer.outcome.unwrap_or(0),
        }
    }
}

impl pb::WriteFilesResponse {
    /// Bytes written, or why the file was not.
    pub fn into_outcome(self) -> Result<u64, ServiceError> {
        outcome(self.code, self.message)?;
        Ok(self.bytes_written)
    }
}

impl From<FileAnswer<WholeFile>> for pb::ReadFilesResponse {
    fn from(answer: FileAnswer<WholeFile>) -> Self {
        let (code, message) = code_and_message(&answer.outcome);
        let (data, digest) = match answer.outcome {
            Ok(whole) => (whole.data, Some(whole.digest.into())),
            Err(_) => Default::default(),
        };
        pb::ReadFilesResponse {
            path: answer.path,
            code,
            message,
            data,
            digest,
        }
    }
}

impl pb::ReadFilesResponse {
    /// The file `path` of `dir` this answers for, or why it was not read.
    pub fn into_whole_file(self, dir: &DirId, path: &RelPath) -> Result<WholeFile, ServiceError> {
        outcome(self.code, self.message)?;
        let digest = crate::values::digest(dir, path, self.digest).map_err(|e| {
            crate::error_from_answer(match e {
                DecodeError::Digest { dir, path, len } => {
                    DecodeError::AnswerDigest { dir, path, len }
                }
                other => other,
            })
        })?;
        Ok(WholeFile {
            path: path.clone(),
            data: self.data,
            digest,
        })
    }
}

impl From<Vec<FileAnswer<()>>> for pb::DeleteFilesResponse {
    fn from(answers: Vec<FileAnswer<()>>) -> Self {
        let results = answers
            .into_iter()
            .map(|answer| {
                let (code, message) = code_and_message(&answer.outcome);
                pb::FileResult {
                    path: answer.path,
                    code,
                    message,
                }
            })
            .collect();
        pb::DeleteFilesResponse { results }
    }
}

impl pb::DeleteFilesResponse {
    /// Each file's outcome, in the order of the request.
    pub fn into_outcomes(self) -> Vec<Result<(), ServiceError>> {
        self.results
            .into_iter()
            .map(|result| outcome(result.code, result.message))
            .collect()
    }
}

/// Responses that carry bytes, both ways.
macro_rules! bytes_response {
    ($($message:ident . $field:ident),*) => {$(
        impl From<Bytes> for pb::$message {
            fn from($field: Bytes) -> Self {
                pb::$message { $field }
            }
        }

        impl From<pb::$message> for Bytes {
            fn from(m: pb::$message) -> Self {
                m.$field
            }
        }
    )*};
}

bytes_response!(
    ReadResponse.data,
    DiffResponse.delta,
    SignatureResponse.signature
);

/// Responses that say how many bytes were written, both ways.
macro_rules! written_response {
    ($($message:ident),*) => {$(
        impl From<u64> for pb::$message {
            fn from(bytes_written: u64) -> Self {
                pb::$message { bytes_written }
            }
        }

        impl From<pb::$message> for u64 {
            fn from(m: pb::$message) -> Self {
                m.bytes_written
            }
        }
    )*};
}

written_response!(WriteResponse, ApplyDeltaResponse);

/// Responses that say nothing but that the call succeeded, both ways.
macro_rules! empty_response {
    ($($message:ident),*) => {$(
        impl From<()> for pb::$message {
            fn from((): ()) -> Self {
                pb::$message {}
            }
        }

        impl From<pb::$message> for () {
            fn from(_: pb::$message) -> Self {}
        }
    )*};
}

empty_response!(FinishResponse, DeleteResponse);

/// The send limit in force on the connection after a Configure (`None`: no limit).
impl From<Option<u64>> for pb::ConfigureResponse {
    fn from(send_limit: Option<u64>) -> Self {
        pb::ConfigureResponse { send_limit }
    }
}

impl From<pb::ConfigureResponse> for Option<u64> {
    fn from(m: pb::ConfigureResponse) -> Self {
        m.send_limit
    }
}

/// The answer to Info: the service, and the send limit of the caller's
/// connection (`None`: no limit).
#[derive(Clone, Debug)]
pub struct Info {
    /// The service.
    pub service: ServiceInfo,
    /// Bytes per second; `None`: no limit.
    pub send_limit: Option<u64>,
}

impl From<Info> for pb::InfoResponse {
    fn from(info: Info) -> Self {
        pb::InfoResponse {
            send_limit: info.send_limit,
            ..info.service.into()
        }
    }
}
