//! The gRPC handler: decodes requests, calls realize-core's `Service`, encodes answers.
//!
//! Every request field is validated by the realize-proto conversions before
//! the store sees it, and every error becomes a status in one place
//! ([`status`]).

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use opentelemetry::KeyValue;
use realize_core::{ByteRange, ByteStream, DirId, RelPath, Service, ServiceError, Sha256Hash};
use realize_net::connection::PeerInfo;
use realize_net::metrics::{RpcCall, RpcSide, record_limit};
use realize_net::throttle::check_rate;
use realize_proto::{WireError, error_from_status, pb};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Serves a [`Service`] (normally a `LocalStore`) as the realize.v1 gRPC service.
#[derive(Debug, Clone)]
pub struct Handler {
    service: Arc<dyn Service>,
}

impl Handler {
    pub fn new(service: Arc<dyn Service>) -> Self {
        Handler { service }
    }
}

fn status(error: &ServiceError) -> Status {
    realize_proto::status_from_error(error)
}

fn invalid(error: WireError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn target(dir: &str, path: &str) -> Result<(DirId, RelPath), Status> {
    let dir = realize_proto::dir_id(dir).map_err(invalid)?;
    let path = realize_proto::rel_path(path)
        .map_err(|e| Status::invalid_argument(format!("{dir}: {e}")))?;
    Ok((dir, path))
}

fn required_range(range: Option<pb::ByteRange>) -> Result<ByteRange, Status> {
    range
        .map(ByteRange::from)
        .ok_or_else(|| invalid(WireError::Missing("range")))
}

/// One call being served: a span naming the method and the peer, so every
/// log line of the call (including the store's audit events) says who asked,
/// and its measurement as a server-side RPC.
struct Call {
    span: tracing::Span,
    method: &'static str,
}

fn call<T>(method: &'static str, request: &Request<T>) -> Call {
    let span = match request.extensions().get::<PeerInfo>() {
        Some(peer) => tracing::info_span!("rpc", method, peer = %peer.peer_id, addr = %peer.addr),
        None => tracing::info_span!("rpc", method),
    };
    Call { span, method }
}

impl Call {
    async fn run<T>(self, handler: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
        let measured = RpcCall::start(RpcSide::Server, self.method);
        let result = handler.instrument(self.span).await;
        measured.finish(match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        });
        result
    }
}

/// The connection a call arrived on; every connection `serve` accepts has one.
fn connection<T>(request: &Request<T>) -> Result<PeerInfo, Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::internal("call without connection info"))
}

/// A send limit for people: `unlimited` or bytes per second.
struct Rate(Option<u64>);

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(rate) => write!(f, "{rate} B/s"),
            None => f.write_str("unlimited"),
        }
    }
}

/// The first message of a client stream must be its header.
async fn header<M, H>(
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

/// The rest of a client stream as data chunks; a second header is an error.
fn body<M: Send + 'static>(
    stream: Streaming<M>,
    take: fn(M) -> Option<bytes::Bytes>,
) -> ByteStream {
    stream
        .map_err(error_from_status)
        .and_then(move |m| {
            futures::future::ready(take(m).ok_or_else(|| {
                ServiceError::Protocol("expected data after the header".to_string())
            }))
        })
        .boxed()
}

type ServerStream<T> = BoxStream<'static, Result<T, Status>>;

fn server_stream<T, U>(
    stream: BoxStream<'static, Result<T, ServiceError>>,
    convert: fn(T) -> U,
) -> ServerStream<U>
where
    T: Send + 'static,
    U: Send + 'static,
{
    stream
        .map(move |item| item.map(convert).map_err(|e| status(&e)))
        .boxed()
}

