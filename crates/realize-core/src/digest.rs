//! Digests: what proves two copies of a file are the same, and the digest
//! of a byte stream taken as the bytes go by.
//!
//! Two cryptographic hashes of 256 bits are offered: BLAKE3, the default,
//! about three times faster than SHA-256 on one core, and SHA-256 for peers
//! that have only it (Python's hashlib) or must use it (FIPS). A move uses
//! one algorithm for all its digests, chosen when it starts.

use std::fmt;
use std::str::FromStr;

use futures::StreamExt;
use futures::stream;
use sha2::Digest as _;
use tracing::Instrument;

use crate::chunks::CHUNK_SIZE;
use crate::service::{ByteStream, ExpectedHash};

/// The hash a [`Digest`] is taken with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    /// BLAKE3 with its default 32-byte output.
    Blake3,
    /// SHA-256 (FIPS 180-4).
    Sha256,
}

impl DigestAlgorithm {
    /// Every algorithm, the preferred first: what a move picks when both
    /// sides support more than one.
    pub const PREFERRED: [DigestAlgorithm; 2] = [DigestAlgorithm::Blake3, DigestAlgorithm::Sha256];

    /// The name used on the command line and in logs: `blake3`, `sha256`.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Blake3 => "blake3",
            DigestAlgorithm::Sha256 => "sha256",
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`DigestAlgorithm`]'s.
#[derive(Debug, thiserror::Error)]
#[error("unknown digest {0:?}: expected blake3 or sha256")]
pub struct UnknownDigest(pub String);

impl FromStr for DigestAlgorithm {
    type Err = UnknownDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DigestAlgorithm::PREFERRED
            .into_iter()
            .find(|algorithm| algorithm.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownDigest(s.to_owned()))
    }
}

/// A digest of a file's bytes: the algorithm and its 32-byte value.
///
/// Two digests are equal only if both the algorithm and the value are.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    /// The hash the value was taken with.
    pub algorithm: DigestAlgorithm,
    /// The hash's 32 bytes.
    pub value: [u8; 32],
}

impl Digest {
    /// The digest of `data`.
    pub fn of(algorithm: DigestAlgorithm, data: &[u8]) -> Self {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hasher.finish()
    }

    /// A digest received as bytes; `None` unless there are 32 of them.
    pub fn from_slice(algorithm: DigestAlgorithm, bytes: &[u8]) -> Option<Self> {
        let value = bytes.try_into().ok()?;
        Some(Digest { algorithm, value })
    }

    /// Lowercase hexadecimal, as `sha256sum` prints it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.value)
    }
}

/// `blake3:<hex>` or `sha256:<hex>`, as the audit log writes it.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// A digest being taken, fed bytes in order.
#[derive(Clone)]
pub struct Hasher(HasherState);

// BLAKE3's state is 1.9 KB: boxed, so a `Hasher` moves cheaply between tasks.
#[derive(Clone)]
enum HasherState {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

impl Hasher {
    /// A hasher of `algorithm`, fed nothing yet.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        Hasher(match algorithm {
            DigestAlgorithm::Blake3 => HasherState::Blake3(Box::default()),
            DigestAlgorithm::Sha256 => HasherState::Sha256(sha2::Sha256::new()),
        })
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherState::Blake3(hasher) => {
                hasher.update(data);
            }
            HasherState::Sha256(hasher) => hasher.update(data),
        }
    }

    /// The digest of every byte fed.
    pub fn finish(self) -> Digest {
        match self.0 {
            HasherState::Blake3(hasher) => Digest {
                algorithm: DigestAlgorithm::Blake3,
                value: *hasher.finalize().as_bytes(),
            },
            HasherState::Sha256(hasher) => Digest {
                algorithm: DigestAlgorithm::Sha256,
                value: hasher.finalize().into(),
            },
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithm = match self.0 {
            HasherState::Blake3(_) => DigestAlgorithm::Blake3,
            HasherState::Sha256(_) => DigestAlgorithm::Sha256,
        };
        f.debug_tuple("Hasher").field(&algorithm).finish()
    }
}

/// Chunks hashed ahead of whoever takes the stream.
const HASH_QUEUE: usize = 4;

/// `data`, `size` bytes, and its digest, sent once the stream has ended
/// without an error (dropped unsent otherwise).
///
/// Past one chunk, the hashing runs in a task of its own, a bounded queue
/// ahead of the consumer: polled by a connection, it would run on the thread
/// that encrypts and sends, one after the other instead of side by side. A
/// stream of one chunk is hashed in passing: a task would cost more.
pub(crate) fn hash_stream(
    data: ByteStream,
    size: u64,
    algorithm: DigestAlgorithm,
) -> (ByteStream, ExpectedHash) {
    let (sender, value) = tokio::sync::oneshot::channel();
    let hashing = Hashing {
        hasher: Hasher::new(algorithm),
        sender,
    };
    let expected = ExpectedHash { algorithm, value };
    let stream = if size <= CHUNK_SIZE as u64 {
        in_passing(data, hashing)
    } else {
        ahead(data, hashing)
    };
    (stream, expected)
}

/// A hash being computed, and where it goes once the data has all gone by.
struct Hashing {
    hasher: Hasher,
    sender: tokio::sync::oneshot::Sender<Digest>,
}

impl Hashing {
    fn done(self) {
        let _ = self.sender.send(self.hasher.finish());
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
    fn known_digests() {
        assert_eq!(
            Digest::of(DigestAlgorithm::Sha256, b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            Digest::of(DigestAlgorithm::Blake3, b"abc").to_string(),
            "blake3:6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn same_value_other_algorithm_differs() {
        let sha = Digest::of(DigestAlgorithm::Sha256, b"abc");
        let other = Digest {
            algorithm: DigestAlgorithm::Blake3,
            value: sha.value,
        };
        assert_ne!(sha, other);
    }

    #[test]
    fn names_parse_back() {
        for algorithm in DigestAlgorithm::PREFERRED {
            assert_eq!(
                algorithm.name().parse::<DigestAlgorithm>().ok(),
                Some(algorithm)
            );
        }
        assert!("md5".parse::<DigestAlgorithm>().is_err());
    }
}
