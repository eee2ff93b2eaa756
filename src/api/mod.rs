//! The API: routing, the `/api/all` and `/api/first` endpoints, and the mapping of fan-out results to responses.

mod losers;
mod query;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use smol::Executor;

use self::losers::Losers;
pub use self::query::{QueryError, QueryErrorMessage, parse_timeout};
use crate::fanout::{self, Attempt, Failure, Outcome, Policy, Report};
use crate::log::AttemptRecord;
use crate::observe::{self, SpanId};
use crate::server::{Handler, Request, Response, Shutdown};
use crate::upstream::Client;

/// The routes and the state the endpoints need to respond.
pub struct Api {
    client: Client,
    fanout: usize,
    max_timeout_ms: u64,
    /// The drain signal: once it drains, `/readyz` returns 503.
    shutdown: Shutdown,
    /// Runs the tasks that close the connections of attempts left running.
    executor: Arc<Executor<'static>>,
    /// Runs the losing attempts of `/api/first` to their end, when set;
    /// otherwise they are dropped.
    losers: Option<Losers>,
}

impl Api {
    /// Creates the API with `fanout` upstream requests per call and timeouts
    /// up to `max_timeout_ms`, spawning its background work on `executor`.
    pub fn new(
        client: Client,
        fanout: usize,
        max_timeout_ms: u64,
        executor: Arc<Executor<'static>>,
    ) -> Api {
        Api {
            client,
            fanout,
            max_timeout_ms,
            shutdown: Shutdown::new(),
            executor,
            losers: None,
        }
    }

    /// Makes `/readyz` return 503 once `shutdown` begins draining.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Api {
        self.shutdown = shutdown;
        self
    }

    /// Lets attempts that lose the race run in the background until the
    /// request's deadline, instead of dropping them, so their connections
    /// can return to the pool. At most `max_running` run at once, and any
    /// beyond are dropped.
    pub fn finish_losers(mut self, max_running: usize) -> Api {
        self.losers = Some(Losers::new(self.executor.clone(), max_running));
        self
    }

    /// Drops `attempt` in a task of its own, so the response need not wait for it.
    ///
    /// Dropping an attempt closes its socket, a system call that also runs
    /// the TCP teardown on loopback. When many deadlines expire together,
    /// closing inline would make each response wait for the closes of the
    /// responses before it. A spawned task runs after the tasks already
    /// queued, so the responses go out first.
    ///
    /// NOTE: the request's in-flight permit is released once its response
    /// is ready, usually before this task runs, so for that moment the
    /// sockets in use can exceed what the in-flight cap budgets for.
    fn close_later<F>(&self, attempt: F)
    where
        F: Send + 'static,
    {
        self.executor.spawn(async move { drop(attempt) }).detach();
    }

    async fn endpoint(&self, policy: Policy, request: &Request, received_at: Instant) -> Response {
        let timeout = match parse_timeout(request.query(), self.max_timeout_ms) {
            Ok(timeout) => timeout,
            Err(error) => {
                let message = QueryErrorMessage {
                    error: &error,
                    max_timeout_ms: self.max_timeout_ms,
                };
                return Response::error(400, &message.to_string());
            }
        };
        // The deadline counts from the moment the request head was read, so
        // time spent in the server before this point is part of the budget.
        let deadline = received_at + timeout;
        // Opening upstream connections is the costliest step of a request.
        // Responses whose deadline has passed may be queued on the executor
        // behind this task, so yielding once lets them go out first. That
        // matters when many deadlines fall due together.
        future::yield_now().await;
        // Each attempt is its own span, so the upstream's logs can tell them apart.
        let spans: Vec<SpanId> = (0..self.fanout).map(|_| SpanId::generate()).collect();
        let attempts = spans
            .iter()
            .map(|span| {
                let client = self.client.clone();
                let headers = observe::upstream_headers(request, *span);
                async move { client.fetch(&headers).await }
            })
            .collect();
        let report = fanout::run_with(attempts, policy, deadline, |attempt, outcome| {
            let left = match (outcome, &self.losers) {
                (Outcome::Cancelled, Some(losers)) => losers.finish(attempt, deadline),
                _ => Some(attempt),
            };
            if let Some(attempt) = left {
                self.close_later(attempt);
            }
        })
        .await;
        observe::record_attempts(&report.attempts);
        let mut response = respond(policy, timeout, report, &spans);
        response.timeout_ms = Some(timeout.as_millis() as u64);
        response
    }
}

