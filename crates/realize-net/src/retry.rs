//! When to try again after a failure, and how long to wait first.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use realize_core::{ErrorCode, ServiceError};

use crate::connection::ConnectError;

/// The trailer in which a daemon that refuses a call for its rate says, in
/// milliseconds, when to call again (gRPC's standard name, gRFC A6).
pub const PUSHBACK: &str = "grpc-retry-pushback-ms";

const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Exponential backoff: about 1 s, 2 s, 4 s, ... up to 1 min, each delay
/// jittered by ±20% so clients cut off together do not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_DELAY }
    }
}

impl Backoff {
    /// The default backoff.
    pub fn new() -> Self {
        Self::default()
    }

    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        // RandomState is seeded randomly per instance: enough for jitter,
        // without a random number crate.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let factor = 0.8 + 0.4 * (random as f64 / u64::MAX as f64);
        base.mul_f64(factor)
    }

    /// Back to the first delay, after a try that made progress.
    pub fn reset(&mut self) {
        self.next = FIRST_DELAY;
    }
}

/// Whether a failed call may succeed if tried again: the connection failed
/// or the daemon is unavailable (restarting, shutting down). Local errors,
/// refusals and invalid requests will fail the same way again.
pub fn is_retryable(error: &ServiceError) -> bool {
    match error {
        ServiceError::Transport { .. } => true,
        ServiceError::Remote { code, .. } => {
            matches!(code, ErrorCode::Unavailable | ErrorCode::Aborted)
        }
        _ => false,
    }
}

/// How long a daemon asked us to wait before calling again: a RESOURCE_EXHAUSTED
/// status with a [`PUSHBACK`] of whole milliseconds. A pushback that is not
/// such a number means "do not retry", as gRFC A6 says.
pub fn pushback(status: &tonic::Status) -> Option<Duration> {
    if status.code() != tonic::Code::ResourceExhausted {
        return None;
    }
    let ms = status
        .metadata()
        .get(PUSHBACK)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
}

impl ConnectError {
    /// A daemon that cannot be reached may come back; one that refuses our
    /// key, or that we do not trust, will not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectError::Connect { .. } | ConnectError::TimedOut { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_a_minute_with_jitter() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..9).map(|_| backoff.next_delay()).collect();
        for (delay, base) in delays.iter().zip([1, 2, 4, 8, 16, 32, 60, 60, 60]) {
            let base = Duration::from_secs(base);
            assert!(
                *delay >= base.mul_f64(0.8) && *delay <= base.mul_f64(1.2),
                "{delay:?} is not within 20% of {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn pushback_is_read_from_a_resource_exhausted_status() {
        let with = |code, value: &str| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert(PUSHBACK, value.parse().unwrap());
            tonic::Status::with_metadata(code, "", metadata)
        };
        let exhausted = tonic::Code::ResourceExhausted;
        assert_eq!(
            pushback(&with(exhausted, "250")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(pushback(&with(exhausted, "-1")), None);
        assert_eq!(pushback(&with(exhausted, "1.5")), None);
        assert_eq!(pushback(&with(tonic::Code::Unavailable, "250")), None);
        assert_eq!(pushback(&tonic::Status::resource_exhausted("full")), None);
    }

    #[test]
    fn only_network_failures_are_retried() {
        let remote = |code| ServiceError::Remote {
            code,
            message: String::new(),
        };
        assert!(is_retryable(&remote(ErrorCode::Unavailable)));
        assert!(is_retryable(&ServiceError::Transport {
            context: "connection lost".into(),
            source: "reset".into(),
        }));
        for code in [
            ErrorCode::PermissionDenied,
            ErrorCode::InvalidArgument,
            ErrorCode::NotFound,
            ErrorCode::Unauthenticated,
            ErrorCode::DeadlineExceeded,
            ErrorCode::Internal,
        ] {
            assert!(!is_retryable(&remote(code)), "{code:?}");
        }
        assert!(!is_retryable(&ServiceError::Protocol("bad".into())));
    }
}
