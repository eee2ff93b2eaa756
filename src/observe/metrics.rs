//! Prometheus metrics: counters, gauges and fixed-bucket histograms kept in
//! atomics, and their rendering in the text exposition format 0.0.4.
//!
//! Every update is a relaxed atomic add, so recording never takes a lock. A
//! scrape reads each atomic once; it may see one request counted in a
//! counter and not yet in a histogram, which Prometheus tolerates.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use super::histogram::Histogram;
use crate::fanout::Outcome;
use crate::upstream::{AttemptError, PoolStats};

/// The `Content-Type` of the exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Values of the `endpoint` label. Any other path, and a request that did
/// not parse, counts as `other`, which keeps the number of series fixed
/// whatever paths clients send.
const ENDPOINTS: [&str; 7] = [
    "/api/all",
    "/api/first",
    "/healthz",
    "/readyz",
    "/metrics",
    "/debug/upstream",
    "other",
];

fn endpoint_index(path: Option<&str>) -> usize {
    let other = ENDPOINTS.len() - 1;
    path.and_then(|path| ENDPOINTS[..other].iter().position(|e| *e == path))
        .unwrap_or(other)
}

/// The lowest status code counted; the slots cover 100 to 599.
const FIRST_STATUS: u16 = 100;
const STATUS_SLOTS: usize = 500;

/// Upper bounds of the request duration buckets, in microseconds: fine below
/// 1 s, where the upstream's 100-600 ms responses put most requests, then
/// coarse up to the default maximum timeout of 60 s.
const REQUEST_BOUNDS_US: [u64; 19] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 200_000, 300_000, 400_000, 500_000,
    600_000, 750_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Upper bounds of the upstream attempt latency buckets, in microseconds:
/// 50 ms steps across the upstream's usual 100-600 ms, so p50 to p99 land in
/// distinct buckets, with a few below for fast failures and above for
/// stragglers.
const UPSTREAM_BOUNDS_US: [u64; 22] = [
    5_000, 10_000, 25_000, 50_000, 75_000, 100_000, 150_000, 200_000, 250_000, 300_000, 350_000,
    400_000, 450_000, 500_000, 550_000, 600_000, 700_000, 800_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

static REQUESTS: [[AtomicU64; STATUS_SLOTS]; ENDPOINTS.len()] =
    [const { [const { AtomicU64::new(0) }; STATUS_SLOTS] }; ENDPOINTS.len()];

static REQUEST_DURATION: [Histogram<19>; ENDPOINTS.len()] =
    [const { Histogram::new(REQUEST_BOUNDS_US) }; ENDPOINTS.len()];

static ATTEMPTS: [AtomicU64; OutcomeLabel::ALL.len()] =
    [const { AtomicU64::new(0) }; OutcomeLabel::ALL.len()];

static ATTEMPT_DURATION: Histogram<22> = Histogram::new(UPSTREAM_BOUNDS_US);

static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
static OPEN_CONNECTIONS: AtomicI64 = AtomicI64::new(0);
static SHED: AtomicU64 = AtomicU64::new(0);

/// The outcome of one upstream attempt as the `outcome` label shows it.
///
/// The logs keep the finer kind of [`AttemptError::kind`]; the label folds
/// those into fewer values so a dashboard has a fixed, short legend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeLabel {
    Ok,
    /// A non-200 status, redirects included.
    HttpStatus,
    /// A 200 whose body is not a valid payload, or a response that broke HTTP framing.
    InvalidPayload,
    TooLarge,
    /// Name resolution failed, or the connection was refused or failed.
    ConnectError,
    TlsError,
    /// A reset, a read or write error, or a connection closed mid-response.
    IoError,
    Timeout,
    Cancelled,
}

impl OutcomeLabel {
    pub const ALL: [OutcomeLabel; 9] = [
        OutcomeLabel::Ok,
        OutcomeLabel::HttpStatus,
        OutcomeLabel::InvalidPayload,
        OutcomeLabel::TooLarge,
        OutcomeLabel::ConnectError,
        OutcomeLabel::TlsError,
        OutcomeLabel::IoError,
        OutcomeLabel::Timeout,
        OutcomeLabel::Cancelled,
    ];

