//! Reading one upstream response: the head with httparse, then the body by
//! its framing (Content-Length, chunked, or connection close).
//!
//! Each rule fails the attempt as soon as the bytes that break it arrive:
//!
//! | response | outcome |
//! |---|---|
//! | 100, 102, 103 or another 1xx without framing headers | skipped; the final response follows, and every head counts against the head limit |
//! | 1xx with Content-Length or Transfer-Encoding, or 101 | `malformed_response`: interim responses have no body, and fanout never requests a protocol switch |
//! | 204 with Transfer-Encoding or a non-zero Content-Length, 204 or 304 with bytes after the head | `malformed_response`: these statuses have no body |
//! | other 204 and 304, any other non-200 | `redirect` for 3xx but 304, else `http_status`, without waiting for the body; the connection is kept only when the whole body came with the head (see [`Rejected`]) |
//! | 200 with Transfer-Encoding in HTTP/1.0, or with both Transfer-Encoding and Content-Length | `malformed_response` (RFC 9112, 6.1 and 6.3) |
//! | 200 with Content-Length | exactly that many bytes; more in any read is `malformed_response`, fewer before the close is `truncated`; over the body limit fails at the head |
//! | 200 chunked | decoded as it arrives; bytes after the last chunk are `malformed_response` |
//! | 200 with neither, in HTTP/1.0 or 1.1 | the body runs to the connection close, up to the body limit |

use futures_lite::AsyncRead;

use crate::read;

use super::chunked::ChunkedDecoder;
use super::error::AttemptError;

/// The largest response head read from the upstream, in bytes. The real
/// upstream sends a few hundred; anything past this is not a sane response.
pub const MAX_HEAD: usize = 16 * 1024;

/// The maximum number of header fields parsed in a response head.
const MAX_HEADERS: usize = 64;

/// The maximum number of bytes of a redirect's `Location` kept for the error message.
const MAX_LOCATION: usize = 256;

/// The maximum number of bytes one read from the upstream socket takes.
///
/// It is the plaintext of the largest TLS record, so a read through TLS
/// leaves no decrypted bytes inside OpenSSL, where the pool's check before
/// reuse could not see them. The array lives on the stack only during a
/// poll (see [`crate::read`]), so its size costs a waiting attempt nothing.
const READ_CHUNK: usize = 16 * 1024;

/// Limits that bound the memory one upstream response may use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_head: usize,
    pub max_body: usize,
}

/// The rule that finds the end of the body.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

/// The body of a 200 response, and whether its connection may carry another request.
#[derive(Debug)]
pub struct Body {
    pub bytes: Vec<u8>,
    /// True when the response was HTTP/1.1 without `Connection: close` and
    /// its body was framed by length or chunks and read exactly to its end.
    pub reusable: bool,
}

/// A response that failed the attempt, and whether its connection may
/// still carry another request.
#[derive(Debug)]
pub struct Rejected {
    pub error: AttemptError,
    /// True only for a failed status in HTTP/1.1, without `Connection:
    /// close`, whose body is framed by Content-Length and arrived whole with
    /// the head (or that has no body). Such a connection is exactly at the
    /// start of the next response, as after a 200, and closing it would
    /// cost a new connection, or a new TLS handshake, later.
    pub reusable: bool,
}

impl From<AttemptError> for Rejected {
    fn from(error: AttemptError) -> Rejected {
        Rejected {
            error,
            reusable: false,
        }
    }
}

