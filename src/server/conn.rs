//! One client connection: read a request, respond to it, and repeat while the
//! connection is kept alive, each step bounded by the server's timeouts.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::TcpStream;
use futures_lite::{AsyncWriteExt, FutureExt, future};
use smol::lock::{Semaphore, SemaphoreGuardArc};

use super::io::{
    READ_CHUNK, TimedOut, linger, read_ahead, read_more, reset_on_close, skip, within,
};
use super::limits::Limits;
use super::request::{self, HeadLimits, ParseError, Request};
use super::shutdown::Shutdown;
use super::{Handler, Response};
use crate::log::{self, Level};
use crate::observe::{self, REQUEST_ID_HEADER};

/// The largest request body read and thrown away so the connection can be
/// reused. The endpoints take no body, so a larger one is rejected with 413.
const MAX_DISCARDED_BODY: u64 = 64 * 1024;

/// The maximum capacity, in bytes, that a connection keeps between requests
/// for encoding its responses. Most responses are under 1 KiB, so reusing
/// the space saves an allocation per request. A larger response gets its own.
const MAX_KEPT_OUT: usize = 16 * 1024;

/// The interim response sent to a client that waits for it before its body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The status logged for a request whose client left before the response, as nginx does.
const CLIENT_GONE: u16 = 499;

/// State that every connection of one server shares.
pub(super) struct Shared {
    pub limits: Limits,
    /// One permit per request in progress that counts against the cap.
    pub in_flight: Arc<Semaphore>,
    pub shutdown: Shutdown,
}

/// Serves `stream` until the client closes it, an error or timeout occurs, or a response closes it.
///
/// This is the error boundary for a connection: nothing that happens here,
/// a panic included, reaches the accept loop.
pub(super) async fn serve_connection<H: Handler>(
    stream: TcpStream,
    handler: Arc<H>,
    shared: Arc<Shared>,
) {
    let _open = observe::OpenConnection::open();
    let result = AssertUnwindSafe(run(stream, handler, &shared))
        .catch_unwind()
        .await;
    if result.is_err() {
        log::event(
            Level::Error,
            "connection task panicked; connection closed",
            &[],
        );
    }
}

async fn run<H: Handler>(mut stream: TcpStream, handler: Arc<H>, shared: &Shared) {
    // Responses are written whole, so Nagle's delay would only add latency.
    let _ = stream.set_nodelay(true);
    let limits = &shared.limits;
    let mut buffer = Vec::new();
    let mut out = Vec::new();
    // A client that opens a connection has a request to send, so its first
    // head gets the header timeout from accept, not the idle one.
    let mut idle_until = Instant::now() + limits.header_timeout;
    loop {
        let (request, deadline) =
            match next_request(&mut stream, &mut buffer, idle_until, shared).await {
                Ok(next) => next,
                Err(ReadError::Closed) => return,
                Err(error) => {
                    let request_id = observe::new_request_id();
                    let response = error
                        .response(limits.header_timeout)
                        .with_header(REQUEST_ID_HEADER, request_id.clone());
                    send_and_close(&mut stream, &response, 1, limits, &mut out).await;
                    observe::unparsed_request_finished(&request_id, &response);
                    return;
                }
            };
        let received_at = Instant::now();
        let in_flight = observe::request_started(&request);

        let answered = respond_to(
            &*handler,
            &request,
            received_at,
            deadline,
            &mut stream,
            &mut buffer,
            shared,
        );
        let Some((response, keep_alive)) = answered.await else {
            return;
        };
        let mut response = response.with_header(REQUEST_ID_HEADER, request.request_id.clone());
        if request.method == "HEAD" {
            // A client reads no body after a HEAD response, whatever its
            // status, so a body sent anyway would be read as the next response.
            response = response.without_body();
        }

        // Once draining, each connection closes after the response it owes.
        let keep_alive = keep_alive && !shared.shutdown.is_draining();
        let written = write_response(
            &mut stream,
            &response,
            keep_alive,
            request.minor_version,
            limits,
            &mut out,
        )
        .await;
        // The request stops counting as in flight once written, before any linger.
        drop(in_flight);
        observe::request_finished(&request, &response, received_at.elapsed());
        if !written {
            return;
        }
        if !keep_alive {
            linger(&mut stream).await;
            return;
        }
        idle_until = Instant::now() + limits.idle_timeout;
    }
}

