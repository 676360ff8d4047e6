//! The unary calls of realize.v1, each named by its request message: the
//! method it is, for the metrics, and the client call that makes it.

use realize_proto::pb;

use super::Client;

/// A request message of a call whose request is that one message.
pub(super) trait Unary: prost::Message + Clone + Send + 'static {
    /// The answer: a message, or a stream of them.
    type Response;
    const METHOD: &'static str;
    fn send(
        client: Client,
        request: tonic::Request<Self>,
    ) -> impl Future<Output = Result<tonic::Response<Self::Response>, tonic::Status>> + Send;
}

macro_rules! unary {
    ($($message:ident => $method:literal, $call:ident, $response:ty;)*) => {$(
        impl Unary for pb::$message {
            type Response = $response;
            const METHOD: &'static str = $method;
            async fn send(
                mut client: Client,
                request: tonic::Request<Self>,
            ) -> Result<tonic::Response<$response>, tonic::Status> {
                client.$call(request).await
            }
        }
    )*};
}

unary! {
    InfoRequest => "Info", info, pb::InfoResponse;
    ListRequest => "List", list, tonic::Streaming<pb::ListResponse>;
    ReadRequest => "Read", read, tonic::Streaming<pb::ReadResponse>;
    SignatureRequest => "Signature", signature, pb::SignatureResponse;
    DiffRequest => "Diff", diff, tonic::Streaming<pb::DiffResponse>;
    HashRequest => "Hash", hash, pb::HashResponse;
    FinishRequest => "Finish", finish, pb::FinishResponse;
    DeleteRequest => "Delete", delete, pb::DeleteResponse;
    ReadFilesRequest => "ReadFiles", read_files, tonic::Streaming<pb::ReadFilesResponse>;
    DeleteFilesRequest => "DeleteFiles", delete_files, pb::DeleteFilesResponse;
    ConfigureRequest => "Configure", configure, pb::ConfigureResponse;
}