/// Reads a response from `stream` and returns its body when the status is 200,
/// and whether the connection may carry another request.
///
/// Any other status fails as soon as its head has arrived, without waiting
/// for the body. Its connection is reusable only when the body came whole
/// with the head.
pub async fn read_response<R>(stream: &mut R, limits: Limits) -> Result<Body, Rejected>
where
    R: AsyncRead + Unpin,
{
    let mut buffer = Vec::new();
    let (head_length, framing, persistent) = read_head(stream, &mut buffer, limits).await?;
    buffer.drain(..head_length);
    // Both framed readers fail on bytes past the end of the body, so a body
    // they return ends exactly where the next response would start.
    let (bytes, framed) = match framing {
        Framing::Length(length) => (
            read_length(stream, buffer, length, limits.max_body).await?,
            true,
        ),
        Framing::Chunked => (read_chunked(stream, buffer, limits.max_body).await?, true),
        Framing::Close => (read_to_close(stream, buffer, limits.max_body).await?, false),
    };
    Ok(Body {
        bytes,
        reusable: framed && persistent,
    })
}

/// The kind of a complete response head.
enum Head {
    /// A 1xx response of this many bytes: the final response follows it.
    Interim(usize),
    /// The final response's head length, body framing, and whether its
    /// head allows the connection to stay open.
    Final(usize, Framing, bool),
    /// A final response whose status fails the attempt.
    Rejected(Rejected),
}

/// Reads past interim responses until the final head parses, then checks
/// the status and chooses the framing.
///
/// Returns the head's length, the framing, and whether the head allows the
/// connection to stay open.
async fn read_head<R>(
    stream: &mut R,
    buffer: &mut Vec<u8>,
    limits: Limits,
) -> Result<(usize, Framing, bool), Rejected>
where
    R: AsyncRead + Unpin,
{
    // Interim heads already taken off `buffer` still count against the
    // limit, so an endless stream of them fails like one endless head.
    let mut interim_bytes = 0;
    loop {
        match parse_head(buffer)? {
            Some(Head::Final(length, framing, persistent)) => {
                return Ok((length, framing, persistent));
            }
            Some(Head::Interim(length)) => {
                buffer.drain(..length);
                interim_bytes += length;
                continue;
            }
            Some(Head::Rejected(rejected)) => return Err(rejected),
            None => {}
        }

        let used = interim_bytes + buffer.len();
        if used >= limits.max_head {
            return Err(AttemptError::Malformed("response head larger than 16 KiB").into());
        }
        let read = read_some(stream, buffer, limits.max_head - used).await?;
        if read == 0 {
            let detail = if buffer.is_empty() {
                "connection closed before any response byte"
            } else {
                "connection closed inside the response head"
            };
            return Err(AttemptError::Truncated(detail).into());
        }
    }
}

/// Parses the head at the start of `buffer`; `None` when it is not complete yet.
///
/// A plain function, not part of the async reader, so that the 2 KiB array
/// of header slots lives on the stack for the call instead of in every
/// pending attempt's future.
fn parse_head(buffer: &[u8]) -> Result<Option<Head>, AttemptError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => {
            classify(&response, length, buffer.len() - length).map(Some)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            Err(AttemptError::Malformed("more than 64 header fields"))
        }
        Err(error) => Err(AttemptError::MalformedHead(error)),
    }
}

/// Checks the status, given the head's `length` and the bytes `following`
/// it already read, and decides what comes next.
fn classify(
    response: &httparse::Response<'_, '_>,
    length: usize,
    following: usize,
) -> Result<Head, AttemptError> {
    let status = response.code.unwrap_or(0);
    let content_length = header(response, "content-length");
    let transfer_encoding = header(response, "transfer-encoding");
    match status {
        101 => Err(AttemptError::Malformed(
            "101 Switching Protocols without an upgrade request",
        )),
        100..=199 if content_length.is_some() || transfer_encoding.is_some() => Err(
            AttemptError::Malformed("1xx response with Content-Length or Transfer-Encoding"),
        ),
        100..=199 => Ok(Head::Interim(length)),
        204 if transfer_encoding.is_some()
            || content_length.is_some_and(|value| trim(value) != b"0") =>
        {
            Err(AttemptError::Malformed("204 response that declares a body"))
        }
        // A 304's framing headers describe the representation it stands
        // for, so only bytes past its head show a body.
        204 | 304 if following > 0 => Err(AttemptError::Malformed(
            "bytes after a 204 or 304 response, which has no body",
        )),
        _ => match framing(response) {
            Ok(framing) => Ok(Head::Final(length, framing, is_persistent(response))),
            Err(error @ (AttemptError::Status(_) | AttemptError::Redirect { .. })) => {
                let reusable = is_persistent(response) && body_arrived(response, following);
                Ok(Head::Rejected(Rejected { error, reusable }))
            }
            Err(error) => Err(error),
        },
    }
}

