//! `RemoteService`: realize-core's `Service`, implemented by gRPC calls to a daemon.

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::oneshot;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt, future, ready, stream};
use realize_core::{
    ByteRange, ByteStream, Digest, DigestAlgorithm, DirId, EntryStream, ExpectedHash, FileKind,
    FileStamp, HashResult, MAX_WHOLE_FILE, RelPath, Service, ServiceError, ServiceInfo, WholeFile,
};
use realize_proto::request::{self, ApplyDeltaHeader, WriteHeader, WritePiece};
use realize_proto::{DecodeError, error_from_answer, error_from_status, pb};

use crate::metrics::{RpcCall, RpcSide};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;

mod batch;
mod pacing;
mod unary;

use pacing::{Pacing, Replay};
use unary::Unary;

type Client = pb::realize_client::RealizeClient<Channel>;

/// A daemon reached over one gRPC channel.
#[derive(Clone, Debug)]
pub struct RemoteService {
    client: Client,
    /// The daemon's pushback, shared by clones, and the calls' deadline.
    pacing: Pacing,
    /// A data stream from the daemon with no message for this long fails
    /// as a cut connection would (see [`RemoteService::with_stall_timeout`]).
    stall_timeout: Option<Duration>,
    /// Small files' WriteFiles call, shared by clones.
    batch: std::sync::Arc<batch::Batch>,
}

impl RemoteService {
    /// A service over `channel`, a connection to a daemon made by [`crate::connection::connect`].
    pub fn new(channel: Channel) -> Self {
        RemoteService {
            client: Client::new(channel),
            pacing: Pacing::default(),
            stall_timeout: None,
            batch: Default::default(),
        }
    }

    /// Every call carries what is left until `deadline` as its gRPC
    /// timeout, so the daemon gives up on it too.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.pacing.deadline = Some(deadline);
        self
    }

    /// A Read, Diff or ReadFiles stream that brings nothing for `stall` while
    /// it is waited on fails with a transport error, which a caller retries
    /// like a cut connection. Time the caller spends elsewhere never counts,
    /// nor does a listing, which a large directory can make slow to start.
    pub fn with_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall_timeout = Some(stall);
        self
    }

    /// `stream`, failing when its next item takes longer than the stall timeout.
    fn stall_guarded<T: Send + 'static>(
        &self,
        stream: BoxStream<'static, Result<T, ServiceError>>,
    ) -> BoxStream<'static, Result<T, ServiceError>> {
        let Some(stall) = self.stall_timeout else {
            return stream;
        };
        stream::unfold(Some(stream), move |state| async move {
            let mut stream = state?;
            match tokio::time::timeout(stall, stream.next()).await {
                Ok(item) => item.map(|item| (item, Some(stream))),
                Err(_) => Some((Err(stalled(stall)), None)),
            }
        })
        .boxed()
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs one call, measured as a client-side RPC.
    async fn observed<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let measured = RpcCall::start(RpcSide::Client, method);
        let result = call.await;
        measured.finish(match &result {
            Ok(_) => tonic::Code::Ok,
            Err(e) => realize_proto::grpc_code(e.code()),
        });
        result
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        request(message, self.pacing.deadline)
    }

    /// One call, made with the deadline and again after a pushback as long
    /// as `can_retry`, each time with the request `message` gives; its
    /// status mapped to a service error and its answer decoded.
    async fn paced<M, R, T, Fut>(
        &self,
        can_retry: impl Fn() -> bool,
        message: impl Fn() -> M,
        call: impl Fn(Client, tonic::Request<M>) -> Fut,
    ) -> Result<T, ServiceError>
    where
        T: TryFrom<R>,
        DecodeError: From<T::Error>,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let response = self
            .pacing
            .paced(can_retry, || call(self.client(), self.request(message())))
            .await
            .map_err(error_from_status)?;
        T::try_from(response.into_inner()).map_err(|e| error_from_answer(e.into()))
    }

    /// A call whose request is one message ([`RemoteService::paced`]).
    async fn call<M: Unary, T>(&self, message: M) -> Result<T, ServiceError>
    where
        T: TryFrom<M::Response>,
        DecodeError: From<T::Error>,
    {
        self.paced(|| true, || message.clone(), M::send).await
    }

    /// [`RemoteService::call`], measured: every unary call.
    async fn unary<M: Unary, T>(&self, message: M) -> Result<T, ServiceError>
    where
        T: TryFrom<M::Response>,
        DecodeError: From<T::Error>,
    {
        self.observed(M::METHOD, self.call(message)).await
    }

    /// A call whose request is a stream of `messages`, made again after a
    /// pushback as long as what it sent is kept.
    async fn stream_call<M, R, T, Fut>(
        &self,
        messages: impl Stream<Item = M> + Send + 'static,
        call: impl Fn(Client, tonic::Request<pacing::Attempt<M>>) -> Fut,
    ) -> Result<T, ServiceError>
    where
        M: prost::Message + Clone + Send + 'static,
        T: TryFrom<R>,
        DecodeError: From<T::Error>,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let replay = Replay::new(messages);
        self.paced(|| replay.replayable(), || replay.attempt(), call)
            .await
    }

    /// Sets (or with `None` clears) the limit on what the daemon sends on
    /// this connection; returns the limit in force.
    pub async fn configure(&self, send_limit: Option<u64>) -> Result<Option<u64>, ServiceError> {
        let request = pb::ConfigureRequest::from(request::Configure { send_limit });
        self.unary(request).await
    }
}

