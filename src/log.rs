//! Every log line fanout writes: lifecycle events, one access line per
//! request, and the periodic upstream summary.
//!
//! Lines go to stderr as JSON objects by default, or as logfmt text
//! (`ts=… level=… msg=… key=value`) when configured so. A writer thread
//! writes them whole, in batches (see `log/writer.rs`), so lines from
//! different threads never interleave and no executor thread waits for
//! stderr. All formatting lives here and in `log/line.rs`, so changing the
//! format touches only these files.

mod limiter;
mod line;
mod writer;

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use self::limiter::{Admission, Limiter, Suppressed};
use self::line::{Line, Millis, push_json_str};
use crate::observe::Summary;
use crate::observe::trace::{SpanId, TraceId};

pub use self::writer::{dropped as dropped_lines, flush};

/// Severity of a log line, from the most to the least severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// Parses a level name for `--log-level`: `Some(level)`, or `None` for `off`.
    pub fn parse_filter(text: &str) -> Result<Option<Level>, LogOptionError> {
        match text {
            "error" => Ok(Some(Level::Error)),
            "warn" => Ok(Some(Level::Warn)),
            "info" => Ok(Some(Level::Info)),
            "debug" => Ok(Some(Level::Debug)),
            "off" => Ok(None),
            _ => Err(LogOptionError),
        }
    }
}

/// The format of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json = 0,
    /// logfmt: `key=value` pairs, for people reading a terminal.
    Text = 1,
}

impl Format {
    /// Parses a format name for `--log-format`: `json` or `text`.
    pub fn parse(text: &str) -> Result<Format, LogOptionError> {
        match text {
            "json" => Ok(Format::Json),
            "text" => Ok(Format::Text),
            _ => Err(LogOptionError),
        }
    }
}

/// A log level or format name that is not one of the accepted names.
#[derive(Debug, PartialEq, Eq)]
pub struct LogOptionError;

/// The least severe level written, as a number; 0 writes nothing.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

static FORMAT: AtomicU8 = AtomicU8::new(Format::Json as u8);

static LIMITER: Limiter = Limiter::new();

/// Sets the format and the least severe level written; `None` turns logging off.
///
/// Call it once at start, before other threads log.
pub fn init(format: Format, max_level: Option<Level>) {
    FORMAT.store(format as u8, Ordering::Relaxed);
    MAX_LEVEL.store(max_level.map_or(0, |level| level as u8), Ordering::Relaxed);
}

/// Returns whether lines at `level` are written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

fn format() -> Format {
    match FORMAT.load(Ordering::Relaxed) {
        0 => Format::Json,
        _ => Format::Text,
    }
}

/// The access-log record of one upstream attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Outcome kind: `ok`, `timeout`, `cancelled` or a failure kind such as `http_status`.
    pub kind: &'static str,
    /// The upstream's HTTP status, when the attempt got that far.
    pub status: Option<u16>,
    pub elapsed: Duration,
    /// The span id sent upstream in this attempt's `traceparent`.
    pub span_id: SpanId,
    /// The failure reason, when the attempt failed.
    pub error: Option<String>,
}

/// The access-log record of one request.
pub struct AccessRecord<'a> {
    /// `None` when the request head did not parse.
    pub request: Option<RequestIds<'a>>,
    pub request_id: &'a str,
    pub status: u16,
    pub duration: Duration,
    /// The `timeout` query parameter, when the endpoint takes one and it is valid.
    pub timeout_ms: Option<u64>,
    pub attempts: &'a [AttemptRecord],
}

/// The parts of a parsed request that the access line shows.
pub struct RequestIds<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's span, from a valid incoming `traceparent`.
    pub parent_span_id: Option<SpanId>,
}

/// Writes an event line with `msg` and extra `fields`, written as strings.
///
/// Warning and error lines that repeat at a high rate are counted and
/// summarized instead of written each time.
pub fn event(level: Level, msg: &str, fields: &[(&str, &dyn Display)]) {
    if !enabled(level) {
        return;
    }
    if level <= Level::Warn {
        let (admission, summary) = LIMITER.admit(msg, Instant::now());
        if let Some(summary) = summary {
            write_suppressed(level, &summary);
        }
        if admission == Admission::Suppress {
            return;
        }
    }
    let mut line = Line::start(format(), level, msg);
    for (key, value) in fields {
        line.display(key, *value);
    }
    write_line(line.finish());
}

