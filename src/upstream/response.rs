//! Reading one upstream response: the head with httparse, then the body by
//! its framing (Content-Length, chunked, or connection close).

use futures_lite::{AsyncRead, AsyncReadExt};

use super::chunked::ChunkedDecoder;
use super::error::AttemptError;

/// The largest response head read from the upstream, in bytes. The real
/// upstream sends a few hundred; anything past this is not a sane response.
pub const MAX_HEAD: usize = 16 * 1024;

/// The most header fields parsed in a response head.
const MAX_HEADERS: usize = 64;

/// The most bytes of a redirect's `Location` kept for the error message.
const MAX_LOCATION: usize = 256;

/// The size of each read from the upstream socket. A response from the
/// upstream is a few hundred bytes, so one read usually takes all of it.
/// Every pending attempt keeps such a buffer, so at 10,000 attempts in
/// flight each KiB here is 10 MB of memory.
const READ_CHUNK: usize = 1024;

/// Limits that bound the memory one upstream response may use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_head: usize,
    pub max_body: usize,
}

/// How the end of the body is found.
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

/// Reads a response from `stream` and returns its body when the status is 200,
/// and whether the connection may carry another request.
///
/// Any other status fails at once without reading the body, so its
/// connection must not be reused.
pub async fn read_response<R>(stream: &mut R, limits: Limits) -> Result<Body, AttemptError>
where
    R: AsyncRead + Unpin,
{
    let mut buffer = Vec::with_capacity(READ_CHUNK);
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

/// Reads until the head parses, then checks the status and chooses the framing.
///
/// Returns the head's length, the framing, and whether the head allows the
/// connection to stay open.
async fn read_head<R>(
    stream: &mut R,
    buffer: &mut Vec<u8>,
    limits: Limits,
) -> Result<(usize, Framing, bool), AttemptError>
where
    R: AsyncRead + Unpin,
{
    loop {
        if let Some(head) = parse_head(buffer)? {
            return Ok(head);
        }

        if buffer.len() >= limits.max_head {
            return Err(AttemptError::Malformed("response head larger than 16 KiB"));
        }
        let read = read_some(stream, buffer, limits.max_head - buffer.len()).await?;
        if read == 0 {
            let detail = if buffer.is_empty() {
                "connection closed before any response byte"
            } else {
                "connection closed inside the response head"
            };
            return Err(AttemptError::Truncated(detail));
        }
    }
}

/// Parses the head in `buffer`, returning `None` while it is incomplete.
///
/// A plain function, not part of the async reader, so that the 2 KiB array
/// of header slots lives on the stack for the call instead of in every
/// pending attempt's future.
fn parse_head(buffer: &[u8]) -> Result<Option<(usize, Framing, bool)>, AttemptError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => {
            let framing = framing(&response)?;
            Ok(Some((length, framing, is_persistent(&response))))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            Err(AttemptError::Malformed("more than 64 header fields"))
        }
        Err(error) => Err(AttemptError::MalformedHead(error)),
    }
}

/// Checks the status and decides the body framing from the parsed head.
fn framing(response: &httparse::Response<'_, '_>) -> Result<Framing, AttemptError> {
    let status = response.code.unwrap_or(0);
    match status {
        200 => {}
        300..=399 => {
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
        let missing = length - body.len();
        let read = read_some(stream, &mut body, missing).await?;
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

/// Reads at most `limit` more bytes into the spare end of `buffer`.
async fn read_some<R>(
    stream: &mut R,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> Result<usize, AttemptError>
where
    R: AsyncRead + Unpin,
{
    let start = buffer.len();
    buffer.resize(start + limit.clamp(1, READ_CHUNK), 0);
    let result = stream.read(&mut buffer[start..]).await;
    let read = *result.as_ref().unwrap_or(&0);
    buffer.truncate(start + read);
    result.map_err(AttemptError::from_io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: MAX_HEAD,
        max_body: 64,
    };

    fn read(input: &[u8]) -> Result<Vec<u8>, AttemptError> {
        futures_lite::future::block_on(read_response(&mut &input[..], LIMITS))
            .map(|body| body.bytes)
    }

    #[test]
    fn reads_each_framing() {
        let cases: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\n{}",
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
}
