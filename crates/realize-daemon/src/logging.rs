//! The log filter, which the config's `log_level` sets and a reload changes.

use tracing_subscriber::filter::ParseError;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The handle main.rs gets from installing a reloadable [`EnvFilter`] directly on the
/// [`Registry`], with the filter to use when the config sets none.
#[derive(Debug)]
pub struct LogFilter {
    handle: reload::Handle<EnvFilter, Registry>,
    default: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogFilterError {
    #[error("invalid log filter {filter:?}")]
    Parse {
        filter: String,
        #[source]
        source: ParseError,
    },
    #[error("cannot change the log filter")]
    Reload(#[source] reload::Error),
}

impl LogFilter {
    /// `default` is what `-v` or `RUST_LOG` asked for.
    pub fn new(handle: reload::Handle<EnvFilter, Registry>, default: String) -> Self {
        LogFilter { handle, default }
    }

    /// Parses the filter for a config's `log_level`, without applying it.
    pub fn parse(&self, log_level: Option<&str>) -> Result<EnvFilter, LogFilterError> {
        let filter = log_level.unwrap_or(&self.default);
        EnvFilter::try_new(filter).map_err(|source| LogFilterError::Parse {
            filter: filter.to_string(),
            source,
        })
    }

    pub fn apply(&self, filter: EnvFilter) -> Result<(), LogFilterError> {
        self.handle.reload(filter).map_err(LogFilterError::Reload)
    }
}