/// A request carrying the trace context and, with a `deadline`, what is left
/// until it as its gRPC timeout.
fn request<T>(message: T, deadline: Option<Instant>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    crate::traces::inject(request.metadata_mut());
    if let Some(deadline) = deadline {
        // A zero timeout fails the call at once, which is what a passed deadline means.
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    }
    request
}

/// The error of a stream that brought nothing for `stall`.
fn stalled(stall: Duration) -> ServiceError {
    let why = format!(
        "no data from the daemon for {} (--stall-timeout)",
        humantime::format_duration(stall)
    );
    ServiceError::Transport {
        context: "stream stalled".to_string(),
        source: Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, why)),
    }
}

/// A server stream of messages as a stream of core values.
fn map_stream<M, T>(messages: tonic::Streaming<M>) -> BoxStream<'static, Result<T, ServiceError>>
where
    M: Send + 'static,
    T: TryFrom<M> + Send + 'static,
    DecodeError: From<T::Error>,
{
    messages
        .map_err(error_from_status)
        .and_then(|m| future::ready(T::try_from(m).map_err(|e| error_from_answer(e.into()))))
        .boxed()
}

/// The outgoing half of a client-streaming call: `header`, then `data`.
///
/// An error in `data` must abort the call rather than end the stream,
/// since a cleanly ended stream tells the server the data is complete. So
/// the stream stalls on error and hands the error to the returned receiver;
/// the caller then drops the call, which resets the HTTP/2 stream.
fn client_stream<M: Send + 'static>(
    header: M,
    data: ByteStream,
    to_message: fn(Bytes) -> M,
) -> (
    impl Stream<Item = M> + Send + 'static,
    oneshot::Receiver<ServiceError>,
) {
    let (error_tx, error_rx) = oneshot::channel();
    let body = Body {
        data,
        to_message,
        error_tx: Some(error_tx),
    };
    (stream::once(future::ready(header)).chain(body), error_rx)
}

struct Body<M> {
    data: ByteStream,
    to_message: fn(Bytes) -> M,
    /// Taken when `data` fails; from then on the stream stays pending.
    error_tx: Option<oneshot::Sender<ServiceError>>,
}

impl<M> Stream for Body<M> {
    type Item = M;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<M>> {
        if self.error_tx.is_none() {
            return Poll::Pending;
        }
        match ready!(self.data.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => Poll::Ready(Some((self.to_message)(chunk))),
            Some(Err(error)) => {
                if let Some(tx) = self.error_tx.take() {
                    // The receiver only goes away once the call is over.
                    let _ = tx.send(error);
                }
                Poll::Pending
            }
            None => Poll::Ready(None),
        }
    }
}

impl RemoteService {
    /// A Write call: `header`, `data` as data messages, then `trailer`.
    async fn send_write(
        &self,
        header: WriteHeader,
        data: ByteStream,
        trailer: impl Stream<Item = pb::WriteRequest> + Send + 'static,
    ) -> Result<u64, ServiceError> {
        let (outgoing, data_error) = client_stream(header.into(), data, |chunk| {
            pb::WriteRequest::from(WritePiece::Data(chunk))
        });
        let call = self.stream_call(outgoing.chain(trailer), |mut c, r| async move {
            c.write(r).await
        });
        self.observed("Write", async {
            tokio::select! {
                response = call => response,
                Ok(error) = data_error => Err(error),
            }
        })
        .await
    }
}

#[async_trait]
impl Service for RemoteService {
    async fn info(&self) -> Result<ServiceInfo, ServiceError> {
        let request = pb::InfoRequest::from(request::Info);
        self.unary(request).await
    }

    async fn list(
        &self,
        dir: &DirId,
        prefix: Option<&RelPath>,
        include_partial: bool,
    ) -> Result<EntryStream, ServiceError> {
        let request = pb::ListRequest::from(request::List {
            dir: dir.clone(),
            prefix: prefix.cloned(),
            include_partial,
        });
        let entries = self.unary(request).await?;
        Ok(map_stream(entries))
    }