/// Reads the request's body by `deadline`, then handles the request.
///
/// Returns the response and whether the connection may stay open, or
/// `None` when the client has left and no response can reach it.
async fn respond_to<H: Handler>(
    handler: &H,
    request: &Request,
    received_at: Instant,
    deadline: Instant,
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    shared: &Shared,
) -> Option<(Response, bool)> {
    match discard_body(stream, buffer, request, deadline).await {
        Ok(()) => {}
        Err(BodyError::TooLarge) => {
            let message = format!(
                "request body of {} bytes not accepted: the endpoints take no body",
                request.content_length
            );
            return Some((Response::error(413, &message), false));
        }
        Err(BodyError::TimedOut) => {
            let response = ReadError::TimedOut.response(shared.limits.header_timeout);
            return Some((response, false));
        }
        Err(BodyError::Closed) => return None,
    }

    match answer(handler, request, received_at, stream, buffer, shared).await {
        Some(response) => Some((response, request.keep_alive)),
        None => {
            // Dropping the handler's future closed its upstream connections.
            let gone = Response::json(CLIENT_GONE, Vec::new());
            observe::request_finished(request, &gone, received_at.elapsed());
            None
        }
    }
}

/// Handles `request`, unless the in-flight cap is reached, while reading ahead on the connection.
///
/// Returns `None` when the client closed the connection first; the
/// handler's future is dropped then, which cancels its upstream requests.
async fn answer<H: Handler>(
    handler: &H,
    request: &Request,
    received_at: Instant,
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    shared: &Shared,
) -> Option<Response> {
    let _permit: Option<SemaphoreGuardArc> = if handler.counts_in_flight(request) {
        match shared.in_flight.try_acquire_arc() {
            Some(permit) => Some(permit),
            None => {
                observe::record_shed();
                // Shed requests come fastest from clients that retry at
                // once, and they then crowd the executor's queue. Yielding
                // once puts each behind the work already queued, such as
                // admitted requests whose deadline is due.
                future::yield_now().await;
                return Some(overloaded(shared.limits.max_in_flight));
            }
        }
    } else {
        None
    };

    let handled = async { Some(handler.handle(request, received_at).await) };
    // Room for one more head at its largest.
    let max_read_ahead = shared.limits.head.max_head;
    let client_left = async {
        read_ahead(stream, buffer, max_read_ahead).await;
        None
    };
    // The handler is polled first, so an answer ready in the same wakeup as
    // the client's close is still logged with its real status.
    handled.or(client_left).await
}

fn overloaded(max_in_flight: usize) -> Response {
    let message = format!(
        "overloaded: {max_in_flight} requests already in flight, the most this gateway takes; retry later"
    );
    Response::error(503, &message).with_header("Retry-After", "1")
}

/// The reason no request came from the connection.
enum ReadError {
    /// The client closed the connection, the socket failed, the connection
    /// sat idle too long, or the server is draining: close without a word.
    Closed,
    /// Part of a head arrived, but not all of it within the header timeout.
    TimedOut,
    Parse(ParseError),
}

impl ReadError {
    fn response(&self, header_timeout: Duration) -> Response {
        match self {
            ReadError::Parse(error) => Response::error(error.status(), &error.to_string()),
            _ => {
                let message = format!(
                    "request not complete within the header timeout of {} ms",
                    header_timeout.as_millis()
                );
                Response::error(408, &message)
            }
        }
    }
}