/// Tells whether a failed response's body is exactly the `following` bytes
/// read with its head: a single valid Content-Length that matches, and no
/// Transfer-Encoding. A 204 or 304 has no body, so nothing may follow it.
///
/// Only bytes already read count: waiting for more would delay the
/// attempt's failure for the sake of a connection.
fn body_arrived(response: &httparse::Response<'_, '_>, following: usize) -> bool {
    if matches!(response.code, Some(204 | 304)) {
        return following == 0;
    }
    if header(response, "transfer-encoding").is_some() {
        return false;
    }
    let mut lengths = response
        .headers
        .iter()
        .filter(|field| field.name.eq_ignore_ascii_case("content-length"));
    match (lengths.next(), lengths.next()) {
        (Some(field), None) => {
            parse_content_length(field.value).is_ok_and(|length| length == following as u64)
        }
        _ => false,
    }
}

/// Checks a final status and decides the body framing from the parsed head.
fn framing(response: &httparse::Response<'_, '_>) -> Result<Framing, AttemptError> {
    let status = response.code.unwrap_or(0);
    match status {
        200 => {}
        // A 304 responds to a conditional request, which fanout never makes;
        // there is nowhere it points to.
        300..=399 if status != 304 => {
            // The location only goes into messages, so a long one is cut short.
            let location = header(response, "location").map(|value| {
                String::from_utf8_lossy(&value[..value.len().min(MAX_LOCATION)]).into_owned()
            });
            return Err(AttemptError::Redirect { status, location });
        }
        _ => return Err(AttemptError::Status(status)),
    }

    let mut transfer_encoding = None;
    let mut content_length = None;
    for field in response.headers.iter() {
        if field.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(AttemptError::Malformed("repeated Transfer-Encoding"));
            }
            transfer_encoding = Some(field.value);
        } else if field.name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(field.value)?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err(AttemptError::Malformed("conflicting Content-Length values"));
            }
            content_length = Some(length);
        }
    }

    match (transfer_encoding, content_length) {
        // An HTTP/1.0 peer cannot have meant chunked framing (RFC 9112, 6.1).
        (Some(_), _) if response.version == Some(0) => Err(AttemptError::Malformed(
            "Transfer-Encoding in an HTTP/1.0 response",
        )),
        (Some(_), Some(_)) => Err(AttemptError::Malformed(
            "both Transfer-Encoding and Content-Length",
        )),
        (Some(coding), None) if trim(coding).eq_ignore_ascii_case(b"chunked") => {
            Ok(Framing::Chunked)
        }
        (Some(_), None) => Err(AttemptError::Malformed("unsupported Transfer-Encoding")),
        (None, Some(length)) => Ok(Framing::Length(length)),
        (None, None) => Ok(Framing::Close),
    }
}

/// Tells whether the head lets the connection carry another request: HTTP/1.1
/// and no `close` token in any `Connection` field. HTTP/1.0 keep-alive is
/// not used, since the upstreams fanout targets speak HTTP/1.1.
fn is_persistent(response: &httparse::Response<'_, '_>) -> bool {
    let closes = response
        .headers
        .iter()
        .filter(|field| field.name.eq_ignore_ascii_case("connection"))
        .flat_map(|field| field.value.split(|&byte| byte == b','))
        .any(|token| trim(token).eq_ignore_ascii_case(b"close"));
    response.version == Some(1) && !closes
}

fn header<'a>(response: &httparse::Response<'_, 'a>, name: &str) -> Option<&'a [u8]> {
    response
        .headers
        .iter()
        .find(|field| field.name.eq_ignore_ascii_case(name))
        .map(|field| field.value)
}

