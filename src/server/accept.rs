//! Accepting a connection under the connection cap, and backing off while
//! accepts fail, with one log line per burst of failures.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::{TcpListener, TcpStream};
use smol::lock::{Semaphore, SemaphoreGuardArc};

use crate::log::{self, Level};

/// The first pause after a failed accept. Failures such as EMFILE repeat
/// until something frees a descriptor, so retrying at once would spin.
const BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The maximum pause between accept attempts while they keep failing.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often a burst of failures that has not ended is reported, so a
/// listener stuck at the descriptor limit still shows up in the log.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The failed accepts since the last success, and the pause before the next try.
pub(super) struct Backoff {
    delay: Duration,
    /// Failures not yet reported.
    failures: u64,
    /// When the first unreported failure happened.
    since: Option<Instant>,
    last_error: Option<io::Error>,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff {
            delay: BACKOFF_MIN,
            failures: 0,
            since: None,
            last_error: None,
        }
    }

    /// Counts a failure, reports the burst so far if it has lasted
    /// [`REPORT_INTERVAL`], and returns the pause before the next try.
    fn fail(&mut self, error: io::Error, now: Instant) -> Duration {
        self.failures += 1;
        let since = *self.since.get_or_insert(now);
        self.last_error = Some(error);
        if now.duration_since(since) >= REPORT_INTERVAL {
            self.report(now);
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        delay
    }

    /// Ends a burst: reports its failures, if any, and resets the pause.
    fn succeed(&mut self, now: Instant) {
        self.report(now);
        self.delay = BACKOFF_MIN;
    }

    /// Logs the unreported failures as one line, and starts counting anew.
    pub(super) fn report(&mut self, now: Instant) {
        let (Some(since), Some(error)) = (self.since.take(), self.last_error.take()) else {
            return;
        };
        let failures = std::mem::take(&mut self.failures);
        let duration_ms = now.duration_since(since).as_millis();
        log::event(
            Level::Warn,
            "accept failed",
            &[
                ("error", &error),
                ("failures", &failures),
                ("duration_ms", &duration_ms),
            ],
        );
    }
}

/// Takes a slot under the connection cap, then accepts the next connection.
///
/// Waiting for the slot first leaves connections past the cap in the
/// kernel's listen backlog, where they cost no descriptor of ours.
pub(super) async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
    backoff: &mut Backoff,
) -> (TcpStream, SemaphoreGuardArc) {
    let permit = connections.acquire_arc().await;
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                backoff.succeed(Instant::now());
                return (stream, permit);
            }
            Err(error) => {
                let delay = backoff.fail(error, Instant::now());
                Timer::after(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(24)
    }

    #[test]
    fn pause_doubles_to_the_max_and_resets() {
        let mut backoff = Backoff::new();
        let now = Instant::now();
        let delays: Vec<Duration> = (0..9).map(|_| backoff.fail(emfile(), now)).collect();
        assert_eq!(delays[0], BACKOFF_MIN);
        assert_eq!(delays[1], BACKOFF_MIN * 2);
        assert_eq!(delays[8], BACKOFF_MAX);
        assert_eq!(backoff.failures, 9);

        backoff.succeed(now);
        assert_eq!(backoff.failures, 0);
        assert_eq!(backoff.fail(emfile(), now), BACKOFF_MIN);
    }

    #[test]
    fn long_burst_is_reported_and_counted_anew() {
        let mut backoff = Backoff::new();
        let start = Instant::now();
        backoff.fail(emfile(), start);
        backoff.fail(emfile(), start + REPORT_INTERVAL / 2);
        assert_eq!(backoff.failures, 2);

        backoff.fail(emfile(), start + REPORT_INTERVAL);
        assert_eq!(backoff.failures, 0, "the burst so far was reported");
        assert!(backoff.since.is_none());

        backoff.fail(emfile(), start + REPORT_INTERVAL * 2);
        assert_eq!(backoff.failures, 1);
    }
}
