//! Peer connections: the daemon's stream of authenticated TLS connections ([`incoming`],
//! in `server`) and the client's channel to a daemon ([`connect`], in `client`).

use std::io;

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ConnectError, connect};
pub use server::{Incoming, PeerInfo, ServerConn, ServerPolicy, incoming};

/// HTTP/2 settings of the daemon, the receiving end of bulk data.
///
/// A data chunk (256 KiB) travels in one DATA frame instead of sixteen of
/// HTTP/2's default 16 KiB, and the windows let a few chunks per stream be in
/// flight: measured on loopback, this cut a large move's time by about a
/// seventh (docs/design.md). The windows also bound what a peer can make a
/// connection buffer. The same settings on the client made uploads slower
/// in the same measurements, so it keeps tonic's defaults.
pub mod http2 {
    /// Largest DATA frame either end accepts.
    pub const MAX_FRAME_SIZE: u32 = 256 * 1024;
    /// Bytes a peer may send on one stream before it is read.
    pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
    /// Bytes a peer may send on one connection, all streams together, before they are read.
    pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
}

/// The peer's certificate was refused by our verifier: its key is not one we pin.
fn is_unpinned_key(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure
                )
            )
        })
}