/// Waits for the first byte of the next request until `idle_until`, then
/// reads its head, keeping any bytes past it in `buffer` for the next
/// request.
///
/// Returns the request and the deadline for its head and body: the header
/// timeout from the request's first byte, or from the moment the server
/// takes it up when it was pipelined and already buffered, and never later
/// than `idle_until`. On a new connection `idle_until` is the header timeout
/// from accept, so a client that sends its first byte late gets no more
/// time for the rest.
async fn next_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    idle_until: Instant,
    shared: &Shared,
) -> Result<(Request, Instant), ReadError> {
    if buffer.is_empty() {
        let first_byte = async {
            match read_more(stream, buffer, READ_CHUNK).await {
                Ok(0) | Err(_) => Err(ReadError::Closed),
                Ok(_) => Ok(()),
            }
        };
        let stop = async {
            let idle = async {
                Timer::at(idle_until).await;
            };
            idle.or(shared.shutdown.draining()).await;
            Err(ReadError::Closed)
        };
        // The read is polled first: a request that arrives as the idle
        // timeout or the drain begins is served rather than cut off.
        first_byte.or(stop).await?;
    }

    let deadline = (Instant::now() + shared.limits.header_timeout).min(idle_until);
    let head = read_head(stream, buffer, &shared.limits.head);
    match within(deadline, head).await {
        Ok(result) => result.map(|request| (request, deadline)),
        Err(TimedOut) => Err(ReadError::TimedOut),
    }
}

/// Reads until `buffer` starts with a complete head, and takes it off.
async fn read_head(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    limits: &HeadLimits,
) -> Result<Request, ReadError> {
    loop {
        let parsed = request::parse(buffer, limits).map_err(ReadError::Parse)?;
        if let Some((request, length)) = parsed {
            buffer.drain(..length);
            return Ok(request);
        }
        // Reading at most up to the head limit keeps the buffer bounded.
        let room = (limits.max_head + 1).saturating_sub(buffer.len());
        match read_more(stream, buffer, room).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {}
        }
    }
}

enum BodyError {
    TooLarge,
    TimedOut,
    Closed,
}

/// Reads and drops the request's body, part of which may already be in
/// `buffer`, by `deadline`.
async fn discard_body(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    request: &Request,
    deadline: Instant,
) -> Result<(), BodyError> {
    let length = request.content_length;
    if length > MAX_DISCARDED_BODY {
        // Without `100 Continue` a waiting client never sends the body, so
        // the 413 reaches it without a body to drain first.
        return Err(BodyError::TooLarge);
    }
    let mut remaining = length as usize;
    let buffered = remaining.min(buffer.len());
    buffer.drain(..buffered);
    remaining -= buffered;
    if remaining == 0 {
        return Ok(());
    }

    let read = async {
        if request.expect_continue && stream.write_all(CONTINUE).await.is_err() {
            return Err(BodyError::Closed);
        }
        while remaining > 0 {
            match skip(stream, remaining).await {
                Ok(0) | Err(_) => return Err(BodyError::Closed),
                Ok(read) => remaining -= read,
            }
        }
        Ok(())
    };
    within(deadline, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut))
}

/// Writes the response with `Connection: close`, then lingers so it arrives intact.
async fn send_and_close(
    stream: &mut TcpStream,
    response: &Response,
    minor_version: u8,
    limits: &Limits,
    out: &mut Vec<u8>,
) {
    if write_response(stream, response, false, minor_version, limits, out).await {
        linger(stream).await;
    }
}

/// Writes the response within the write timeout; returns whether it all went out.
///
/// After a timeout the connection is set to reset when it closes, since
/// the client is not reading what is already queued.
async fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    keep_alive: bool,
    minor_version: u8,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    response.encode(keep_alive, minor_version, out);
    let deadline = Instant::now() + limits.write_timeout;
    let written = match within(deadline, stream.write_all(out)).await {
        Ok(result) => result.is_ok(),
        Err(TimedOut) => {
            reset_on_close(stream);
            false
        }
    };
    release_large(out);
    written
}

/// Frees `out` once it has held a large response, so an idle kept-alive
/// connection does not keep the space of its largest response, up to
/// about 2 MiB, until it closes.
fn release_large(out: &mut Vec<u8>) {
    if out.capacity() > MAX_KEPT_OUT {
        *out = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_response_space_is_released() {
        let mut out = Vec::with_capacity(1024);
        release_large(&mut out);
        assert_eq!(out.capacity(), 1024);

        let mut out = vec![0u8; 2 * 1024 * 1024];
        out.clear();
        release_large(&mut out);
        assert_eq!(out.capacity(), 0);
    }
}
