//! Per-peer call rates (`calls_per_second`, `burst`): a token bucket per peer,
//! shared by all its connections, taken from once per call at admission.
//!
//! A bucket holds at most `burst` calls and refills at `calls_per_second`; a
//! call that finds it empty is refused before any work, with the time until
//! the next call may start (gRPC's `grpc-retry-pushback-ms`). The rate is read
//! from the live config at each call, so a reload applies at the next one.
//! See docs/design.md for why a token bucket.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use tokio::time::Instant;

use crate::config::CallRate;

/// The buckets of every rate-limited peer that has called, by peer id.
#[derive(Debug, Default)]
pub(crate) struct CallRates {
    peers: Mutex<HashMap<String, Bucket>>,
}

/// Calls a peer may still start at once, as of `at`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl CallRates {
    /// Counts one call of `peer` at `now` against `rate`; if it is over the
    /// rate, how long until a call may start.
    pub fn take(&self, peer: &str, rate: CallRate, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(rate.burst);
        // Only arithmetic happens under the lock: a panic cannot leave a bucket
        // half-updated.
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = peers.entry(peer.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        // Capped at the burst in force, so a reload that lowers it applies at once.
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / rate.per_second;
        // A tiny rate can make the wait longer than a Duration holds.
        Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
    }
}

/// `grpc-retry-pushback-ms` for a wait: whole milliseconds, rounded up so a
/// client that waits exactly that long finds a call in the bucket.
pub(crate) fn pushback_ms(wait: Duration) -> u64 {
    u64::try_from(wait.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Counts a call refused for its peer's rate.
pub(crate) fn record_refusal(peer: &str) {
    static REFUSED: OnceLock<Counter<u64>> = OnceLock::new();
    REFUSED
        .get_or_init(|| {
            opentelemetry::global::meter("realize")
                .u64_counter("realize.rpc.rate_limited")
                .with_description("calls refused for their peer's calls_per_second, by peer")
                .build()
        })
        .add(1, &[KeyValue::new("peer", peer.to_owned())]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE: CallRate = CallRate {
        per_second: 5.0,
        burst: 5,
    };

    /// `taken` is a refusal with a wait of `ms`, give or take float rounding.
    fn check_wait(taken: Result<(), Duration>, ms: u64) {
        let wait = taken.expect_err("the call should be over the rate");
        let expected = Duration::from_millis(ms);
        assert!(
            wait.abs_diff(expected) < Duration::from_micros(1),
            "{wait:?} is not {expected:?}"
        );
    }

    #[test]
    fn a_burst_then_the_rate() {
        let rates = CallRates::default();
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(rates.take("p", FIVE, start), Ok(()));
        }
        check_wait(rates.take("p", FIVE, start), 200);
        // Other peers have buckets of their own.
        assert_eq!(rates.take("q", FIVE, start), Ok(()));
        let later = start + Duration::from_millis(100);
        check_wait(rates.take("p", FIVE, later), 100);
        let refilled = start + Duration::from_millis(200);
        assert_eq!(rates.take("p", FIVE, refilled), Ok(()));
        assert!(rates.take("p", FIVE, refilled).is_err());
        // Never more than the burst, however long the peer was quiet.
        let much_later = refilled + Duration::from_secs(3600);
        for _ in 0..5 {
            assert_eq!(rates.take("p", FIVE, much_later), Ok(()));
        }
        assert!(rates.take("p", FIVE, much_later).is_err());
    }

    #[test]
    fn a_lower_burst_applies_at_the_next_call() {
        let rates = CallRates::default();
        let now = Instant::now();
        assert_eq!(rates.take("p", FIVE, now), Ok(()));
        let one = CallRate {
            per_second: 5.0,
            burst: 1,
        };
        assert_eq!(rates.take("p", one, now), Ok(()));
        assert!(rates.take("p", one, now).is_err());
    }

    #[test]
    fn a_tiny_rate_waits_long_without_overflow() {
        let rates = CallRates::default();
        let slow = CallRate {
            per_second: 1e-300,
            burst: 1,
        };
        let now = Instant::now();
        assert_eq!(rates.take("p", slow, now), Ok(()));
        assert_eq!(rates.take("p", slow, now), Err(Duration::MAX));
        assert_eq!(pushback_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn pushback_rounds_up_to_whole_milliseconds() {
        assert_eq!(pushback_ms(Duration::from_micros(200_001)), 201);
        assert_eq!(pushback_ms(Duration::from_millis(200)), 200);
        assert_eq!(pushback_ms(Duration::ZERO), 1);
    }
}