    pub fn of(outcome: &Outcome) -> OutcomeLabel {
        match outcome {
            Outcome::Ok => OutcomeLabel::Ok,
            Outcome::TimedOut => OutcomeLabel::Timeout,
            Outcome::Cancelled => OutcomeLabel::Cancelled,
            Outcome::Failed(error) => match error {
                AttemptError::Resolve(_) | AttemptError::Refused | AttemptError::Connect(_) => {
                    OutcomeLabel::ConnectError
                }
                AttemptError::Tls(_) => OutcomeLabel::TlsError,
                AttemptError::Reset | AttemptError::Io(_) | AttemptError::Truncated(_) => {
                    OutcomeLabel::IoError
                }
                AttemptError::MalformedHead(_)
                | AttemptError::Malformed(_)
                | AttemptError::Chunked(_)
                | AttemptError::InvalidPayload(_) => OutcomeLabel::InvalidPayload,
                AttemptError::Redirect { .. } | AttemptError::Status(_) => OutcomeLabel::HttpStatus,
                AttemptError::TooLarge { .. } => OutcomeLabel::TooLarge,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeLabel::Ok => "ok",
            OutcomeLabel::HttpStatus => "http_status",
            OutcomeLabel::InvalidPayload => "invalid_payload",
            OutcomeLabel::TooLarge => "too_large",
            OutcomeLabel::ConnectError => "connect_error",
            OutcomeLabel::TlsError => "tls_error",
            OutcomeLabel::IoError => "io_error",
            OutcomeLabel::Timeout => "timeout",
            OutcomeLabel::Cancelled => "cancelled",
        }
    }

    /// Returns whether the attempt ran to a response or an error. A timed-out or
    /// cancelled attempt's duration says when fanout stopped waiting, not
    /// how fast the upstream is, so latency statistics leave it out.
    pub fn completed(self) -> bool {
        !matches!(self, OutcomeLabel::Timeout | OutcomeLabel::Cancelled)
    }
}

/// Counts one request whose response was written, on the endpoint of `path` (`None` when the head did not parse).
pub fn record_request(path: Option<&str>, status: u16, duration: Duration) {
    let endpoint = endpoint_index(path);
    let slot = usize::from(status.saturating_sub(FIRST_STATUS)).min(STATUS_SLOTS - 1);
    REQUESTS[endpoint][slot].fetch_add(1, Ordering::Relaxed);
    REQUEST_DURATION[endpoint].observe(duration);
}

/// Counts one upstream attempt, and its latency when it completed.
pub fn record_attempt(label: OutcomeLabel, elapsed: Duration) {
    ATTEMPTS[label as usize].fetch_add(1, Ordering::Relaxed);
    if label.completed() {
        ATTEMPT_DURATION.observe(elapsed);
    }
}

/// Upstream attempts counted since the process started.
pub fn total_attempts() -> u64 {
    ATTEMPTS
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .sum()
}

/// Counts one request turned away because the server is at capacity.
pub fn record_shed() {
    SHED.fetch_add(1, Ordering::Relaxed);
}

/// Counts a request as in flight until dropped.
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a client connection as open until dropped.
pub struct OpenConnection(());

impl OpenConnection {
    pub fn open() -> OpenConnection {
        OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes the upstream connection pool's counters and its idle gauge.
fn render_pool(out: &mut String, stats: &PoolStats) {
    let counters = [
        (
            "fanout_upstream_connections_opened_total",
            "New upstream connections established: TCP, and the TLS handshake for https.",
            stats.opened,
        ),
        (
            "fanout_upstream_connection_reuses_total",
            "Upstream requests sent on an idle connection taken from the pool.",
            stats.reused,
        ),
        (
            "fanout_upstream_connection_retries_total",
            "Upstream requests sent again on a new connection because a reused one failed before any response byte.",
            stats.retried,
        ),
    ];
    for (name, help, value) in counters {
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }

    let name = "fanout_upstream_idle_connections_closed_total";
    header(
        out,
        name,
        "counter",
        "Idle upstream connections closed, by reason: stale (found closed, reset or sending stray bytes when taken), expired (idle timeout), evicted (pool full).",
    );
    for (reason, value) in [
        ("stale", stats.closed_stale),
        ("expired", stats.closed_expired),
        ("evicted", stats.closed_evicted),
    ] {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {value}");
    }

    let name = "fanout_upstream_idle_connections";
    header(
        out,
        name,
        "gauge",
        "Idle upstream connections kept for reuse.",
    );
    let _ = writeln!(out, "{name} {}", stats.idle);
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every metric in the Prometheus text exposition format 0.0.4.
pub fn render() -> String {
    let mut out = String::with_capacity(16 * 1024);

    let name = "fanout_http_requests_total";
    header(
        &mut out,
        name,
        "counter",
        "HTTP requests answered, by endpoint and status.",
    );
    for (endpoint, slots) in ENDPOINTS.iter().zip(&REQUESTS) {
        for (slot, count) in slots.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count > 0 {
                let status = FIRST_STATUS as usize + slot;
                let _ = writeln!(
                    out,
                    "{name}{{endpoint=\"{endpoint}\",status=\"{status}\"}} {count}"
                );
            }
        }
    }

    let name = "fanout_http_request_duration_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Time from reading a request head to writing its response, by endpoint.",
    );
    for (endpoint, histogram) in ENDPOINTS.iter().zip(&REQUEST_DURATION) {
        histogram.render(&mut out, name, &format!("endpoint=\"{endpoint}\""));
    }

    let name = "fanout_upstream_attempts_total";
    header(&mut out, name, "counter", "Upstream attempts, by outcome.");
    for label in OutcomeLabel::ALL {
        let count = ATTEMPTS[label as usize].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{outcome=\"{}\"}} {count}", label.as_str());
    }

    let name = "fanout_upstream_attempt_duration_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Latency of upstream attempts that completed, timed-out and cancelled ones excluded.",
    );
    ATTEMPT_DURATION.render(&mut out, name, "");