    async fn read(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        length: Option<u64>,
        if_stamp: Option<FileStamp>,
    ) -> Result<ByteStream, ServiceError> {
        let request = pb::ReadRequest::from(request::Read {
            dir: dir.clone(),
            path: path.clone(),
            offset,
            length,
            if_stamp,
        });
        let data = self.unary(request).await?;
        Ok(self.stall_guarded(map_stream(data)))
    }

    async fn write(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        file_size: u64,
        data: ByteStream,
    ) -> Result<u64, ServiceError> {
        let header = WriteHeader {
            dir: dir.clone(),
            path: path.clone(),
            offset,
            file_size,
            whole_file: None,
        };
        self.send_write(header, data, stream::empty()).await
    }

    async fn write_file(
        &self,
        dir: &DirId,
        path: &RelPath,
        file_size: u64,
        data: ByteStream,
        expected: ExpectedHash,
    ) -> Result<u64, ServiceError> {
        if file_size <= MAX_WHOLE_FILE {
            return self
                .write_small_file(dir, path, file_size, data, expected)
                .await;
        }
        let header = WriteHeader {
            dir: dir.clone(),
            path: path.clone(),
            offset: 0,
            file_size,
            whole_file: Some(expected.algorithm),
        };
        // Sent after the data, once its hash is known; never if the
        // hash is not sent, and the daemon then renames nothing.
        let finish = stream::once(expected.value).filter_map(|hash| {
            future::ready(hash.ok().map(|hash| WritePiece::Finish(hash).into()))
        });
        self.send_write(header, data, finish).await
    }

    async fn apply_delta(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        file_size: u64,
        delta: ByteStream,
    ) -> Result<u64, ServiceError> {
        let header = ApplyDeltaHeader {
            dir: dir.clone(),
            path: path.clone(),
            range,
            file_size,
        };
        let (outgoing, delta_error) =
            client_stream(header.into(), delta, pb::ApplyDeltaRequest::from);
        let call = self.stream_call(outgoing, |mut c, r| async move { c.apply_delta(r).await });
        self.observed("ApplyDelta", async {
            tokio::select! {
                response = call => response,
                Ok(error) = delta_error => Err(error),
            }
        })
        .await
    }

    async fn signature(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        block_size: u32,
    ) -> Result<Bytes, ServiceError> {
        let request = pb::SignatureRequest::from(request::Signature {
            dir: dir.clone(),
            path: path.clone(),
            range,
            block_size,
        });
        self.unary(request).await
    }

    async fn diff(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        signature: Bytes,
    ) -> Result<ByteStream, ServiceError> {
        let request = pb::DiffRequest::from(request::Diff {
            dir: dir.clone(),
            path: path.clone(),
            range,
            signature,
        });
        let delta = self.unary(request).await?;
        Ok(self.stall_guarded(map_stream(delta)))
    }

    async fn hash(
        &self,
        dir: &DirId,
        path: &RelPath,
        kind: FileKind,
        range: Option<ByteRange>,
        algorithm: DigestAlgorithm,
    ) -> Result<HashResult, ServiceError> {
        let request = pb::HashRequest::from(request::Hash {
            dir: dir.clone(),
            path: path.clone(),
            kind,
            range,
            algorithm,
        });
        self.unary(request).await
    }

    async fn finish(
        &self,
        dir: &DirId,
        path: &RelPath,
        verified: Option<Digest>,
    ) -> Result<(), ServiceError> {
        let request = pb::FinishRequest::from(request::Finish {
            dir: dir.clone(),
            path: path.clone(),
            verified,
        });
        self.unary(request).await
    }

    async fn delete(
        &self,
        dir: &DirId,
        path: &RelPath,
        if_stamp: Option<FileStamp>,
    ) -> Result<(), ServiceError> {
        let request = pb::DeleteRequest::from(request::Delete {
            dir: dir.clone(),
            path: path.clone(),
            if_stamp,
        });
        self.unary(request).await
    }
    async fn write_files(
        &self,
        dir: &DirId,
        files: Vec<WholeFile>,
    ) -> Vec<Result<u64, ServiceError>> {
        self.write_whole_files(dir, files).await
    }

    async fn read_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
        algorithm: DigestAlgorithm,
    ) -> Vec<Result<WholeFile, ServiceError>> {
        self.read_whole_files(dir, files, algorithm).await
    }

    async fn delete_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
    ) -> Vec<Result<(), ServiceError>> {
        self.delete_whole_files(dir, files).await
    }
}
