//! The log filter, which the config's `log_level` sets and a reload changes,
//! and the text format's escaping of what clients send ([`EscapedFields`]).

use std::fmt::{self, Write as _};

use realize_core::ErrorChain;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
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

/// The fields of the text log format, messages included, for events and
/// spans alike, with every character that could end, hide or reorder a line
/// escaped (`escape`), so that one event is always one line whatever a
/// client names its files.
///
/// It escapes at the layer, not at the event sites: an event added later
/// that logs a client's string with `%` is escaped too. Event sites therefore
/// print client strings with `%` (or as `&str`), not `?`, whose escapes would
/// show doubled. The JSON format escapes by itself and does not use this.
#[derive(Debug, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    /// Writes `name=` (or nothing for the message), then `value` escaped.
    fn field(&mut self, field: &Field, value: fmt::Arguments<'_>, quoted: bool) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(' ')?;
            }
            let name = field.name();
            if name != "message" {
                self.writer
                    .write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.writer.write_char('=')?;
            }
            let mut out = Escaping {
                inner: &mut self.writer,
                quoted,
            };
            if quoted {
                out.inner.write_char('"')?;
                out.write_fmt(value)?;
                out.inner.write_char('"')
            } else {
                out.write_fmt(value)
            }
        })();
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let quoted = field.name() != "message";
        self.field(field, format_args!("{value}"), quoted);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, format_args!("{}", ErrorChain(value)), false);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, format_args!("{value:?}"), false);
    }
}

/// Writes through to `inner`, escaping as it goes ([`escape`]).
struct Escaping<'a, W: fmt::Write> {
    inner: &'a mut W,
    /// Inside quotes, which are escaped too.
    quoted: bool,
}

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Runs of plain characters go through whole.
        let mut plain = 0;
        for (at, c) in s.char_indices() {
            if let Some(escaped) = escape(c, self.quoted) {
                self.inner.write_str(&s[plain..at])?;
                escaped.write(self.inner)?;
                plain = at + c.len_utf8();
            }
        }
        self.inner.write_str(&s[plain..])
    }
}

/// How a character is written in a text log line, if not as itself.
enum Escaped {
    Short(&'static str),
    Code(char),
}

impl Escaped {
    fn write(&self, out: &mut impl fmt::Write) -> fmt::Result {
        match self {
            Escaped::Short(text) => out.write_str(text),
            Escaped::Code(c) => write!(out, "\\u{{{:x}}}", *c as u32),
        }
    }
}

/// The escape of `c` in a text log line: line breaks and every other control
/// character (a forged line, a rewound or erased terminal line), the
/// characters that reorder or hide text (bidirectional overrides such as
/// U+202E, zero-width characters, line and paragraph separators), and the
/// backslash itself, so that an escape in a log line is never a client's
/// literal text. `"` too, inside quotes.
fn escape(c: char, quoted: bool) -> Option<Escaped> {
    match c {
        '\n' => Some(Escaped::Short("\\n")),
        '\r' => Some(Escaped::Short("\\r")),
        '\t' => Some(Escaped::Short("\\t")),
        '\\' => Some(Escaped::Short("\\\\")),
        '"' if quoted => Some(Escaped::Short("\\\"")),
        '\u{061C}'
        | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}' => Some(Escaped::Code(c)),
        c if c.is_control() => Some(Escaped::Code(c)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// What the text layer prints for the events `log` emits.
    fn text_log(log: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(EscapedFields)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        let bytes = buffer.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes).expect("the log is UTF-8")
    }

    const FORGED: &str = "x.txt size=1 sha256=00\n2026-11-30T10:00:00Z  INFO rpc{peer=admin}: \
        realize_core::store: deleted dir=rw path=payroll.xlsx\r\tend\u{202E}txt.exe\u{1b}[2K\\n";

    #[test]
    fn client_strings_cannot_forge_or_disguise_a_line() {
        let log = text_log(|| {
            let span = tracing::info_span!("rpc", method = "Delete", peer = %FORGED);
            let _entered = span.enter();
            tracing::info!(dir = %"d", path = %FORGED, quoted = FORGED, debug = ?FORGED, "deleted {FORGED}");
        });
        assert_eq!(log.lines().count(), 1, "{log}");
        let escaped = "x.txt size=1 sha256=00\\n2026-11-30T10:00:00Z  INFO rpc{peer=admin}: \
            realize_core::store: deleted dir=rw path=payroll.xlsx\\r\\tend\\u{202e}txt.exe\\u{1b}[2K\\\\n";
        assert!(
            log.contains(&format!("rpc{{method=\"Delete\" peer={escaped}}}")),
            "{log}"
        );
        assert!(
            log.contains(&format!(": deleted {escaped} dir=d path={escaped} ")),
            "{log}"
        );
        assert!(log.contains(&format!(" quoted=\"{escaped}\" ")), "{log}");
        assert!(!log.contains('\r') && !log.contains('\t') && !log.contains('\u{202E}'));
        assert!(!log.contains('\u{1b}'));
    }

    #[test]
    fn plain_fields_look_as_the_default_format_prints_them() {
        let log = text_log(|| {
            tracing::info!(dir = %"photos", path = %"2024/a b.jpg", size = 3, method = "Finish", r#type = ?Some("x"), "finished");
        });
        assert!(
            log.ends_with(
                "finished dir=photos path=2024/a b.jpg size=3 method=\"Finish\" type=Some(\"x\")\n"
            ),
            "{log}"
        );
    }
}