impl Handler for Api {
    async fn handle(&self, request: &Request, received_at: Instant) -> Response {
        let route = match request.path() {
            "/api/all" => Route::Endpoint(Policy::All),
            "/api/first" => Route::Endpoint(Policy::First),
            "/healthz" => Route::Live,
            "/readyz" => Route::Ready,
            "/metrics" => Route::Metrics,
            "/debug/upstream" => Route::DebugUpstream,
            path => {
                let message = format!(
                    "no route for path {path:?}: the endpoints are /api/all and /api/first"
                );
                return Response::error(404, &message);
            }
        };
        if request.method != "GET" {
            let message = format!(
                "method {:?} not allowed on {}: use GET",
                request.method,
                request.path()
            );
            return Response::error(405, &message).with_header("Allow", "GET");
        }
        match route {
            Route::Endpoint(policy) => self.endpoint(policy, request, received_at).await,
            Route::Ready if self.shutdown.is_draining() => Response::error(
                503,
                "draining: fanout is shutting down and takes no new connections",
            ),
            // The process responds, so it is alive, and it is not draining, so it is ready.
            Route::Live | Route::Ready => Response::json(200, b"{\"status\":\"ok\"}".to_vec()),
            Route::Metrics => observe::metrics_response(),
            Route::DebugUpstream => observe::upstream_response(),
        }
    }

    /// Health checks and monitoring stay out of the cap, so an operator can
    /// still see the gateway while it sheds load.
    fn counts_in_flight(&self, request: &Request) -> bool {
        !matches!(
            request.path(),
            "/healthz" | "/readyz" | "/metrics" | "/debug/upstream"
        )
    }
}

enum Route {
    Endpoint(Policy),
    /// `/healthz`: the process is alive.
    Live,
    /// `/readyz`: ready to take traffic.
    Ready,
    /// Prometheus metrics.
    Metrics,
    /// The last minute of upstream attempts, summarized.
    DebugUpstream,
}

/// Maps a fan-out report to the endpoint's response.
///
/// `spans` contains each attempt's span id, in the same order as the attempts.
fn respond(policy: Policy, timeout: Duration, report: Report, spans: &[SpanId]) -> Response {
    let attempts: Vec<AttemptRecord> = report
        .attempts
        .iter()
        .zip(spans)
        .map(|(attempt, span)| record(attempt, *span))
        .collect();
    let mut response = match (policy, report.result) {
        (Policy::First, Ok(payloads)) => Response::json(200, payloads[0].as_bytes().to_vec()),
        (Policy::All, Ok(payloads)) => {
            let mut body = Vec::with_capacity(
                payloads
                    .iter()
                    .map(|p| p.as_bytes().len() + 1)
                    .sum::<usize>()
                    + 2,
            );
            body.push(b'[');
            for (index, payload) in payloads.iter().enumerate() {
                if index > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(payload.as_bytes());
            }
            body.push(b']');
            Response::json(200, body)
        }
        (policy, Err(failure)) => Response::error(
            500,
            &failure_message(policy, timeout, &failure, &report.attempts),
        ),
    };
    response.attempts = attempts;
    response
}

fn record(attempt: &Attempt, span_id: SpanId) -> AttemptRecord {
    // A payload is only accepted from a 200, so a success implies that status.
    let (status, error) = match &attempt.outcome {
        Outcome::Ok => (Some(200), None),
        Outcome::Failed(error) => (error.status(), Some(error.to_string())),
        Outcome::TimedOut | Outcome::Cancelled => (None, None),
    };
    AttemptRecord {
        kind: attempt.outcome.kind(),
        status,
        elapsed: attempt.elapsed,
        span_id,
        error,
    }
}

/// Explains a 500: what ran out or failed, and what each attempt did.
fn failure_message(
    policy: Policy,
    timeout: Duration,
    failure: &Failure,
    attempts: &[Attempt],
) -> String {
    let total = attempts.len();
    let mut message = match failure {
        Failure::DeadlineExpired => {
            let finished = attempts
                .iter()
                .filter(|a| !matches!(a.outcome, Outcome::TimedOut))
                .count();
            match policy {
                Policy::All => format!(
                    "timeout of {} ms reached with {finished} of {total} upstream requests finished",
                    timeout.as_millis()
                ),
                Policy::First => format!(
                    "timeout of {} ms reached before any of {total} upstream requests succeeded",
                    timeout.as_millis()
                ),
            }
        }
        Failure::AllFailed => format!("all {total} upstream requests failed"),
    };
    message.push_str(": ");
    for (index, attempt) in attempts.iter().enumerate() {
        if index > 0 {
            message.push_str("; ");
        }
        match &attempt.outcome {
            Outcome::Failed(error) => {
                let _ = write!(message, "{} ({error})", error.kind());
            }
            outcome => message.push_str(outcome.kind()),
        }
    }
    message
}
