//! The executor: one `smol::Executor` driven by a fixed number of threads.

use std::future::Future;
use std::sync::Arc;
use std::thread;

use smol::Executor;

/// Runs `main` on an executor driven by `threads` threads, the calling thread included.
///
/// Returns what `main` returns; the other threads stop with it.
pub fn run<T, F>(threads: usize, main: impl FnOnce(Arc<Executor<'static>>) -> F) -> T
where
    F: Future<Output = T>,
{
    let executor = Arc::new(Executor::new());
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let workers: Vec<_> = (1..threads.max(1))
        .map(|index| {
            let executor = executor.clone();
            let stopped = stopped.clone();
            thread::Builder::new()
                .name(format!("fanout-{index}"))
                .spawn(move || smol::block_on(executor.run(stopped.recv())))
                .expect("spawning an executor thread")
        })
        .collect();

    let result = smol::block_on(executor.run(main(executor.clone())));
    // Closing the channel wakes every worker's `recv`, which ends its run loop.
    drop(stop);
    for worker in workers {
        let _ = worker.join();
    }
    result
}
