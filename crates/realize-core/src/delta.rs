//! rsync-style signatures and deltas over bounded in-memory ranges.
//!
//! fast_rsync works on whole slices, so callers work range by range with at
//! most [`MAX_RANGE`] bytes in memory, and verify each result by SHA-256:
//! the block hash of the signature is a truncated MD4.

use fast_rsync::{Signature, SignatureOptions};

/// The largest range one Signature, Diff or ApplyDelta call may cover.
pub const MAX_RANGE: u64 = 16 * 1024 * 1024;
/// The smallest rsync block size a signature may use.
pub const MIN_BLOCK_SIZE: u32 = 128;
/// The largest rsync block size a signature may use.
pub const MAX_BLOCK_SIZE: u32 = 1024 * 1024;
/// Bytes of MD4 kept per block: 8 like rsync's, since SHA-256 has the last word.
const CRYPTO_HASH_SIZE: u32 = 8;
/// A delta never needs to be much larger than the data it produces: literal
/// runs cost a few bytes of header each. Saturates rather than wraps, since
/// the length may come from a peer.
pub fn max_delta_len(range_len: u64) -> u64 {
    range_len.saturating_add(range_len / 8).saturating_add(4096)
}

/// Why a signature or delta was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("block size {0} is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}")]
    BlockSize(u32),
    #[error("signature does not parse")]
    BadSignature,
    #[error("delta does not apply: {0}")]
    BadDelta(String),
    #[error("delta produced {got} bytes, expected {expected}")]
    WrongLength { got: u64, expected: u64 },
}

pub fn check_block_size(block_size: u32) -> Result<(), DeltaError> {
    if (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        Ok(())
    } else {
        Err(DeltaError::BlockSize(block_size))
    }
}

pub fn signature(base: &[u8], block_size: u32) -> Result<Vec<u8>, DeltaError> {
    check_block_size(block_size)?;
    Ok(Signature::calculate(
        base,
        SignatureOptions {
            block_size,
            crypto_hash_size: CRYPTO_HASH_SIZE,
        },
    )
    .into_serialized())
}

/// The delta that turns the bytes `signature` was made from into `data`.
pub fn diff(signature: Vec<u8>, data: &[u8]) -> Result<Vec<u8>, DeltaError> {
    // fast_rsync trusts the header: a zero block size would loop forever and
    // a hash size above 16 would panic, so check them before it sees them.
    let header = signature.get(4..12).ok_or(DeltaError::BadSignature)?;
    let block_size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let hash_size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    check_block_size(block_size)?;
    if !(1..=16).contains(&hash_size) {
        return Err(DeltaError::BadSignature);
    }
    let signature = Signature::deserialize(signature).map_err(|_| DeltaError::BadSignature)?;
    let mut delta = Vec::new();
    fast_rsync::diff(&signature.index(), data, &mut delta)
        .map_err(|e| DeltaError::BadDelta(e.to_string()))?;
    Ok(delta)
}

/// Applies `delta` to `base`; the result must be exactly `expected_len` bytes.
pub fn apply(base: &[u8], delta: &[u8], expected_len: u64) -> Result<Vec<u8>, DeltaError> {
    let limit = usize::try_from(expected_len).map_err(|_| DeltaError::WrongLength {
        got: 0,
        expected: expected_len,
    })?;
    let mut out = Vec::with_capacity(limit);
    fast_rsync::apply_limited(base, delta, &mut out, limit)
        .map_err(|e| DeltaError::BadDelta(e.to_string()))?;
    if out.len() as u64 != expected_len {
        return Err(DeltaError::WrongLength {
            got: out.len() as u64,
            expected: expected_len,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_small_edit_sends_little() {
        let base: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = base.clone();
        new[500_000..500_010].copy_from_slice(b"0123456789");
        new.extend_from_slice(b"tail");
        let sig = signature(&base, 4096).unwrap();
        let delta = diff(sig, &new).unwrap();
        assert!(delta.len() < 10_000, "delta is {} bytes", delta.len());
        assert_eq!(apply(&base, &delta, new.len() as u64).unwrap(), new);
    }

    #[test]
    fn empty_base_gives_literal_delta() {
        let new = vec![42u8; 10_000];
        let delta = diff(signature(&[], 4096).unwrap(), &new).unwrap();
        assert_eq!(apply(&[], &delta, 10_000).unwrap(), new);
    }

    #[test]
    fn the_delta_bound_saturates_instead_of_wrapping() {
        assert_eq!(max_delta_len(0), 4096);
        assert_eq!(max_delta_len(8000), 8000 + 1000 + 4096);
        assert_eq!(max_delta_len(u64::MAX), u64::MAX);
        assert_eq!(max_delta_len(u64::MAX - 4096), u64::MAX);
    }

    #[test]
    fn hostile_input_is_rejected() {
        assert_eq!(signature(b"x", 0), Err(DeltaError::BlockSize(0)));
        let mut sig = signature(b"abc", 4096).unwrap();
        sig[4..8].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(diff(sig, b"abc"), Err(DeltaError::BlockSize(0)));
        let mut sig = signature(b"abc", 4096).unwrap();
        sig[8..12].copy_from_slice(&99u32.to_be_bytes());
        assert_eq!(diff(sig, b"abc"), Err(DeltaError::BadSignature));
        assert_eq!(diff(vec![1, 2, 3], b"abc"), Err(DeltaError::BadSignature));
        assert!(matches!(
            apply(b"abc", b"garbage", 3),
            Err(DeltaError::BadDelta(_))
        ));
        let delta = diff(signature(b"", 4096).unwrap(), b"abcdef").unwrap();
        assert!(apply(b"", &delta, 3).is_err());
        assert!(matches!(
            apply(b"", &delta, 10),
            Err(DeltaError::WrongLength {
                got: 6,
                expected: 10
            })
        ));
    }
}
