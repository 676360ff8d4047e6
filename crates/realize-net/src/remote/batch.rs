//! Small whole files in batches: written on one WriteFiles call per
//! connection, read with one ReadFiles call and deleted with one DeleteFiles
//! call per batch, so each file costs a message instead of calls of its own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use realize_core::{
    ByteStream, DigestAlgorithm, DirId, ErrorCode, ExpectedHash, FileStamp, RelPath, ServiceError,
    WholeFile,
};
use realize_proto::request::{Files, HashedFiles, WriteFile};
use realize_proto::{DecodeError, error_from_request, error_from_status, pb};
use tokio::sync::{mpsc, oneshot};

use super::RemoteService;
use super::pacing::{Pacing, Replay};
use crate::metrics::{RpcCall, RpcSide};

/// Files waiting for the call to take them.
const QUEUE: usize = 32;

/// A WriteFiles call that has had no file for this long ends: it would
/// otherwise hold one of the daemon's calls per connection, and keep the
/// connection from ever being idle, for as long as the service lives.
const IDLE: std::time::Duration = std::time::Duration::from_secs(1);

type Reply = oneshot::Sender<Result<u64, ServiceError>>;

/// The WriteFiles call in progress, if any, shared by clones of a [`RemoteService`].
#[derive(Debug, Default)]
pub(super) struct Batch {
    files: Mutex<Option<mpsc::Sender<(pb::WriteFilesRequest, Reply)>>>,
}

impl RemoteService {
    /// [`realize_core::Service::write_file`] of a file of at most
    /// [`realize_core::MAX_WHOLE_FILE`] bytes, through the shared WriteFiles call.
    pub(super) async fn write_small_file(
        &self,
        dir: &DirId,
        path: &RelPath,
        file_size: u64,
        mut data: ByteStream,
        expected: ExpectedHash,
    ) -> Result<u64, ServiceError> {
        let (dir, path) = (dir.clone(), path.clone());
        // The whole file is needed for its message: at most MAX_WHOLE_FILE bytes.
        let mut chunks = Vec::new();
        let mut len = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            len += chunk.len() as u64;
            if len > file_size {
                let refused = DecodeError::PastSize {
                    dir,
                    path,
                    file_size,
                };
                return Err(error_from_request(refused));
            }
            chunks.push(chunk);
        }
        if len != file_size {
            let refused = DecodeError::Short {
                dir,
                path,
                len,
                file_size,
            };
            return Err(error_from_request(refused));
        }
        let Ok(digest) = expected.value.await else {
            return Err(error_from_request(DecodeError::NoDigest { dir, path }));
        };
        let data = match chunks.len() {
            1 => chunks.swap_remove(0),
            _ => chunks
                .iter()
                .fold(BytesMut::with_capacity(len as usize), |mut all, chunk| {
                    all.extend_from_slice(chunk);
                    all
                })
                .freeze(),
        };
        let file = WholeFile { path, data, digest };
        let request = pb::WriteFilesRequest::from(WriteFile { dir, file });
        let (reply, answer) = oneshot::channel();
        self.enqueue((request, reply)).await?;
        answer.await.map_err(|_| call_ended())?
    }

    /// [`realize_core::Service::write_files`]: every file queued on the
    /// shared WriteFiles call, then every answer awaited.
    pub(super) async fn write_whole_files(
        &self,
        dir: &DirId,
        files: Vec<WholeFile>,
    ) -> Vec<Result<u64, ServiceError>> {
        let mut answers = Vec::with_capacity(files.len());
        for file in files {
            let request = pb::WriteFilesRequest::from(WriteFile {
                dir: dir.clone(),
                file,
            });
            let (reply, answer) = oneshot::channel();
            // A file that finds no call drops its reply: it fails below.
            let _ = self.enqueue((request, reply)).await;
            answers.push(answer);
        }
        futures::future::join_all(
            answers
                .into_iter()
                .map(|answer| async { answer.await.unwrap_or_else(|_| Err(call_ended())) }),
        )
        .await
    }

    /// [`realize_core::Service::read_files`] in one ReadFiles call.
    pub(super) async fn read_whole_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
        algorithm: DigestAlgorithm,
    ) -> Vec<Result<WholeFile, ServiceError>> {
        let files_of = Files { dir, files };
        let request = pb::ReadFilesRequest::from(HashedFiles {
            files: files_of,
            algorithm,
        });
        let answered = self
            .observed("ReadFiles", async {
                let answers: tonic::Streaming<pb::ReadFilesResponse> = self.call(request).await?;
                let answers = answers.map_err(error_from_status).boxed();
                self.stall_guarded(answers).try_collect::<Vec<_>>().await
            })
            .await;
        answers_for(files, answered, |(path, _), answer| {
            answer.into_whole_file(dir, path)
        })
    }

    /// [`realize_core::Service::delete_files`] in one DeleteFiles call.
    pub(super) async fn delete_whole_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
    ) -> Vec<Result<(), ServiceError>> {
        let request = pb::DeleteFilesRequest::from(Files { dir, files });
        let answered = self
            .unary(request)
            .await
            .map(pb::DeleteFilesResponse::into_outcomes);
        answers_for(files, answered, |_, outcome| outcome)
    }

    /// Queues a file on the WriteFiles call in progress, or on a new one if
    /// that call has just ended for being idle.
    async fn enqueue(&self, file: (pb::WriteFilesRequest, Reply)) -> Result<(), ServiceError> {
        let mut file = file;
        for _ in 0..2 {
            match self.batch_queue().send(file).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => file = back,
            }
        }
        Err(call_ended())
    }

    /// The queue of the WriteFiles call in progress, started if there is none
    /// or the last one has ended.
    fn batch_queue(&self) -> mpsc::Sender<(pb::WriteFilesRequest, Reply)> {
        let mut files = self.batch.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = files.as_ref().filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (queue, taken) = mpsc::channel(QUEUE);
        *files = Some(queue.clone());
        // The task holds the client and the request, not this service: the
        // call ends once every clone of the service, and so the queue, is gone.
        let waiting: Arc<Mutex<VecDeque<Reply>>> = Arc::default();
        let requests = futures::stream::unfold(
            (taken, Arc::clone(&waiting)),
            |(mut taken, waiting)| async move {
                let next = match tokio::time::timeout(IDLE, taken.recv()).await {
                    Ok(next) => next,
                    // Closed first, so a file queued meanwhile still goes
                    // on this call and every later one finds the queue shut.
                    Err(_) => {
                        taken.close();
                        taken.recv().await
                    }
                };
                let (request, reply) = next?;
                // Answers come in the order the files were sent.
                waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(reply);
                Some((request, (taken, waiting)))
            },
        );
        tokio::spawn(run_batch(
            self.client(),
            self.pacing.clone(),
            Replay::new(requests),
            waiting,
        ));
        queue
    }
}

