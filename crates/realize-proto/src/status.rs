//! The one place where errors become gRPC statuses and back: a service
//! error, a message that breaks the contract, and one file's outcome in a
//! batch answer.

use realize_core::ErrorChain;
use realize_core::{ErrorCode, ServiceError};

use crate::DecodeError;

/// The gRPC status of a service error: its code and its whole cause chain as message.
pub fn status_from_error(error: &ServiceError) -> tonic::Status {
    tonic::Status::new(grpc_code(error.code()), ErrorChain(error).to_string())
}

/// A client's message that breaks the contract is refused as an invalid argument.
impl From<DecodeError> for tonic::Status {
    fn from(error: DecodeError) -> Self {
        tonic::Status::invalid_argument(error.to_string())
    }
}

/// The service error a gRPC status stands for: a status the peer sent is
/// [`ServiceError::Remote`]; one the client made up because the connection
/// failed carries its cause and becomes [`ServiceError::Transport`].
pub fn error_from_status(status: tonic::Status) -> ServiceError {
    if std::error::Error::source(&status).is_some() {
        return ServiceError::Transport {
            context: "connection to the daemon failed".to_string(),
            source: Box::new(TransportCause(status)),
        };
    }
    ServiceError::Remote {
        code: error_code(status.code()),
        message: status.message().to_string(),
    }
}

/// The service error for a client's request stream that failed as the
/// daemon read it. The status's code is kept (ResourceExhausted for a
/// message past the daemon's limit, Cancelled for a client that went away):
/// it must not become Unavailable, which clients retry, since the same
/// request would fail the same way again.
pub fn error_from_request_stream(status: tonic::Status) -> ServiceError {
    ServiceError::Remote {
        code: error_code(status.code()),
        message: status.message().to_string(),
    }
}

/// The service error for a request that breaks the contract, found in a
/// client's stream by the daemon or in a caller's data by the client: the
/// same InvalidArgument and message a whole message would get, which no
/// one retries.
pub fn error_from_request(error: DecodeError) -> ServiceError {
    ServiceError::Remote {
        code: ErrorCode::InvalidArgument,
        message: error.to_string(),
    }
}

/// The service error for an answer of the daemon that breaks the contract.
pub fn error_from_answer(error: DecodeError) -> ServiceError {
    ServiceError::Protocol(error.to_string())
}

/// How one file of a batch call went, as its answer says it: the gRPC
/// code, and the message if it failed.
pub(crate) fn code_and_message<T>(outcome: &Result<T, tonic::Status>) -> (i32, String) {
    match outcome {
        Ok(_) => (tonic::Code::Ok as i32, String::new()),
        Err(status) => (status.code() as i32, status.message().to_string()),
    }
}

/// The outcome a batch answer's code and message stand for.
pub(crate) fn outcome(code: i32, message: String) -> Result<(), ServiceError> {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => Ok(()),
        code => Err(ServiceError::Remote {
            code: error_code(code),
            message,
        }),
    }
}

/// A client-side status, shown by its message and causes rather than by
/// tonic's verbose `Display`.
#[derive(Debug)]
struct TransportCause(tonic::Status);

impl std::fmt::Display for TransportCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for TransportCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// The gRPC status code of an error's category.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    match code {
        ErrorCode::Cancelled => tonic::Code::Cancelled,
        ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorCode::Aborted => tonic::Code::Aborted,
        ErrorCode::OutOfRange => tonic::Code::OutOfRange,
        ErrorCode::Unimplemented => tonic::Code::Unimplemented,
        ErrorCode::Internal => tonic::Code::Internal,
        ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::DataLoss => tonic::Code::DataLoss,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        _ => tonic::Code::Unknown,
    }
}

/// The category of a gRPC status code.
pub fn error_code(code: tonic::Code) -> ErrorCode {
    match code {
        tonic::Code::Cancelled => ErrorCode::Cancelled,
        tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
        tonic::Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        tonic::Code::NotFound => ErrorCode::NotFound,
        tonic::Code::AlreadyExists => ErrorCode::AlreadyExists,
        tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
        tonic::Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        tonic::Code::FailedPrecondition => ErrorCode::FailedPrecondition,
        tonic::Code::Aborted => ErrorCode::Aborted,
        tonic::Code::OutOfRange => ErrorCode::OutOfRange,
        tonic::Code::Unimplemented => ErrorCode::Unimplemented,
        tonic::Code::Internal => ErrorCode::Internal,
        tonic::Code::Unavailable => ErrorCode::Unavailable,
        tonic::Code::DataLoss => ErrorCode::DataLoss,
        tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
        _ => ErrorCode::Unknown,
    }
}
