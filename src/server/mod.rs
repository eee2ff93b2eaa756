//! The HTTP/1.1 server: an accept loop that spawns one task per connection
//! and hands each parsed request to a [`Handler`].
//!
//! The server knows nothing of the endpoints; the router it is handed decides
//! every response.

mod conn;
mod request;
mod response;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::TcpListener;
use smol::Executor;

use crate::log::{self, Level};

pub use self::request::{MAX_HEAD, MAX_HEADERS, ParseError, Request, parse};
pub use self::response::Response;

/// Turns a request into a response.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request`, whose head was fully read at `received_at`.
    fn handle(
        &self,
        request: &Request,
        received_at: Instant,
    ) -> impl Future<Output = Response> + Send;
}

/// The first pause after a failed accept. Failures such as EMFILE repeat
/// until something frees a descriptor, so retrying at once would spin.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The longest pause between accept attempts while they keep failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

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

/// Accepts connections on `listener` forever, serving each on `executor`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    executor: Arc<Executor<'static>>,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                executor
                    .spawn(conn::serve_connection(stream, handler.clone()))
                    .detach();
            }
            Err(error) => {
                log::event(
                    Level::Warn,
                    "accept failed",
                    &[("error", &error), ("retry_in_ms", &backoff.as_millis())],
                );
                Timer::after(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}