/// Runs one WriteFiles call and hands each file its answer.
///
/// A call refused for the peer's rate is made again once the daemon's wait is
/// over, with the files it had sent (their replies wait in `waiting` already).
async fn run_batch(
    client: super::Client,
    pacing: Pacing,
    requests: Replay<pb::WriteFilesRequest>,
    waiting: Arc<Mutex<VecDeque<Reply>>>,
) {
    let measured = RpcCall::start(RpcSide::Client, "WriteFiles");
    let answered = async {
        let mut answers = pacing
            .paced(
                || requests.replayable(),
                || {
                    let mut client = client.clone();
                    let request = super::request(requests.attempt(), pacing.deadline);
                    async move { client.write_files(request).await }
                },
            )
            .await
            .map_err(error_from_status)?
            .into_inner();
        while let Some(answer) = answers.message().await.map_err(error_from_status)? {
            let reply = waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            let Some(reply) = reply else {
                return Err(ServiceError::Protocol(
                    "WriteFiles answered a file it was not sent".into(),
                ));
            };
            let _ = reply.send(answer.into_outcome());
        }
        Ok(())
    }
    .await;
    measured.finish(match &answered {
        Ok(()) => tonic::Code::Ok,
        Err(e) => realize_proto::grpc_code(e.code()),
    });
    // Files sent but not answered fail as the call did; those still queued
    // see their reply dropped with the queue.
    let unanswered: Vec<Reply> = waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .collect();
    for reply in unanswered {
        let _ = reply.send(Err(match &answered {
            Err(error) => ServiceError::Remote {
                code: error.code(),
                message: realize_core::ErrorChain(error).to_string(),
            },
            Ok(()) => call_ended(),
        }));
    }
}

/// One result per file of a batch call: the call's error for each if it
/// failed, else each answer through `convert`; answers missing or too
/// many are the daemon breaking the contract.
fn answers_for<A, T>(
    files: &[(RelPath, FileStamp)],
    answered: Result<Vec<A>, ServiceError>,
    convert: impl Fn(&(RelPath, FileStamp), A) -> Result<T, ServiceError>,
) -> Vec<Result<T, ServiceError>> {
    match answered {
        Ok(answers) if answers.len() == files.len() => files
            .iter()
            .zip(answers)
            .map(|(file, answer)| convert(file, answer))
            .collect(),
        Ok(answers) => {
            let message = format!("{} answers for {} files", answers.len(), files.len());
            files
                .iter()
                .map(|_| Err(ServiceError::Protocol(message.clone())))
                .collect()
        }
        Err(error) => files
            .iter()
            .map(|_| {
                Err(ServiceError::Remote {
                    code: error.code(),
                    message: realize_core::ErrorChain(&error).to_string(),
                })
            })
            .collect(),
    }
}

fn call_ended() -> ServiceError {
    ServiceError::Remote {
        code: ErrorCode::Unavailable,
        message: "the WriteFiles call ended before answering".into(),
    }
}
