//! The chunks byte streams are cut into, by the store that reads them and
//! by whoever budgets or hashes them.

use bytes::Bytes;
use futures::{StreamExt, stream};

use crate::service::ByteStream;

/// Size of the chunks Read and Diff stream out.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Splits an in-memory buffer into a stream of chunks.
pub(crate) fn chunked(data: Vec<u8>) -> ByteStream {
    let data = Bytes::from(data);
    let chunks: Vec<_> = (0..data.len())
        .step_by(CHUNK_SIZE)
        .map(|start| Ok(data.slice(start..(start + CHUNK_SIZE).min(data.len()))))
        .collect();
    stream::iter(chunks).boxed()
}
