//! One request and its response on an upstream connection, taken from the
//! pool when one is idle and returned to it when the response allows.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWriteExt};

use super::error::AttemptError;
use super::pool::{self, Connection, Pool, PoolEvent};
use super::response::{self, Limits};
use super::stream::MaybeTls;

/// A failed exchange, and whether the failure came before any response byte.
struct Failed {
    error: AttemptError,
    response_started: bool,
}

/// Sends `request` on an idle pooled connection, or on one from `open`, and
/// returns the body of a 200 response.
///
/// A pooled connection that fails before any response byte arrives is
/// replaced once by a new connection from `open`, and the request is sent
/// again.
pub(super) async fn send<F, O>(
    pool: &Pool,
    request: &[u8],
    limits: Limits,
    open: O,
) -> Result<Vec<u8>, AttemptError>
where
    O: Fn() -> F,
    F: Future<Output = Result<Connection, AttemptError>>,
{
    if let Some(connection) = pool.take().await {
        pool::record(PoolEvent::Reused, 1);
        match exchange(pool, connection, request, limits).await {
            // The upstream may close an idle connection at any moment, and a
            // request written just then fails with a reset or an end of
            // stream before any response byte. The request is a GET, which
            // is safe to repeat.
            Err(failed) if !failed.response_started => pool::record(PoolEvent::Retried, 1),
            result => return result.map_err(|failed| failed.error),
        }
    }
    let connection = open().await?;
    pool::record(PoolEvent::Opened, 1);
    exchange(pool, connection, request, limits)
        .await
        .map_err(|failed| failed.error)
}

/// Writes `request`, reads one response, and puts `connection` back in the
/// pool when the response allows; otherwise the connection is closed here.
///
/// A connection given up before its response ended (an error, a timeout or
/// a cancelled attempt) is reset rather than closed; see [`Abandoned`].
async fn exchange(
    pool: &Pool,
    connection: Connection,
    request: &[u8],
    limits: Limits,
) -> Result<Vec<u8>, Failed> {
    let mut guard = Abandoned(Some(connection));
    let connection = guard.0.as_mut().expect("the guard holds the connection");
    let written = async {
        connection.write_all(request).await?;
        connection.flush().await
    };
    if let Err(error) = written.await {
        return Err(Failed {
            error: AttemptError::from_io(error),
            response_started: false,
        });
    }

    let mut reader = Watched {
        inner: connection,
        received: false,
    };
    let result = response::read_response(&mut reader, limits).await;
    let response_started = reader.received;
    match result {
        Ok(body) => {
            // The response ended, so the connection closes normally when
            // it does not go back to the pool.
            let connection = guard.0.take();
            if body.reusable {
                pool.put(connection.expect("the guard holds the connection"));
            }
            Ok(body.bytes)
        }
        Err(rejected) => {
            if rejected.reusable {
                pool.put(guard.0.take().expect("the guard holds the connection"));
            }
            Err(Failed {
                error: rejected.error,
                response_started,
            })
        }
    }
}

/// A connection in the middle of an exchange. If the guard is dropped while
/// it still owns the connection, it closes the connection with a reset
/// (`SO_LINGER` 0) instead of a FIN.
///
/// Such a connection carries a request whose response will never be read,
/// so it can serve nothing more. A reset tells the upstream at once that
/// the request is abandoned, and leaves no socket in `TIME_WAIT` on
/// fanout's side: against a slow upstream, every timed-out or cancelled
/// attempt would otherwise hold a local port for a minute, and a busy
/// gateway can run through the 28,000 ephemeral ports that connections to
/// one upstream address share.
struct Abandoned(Option<Connection>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(connection) = &self.0 {
            let tcp = match connection {
                MaybeTls::Plain(tcp) => tcp,
                MaybeTls::Tls(tls) => tls.get_ref(),
            };
            // On failure the close is an ordinary one, which still ends the connection.
            let _ = rustix::net::sockopt::set_socket_linger(tcp, Some(Duration::ZERO));
        }
    }
}

/// A reader that notes whether any byte arrived through it.
struct Watched<'a, R> {
    inner: &'a mut R,
    received: bool,
}

impl<R: AsyncRead + Unpin> AsyncRead for Watched<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(read)) = &poll {
            this.received |= *read > 0;
        }
        poll
    }
}
