//! Socket steps a connection bounds by a deadline or races against its
//! handler: reading more, reading ahead, and lingering before a close.

use std::future::Future;
use std::io;
use std::net::Shutdown as Direction;
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::TcpStream;
use futures_lite::{AsyncReadExt, FutureExt, future};

/// How long a closing connection keeps reading after the last response.
/// Closing a socket with unread input makes the kernel send a reset, which
/// can destroy the response before the client reads it; draining first lets
/// the response arrive intact.
const LINGER: Duration = Duration::from_secs(1);

/// The maximum number of bytes drained while lingering, so a client cannot hold the task with a stream of data.
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// The size of each read from a client socket. A request head from an API
/// client is a few hundred bytes, and every open connection keeps a buffer
/// of this size, so at 5,000 connections each KiB here is 5 MB of memory.
pub(super) const READ_CHUNK: usize = 1024;

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
        let mut scratch = [0u8; 1024];
        let mut drained = 0;
        while drained < LINGER_MAX_BYTES {
            match stream.read(&mut scratch).await {
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

/// Runs `work` until `deadline`.
pub(super) async fn within<T>(
    deadline: Instant,
    work: impl Future<Output = T>,
) -> Result<T, TimedOut> {
    let expired = async {
        Timer::at(deadline).await;
        Err(TimedOut)
    };
    // The work is polled first, so a result ready in the same wakeup as the
    // deadline still counts.
    async { Ok(work.await) }.or(expired).await
}

/// Reads at most `limit` bytes onto the end of `buffer`.
///
/// The bytes are read into a scratch array and copied over once the read
/// completes, so a future dropped mid-read, as the losing side of a race,
/// leaves `buffer` as it was.
pub(super) async fn read_more(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let limit = limit.clamp(1, READ_CHUNK);
    let read = stream.read(&mut chunk[..limit]).await?;
    buffer.extend_from_slice(&chunk[..read]);
    Ok(read)
}