/// Writes one summary line for each rate-limited message whose window has ended.
pub fn flush_suppressed() {
    for summary in LIMITER.drain_ended(Instant::now()) {
        write_suppressed(Level::Warn, &summary);
    }
}

fn write_suppressed(level: Level, summary: &Suppressed) {
    let mut line = Line::start(format(), level, "repeated log lines suppressed");
    line.str("suppressed_msg", &summary.msg);
    line.number("count", summary.count);
    line.number("window_s", summary.window.as_secs());
    write_line(line.finish());
}

/// Writes the access line for one request, at info.
pub fn access(record: &AccessRecord<'_>) {
    if !enabled(Level::Info) {
        return;
    }
    let mut line = Line::start(format(), Level::Info, "request");
    line.str("request_id", record.request_id);
    let ids = record.request.as_ref();
    line.opt_display("trace_id", ids.map(|ids| &ids.trace_id as &dyn Display));
    line.opt_display("span_id", ids.map(|ids| &ids.span_id as &dyn Display));
    line.opt_display(
        "parent_span_id",
        ids.and_then(|ids| ids.parent_span_id.as_ref())
            .map(|id| id as &dyn Display),
    );
    line.opt_str("method", ids.map(|ids| ids.method));
    line.opt_str("path", ids.map(|ids| ids.path));
    line.opt_number("timeout_ms", record.timeout_ms);
    line.number("status", record.status);
    line.millis("duration_ms", record.duration);
    line.nested(
        "attempts",
        |json| push_attempts_json(json, record.attempts),
        |text| push_attempts_text(text, record.attempts),
    );
    write_line(line.finish());
}

/// Writes the attempts as a JSON array of objects with fixed members.
fn push_attempts_json(out: &mut String, attempts: &[AttemptRecord]) {
    out.push('[');
    for (index, attempt) in attempts.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"span_id\":\"{}\",\"kind\":\"{}\",\"status\":",
            attempt.span_id, attempt.kind
        );
        match attempt.status {
            Some(status) => {
                let _ = write!(out, "{status}");
            }
            None => out.push_str("null"),
        }
        let _ = write!(
            out,
            ",\"latency_ms\":{},\"error\":",
            Millis(attempt.elapsed)
        );
        match &attempt.error {
            Some(error) => push_json_str(out, error),
            None => out.push_str("null"),
        }
        out.push('}');
    }
    out.push(']');
}

/// Writes the attempts as `kind(status):12.345ms@span[error]`, comma-separated.
fn push_attempts_text(out: &mut String, attempts: &[AttemptRecord]) {
    for (index, attempt) in attempts.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(attempt.kind);
        if let Some(status) = attempt.status {
            let _ = write!(out, "({status})");
        }
        let _ = write!(out, ":{}ms@{}", Millis(attempt.elapsed), attempt.span_id);
        if let Some(error) = &attempt.error {
            let _ = write!(out, "[{error}]");
        }
    }
}

/// Writes the upstream summary of the last window, at info.
pub fn upstream_summary(summary: &Summary) {
    if !enabled(Level::Info) {
        return;
    }
    let mut line = Line::start(format(), Level::Info, "upstream summary");
    line.number("window_s", summary.window.as_secs());
    line.number("attempts", summary.attempts);
    line.opt_number("success_ratio", summary.success_ratio());
    line.nested(
        "outcomes",
        |json| {
            json.push('{');
            for (index, (label, count)) in summary.outcomes().enumerate() {
                if index > 0 {
                    json.push(',');
                }
                let _ = write!(json, "\"{label}\":{count}");
            }
            json.push('}');
        },
        |text| {
            for (index, (label, count)) in summary.outcomes().enumerate() {
                if index > 0 {
                    text.push(',');
                }
                let _ = write!(text, "{label}:{count}");
            }
        },
    );
    let [p50, p90, p99] = summary.latency_percentiles_ms();
    line.opt_number("latency_p50_ms", p50);
    line.opt_number("latency_p90_ms", p90);
    line.opt_number("latency_p99_ms", p99);
    write_line(line.finish());
}

fn write_line(line: String) {
    writer::write(line);
}

/// Formats the line that reports `count` lines dropped because stderr did
/// not keep up. The writer thread writes it directly, past the queue.
fn dropped_line(count: u64) -> String {
    let mut line = Line::start(
        format(),
        Level::Warn,
        "log lines dropped because stderr did not keep up",
    );
    line.number("count", count);
    line.finish()
}
