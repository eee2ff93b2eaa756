//! The HTTP/1.1 server: an accept loop that spawns one task per connection
//! and hands each parsed request to a [`Handler`], within the caps and
//! timeouts of [`Limits`], until a [`Shutdown`] drains it.
//!
//! The server has no knowledge of the endpoints; the router it is handed decides
//! every response.

mod accept;
mod conn;
mod io;
mod limits;
mod request;
mod response;
mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_net::TcpListener;
use futures_lite::FutureExt;
use smol::Executor;
use smol::channel::{self, Sender};
use smol::lock::{Semaphore, SemaphoreGuardArc};

use self::conn::Shared;

pub use self::limits::{
    DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_WRITE_TIMEOUT, Limits,
    RESERVED_DESCRIPTORS, caps_fit, default_caps, raise_descriptor_limit,
};
pub use self::request::{
    DEFAULT_MAX_HEAD, DEFAULT_MAX_HEADERS, DEFAULT_MAX_TARGET, HEAD_CEILING, HEADERS_CEILING,
    HeadLimits, ParseError, Request, parse,
};
pub use self::response::Response;
pub use self::shutdown::Shutdown;

/// Turns a request into a response.
pub trait Handler: Send + Sync + 'static {
    /// Handles `request`, whose head was fully read at `received_at`, and returns the response.
    fn handle(
        &self,
        request: &Request,
        received_at: Instant,
    ) -> impl Future<Output = Response> + Send;

    /// Whether `request` counts against the in-flight cap. Requests that
    /// cost next to nothing, such as health checks, can stay out of it so
    /// they respond under overload.
    fn counts_in_flight(&self, _request: &Request) -> bool {
        true
    }
}

/// The resources a connection task keeps while it runs.
struct Slot {
    /// Its place under the connection cap.
    _permit: SemaphoreGuardArc,
    /// Its part in the count of open connections: draining ends when every
    /// sender of this channel is gone.
    _open: Sender<()>,
}

/// The accept queue length asked of the kernel, which caps it at
/// `net.core.somaxconn` (4096 by default since Linux 5.4). When a burst of
/// connections overflows the queue, the kernel drops the client's final
/// handshake packet while the client already counts itself connected and
/// sends its request. The server then receives that request only after a
/// SYN-ACK retransmission, a second or more later. The standard library
/// listens with a queue of 128.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener on `address` with an accept queue of [`LISTEN_BACKLOG`].
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address).await?;
    // Linux applies a new backlog when listen is called again on a
    // listening socket.
    rustix::net::listen(&listener, LISTEN_BACKLOG)?;
    Ok(listener)
}

/// Accepts connections on `listener`, serving each on `executor`, until
/// `shutdown` begins; then stops accepting and returns once every connection
/// has closed.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    executor: Arc<Executor<'static>>,
    limits: Limits,
    shutdown: Shutdown,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let shared = Arc::new(Shared {
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        limits,
        shutdown: shutdown.clone(),
    });
    let (open, all_closed) = channel::bounded::<()>(1);

    let mut backoff = accept::Backoff::new();
    loop {
        let stop = async {
            shutdown.draining().await;
            None
        };
        let next = async { Some(accept::accept(&listener, &connections, &mut backoff).await) };
        // Draining is polled first, so a backlog of waiting connections
        // cannot keep the loop accepting after the signal.
        let Some((stream, permit)) = stop.or(next).await else {
            break;
        };
        let slot = Slot {
            _permit: permit,
            _open: open.clone(),
        };
        let handler = handler.clone();
        let shared = shared.clone();
        // The connection's future is created inside the task, not moved in:
        // an `async` block that awaits a captured future keeps room for it
        // twice, which doubled each connection's memory.
        executor
            .spawn(async move {
                conn::serve_connection(stream, handler, shared).await;
                drop(slot);
            })
            .detach();
    }

    // Failures of a burst that the drain cut short are still reported.
    backoff.report(Instant::now());
    // Closing the listener refuses new connections at once, rather than
    // leaving them in a backlog that no task will accept from.
    drop(listener);
    drop(open);
    // Every receive fails once the last connection has dropped its sender.
    let _ = all_closed.recv().await;
}
