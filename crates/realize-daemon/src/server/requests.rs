//! Client messages turned into what the store takes: file references,
//! whole files, the header and data of a client stream.

use super::*;

/// Files a ReadFiles or DeleteFiles call may name at most.
pub(super) const MAX_FILES_PER_CALL: usize = 1024;
/// Bytes of files a ReadFiles call may ask for at most (each file is read
/// only if it has the stamp, so the size, the call gives).
pub(super) const MAX_READ_BYTES_PER_CALL: u64 = 16 * 1024 * 1024;

/// A file named by a ReadFiles or DeleteFiles call: its path as sent, and
/// the file, or why it is refused.
pub(super) type CheckedRef = (String, Result<(RelPath, FileStamp), Status>);

/// The directory of a ReadFiles or DeleteFiles call, and the files it names.
pub(super) fn file_refs(
    dir: &str,
    files: Vec<pb::FileRef>,
) -> Result<(DirId, Vec<CheckedRef>), Status> {
    let dir = realize_proto::dir_id(dir).map_err(invalid)?;
    if files.len() > MAX_FILES_PER_CALL {
        return Err(Status::invalid_argument(format!(
            "{dir}: {} files in one call, at most {MAX_FILES_PER_CALL}",
            files.len()
        )));
    }
    let files = files
        .into_iter()
        .map(|file| {
            let checked = realize_proto::rel_path(&file.path)
                .map_err(|e| Status::invalid_argument(format!("{dir}: {e}")))
                .and_then(|path| {
                    let stamp = file.stamp.ok_or_else(|| {
                        Status::invalid_argument(format!("{dir}/{path}: no stamp"))
                    })?;
                    Ok((path, FileStamp::from(stamp)))
                });
            (file.path, checked)
        })
        .collect();
    Ok((dir, files))
}

/// Bytes the stamps of `files` claim in all; `None` if the sum does not fit
/// in a u64 (the sizes are the client's, and a wrapped sum would look small).
pub(super) fn claimed_bytes(files: &[(RelPath, FileStamp)]) -> Option<u64> {
    files
        .iter()
        .try_fold(0u64, |sum, (_, stamp)| sum.checked_add(stamp.size))
}

/// How one file of a batch call went, as its answer says it: the gRPC code,
/// and the message if it failed.
pub(super) fn code_and_message<T>(outcome: &Result<T, Status>) -> (i32, String) {
    match outcome {
        Ok(_) => (tonic::Code::Ok as i32, String::new()),
        Err(status) => (status.code() as i32, status.message().to_string()),
    }
}

/// A store that answered fewer files than it was given: a bug, said per file.
pub(super) fn no_answer() -> Status {
    Status::internal("the store gave no answer for this file")
}

/// The files of [`file_refs`] that passed the checks, for the store.
pub(super) fn valid_refs(files: &[CheckedRef]) -> Vec<(RelPath, FileStamp)> {
    files
        .iter()
        .filter_map(|(_, checked)| checked.as_ref().ok().cloned())
        .collect()
}

/// Each file of [`file_refs`] with its outcome: its refusal, or the store's
/// answer for it (given in order for the files that passed the checks).
pub(super) fn outcomes<T>(
    files: Vec<CheckedRef>,
    answers: Vec<Result<T, ServiceError>>,
) -> Vec<(String, Result<T, Status>)> {
    let mut answers = answers.into_iter();
    files
        .into_iter()
        .map(|(path, checked)| {
            let outcome = match checked {
                Err(refused) => Err(refused),
                Ok(_) => match answers.next() {
                    Some(answer) => answer.map_err(|e| status(&e)),
                    None => Err(no_answer()),
                },
            };
            (path, outcome)
        })
        .collect()
}

