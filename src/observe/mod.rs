//! Observability: the per-request hooks the server and API call, Prometheus
//! metrics, request ids and trace context, and the upstream health window.
//!
//! Log lines themselves are formatted in [`crate::log`].

mod histogram;
pub mod metrics;
pub mod trace;
mod window;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_io::Timer;

pub use self::metrics::{InFlight, OpenConnection, OutcomeLabel, record_shed};
pub use self::trace::{REQUEST_ID_HEADER, SpanId, TraceContext, new_request_id};
pub use self::window::Summary;
use self::window::Window;
use crate::fanout::Attempt;
use crate::log::{self, AccessRecord, Level, RequestIds};
use crate::server::{Request, Response};

/// The default interval between upstream summary lines.
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// How often the reporter wakes to write summaries of suppressed log lines.
const REPORTER_TICK: Duration = Duration::from_secs(1);

static WINDOW: Window = Window::new();

/// The start of the window's clock; seconds are counted from here.
static CLOCK_START: OnceLock<Instant> = OnceLock::new();

/// Returns the current second on the window's monotonic clock.
fn now_second() -> u64 {
    CLOCK_START.get_or_init(Instant::now).elapsed().as_secs()
}

/// Marks the start of handling `request`: counts it in flight until the guard drops.
pub fn request_started(request: &Request) -> InFlight {
    if log::enabled(Level::Debug) {
        log::event(
            Level::Debug,
            "request started",
            &[
                ("request_id", &request.request_id),
                ("trace_id", &request.trace.trace_id),
                ("method", &request.method),
                ("path", &request.path()),
            ],
        );
    }
    InFlight::enter()
}

/// Records a written response to `request`: metrics and the access line.
pub fn request_finished(request: &Request, response: &Response, duration: Duration) {
    metrics::record_request(Some(request.path()), response.status, duration);
    log::access(&AccessRecord {
        request: Some(RequestIds {
            method: &request.method,
            path: request.path(),
            trace_id: request.trace.trace_id,
            span_id: request.trace.span_id,
            parent_span_id: request.trace.parent_id,
        }),
        request_id: &request.request_id,
        status: response.status,
        duration,
        timeout_ms: response.timeout_ms,
        attempts: &response.attempts,
    });
}

/// Records a response to a request whose head did not parse.
pub fn unparsed_request_finished(request_id: &str, response: &Response) {
    metrics::record_request(None, response.status, Duration::ZERO);
    log::access(&AccessRecord {
        request: None,
        request_id,
        status: response.status,
        duration: Duration::ZERO,
        timeout_ms: None,
        attempts: &[],
    });
}

/// Formats the extra upstream request headers of one attempt: the request id and a
/// child `traceparent` with the attempt's own span id.
pub fn upstream_headers(request: &Request, span_id: SpanId) -> String {
    format!(
        "{REQUEST_ID_HEADER}: {}\r\ntraceparent: {}\r\n",
        request.request_id,
        request.trace.child(span_id)
    )
}

/// Counts a request's upstream attempts in the metrics and the health window.
pub fn record_attempts(attempts: &[Attempt]) {
    let labeled = attempts
        .iter()
        .map(|attempt| (OutcomeLabel::of(&attempt.outcome), attempt.elapsed));
    for (label, elapsed) in labeled.clone() {
        metrics::record_attempt(label, elapsed);
    }
    WINDOW.record(now_second(), labeled);
}

/// Builds the response to `GET /metrics`.
pub fn metrics_response() -> Response {
    Response::with_content_type(200, metrics::CONTENT_TYPE, metrics::render().into_bytes())
}

/// Builds the response to `GET /debug/upstream`: the last minute's upstream summary as JSON.
pub fn upstream_response() -> Response {
    let summary = WINDOW.summary(now_second());
    Response::json(200, summary.to_json().to_string().into_bytes())
}

/// Writes the upstream summary every `interval` while there is traffic, and
/// the summaries of suppressed log lines as their windows end. Runs forever.
pub async fn report_periodically(interval: Duration) {
    let mut last_report = Instant::now();
    let mut attempts_at_last_report = metrics::total_attempts();
    loop {
        Timer::after(REPORTER_TICK).await;
        log::flush_suppressed();
        if last_report.elapsed() < interval {
            continue;
        }
        last_report = Instant::now();
        let attempts = metrics::total_attempts();
        if attempts != attempts_at_last_report {
            attempts_at_last_report = attempts;
            log::upstream_summary(&WINDOW.summary(now_second()));
        }
    }
}
