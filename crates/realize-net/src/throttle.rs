//! Send-rate limits, which live in realize-core (they need no network) and
//! are re-exported here, where the transport wraps its sockets with them.

pub use realize_core::{
    MAX_RATE, RateError, SendLimit, Throttle, Throttled, ThrottledService, check_rate, parse_rate,
};
