//! The per-peer memory budget (`max_memory_per_peer`): what the calls of one
//! peer, on all its connections together, may make the daemon hold at once.
//!
//! A call reserves what it may buffer before it buffers it (the files of a
//! ReadFiles call, the queue of a Read or a Write, the ranges of a delta),
//! and gives it back when that is sent, written or dropped. A call that could
//! never fit is refused at once; one that could fit later waits for room, at
//! most [`BUDGET_WAIT`] and never past its deadline, then is refused. Both
//! refusals are ResourceExhausted and name the limit. See docs/design.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// How long a call waits for room in its peer's budget before it is refused:
/// long enough for the peer's other calls to move a few chunks along, short
/// enough that a peer holding its whole budget gets a clear answer.
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(10);

/// The budget of every peer that has connected, by peer id.
#[derive(Debug, Default)]
pub(crate) struct Budgets {
    peers: Mutex<HashMap<String, Arc<PeerBudget>>>,
}

impl Budgets {
    /// The budget shared by every connection of `peer_id`.
    pub fn peer(&self, peer_id: &str) -> Arc<PeerBudget> {
        // Only lookups and inserts happen under the lock: a panic cannot leave
        // the map half-updated.
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(peers.entry(peer_id.to_string()).or_insert_with(|| {
            Arc::new(PeerBudget {
                peer: peer_id.to_string(),
                used: Mutex::new(0),
                released: Notify::new(),
            })
        }))
    }
}

/// The bytes one peer's calls hold.
#[derive(Debug)]
pub(crate) struct PeerBudget {
    peer: String,
    used: Mutex<u64>,
    /// Woken when bytes are given back, for the calls waiting for room.
    released: Notify,
}

/// Why a call could not have the memory it needs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BudgetError {
    #[error(
        "{what} needs {needed} bytes of memory, more than peer {peer}'s max_memory_per_peer ({max} bytes)"
    )]
    NeverFits {
        peer: String,
        what: &'static str,
        needed: u64,
        max: u64,
    },
    #[error(
        "peer {peer}'s calls already hold {used} bytes of its max_memory_per_peer ({max} bytes): {what} needs {needed} more; retry when calls have ended"
    )]
    Full {
        peer: String,
        what: &'static str,
        needed: u64,
        used: u64,
        max: u64,
    },
}

impl PeerBudget {
    fn used(&self) -> MutexGuard<'_, u64> {
        // A counter: whatever a panicking holder left is still a count.
        self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `bytes` if the budget has room under `max`; else the bytes in use.
    fn try_reserve(self: &Arc<Self>, bytes: u64, max: u64) -> Result<Reservation, u64> {
        let mut used = self.used();
        match used.checked_add(bytes) {
            Some(total) if total <= max => {
                *used = total;
                Ok(Reservation {
                    budget: Arc::clone(self),
                    bytes,
                })
            }
            _ => Err(*used),
        }
    }

    /// Takes `bytes` for `what`, waiting up to `wait` for room; `max` is read
    /// at each try, so a reload applies to the calls waiting.
    pub async fn reserve(
        self: &Arc<Self>,
        what: &'static str,
        bytes: u64,
        max: impl Fn() -> u64,
        wait: Duration,
    ) -> Result<Reservation, BudgetError> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            let limit = max();
            if bytes > limit {
                return Err(BudgetError::NeverFits {
                    peer: self.peer.clone(),
                    what,
                    needed: bytes,
                    max: limit,
                });
            }
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the try, so a release between the two still wakes us.
            released.as_mut().enable();
            let used = match self.try_reserve(bytes, limit) {
                Ok(reservation) => return Ok(reservation),
                Err(used) => used,
            };
            if tokio::time::timeout_at(give_up, released).await.is_err() {
                return Err(BudgetError::Full {
                    peer: self.peer.clone(),
                    what,
                    needed: bytes,
                    used,
                    max: limit,
                });
            }
        }
    }
}

/// Bytes taken from a peer's budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<PeerBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        {
            let mut used = self.budget.used();
            *used = used.saturating_sub(self.bytes);
        }
        self.budget.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn reservations_share_one_budget_per_peer_and_give_it_back() {
        let budgets = Budgets::default();
        let (a, also_a, b) = (budgets.peer("a"), budgets.peer("a"), budgets.peer("b"));
        let first = a.reserve("first", 60, || 100, SHORT).await.unwrap();
        // The other peer's budget is its own.
        let other = b.reserve("other", 100, || 100, SHORT).await.unwrap();
        let refused = also_a.reserve("second", 50, || 100, SHORT).await;
        assert!(
            matches!(refused, Err(BudgetError::Full { used: 60, .. })),
            "{refused:?}"
        );
        drop(first);
        let second = also_a.reserve("second", 50, || 100, SHORT).await.unwrap();
        drop((second, other));
        assert_eq!(*a.used(), 0);
        assert_eq!(*b.used(), 0);
    }

    #[tokio::test]
    async fn what_never_fits_is_refused_at_once_and_what_may_fit_waits() {
        let budget = Budgets::default().peer("p");
        let never = budget.reserve("huge", 101, || 100, BUDGET_WAIT).await;
        assert!(
            matches!(never, Err(BudgetError::NeverFits { needed: 101, .. })),
            "{never:?}"
        );
        let held = budget.reserve("held", 80, || 100, SHORT).await.unwrap();
        let waiting = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.reserve("waiting", 40, || 100, BUDGET_WAIT).await })
        };
        tokio::task::yield_now().await;
        drop(held);
        let granted = waiting.await.unwrap().unwrap();
        assert_eq!(granted.bytes, 40);
    }

    #[tokio::test]
    async fn sizes_that_overflow_never_fit() {
        let budget = Budgets::default().peer("p");
        let _held = budget
            .reserve("held", 10, || u64::MAX, SHORT)
            .await
            .unwrap();
        let wrapped = budget
            .reserve("wrapped", u64::MAX, || u64::MAX, SHORT)
            .await;
        assert!(
            matches!(wrapped, Err(BudgetError::Full { .. })),
            "{wrapped:?}"
        );
    }
}
