//! What the store takes, made of what realize-proto decoded: a client
//! stream's data, and the files of a WriteFiles call.

use realize_core::DigestAlgorithm;
use realize_proto::request::WritePiece;

use super::*;

/// Bytes of files a ReadFiles call may ask for at most (each file is read
/// only if it has the stamp, so the size, the call gives).
pub(super) const MAX_READ_BYTES_PER_CALL: u64 = 16 * 1024 * 1024;

/// Bytes the stamps of `files` claim in all; `None` if the sum does not fit
/// in a u64 (the sizes are the client's, and a wrapped sum would look small).
pub(super) fn claimed_bytes(files: &[(RelPath, FileStamp)]) -> Option<u64> {
    files
        .iter()
        .try_fold(0u64, |sum, (_, stamp)| sum.checked_add(stamp.size))
}

/// The rest of a client stream after `header`, as data chunks decoded by
/// `decode`; a message that is not data is an invalid request.
pub(super) fn body<M, H>(
    stream: Streaming<M>,
    header: H,
    decode: fn(M, &H) -> Result<bytes::Bytes, DecodeError>,
) -> ByteStream
where
    M: Send + 'static,
    H: Send + Sync + 'static,
{
    stream
        .map_err(error_from_request_stream)
        .and_then(move |m| futures::future::ready(decode(m, &header).map_err(error_from_request)))
        .boxed()
}

/// The data of a whole-file Write, and the digest of its `finish` message
/// (taken with `algorithm`, the header's), sent once the data has ended;
/// never sent if the stream ends without one.
pub(super) fn whole_file_body(
    stream: Streaming<pb::WriteRequest>,
    header: WriteHeader,
    algorithm: DigestAlgorithm,
) -> (ByteStream, ExpectedHash) {
    let (sender, value) = tokio::sync::oneshot::channel();
    let expected = ExpectedHash { algorithm, value };
    let header = Arc::new(header);
    // The sender is taken when the stream ends or fails: a stream that has
    // ended is never polled again.
    let data = stream::unfold((stream, Some(sender)), move |(mut stream, sender)| {
        let header = Arc::clone(&header);
        async move {
            let sender = sender?;
            let piece = match stream.next().await? {
                Ok(message) => message.into_piece(&header),
                Err(status) => {
                    return Some((Err(error_from_request_stream(status)), (stream, None)));
                }
            };
            Some(match piece {
                Ok(WritePiece::Data(chunk)) => (Ok(chunk), (stream, Some(sender))),
                Ok(WritePiece::Finish(hash)) => {
                    let _ = sender.send(hash);
                    return None;
                }
                Err(refused) => (Err(error_from_request(refused)), (stream, None)),
            })
        }
    });
    (data.boxed(), expected)
}

impl Handler {
    /// Files of a WriteFiles call, under the config in force now: a reload
    /// during a long call applies from its next files. One answer per file,
    /// in order; the files of one directory that pass the checks are written
    /// together.
    pub(super) async fn write_some_files(
        &self,
        peer_id: &str,
        files: Vec<Named<WriteFile>>,
    ) -> Vec<pb::WriteFilesResponse> {
        let live = self.live.current();
        let mut answers: Vec<FileAnswer<u64>> = Vec::with_capacity(files.len());
        let mut batches: Vec<(DirId, Vec<(usize, WholeFile)>)> = Vec::new();
        for (index, named) in files.into_iter().enumerate() {
            let checked = named.request.map_err(CallError::from).and_then(|write| {
                authorize(&live, peer_id, &write.dir, Need::Write)?;
                let size = write.file.data.len() as u64;
                check_file_size(&live, &write.dir, &write.file.path, size)?;
                Ok(write)
            });
            let outcome = match checked {
                Ok(WriteFile { dir, file }) => {
                    match batches.last_mut() {
                        Some((last, batch)) if *last == dir => batch.push((index, file)),
                        _ => batches.push((dir, vec![(index, file)])),
                    }
                    Err(no_answer())
                }
                Err(refused) => Err(refused.into()),
            };
            answers.push(FileAnswer {
                path: named.path,
                outcome,
            });
        }
        for (dir, batch) in batches {
            let (indexes, wholes): (Vec<usize>, Vec<WholeFile>) = batch.into_iter().unzip();
            let written = live.service.write_files(&dir, wholes).await;
            for (index, result) in indexes.into_iter().zip(written) {
                answers[index].outcome = result.map_err(|e| status_from_error(&e));
            }
        }
        answers.into_iter().map(Into::into).collect()
    }
}
