//! One request and its response on an upstream connection, taken from the
//! pool when one is idle and returned to it when the response allows.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWriteExt};

use super::error::AttemptError;
use super::pool::{self, Connection, Pool, PoolEvent};
use super::response::{self, Limits};

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
async fn exchange(
    pool: &Pool,
    mut connection: Connection,
    request: &[u8],
    limits: Limits,
) -> Result<Vec<u8>, Failed> {
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
        inner: &mut connection,
        received: false,
    };
    let result = response::read_response(&mut reader, limits).await;
    let response_started = reader.received;
    match result {
        Ok(body) => {
            if body.reusable {
                pool.put(connection);
            }
            Ok(body.bytes)
        }
        Err(rejected) => {
            if rejected.reusable {
                pool.put(connection);
            }
            Err(Failed {
                error: rejected.error,
                response_started,
            })
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