#[tonic::async_trait]
impl pb::realize_server::Realize for Handler {
    type ListStream = ServerStream<pb::ListResponse>;
    type ReadStream = ServerStream<pb::ReadResponse>;
    type DiffStream = ServerStream<pb::DiffResponse>;

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let call = call("List", &request);
        call.run(async {
            let request = request.into_inner();
            let dir = realize_proto::dir_id(&request.dir).map_err(invalid)?;
            let entries = self
                .service
                .list(&dir, request.include_partial)
                .await
                .map_err(|e| status(&e))?;
            Ok(Response::new(server_stream(
                entries,
                pb::ListResponse::from,
            )))
        })
        .await
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let call = call("Read", &request);
        call.run(async {
            let request = request.into_inner();
            let (dir, path) = target(&request.dir, &request.path)?;
            let data = self
                .service
                .read(&dir, &path, request.offset, request.length)
                .await
                .map_err(|e| status(&e))?;
            Ok(Response::new(server_stream(data, |data| {
                pb::ReadResponse { data }
            })))
        })
        .await
    }

    async fn write(
        &self,
        request: Request<Streaming<pb::WriteRequest>>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        use pb::write_request::Message;
        let call = call("Write", &request);
        call.run(async {
            let mut stream = request.into_inner();
            let header = header(&mut stream, |m| match m.message {
                Some(Message::Header(h)) => Some(h),
                _ => None,
            })
            .await?;
            let (dir, path) = target(&header.dir, &header.path)?;
            let data = body(stream, |m| match m.message {
                Some(Message::Data(d)) => Some(d),
                _ => None,
            });
            let bytes_written = self
                .service
                .write(&dir, &path, header.offset, header.file_size, data)
                .await
                .map_err(|e| status(&e))?;
            tracing::debug!(%dir, %path, offset = header.offset, bytes_written, "write");
            Ok(Response::new(pb::WriteResponse { bytes_written }))
        })
        .await
    }

    async fn signature(
        &self,
        request: Request<pb::SignatureRequest>,
    ) -> Result<Response<pb::SignatureResponse>, Status> {
        let call = call("Signature", &request);
        call.run(async {
            let request = request.into_inner();
            let (dir, path) = target(&request.dir, &request.path)?;
            let range = required_range(request.range)?;
            let signature = self
                .service
                .signature(&dir, &path, range, request.block_size)
                .await
                .map_err(|e| status(&e))?;
            Ok(Response::new(pb::SignatureResponse { signature }))
        })
        .await
    }

    async fn diff(
        &self,
        request: Request<pb::DiffRequest>,
    ) -> Result<Response<Self::DiffStream>, Status> {
        let call = call("Diff", &request);
        call.run(async {
            let request = request.into_inner();
            let (dir, path) = target(&request.dir, &request.path)?;
            let range = required_range(request.range)?;
            let delta = self
                .service
                .diff(&dir, &path, range, request.signature)
                .await
                .map_err(|e| status(&e))?;
            Ok(Response::new(server_stream(delta, |delta| {
                pb::DiffResponse { delta }
            })))
        })
        .await
    }

    async fn apply_delta(
        &self,
        request: Request<Streaming<pb::ApplyDeltaRequest>>,
    ) -> Result<Response<pb::ApplyDeltaResponse>, Status> {
        use pb::apply_delta_request::Message;
        let call = call("ApplyDelta", &request);
        call.run(async {
            let mut stream = request.into_inner();
            let header = header(&mut stream, |m| match m.message {
                Some(Message::Header(h)) => Some(h),
                _ => None,
            })
            .await?;
            let (dir, path) = target(&header.dir, &header.path)?;
            let range = required_range(header.range)?;
            let delta = body(stream, |m| match m.message {
                Some(Message::Delta(d)) => Some(d),
                _ => None,
            });
            let bytes_written = self
                .service
                .apply_delta(&dir, &path, range, header.file_size, delta)
                .await
                .map_err(|e| status(&e))?;
            tracing::debug!(%dir, %path, start = range.start, end = range.end, bytes_written, "delta applied");
            Ok(Response::new(pb::ApplyDeltaResponse { bytes_written }))
        })
        .await
    }

    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let call = call("Hash", &request);
        call.run(async {
            let request = request.into_inner();
            let (dir, path) = target(&request.dir, &request.path)?;
            let kind = realize_proto::file_kind(request.kind).map_err(invalid)?;
            let result = self
                .service
                .hash(&dir, &path, kind, request.range.map(ByteRange::from))
                .await
                .map_err(|e| status(&e))?;
            Ok(Response::new(result.into()))
        })
        .await
    }

    async fn finish(
        &self,
        request: Request<pb::FinishRequest>,
    ) -> Result<Response<pb::FinishResponse>, Status> {
        let call = call("Finish", &request);
        call.run(async {
            let request = request.into_inner();
            let (dir, path) = target(&request.dir, &request.path)?;
            let verified = match request.sha256.len() {
                0 => None,
                _ => Some(Sha256Hash::from_slice(&request.sha256).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "{dir}/{path}: sha256 must be 32 bytes, got {}",
                        request.sha256.len()
                    ))
                })?),
            };
            self.service
                .finish(&dir, &path, verified)
                .await
                .map_err(|e| status(&e))?;
            Ok(Response::new(pb::FinishResponse {}))
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let call = call("Delete", &request);
        call.run(async {
            let request = request.into_inner();
            let (dir, path) = target(&request.dir, &request.path)?;
            self.service
                .delete(&dir, &path, request.if_stamp.map(Into::into))
                .await
                .map_err(|e| status(&e))?;
            Ok(Response::new(pb::DeleteResponse {}))
        })
        .await
    }

    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let call = call("Info", &request);
        let send_limit = connection(&request)?.send_limit.get();
        call.run(async {
            let info = self.service.info().await.map_err(|e| status(&e))?;
            Ok(Response::new(pb::InfoResponse {
                send_limit,
                ..info.into()
            }))
        })
        .await
    }

    async fn configure(
        &self,
        request: Request<pb::ConfigureRequest>,
    ) -> Result<Response<pb::ConfigureResponse>, Status> {
        let call = call("Configure", &request);
        call.run(async {
            let peer = connection(&request)?;
            let limit = request
                .into_inner()
                .send_limit
                .map(check_rate)
                .transpose()
                .map_err(|e| Status::invalid_argument(format!("send_limit: {e}")))?;
            let old = peer.send_limit.set(limit);
            if old != limit {
                tracing::info!(
                    peer = %peer.peer_id,
                    connection = %peer.addr,
                    old = %Rate(old),
                    new = %Rate(limit),
                    "send limit changed"
                );
                record_limit(
                    limit,
                    &[
                        KeyValue::new("scope", "connection"),
                        KeyValue::new("peer", peer.peer_id.clone()),
                    ],
                );
            }
            Ok(Response::new(pb::ConfigureResponse {
                send_limit: peer.send_limit.get(),
            }))
        })
        .await
    }
}
