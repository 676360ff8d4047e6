//! What a call may make the daemon hold, counted in its peer's memory
//! budget before it is held.

use super::*;

/// What the budget calls a chunk of a Write.
pub(super) const WRITE_CHUNK: &str = "a Write chunk";

/// Bytes a Read holds at most: the store's read-ahead, and the chunk tonic
/// is encoding; less for a shorter read.
pub(super) fn read_memory(length: Option<u64>) -> u64 {
    let most = READ_BUFFERED.saturating_add(CHUNK_SIZE as u64);
    length.map_or(most, |length| length.min(most))
}

/// The length of `range` a Signature, Diff or ApplyDelta may cover: longer
/// ranges are refused by the store before any byte is read.
pub(super) fn budgeted_range(range: ByteRange) -> u64 {
    range.len().min(MAX_RANGE)
}

/// Bytes a Signature holds at most: the range, and the signature made of
/// it (12 bytes per block, counted twice: fast_rsync's and the copy sent).
pub(super) fn signature_memory(range: ByteRange, block_size: u32) -> u64 {
    let len = budgeted_range(range);
    let blocks = (len / u64::from(block_size.max(MIN_BLOCK_SIZE))).saturating_add(1);
    len.saturating_add(blocks.saturating_mul(24))
}

/// Bytes a Diff holds at most: the range, the delta made of it, and the
/// signature (as sent, its copy, and its index).
pub(super) fn diff_memory(range: ByteRange, signature_len: usize) -> u64 {
    let len = budgeted_range(range);
    len.saturating_add(max_delta_len(len))
        .saturating_add((signature_len as u64).saturating_mul(4))
}

/// Bytes an ApplyDelta holds at most: the delta, checked whole before
/// anything is written, the range as it is, and the range patched.
pub(super) fn apply_delta_memory(range: ByteRange) -> u64 {
    let len = budgeted_range(range);
    max_delta_len(len).saturating_add(len.saturating_mul(2))
}

/// [`PeerBudget::reserve`] against the live `max_memory_per_peer`.
pub(super) fn reserve(
    budget: &Arc<PeerBudget>,
    live: &Arc<LiveConfig>,
    what: &'static str,
    bytes: u64,
) -> impl Future<Output = Result<Reservation, BudgetError>> + Send + use<> {
    let (budget, live) = (Arc::clone(budget), Arc::clone(live));
    async move {
        let max = || live.current().limits.max_memory_per_peer;
        budget.reserve(what, bytes, max, BUDGET_WAIT).await
    }
}

/// The status of a call refused memory, logged.
pub(super) fn memory_refused(refusal: BudgetError) -> CallError {
    tracing::warn!("call refused: {refusal}");
    CallError::from(refusal)
}

/// A chunk of data that keeps its bytes counted in its peer's budget for as
/// long as any copy of it lives (in the store's queue, being written).
#[derive(Debug)]
pub(super) struct Budgeted {
    data: bytes::Bytes,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// `data`, each chunk counted in the peer's budget from when it is taken
/// until the store has dropped it: a chunk is not taken until it fits.
pub(super) fn budgeted_body(
    data: ByteStream,
    budget: &Arc<PeerBudget>,
    live: &Arc<LiveConfig>,
    what: &'static str,
) -> ByteStream {
    let (budget, live) = (Arc::clone(budget), Arc::clone(live));
    data.and_then(move |chunk| {
        let reserving = reserve(&budget, &live, what, chunk.len() as u64);
        async move {
            match reserving.await {
                Ok(reservation) => Ok(bytes::Bytes::from_owner(Budgeted {
                    data: chunk,
                    _reservation: reservation,
                })),
                Err(refusal) => Err(ServiceError::Transport {
                    context: "memory budget".to_string(),
                    source: Box::new(refusal),
                }),
            }
        }
    })
    .boxed()
}

/// A response stream that keeps its bytes counted in the peer's budget
/// until it has ended or been dropped.
pub(super) struct Holding<T> {
    stream: ServerStream<T>,
    _reservation: Reservation,
}

impl<T> futures::Stream for Holding<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

pub(super) fn holding<T: Send + 'static>(
    stream: ServerStream<T>,
    reservation: Reservation,
) -> ServerStream<T> {
    Holding {
        stream,
        _reservation: reservation,
    }
    .boxed()
}
