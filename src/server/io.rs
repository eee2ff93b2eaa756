//! Socket steps a connection bounds by a deadline or races against its
//! handler: reading more, reading ahead, and lingering before a close.

use std::future::Future;
use std::io;
use std::net::Shutdown as Direction;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::TcpStream;
use futures_lite::future;

use crate::read;

/// How long a closing connection keeps reading after the last response.
/// Closing a socket with unread input makes the kernel send a reset, which
/// can destroy the response before the client reads it; draining first lets
/// the response arrive intact.
const LINGER: Duration = Duration::from_secs(1);

/// The maximum number of bytes drained while lingering, so a client cannot hold the task with a stream of data.
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// The maximum number of bytes one read from a client socket takes. A request head from
/// an API client is a few hundred bytes. The read goes to an array on the
/// stack, and a connection's buffer holds only the bytes that arrived, so
/// this size costs no memory per connection.
pub(super) const READ_CHUNK: usize = 4096;

/// Reads bytes of later pipelined requests into `buffer`, up to
/// `max_buffered`, and returns once the client has closed the connection or
/// it failed.
///
/// Past `max_buffered` the connection stops reading until the response is
/// out, so it no longer notices a client that leaves. The request's own
/// deadline still ends it.
///
/// A client that shuts down only its sending side counts as gone too, as
/// in nginx and Go's server: nothing tells that apart from a client that
/// gave up.
pub(super) async fn read_ahead(stream: &mut TcpStream, buffer: &mut Vec<u8>, max_buffered: usize) {
    while buffer.len() < max_buffered {
        match read_more(stream, buffer, max_buffered - buffer.len()).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    future::pending::<()>().await
}

/// Shuts down the write side, then drains input until the client closes, for at most [`LINGER`].
pub(super) async fn linger(stream: &mut TcpStream) {
    if stream.shutdown(Direction::Write).is_err() {
        return;
    }
    let drain = async {
        let mut drained = 0;
        while drained < LINGER_MAX_BYTES {
            match skip(stream, LINGER_MAX_BYTES - drained).await {
                Ok(0) | Err(_) => return,
                Ok(read) => drained += read,
            }
        }
    };
    let _ = within(Instant::now() + LINGER, drain).await;
}

/// Makes the coming close of `stream` reset the connection.
///
/// A plain close leaves the kernel delivering whatever is still queued,
/// which to a client that stopped reading takes minutes and holds up to a
/// send buffer of memory; a reset drops it at once.
pub(super) fn reset_on_close(stream: &TcpStream) {
    // On failure the close is an ordinary one, which still ends the connection.
    let _ = rustix::net::sockopt::set_socket_linger(stream, Some(Duration::ZERO));
}

/// The deadline passed before the work finished.
pub(super) struct TimedOut;

pin_project_lite::pin_project! {
    /// The future of [`within`].
    pub(super) struct Within<F> {
        #[pin]
        work: F,
        timer: Timer,
    }
}

/// Runs `work` until `deadline`.
///
/// Returns a struct future rather than an `async` block, because a block
/// that awaits a future it was given keeps room for that future twice. The
/// `work` here is often a connection's largest future.
pub(super) fn within<F: Future>(deadline: Instant, work: F) -> Within<F> {
    Within {
        work,
        // A timer registers with the reactor only when first polled, so
        // work that is ready at once never touches the timer queue.
        timer: Timer::at(deadline),
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The work is polled first, so a result ready in the same wakeup as
        // the deadline still counts.
        if let Poll::Ready(output) = this.work.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(this.timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(TimedOut)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads at most `limit` bytes onto the end of `buffer`, holding no buffer
/// while it waits (see [`crate::read`]).
pub(super) async fn read_more(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize> {
    read::append::<_, READ_CHUNK>(stream, buffer, limit).await
}

/// Reads at most `limit` bytes and discards them, holding no buffer while it
/// waits. Returns the number of bytes read.
pub(super) async fn skip(stream: &mut TcpStream, limit: usize) -> io::Result<usize> {
    read::discard::<_, READ_CHUNK>(stream, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps `N` bytes across an await, as a read into an array would.
    async fn keeps_bytes<const N: usize>() -> usize {
        let array = [1u8; N];
        future::yield_now().await;
        array.iter().map(|&b| b as usize).sum()
    }

    #[test]
    fn within_stores_its_work_once() {
        let work = keeps_bytes::<4096>();
        let work_size = size_of_val(&work);
        let bounded = within(Instant::now(), work);
        // An `async` version kept the work twice or three times.
        assert!(
            size_of_val(&bounded) < work_size + 256,
            "within takes {} bytes for work of {work_size}",
            size_of_val(&bounded)
        );
    }

    #[test]
    fn within_returns_ready_work_past_its_deadline() {
        let past = Instant::now() - Duration::from_secs(1);
        assert!(future::block_on(within(past, async { 7 })).is_ok_and(|v| v == 7));
        let pending = within(past, future::pending::<()>());
        assert!(future::block_on(pending).is_err());
    }
}