    render_pool(&mut out, &crate::upstream::pool_stats());

    let gauges = [
        (
            "fanout_http_requests_in_flight",
            "Requests whose head was read and whose response is not yet written.",
            &IN_FLIGHT,
        ),
        (
            "fanout_open_connections",
            "Client connections currently open.",
            &OPEN_CONNECTIONS,
        ),
    ];
    for (name, help, value) in gauges {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }

    let name = "fanout_requests_shed_total";
    header(
        &mut out,
        name,
        "counter",
        "Requests turned away because the server was at capacity.",
    );
    let _ = writeln!(out, "{name} {}", SHED.load(Ordering::Relaxed));

    let name = "fanout_log_lines_dropped_total";
    header(
        &mut out,
        name,
        "counter",
        "Log lines dropped because stderr did not take them as fast as they came.",
    );
    let _ = writeln!(out, "{name} {}", crate::log::dropped_lines());

    let name = "fanout_build_info";
    header(
        &mut out,
        name,
        "gauge",
        "Always 1; the labels describe the build.",
    );
    let _ = writeln!(out, "{name}{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_share_one_endpoint_label() {
        assert_eq!(ENDPOINTS[endpoint_index(Some("/api/all"))], "/api/all");
        assert_eq!(ENDPOINTS[endpoint_index(Some("/nope"))], "other");
        assert_eq!(ENDPOINTS[endpoint_index(None)], "other");
    }

    #[test]
    fn outcome_labels_fold_attempt_kinds() {
        let failed = |error| OutcomeLabel::of(&Outcome::Failed(error)).as_str();
        assert_eq!(failed(AttemptError::Refused), "connect_error");
        assert_eq!(failed(AttemptError::Reset), "io_error");
        assert_eq!(failed(AttemptError::Status(503)), "http_status");
        assert_eq!(failed(AttemptError::TooLarge { limit: 1 }), "too_large");
        assert_eq!(failed(AttemptError::Malformed("x")), "invalid_payload");
        assert_eq!(OutcomeLabel::of(&Outcome::TimedOut).as_str(), "timeout");
        assert!(!OutcomeLabel::Cancelled.completed());
        assert!(OutcomeLabel::HttpStatus.completed());
    }

    #[test]
    fn render_parses_as_prometheus_text() {
        record_shed();
        let text = render();
        let lines = text.lines().map(|line| Ok(line.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
        let shed = scrape
            .samples
            .iter()
            .find(|sample| sample.metric == "fanout_requests_shed_total")
            .expect("the shed counter");
        match shed.value {
            prometheus_parse::Value::Counter(value) => assert!(value >= 1.0),
            ref other => panic!("shed is not a counter: {other:?}"),
        }
    }
}
