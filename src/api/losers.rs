//! Attempts that lost the `/api/first` race, left to finish in the
//! background so that their connections can return to the pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use async_io::Timer;
use futures_lite::future;
use smol::Executor;

use crate::upstream::{AttemptError, Payload};

/// Runs losing attempts on the executor, a bounded number at a time.
pub struct Losers {
    executor: Arc<Executor<'static>>,
    /// How many losing attempts are running now.
    running: Arc<AtomicUsize>,
    max_running: usize,
}

impl Losers {
    /// Creates a runner for at most `max_running` losing attempts at once.
    pub fn new(executor: Arc<Executor<'static>>, max_running: usize) -> Losers {
        Losers {
            executor,
            running: Arc::new(AtomicUsize::new(0)),
            max_running,
        }
    }

    /// Lets `attempt` run until it ends or `deadline` passes, or returns it
    /// when `max_running` attempts already run, for the caller to drop.
    ///
    /// The deadline is the request's, so no attempt outlives the time budget
    /// the caller gave it. The bound keeps the descriptors of background
    /// attempts in proportion to the pool they would refill.
    pub fn finish<F>(&self, attempt: Pin<Box<F>>, deadline: Instant) -> Option<Pin<Box<F>>>
    where
        F: Future<Output = Result<Payload, AttemptError>> + Send + 'static,
    {
        if self.running.fetch_add(1, Ordering::Relaxed) >= self.max_running {
            self.running.fetch_sub(1, Ordering::Relaxed);
            return Some(attempt);
        }
        let slot = Slot(self.running.clone());
        let bounded = async move {
            let _slot = slot;
            future::or(
                async move {
                    let _ = attempt.await;
                },
                async move {
                    Timer::at(deadline).await;
                },
            )
            .await;
        };
        self.executor.spawn(bounded).detach();
        None
    }
}

/// One running attempt in the count; gives its place back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
