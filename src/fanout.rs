//! Racing N upstream attempts under one deadline, with the `all` and `first` policies.
//!
//! Every attempt is a future owned by the race. When the deadline passes or
//! the policy decides, the attempts still running go to the caller, which
//! may drop them there and then (closing their sockets), drop them after it
//! has sent its response, or let them finish elsewhere. The race itself spawns
//! nothing.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::future;

use crate::upstream::{AttemptError, Payload};

/// The rule by which an endpoint combines attempt results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Wait for every attempt; succeed with all successful payloads.
    All,
    /// Succeed with the first successful payload.
    First,
}

/// The treatment of attempts still running once `/api/first` has its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Losers {
    /// Drop them at once, which closes their connections.
    Cancel,
    /// Let them run on in the background until the request's deadline, so
    /// a connection whose response completes returns to the pool.
    Finish,
}

impl Losers {
    /// Returns the `--losers` value that selects this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Losers::Cancel => "cancel",
            Losers::Finish => "finish",
        }
    }
}

/// The outcome of one attempt.
#[derive(Debug)]
pub enum Outcome {
    Ok,
    Failed(AttemptError),
    /// Still running when the deadline passed.
    TimedOut,
    /// Still running when the policy had its result.
    Cancelled,
}

impl Outcome {
    /// Returns a short, stable name, in the same vocabulary as [`AttemptError::kind`].
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(error) => error.kind(),
            Outcome::TimedOut => "timeout",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One attempt's outcome and how long it ran.
#[derive(Debug)]
pub struct Attempt {
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// The reason a fan-out produced no payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The deadline passed first.
    DeadlineExpired,
    /// Every attempt finished and none succeeded.
    AllFailed,
}

/// The result of one fan-out and the record of every attempt, in start order.
#[derive(Debug)]
pub struct Report {
    pub result: Result<Vec<Payload>, Failure>,
    pub attempts: Vec<Attempt>,
}

/// Runs `attempts` concurrently until `policy` is satisfied or `deadline`
/// passes, and drops the attempts still running.
///
/// `All` answers once every attempt has finished, with the successful
/// payloads in completion order, and fails if any attempt is still running at
/// the deadline. `First` answers with the first success, skipping failures,
/// and fails at once when every attempt has failed.
pub async fn run<F>(attempts: Vec<F>, policy: Policy, deadline: Instant) -> Report
where
    F: Future<Output = Result<Payload, AttemptError>>,
{
    run_with(attempts, policy, deadline, |attempt, _| drop(attempt)).await
}

/// Runs the race like [`run`], but hands each attempt still running when it
/// ends to `leftover`, with its outcome ([`Outcome::TimedOut`] or
/// [`Outcome::Cancelled`]), instead of dropping it.
///
/// `leftover` decides when the attempt is dropped, and so when its
/// connection closes. A caller can respond first and close afterwards.
pub async fn run_with<F>(
    attempts: Vec<F>,
    policy: Policy,
    deadline: Instant,
    mut leftover: impl FnMut(Pin<Box<F>>, &Outcome),
) -> Report
where
    F: Future<Output = Result<Payload, AttemptError>>,
{
    let started = Instant::now();
    let mut running: Vec<Option<Pin<Box<F>>>> =
        attempts.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut finished: Vec<Option<Attempt>> = running.iter().map(|_| None).collect();
    let mut payloads = Vec::new();

    let decided = async {
        while let Some((index, result)) = next_finished(&mut running).await {
            let outcome = match result {
                Ok(payload) => {
                    payloads.push(payload);
                    Outcome::Ok
                }
                Err(error) => Outcome::Failed(error),
            };
            finished[index] = Some(Attempt {
                outcome,
                elapsed: started.elapsed(),
            });
            if policy == Policy::First && !payloads.is_empty() {
                return Ok(());
            }
        }
        if payloads.is_empty() {
            Err(Failure::AllFailed)
        } else {
            Ok(())
        }
    };
    let expired = async {
        Timer::at(deadline).await;
        Err(Failure::DeadlineExpired)
    };
    // The race is polled before the timer, so an attempt that completes in
    // the same wakeup as the deadline still counts.
    let result = future::or(decided, expired).await;

    let timed_out = result == Err(Failure::DeadlineExpired);
    let elapsed = started.elapsed();
    let mut attempts = Vec::with_capacity(finished.len());
    for (slot, attempt) in running.iter_mut().zip(finished) {
        let dropped = slot.take().map(|future| {
            let outcome = if timed_out {
                Outcome::TimedOut
            } else {
                Outcome::Cancelled
            };
            leftover(future, &outcome);
            Attempt { outcome, elapsed }
        });
        attempts.push(
            attempt
                .or(dropped)
                .expect("every attempt either finished or was still running"),
        );
    }
    Report {
        result: result.map(|()| payloads),
        attempts,
    }
}

/// Waits for the next attempt to finish, returning its index and result,
/// or `None` when no attempt is left running.
async fn next_finished<F, T>(running: &mut [Option<Pin<Box<F>>>]) -> Option<(usize, T)>
where
    F: Future<Output = T>,
{
    poll_fn(|cx| {
        let mut any_running = false;
        for (index, slot) in running.iter_mut().enumerate() {
            let Some(attempt) = slot else { continue };
            if let Poll::Ready(result) = attempt.as_mut().poll(cx) {
                *slot = None;
                return Poll::Ready(Some((index, result)));
            }
            any_running = true;
        }
        if any_running {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    type Boxed = Pin<Box<dyn Future<Output = Result<Payload, AttemptError>>>>;

    fn after(ms: u64, result: Result<&'static str, u16>) -> Boxed {
        Box::pin(async move {
            Timer::after(Duration::from_millis(ms)).await;
            match result {
                Ok(body) => Ok(Payload::from_static(body)),
                Err(status) => Err(AttemptError::Status(status)),
            }
        })
    }

    fn kinds(report: &Report) -> Vec<&'static str> {
        report
            .attempts
            .iter()
            .map(|attempt| attempt.outcome.kind())
            .collect()
    }

    fn deadline(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn all_collects_in_completion_order() {
        let report = block_on(run(
            vec![after(30, Ok("b")), after(1, Ok("a"))],
            Policy::All,
            deadline(500),
        ));
        let bodies: Vec<_> = report
            .result
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        assert_eq!(bodies, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(kinds(&report), ["ok", "ok"]);
    }

    #[test]
    fn all_times_out_when_one_is_unfinished() {
        let report = block_on(run(
            vec![after(1, Ok("a")), after(10_000, Ok("b"))],
            Policy::All,
            deadline(50),
        ));
        assert_eq!(
            report.result.as_ref().unwrap_err(),
            &Failure::DeadlineExpired
        );
        assert_eq!(kinds(&report), ["ok", "timeout"]);
    }

    #[test]
    fn first_skips_failures_and_cancels_the_rest() {
        let attempts = vec![
            after(1, Err(500)),
            after(20, Ok("a")),
            after(10_000, Ok("b")),
        ];
        let report = block_on(run(attempts, Policy::First, deadline(5_000)));
        assert_eq!(report.result.as_ref().unwrap()[0].as_bytes(), b"a");
        assert_eq!(kinds(&report), ["http_status", "ok", "cancelled"]);
    }

    #[test]
    fn cancelled_attempts_go_to_the_caller() {
        let mut handed_over = Vec::new();
        let attempts = vec![after(1, Ok("a")), after(10_000, Ok("b"))];
        let report = block_on(run_with(
            attempts,
            Policy::First,
            deadline(5_000),
            |f, outcome| handed_over.push((f, outcome.kind())),
        ));
        assert_eq!(kinds(&report), ["ok", "cancelled"]);
        assert_eq!(handed_over.len(), 1);
        assert_eq!(handed_over[0].1, "cancelled");
    }

    #[test]
    fn timed_out_attempts_go_to_the_caller() {
        let mut handed_over = Vec::new();
        let attempts = vec![after(1, Ok("a")), after(10_000, Ok("b"))];
        let report = block_on(run_with(
            attempts,
            Policy::All,
            deadline(20),
            |_, outcome| handed_over.push(outcome.kind()),
        ));
        assert_eq!(kinds(&report), ["ok", "timeout"]);
        assert_eq!(handed_over, ["timeout"]);
    }

    #[test]
    fn first_fails_at_once_when_all_fail() {
        let start = Instant::now();
        let report = block_on(run(
            vec![after(1, Err(500)), after(5, Err(502))],
            Policy::First,
            deadline(5_000),
        ));
        assert_eq!(report.result.as_ref().unwrap_err(), &Failure::AllFailed);
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
