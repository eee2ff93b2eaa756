//! One client connection: read a request, answer it, and repeat while the
//! connection is kept alive.

use std::net::Shutdown;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Timer;

use async_net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};

use super::request::{self, MAX_HEAD, ParseError, Request};
use super::{Handler, Response};
use crate::log::{self, Level};

/// The largest request body read and thrown away so the connection can be
/// reused. The endpoints take no body, so a larger one is rejected with 413.
const MAX_DISCARDED_BODY: u64 = 64 * 1024;

/// How long a closing connection keeps reading after the last response.
/// Closing a socket with unread input makes the kernel send a reset, which
/// can destroy the response before the client reads it; draining first lets
/// the response arrive intact.
const LINGER: Duration = Duration::from_secs(1);

/// The most bytes drained while lingering, so a client cannot hold the task with a stream of data.
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// The size of each read from a client socket. A request head from an API
/// client is a few hundred bytes, and every open connection keeps a buffer
/// of this size, so at 5,000 connections each KiB here is 5 MB of memory.
const READ_CHUNK: usize = 1024;

/// Serves `stream` until the client closes it, an error occurs, or a response closes it.
///
/// This is the error boundary for a connection: nothing that happens here,
/// a panic included, reaches the accept loop.
pub async fn serve_connection<H: Handler>(stream: TcpStream, handler: Arc<H>) {
    let result = AssertUnwindSafe(run(stream, handler)).catch_unwind().await;
    if result.is_err() {
        log::event(
            Level::Error,
            "connection task panicked; connection closed",
            &[],
        );
    }
}

async fn run<H: Handler>(mut stream: TcpStream, handler: Arc<H>) {
    // Responses are written whole, so Nagle's delay would only add latency.
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::with_capacity(READ_CHUNK);
    let mut out = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buffer).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(ReadError::Closed) => return,
            Err(ReadError::Parse(error)) => {
                let response = Response::error(error.status(), &error.to_string());
                if write_response(&mut stream, &response, false, 1, &mut out)
                    .await
                    .is_ok()
                {
                    linger(&mut stream).await;
                }
                log::access("-", "-", response.status, Duration::ZERO, &[]);
                return;
            }
        };
        let received_at = Instant::now();

        let (response, keep_alive) =
            match discard_body(&mut stream, &mut buffer, request.content_length).await {
                Ok(()) => (
                    handler.handle(&request, received_at).await,
                    request.keep_alive,
                ),
                Err(DiscardError::TooLarge) => {
                    let message = format!(
                        "request body of {} bytes not accepted: the endpoints take no body",
                        request.content_length
                    );
                    (Response::error(413, &message), false)
                }
                Err(DiscardError::Closed) => return,
            };

        let written = write_response(
            &mut stream,
            &response,
            keep_alive,
            request.minor_version,
            &mut out,
        )
        .await;
        log::access(
            &request.method,
            request.path(),
            response.status,
            received_at.elapsed(),
            &response.attempts,
        );
        if written.is_err() {
            return;
        }
        if !keep_alive {
            linger(&mut stream).await;
            return;
        }
    }
}

enum ReadError {
    /// The client closed the connection or the socket failed mid-request.
    Closed,
    Parse(ParseError),
}

/// Reads one request head, keeping any bytes past it in `buffer` for the next request.
///
/// Returns `None` when the client closes the connection between requests.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<Request>, ReadError> {
    loop {
        if !buffer.is_empty() {
            if let Some((request, length)) = request::parse(buffer).map_err(ReadError::Parse)? {
                buffer.drain(..length);
                return Ok(Some(request));
            }
        }
        // Reading at most up to the head limit keeps the buffer bounded.
        let room = (MAX_HEAD + 1)
            .saturating_sub(buffer.len())
            .clamp(1, READ_CHUNK);
        match read_into(stream, buffer, room).await {
            Ok(0) if buffer.is_empty() => return Ok(None),
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {}
        }
    }
}

enum DiscardError {
    TooLarge,
    Closed,
}

/// Reads and drops a request body of `length` bytes, part of which may already be in `buffer`.
async fn discard_body(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    length: u64,
) -> Result<(), DiscardError> {
    if length > MAX_DISCARDED_BODY {
        return Err(DiscardError::TooLarge);
    }
    let mut remaining = length as usize;
    let buffered = remaining.min(buffer.len());
    buffer.drain(..buffered);
    remaining -= buffered;

    let mut scratch = [0u8; 1024];
    while remaining > 0 {
        let limit = remaining.min(scratch.len());
        match stream.read(&mut scratch[..limit]).await {
            Ok(0) | Err(_) => return Err(DiscardError::Closed),
            Ok(read) => remaining -= read,
        }
    }
    Ok(())
}

async fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    keep_alive: bool,
    minor_version: u8,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    out.clear();
    response.encode(keep_alive, minor_version, out);
    stream.write_all(out).await
}

/// Shuts down the write side, then drains input until the client closes, for at most [`LINGER`].
async fn linger(stream: &mut TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
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
    drain
        .or(async {
            Timer::after(LINGER).await;
        })
        .await;
}

/// Reads at most `limit` bytes onto the end of `buffer`.
async fn read_into(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<usize> {
    let start = buffer.len();
    buffer.resize(start + limit, 0);
    let result = stream.read(&mut buffer[start..]).await;
    buffer.truncate(start + *result.as_ref().unwrap_or(&0));
    result
}