/// What a WriteFiles message asks, if the peer may ask it.
pub(super) fn check_whole_file(
    live: &Live,
    peer_id: &str,
    file: &pb::WriteFilesRequest,
) -> Result<(DirId, WholeFile), Status> {
    let (dir, path) = target(&file.dir, &file.path)?;
    authorize(live, peer_id, &dir, Need::Write)?;
    check_file_size(live, &dir, &path, file.data.len() as u64)?;
    let sha256 = Sha256Hash::from_slice(&file.sha256).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{dir}/{path}: sha256 must be 32 bytes, got {}",
            file.sha256.len()
        ))
    })?;
    Ok((
        dir,
        WholeFile {
            path,
            data: file.data.clone(),
            sha256,
        },
    ))
}

/// The first message of a client stream must be its header.
pub(super) async fn header<M, H>(
    stream: &mut Streaming<M>,
    take: impl Fn(M) -> Option<H>,
) -> Result<H, Status> {
    match stream.message().await? {
        Some(message) => {
            take(message).ok_or_else(|| Status::invalid_argument("first message must be a header"))
        }
        None => Err(Status::invalid_argument("empty request stream")),
    }
}

/// The rest of a client stream as data chunks; a second header, or a chunk larger
/// than [`MAX_CHUNK`], is an invalid request.
pub(super) fn body<M: Send + 'static>(
    stream: Streaming<M>,
    take: fn(M) -> Option<bytes::Bytes>,
    dir: &DirId,
    path: &RelPath,
) -> ByteStream {
    let (dir, path) = (dir.to_string(), path.to_string());
    stream
        .map_err(error_from_request_stream)
        .and_then(move |m| {
            let invalid = |reason: String| {
                ServiceError::from(StoreError::InvalidRequest {
                    dir: dir.clone(),
                    path: path.clone(),
                    reason,
                })
            };
            futures::future::ready(match take(m) {
                None => Err(invalid("expected data after the header".to_string())),
                Some(chunk) if chunk.len() > MAX_CHUNK => Err(invalid(format!(
                    "data chunk of {} bytes is larger than {MAX_CHUNK} bytes",
                    chunk.len()
                ))),
                Some(chunk) => Ok(chunk),
            })
        })
        .boxed()
}

/// The data of a whole-file Write, and the SHA-256 of its `finish` message,
/// sent once the data has ended; never sent if the stream ends without one.
pub(super) fn whole_file_body(
    stream: Streaming<pb::WriteRequest>,
    dir: &DirId,
    path: &RelPath,
) -> (ByteStream, ExpectedHash) {
    use pb::write_request::Message;
    let (sender, expected) = tokio::sync::oneshot::channel();
    let (dir, path) = (dir.to_string(), path.to_string());
    let invalid = move |reason: String| {
        ServiceError::from(StoreError::InvalidRequest {
            dir: dir.clone(),
            path: path.clone(),
            reason,
        })
    };
    // The sender is taken when the stream ends or fails: a stream that has
    // ended is never polled again.
    let data = stream::unfold((stream, Some(sender)), move |(mut stream, sender)| {
        let invalid = invalid.clone();
        async move {
            let sender = sender?;
            let message = match stream.next().await? {
                Ok(message) => message.message,
                Err(status) => {
                    return Some((Err(error_from_request_stream(status)), (stream, None)));
                }
            };
            let chunk = match message {
                Some(Message::Data(chunk)) if chunk.len() > MAX_CHUNK => Err(format!(
                    "data chunk of {} bytes is larger than {MAX_CHUNK} bytes",
                    chunk.len()
                )),
                Some(Message::Data(chunk)) => Ok(chunk),
                Some(Message::Finish(finish)) => match Sha256Hash::from_slice(&finish.sha256) {
                    Some(hash) => {
                        let _ = sender.send(hash);
                        return None;
                    }
                    None => Err(format!(
                        "sha256 must be 32 bytes, got {}",
                        finish.sha256.len()
                    )),
                },
                _ => Err("expected data or finish after the header".to_string()),
            };
            Some(match chunk {
                Ok(chunk) => (Ok(chunk), (stream, Some(sender))),
                Err(reason) => (Err(invalid(reason)), (stream, None)),
            })
        }
    });
    (data.boxed(), expected)
}