/// Parses a Content-Length value: ASCII digits only, so signs, lists and hex are rejected.
fn parse_content_length(value: &[u8]) -> Result<u64, AttemptError> {
    let digits = trim(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(AttemptError::Malformed("invalid Content-Length"));
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(AttemptError::Malformed("Content-Length overflows 64 bits"))
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

async fn read_length<R>(
    stream: &mut R,
    mut body: Vec<u8>,
    length: u64,
    max_body: usize,
) -> Result<Vec<u8>, AttemptError>
where
    R: AsyncRead + Unpin,
{
    let length = match usize::try_from(length) {
        Ok(length) if length <= max_body => length,
        _ => return Err(AttemptError::TooLarge { limit: max_body }),
    };
    while body.len() < length {
        // Reading a whole chunk rather than only the missing bytes shows
        // extra bytes that arrive with the last ones.
        let read = read_some(stream, &mut body, READ_CHUNK).await?;
        if read == 0 {
            return Err(AttemptError::Truncated(
                "connection closed before Content-Length bytes arrived",
            ));
        }
    }
    if body.len() > length {
        return Err(AttemptError::Malformed("more bytes than Content-Length"));
    }
    Ok(body)
}

async fn read_chunked<R>(
    stream: &mut R,
    pending: Vec<u8>,
    max_body: usize,
) -> Result<Vec<u8>, AttemptError>
where
    R: AsyncRead + Unpin,
{
    let mut decoder = ChunkedDecoder::new(max_body);
    let mut body = Vec::new();
    let mut input = pending;
    loop {
        let consumed = decoder
            .decode(&input, &mut body)
            .map_err(AttemptError::Chunked)?;
        if decoder.is_done() {
            if consumed < input.len() {
                return Err(AttemptError::Malformed("bytes after the last chunk"));
            }
            return Ok(body);
        }
        input.clear();
        if read_some(stream, &mut input, READ_CHUNK).await? == 0 {
            return Err(AttemptError::Truncated(
                "connection closed inside a chunked body",
            ));
        }
    }
}

async fn read_to_close<R>(
    stream: &mut R,
    mut body: Vec<u8>,
    max_body: usize,
) -> Result<Vec<u8>, AttemptError>
where
    R: AsyncRead + Unpin,
{
    loop {
        if body.len() > max_body {
            return Err(AttemptError::TooLarge { limit: max_body });
        }
        // One byte past the cap is enough to tell an oversized body.
        let room = max_body + 1 - body.len();
        if read_some(stream, &mut body, room).await? == 0 {
            return Ok(body);
        }
    }
}

/// Reads at most `limit` more bytes onto the end of `buffer`, holding no
/// buffer while it waits (see [`crate::read`]).
async fn read_some<R>(
    stream: &mut R,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> Result<usize, AttemptError>
where
    R: AsyncRead + Unpin,
{
    read::append::<_, READ_CHUNK>(stream, buffer, limit)
        .await
        .map_err(AttemptError::from_io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_read_has_no_buffer() {
        let mut stream: &[u8] = b"";
        let mut buffer = Vec::new();
        let read = read_some(&mut stream, &mut buffer, READ_CHUNK);
        // The read's array lives on the stack during a poll, not in the future.
        assert!(size_of_val(&read) < 128, "{} bytes", size_of_val(&read));
    }

    const LIMITS: Limits = Limits {
        max_head: MAX_HEAD,
        max_body: 64,
    };

    fn read(input: &[u8]) -> Result<Vec<u8>, AttemptError> {
        futures_lite::future::block_on(read_response(&mut &input[..], LIMITS))
            .map(|body| body.bytes)
            .map_err(|rejected| rejected.error)
    }

    #[test]
    fn reads_each_framing() {
        let cases: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\n\r\n{}",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        ];
        for input in cases {
            assert_eq!(
                read(input).unwrap(),
                b"{}",
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn classifies_failures() {
        let cases: &[(&[u8], &str)] = &[
            (b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", "http_status"),
            (b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n", "redirect"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n", "too_large"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}", "malformed_response"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "malformed_response"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{}", "malformed_response"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}", "truncated"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n", "malformed_response"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n", "truncated"),
            (b"HTTP/1.1 200 OK\r\n\r\n{\"time\": 1, \"pad\": \"0123456789012345678901234567890123456789012\"}", "too_large"),
            (b"HTTP/1.1 200", "truncated"),
            (b"", "truncated"),
            (b"NOT HTTP\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\n{}", "malformed_response"),
            (b"HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 100 Continue\r\n\r\n{}", "malformed_response"),
            (b"HTTP/1.1 100 Continue\r\n\r\n", "truncated"),
            (b"HTTP/1.1 204 No Content\r\n\r\n", "http_status"),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", "http_status"),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 204 No Content\r\n\r\n{}", "malformed_response"),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 13\r\n\r\n", "http_status"),
            (b"HTTP/1.1 304 Not Modified\r\n\r\n{}", "malformed_response"),
            (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "malformed_response"),
            (b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n", "http_status"),
        ];
        for (input, kind) in cases {
            let error = read(input).unwrap_err();
            assert_eq!(
                error.kind(),
                *kind,
                "input {:?}: {error}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rejects_endless_head() {
        let mut input = b"HTTP/1.1 200 OK\r\n".to_vec();
        input.resize(MAX_HEAD + 100, b'a');
        assert_eq!(read(&input).unwrap_err().kind(), "malformed_response");
    }

    #[test]
    fn rejects_endless_interim_responses() {
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        let input = interim.repeat(MAX_HEAD / interim.len() + 1);
        let error = read(&input).unwrap_err();
        assert_eq!(
            error.to_string(),
            "malformed response: response head larger than 16 KiB"
        );
    }

    #[test]
    fn sees_extra_bytes_that_arrive_after_the_head() {
        let pieces = Pieces::new(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}{}".to_vec(),
            vec![38, 4],
        );
        let error = read_from(pieces).unwrap_err();
        assert_eq!(
            error.to_string(),
            "malformed response: more bytes than Content-Length"
        );
    }

    /// A stream that hands out `data` in pieces of the given sizes, in turn.
    struct Pieces {
        data: Vec<u8>,
        position: usize,
        sizes: Vec<usize>,
        reads: usize,
    }

    impl Pieces {
        fn new(data: Vec<u8>, sizes: Vec<usize>) -> Pieces {
            Pieces {
                data,
                position: 0,
                sizes,
                reads: 0,
            }
        }
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let size = self.sizes[self.reads % self.sizes.len()].max(1);
            let end = (self.position + size.min(buf.len())).min(self.data.len());
            let count = end - self.position;
            buf[..count].copy_from_slice(&self.data[self.position..end]);
            self.position = end;
            self.reads += 1;
            std::task::Poll::Ready(Ok(count))
        }
    }

    fn read_from(mut stream: Pieces) -> Result<Vec<u8>, AttemptError> {
        futures_lite::future::block_on(read_response(&mut stream, LIMITS))
            .map(|body| body.bytes)
            .map_err(|rejected| rejected.error)
    }

    /// Encodes `body` as chunks of the given sizes, with one extension and one trailer.
    fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut turn = 0;
        while !rest.is_empty() {
            let size = sizes[turn % sizes.len()].clamp(1, rest.len());
            out.extend_from_slice(format!("{size:x};n=v\r\n").as_bytes());
            out.extend_from_slice(&rest[..size]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[size..];
            turn += 1;
        }
        out.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
        out
    }

    /// Builds a whole response carrying `body` with the framing numbered `framing`.
    fn framed(body: &[u8], framing: u8, sizes: &[usize], interim: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if interim {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        match framing {
            0 => {
                out.extend_from_slice(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                );
                out.extend_from_slice(body);
            }
            1 => {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                out.extend_from_slice(&chunked(body, sizes));
            }
            _ => {
                out.extend_from_slice(b"HTTP/1.0 200 OK\r\n\r\n");
                out.extend_from_slice(body);
            }
        }
        out
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn reads_any_body_in_any_pieces(
                body in vec(any::<u8>(), 0..=64),
                framing in 0u8..3,
                chunk_sizes in vec(1usize..20, 1..5),
                read_sizes in vec(1usize..40, 1..8),
                interim in any::<bool>(),
            ) {
                let input = framed(&body, framing, &chunk_sizes, interim);
                let read = read_from(Pieces::new(input, read_sizes));
                prop_assert_eq!(read.unwrap(), body);
            }

            #[test]
            fn cut_short_length_or_chunked_body_fails(
                body in vec(any::<u8>(), 1..=64),
                chunked in any::<bool>(),
                chunk_sizes in vec(1usize..20, 1..5),
                cut in any::<proptest::sample::Index>(),
            ) {
                let input = framed(&body, u8::from(chunked), &chunk_sizes, false);
                let cut = cut.index(input.len());
                prop_assert!(read_from(Pieces::new(input[..cut].to_vec(), vec![7])).is_err());
            }

            #[test]
            fn arbitrary_input_never_exceeds_the_limits(
                input in vec(any::<u8>(), 0..256),
                read_sizes in vec(1usize..64, 1..4),
            ) {
                if let Ok(body) = read_from(Pieces::new(input, read_sizes)) {
                    prop_assert!(body.len() <= LIMITS.max_body);
                }
            }

            #[test]
            fn arbitrary_bytes_after_a_valid_head_never_panic(
                framing in 0u8..3,
                tail in vec(any::<u8>(), 0..256),
            ) {
                let mut input = framed(b"", framing, &[1], false);
                // Drop the encoded empty body; keep only the head.
                let head_end = input.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                input.truncate(head_end);
                input.extend_from_slice(&tail);
                if let Ok(body) = read_from(Pieces::new(input, vec![13])) {
                    prop_assert!(body.len() <= LIMITS.max_body);
                }
            }
        }
    }

    #[test]
    fn reuse_needs_http11_framing_and_no_close() {
        let cases: &[(&[u8], bool)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: Upgrade, CLOSE\r\nContent-Length: 2\r\n\r\n{}",
                false,
            ),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", false),
            (b"HTTP/1.1 200 OK\r\n\r\n{}", false),
        ];
        for (input, reusable) in cases {
            let body =
                futures_lite::future::block_on(read_response(&mut &input[..], LIMITS)).unwrap();
            assert_eq!(body.bytes, b"{}");
            assert_eq!(
                body.reusable,
                *reusable,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn failed_status_reuse_needs_whole_body() {
        let cases: &[(&[u8], bool)] = &[
            (b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n{}", true),
            (b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", true),
            (
                b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", true),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                true,
            ),
            // The body has not all arrived, and fanout does not wait for it.
            (b"HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\n{}", false),
            (b"HTTP/1.1 500 Oops\r\nContent-Length: 1\r\n\r\n{}", false),
            (
                b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 500 Oops\r\n\r\n{}", false),
            (
                b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
                false,
            ),
            (b"HTTP/1.1 500 Oops\r\nContent-Length: +2\r\n\r\n{}", false),
            (
                b"HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
                false,
            ),
            (b"HTTP/1.0 500 Oops\r\nContent-Length: 2\r\n\r\n{}", false),
        ];
        for (input, reusable) in cases {
            let rejected = futures_lite::future::block_on(read_response(&mut &input[..], LIMITS))
                .expect_err("a failed status fails the attempt");
            assert!(
                matches!(
                    rejected.error,
                    AttemptError::Status(_) | AttemptError::Redirect { .. }
                ),
                "{:?}",
                rejected.error
            );
            assert_eq!(
                rejected.reusable,
                *reusable,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
