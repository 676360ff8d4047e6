//! SHA-256 digests: what proves two copies of a file are the same, and the
//! digest of a byte stream taken as the bytes go by.

use std::fmt;

use futures::StreamExt;
use futures::stream;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::chunks::CHUNK_SIZE;
use crate::service::{ByteStream, ExpectedHash};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(data))
    }

    /// The digest a hasher fed with the data has computed.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Sha256Hash(hasher.finalize().into())
    }

    /// The digest in `bytes`, if they are exactly 32.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Sha256Hash)
    }

    /// Lowercase hexadecimal, as `sha256sum` prints it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hash({})", self.to_hex())
    }
}

/// Chunks hashed ahead of whoever takes the stream.
const HASH_QUEUE: usize = 4;

/// `data`, `size` bytes, and its SHA-256, sent once the stream has ended
/// without an error (dropped unsent otherwise).
///
/// Past one chunk, the hashing runs in a task of its own, a bounded queue
/// ahead of the consumer: polled by a connection, it would run on the thread
/// that encrypts and sends, one after the other instead of side by side. A
/// stream of one chunk is hashed in passing: a task would cost more.
pub(crate) fn hash_stream(data: ByteStream, size: u64) -> (ByteStream, ExpectedHash) {
    let (sender, expected) = tokio::sync::oneshot::channel();
    let hashing = Hashing {
        hasher: Sha256::new(),
        sender,
    };
    let stream = if size <= CHUNK_SIZE as u64 {
        in_passing(data, hashing)
    } else {
        ahead(data, hashing)
    };
    (stream, expected)
}

/// A hash being computed, and where it goes once the data has all gone by.
struct Hashing {
    hasher: Sha256,
    sender: tokio::sync::oneshot::Sender<Sha256Hash>,
}

impl Hashing {
    fn done(self) {
        let _ = self.sender.send(Sha256Hash::from_hasher(self.hasher));
    }
}

fn in_passing(data: ByteStream, hashing: Hashing) -> ByteStream {
    stream::unfold((data, Some(hashing)), |(mut data, hashing)| async move {
        let mut hashing = hashing?;
        match data.next().await {
            Some(Ok(chunk)) => {
                hashing.hasher.update(&chunk);
                Some((Ok(chunk), (data, Some(hashing))))
            }
            // Dropping the sender says the data was not all there.
            Some(Err(error)) => Some((Err(error), (data, None))),
            None => {
                hashing.done();
                None
            }
        }
    })
    .boxed()
}

fn ahead(mut data: ByteStream, mut hashing: Hashing) -> ByteStream {
    let (chunks_tx, chunks) = tokio::sync::mpsc::channel(HASH_QUEUE);
    let task = tokio::spawn(
        async move {
            while let Some(item) = data.next().await {
                let failed = item.is_err();
                if let Ok(chunk) = &item {
                    hashing.hasher.update(chunk);
                }
                // Dropping the sender on a failure says the data was not all there.
                if chunks_tx.send(item).await.is_err() || failed {
                    return;
                }
            }
            hashing.done();
        }
        .in_current_span(),
    );
    let task = tokio_util::task::AbortOnDropHandle::new(task);
    stream::unfold((chunks, task), |(mut chunks, task)| async move {
        chunks.recv().await.map(|item| (item, (chunks, task)))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            Sha256Hash::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
