//! The log lines on stderr: text for people or one JSON object per line.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: `fields` format the fields, in colour on a terminal.
    Text,
    /// For machines: one JSON object per line.
    Json,
}

/// The layer that writes each event to `writer` in `format`; `fields` are
/// how the text format writes fields (`DefaultFields` for tracing's own).
pub fn log_layer<S, W, N>(
    format: LogFormat,
    writer: W,
    fields: N,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    N: for<'w> FormatFields<'w> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => Box::new(
            logs.fmt_fields(fields)
                .with_ansi(std::io::stderr().is_terminal()),
        ),
        LogFormat::Json => Box::new(logs.json()),
    }
}
