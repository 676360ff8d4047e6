//! realize-proto: the generated realize.v1 gRPC code and the codec between
//! its messages and realize-core types, both ways; nothing else.
//!
//! Generated types are reached through [`pb`], never glob-imported, so the
//! wire layer stays visible wherever it is used. Each request has a
//! validated type in [`request`], each answer its conversions in
//! [`response`]; the values they are made of convert in `values.rs`.
//! Conversions from the wire validate every field (directory ids, paths,
//! hashes) and fail with [`DecodeError`]; [`status`] is the one place where
//! errors become gRPC statuses and back.

#![warn(missing_docs)]

/// The generated realize.v1 messages, client and server.
pub mod pb {
    // Generated: documented where the .proto has comments, which is its contract.
    #![allow(clippy::all, missing_debug_implementations, missing_docs)]
    tonic::include_proto!("realize.v1");
}

mod error;
pub mod request;
pub mod response;
pub mod status;
mod values;

pub use error::DecodeError;
pub use status::{
    error_code, error_from_answer, error_from_request, error_from_request_stream,
    error_from_status, grpc_code, status_from_error,
};

#[cfg(test)]
mod tests;
