//! An in-process way into the gRPC handler, for the fuzz targets in `fuzz/`: request
//! bodies go through the same routes, message limit, authorization and store as on a
//! connection, without TLS or HTTP/2, so millions of them can run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use realize_core::{DirId, LocalStore};
use realize_net::connection::PeerInfo;
use realize_net::keys::{KeyError, PrivateKey, PublicKey};
use realize_net::throttle::SendLimit;
use realize_proto::pb::realize_server::RealizeServer;
use tonic::service::Routes;
use tower::ServiceExt;

use crate::config::{Access, DaemonLimits, Peer};
use crate::limits::MessageLimit;
use crate::server::Handler;
use crate::state::{ActiveCalls, Calls, ConnectionContext, Live, LiveConfig};

/// The directory id the harness serves its root as.
pub const DIR: &str = "d";

/// The handler serving one root as [`DIR`] to one peer with `access`, and the
/// limits given.
#[derive(Debug)]
pub struct Harness {
    routes: Routes,
    calls: Arc<Calls>,
    context: ConnectionContext,
    limits: DaemonLimits,
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The grpc-status, 0 for OK; `None` if the response carried none.
    pub status: Option<i32>,
    /// Bytes of the response body: what the daemon had to produce for the call.
    pub body_len: usize,
}

impl Harness {
    pub fn new(root: &Path, access: Access, limits: DaemonLimits) -> Result<Self, KeyError> {
        let key = PrivateKey::generate()?.public_key();
        let dir = DirId::new(DIR).unwrap_or_else(|_| unreachable!("\"d\" is a valid id"));
        let peer = Peer {
            access,
            ..Peer::full(key.clone())
        };
        let live = Arc::new(LiveConfig::new(Live::new(
            BTreeMap::from([("fuzzer".to_string(), peer)]),
            [dir.clone()].into(),
            Arc::new(LocalStore::new([(dir, root.to_path_buf())])),
            crate::config::DEFAULT_GRACE_PERIOD,
            limits,
        )));
        let calls = Arc::new(Calls::default());
        let handler = Handler::new(live, Arc::clone(&calls));
        let routes = Routes::new(
            RealizeServer::new(handler)
                .max_decoding_message_size(limits.max_message_size)
                .max_encoding_message_size(limits.max_message_size),
        )
        .prepare();
        let context = connection(&calls, key);
        Ok(Harness {
            routes,
            calls,
            context,
            limits,
        })
    }

    /// Starts a new connection for the calls that follow, so that what earlier calls
    /// set on theirs (Configure's send limit) does not carry over.
    pub fn reconnect(&mut self) {
        self.context = connection(&self.calls, self.context.peer.key.clone());
    }

    /// Calls `method` (such as `Write`) with `body`, gRPC-framed messages or any bytes,
    /// and reads the whole response.
    pub async fn call(&self, method: &str, body: Bytes) -> Reply {
        let failed = Reply {
            status: None,
            body_len: 0,
        };
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://realize/realize.v1.Realize/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(MessageLimit::new(
                Full::new(body),
                self.limits.max_message_size,
            ));
        let Ok(mut request) = request else {
            return failed;
        };
        request.extensions_mut().insert(self.context.clone());
        let Ok(response) = self.routes.clone().oneshot(request).await;
        let code = |headers: &http::HeaderMap| {
            headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        if let Some(status) = code(response.headers()) {
            return Reply {
                status: Some(status),
                body_len: 0,
            };
        }
        // Stops at the trailers as hyper does: a response stream may go on after
        // them (tonic's request stream repeats its error at a cut message forever).
        let mut body = response.into_body();
        let mut body_len = 0;
        while let Some(Ok(frame)) = body.frame().await {
            match frame.into_data() {
                Ok(data) => body_len += data.len(),
                Err(frame) => {
                    return Reply {
                        status: frame.trailers_ref().and_then(code),
                        body_len,
                    };
                }
            }
        }
        Reply {
            status: None,
            body_len,
        }
    }
}

fn connection(calls: &Calls, key: PublicKey) -> ConnectionContext {
    ConnectionContext {
        peer: PeerInfo {
            peer_id: "fuzzer".to_string(),
            addr: ([127, 0, 0, 1], 1).into(),
            send_limit: SendLimit::new(None),
            key,
        },
        cancel: calls.cancel.child_token(),
        active: Arc::new(ActiveCalls::default()),
        budget: calls.budgets.peer("fuzzer"),
    }
}

/// Frames `messages` as a gRPC request body: a flag byte, a 4-byte length, then each.
pub fn frame(messages: &[Vec<u8>]) -> Bytes {
    let mut body = Vec::new();
    for message in messages {
        body.push(0);
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
    }
    body.into()
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use realize_proto::pb;

    use super::*;

    #[tokio::test]
    async fn calls_reach_the_store_and_refusals_come_back_as_statuses() {
        let root = tempfile::tempdir().unwrap();
        let limits = DaemonLimits {
            max_message_size: crate::config::MIN_MESSAGE_SIZE,
            ..DaemonLimits::default()
        };
        let harness = Harness::new(root.path(), Access::ReadWrite, limits).unwrap();
        let header = pb::WriteRequest {
            message: Some(pb::write_request::Message::Header(pb::WriteHeader {
                dir: DIR.into(),
                path: "a/f".into(),
                offset: 0,
                file_size: 3,
                whole_file: false,
                digest_algorithm: pb::DigestAlgorithm::Sha256.into(),
            })),
        };
        let data = pb::WriteRequest {
            message: Some(pb::write_request::Message::Data(Bytes::from_static(b"abc"))),
        };
        let body = frame(&[header.encode_to_vec(), data.encode_to_vec()]);
        assert_eq!(harness.call("Write", body).await.status, Some(0));
        assert_eq!(
            std::fs::read(root.path().join("a/.f.part")).unwrap(),
            b"abc"
        );
        let finish = pb::FinishRequest {
            dir: DIR.into(),
            path: "a/f".into(),
            digest: None,
            legacy_sha256: Default::default(),
        };
        let finish = frame(&[finish.encode_to_vec()]);
        assert_eq!(harness.call("Finish", finish).await.status, Some(0));
        assert_eq!(std::fs::read(root.path().join("a/f")).unwrap(), b"abc");
        let read = pb::ReadRequest {
            dir: DIR.into(),
            path: "../x".into(),
            offset: 0,
            length: None,
            if_stamp: None,
        };
        let read = frame(&[read.encode_to_vec()]);
        assert_eq!(
            harness.call("Read", read).await.status,
            Some(tonic::Code::InvalidArgument as i32)
        );
        let huge = Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            harness.call("Hash", huge).await.status,
            Some(tonic::Code::ResourceExhausted as i32)
        );
        let garbage = Bytes::from_static(b"\x00\x00\x00\x00\x03\xff\xff\xff");
        assert_eq!(
            harness.call("Delete", garbage).await.status,
            Some(tonic::Code::Internal as i32)
        );
        // Cut inside a message's prefix: the request stream fails at its end again
        // at every poll, and the answer still ends.
        let cut = Bytes::from_static(b"\xff\xff\xff");
        assert_eq!(
            harness.call("WriteFiles", cut).await.status,
            Some(tonic::Code::Internal as i32)
        );
    }
}
