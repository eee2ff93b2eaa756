//! Parsing a request head with httparse into an owned [`Request`].

use std::fmt;
use std::mem::MaybeUninit;

use crate::observe::trace::{self, TraceContext};

/// The default for `--max-head-size`, in bytes. Real clients send well
/// under 2 KiB to this API, so 16 KiB leaves room for proxies' headers and
/// bounds each connection's buffer.
pub const DEFAULT_MAX_HEAD: usize = 16 * 1024;

/// The default for `--max-headers`.
pub const DEFAULT_MAX_HEADERS: usize = 64;

/// The default for `--max-target`, in bytes. The API's targets are under
/// 100 bytes; 8 KiB is what common servers and proxies accept, so a client
/// that works behind them works here.
pub const DEFAULT_MAX_TARGET: usize = 8 * 1024;

/// The largest `--max-headers` accepted. httparse fills an array of header
/// slots that the caller provides. One uninitialized array of this size on
/// the stack of each parse costs no allocation and no initialization. A heap
/// array sized from the option would cost an allocation per request, because
/// its entries borrow the read buffer and so cannot outlive one parse. 256
/// fields is four times the default.
pub const HEADERS_CEILING: usize = 256;

/// The largest `--max-head-size` and `--max-target` accepted, in bytes.
/// Each connection buffers up to one head, so this bounds its memory.
pub const HEAD_CEILING: usize = 1024 * 1024;

/// Room in a request line for the method, two spaces and the version
/// around the target. A head with no line end past the target limit plus
/// this gets 414 without waiting for the rest.
const REQUEST_LINE_EXTRA: usize = 32;

/// The size limits on a request head; past them a request gets 431 or 414.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// The largest head in bytes, request line and final empty line included; 431.
    pub max_head: usize,
    /// The maximum number of header fields, at most [`HEADERS_CEILING`]; 431.
    pub max_headers: usize,
    /// The maximum length of a request target in bytes; 414.
    pub max_target: usize,
}

impl Default for HeadLimits {
    fn default() -> HeadLimits {
        HeadLimits {
            max_head: DEFAULT_MAX_HEAD,
            max_headers: DEFAULT_MAX_HEADERS,
            max_target: DEFAULT_MAX_TARGET,
        }
    }
}

/// A parsed request head. The server reads no request body beyond discarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target in origin form: path and optional query. An
    /// absolute-form target (`http://host/path?query`) is stored as its path
    /// and query.
    pub target: String,
    /// The minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Length of a body to read and discard before the next request.
    pub content_length: u64,
    /// The client's valid `X-Request-Id`, or a generated one.
    pub request_id: String,
    /// The trace from a valid `traceparent`, or a new one; includes fanout's own span.
    pub trace: TraceContext,
    /// The client waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
}

impl Request {
    /// Returns the path part of the target, without the query.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(&self.target, |(path, _)| path)
    }

    /// Returns the query part of the target, without the `?`; empty when there is none.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, query)| query)
    }
}

/// Why a request head was rejected; each maps to one status in [`ParseError::status`].
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A head larger than this many bytes.
    HeadTooLarge(usize),
    /// More header fields than this.
    TooManyHeaders(usize),
    Invalid(httparse::Error),
    /// A Content-Length that is not plain digits, or two that differ.
    InvalidContentLength,
    /// Request bodies other than a plain Content-Length are not supported.
    TransferEncoding,
    /// The target is neither origin-form (`/path?query`) nor an absolute
    /// `http` or `https` URI: `*` and authority-form are for `OPTIONS` and
    /// `CONNECT`, which fanout does not serve.
    InvalidTarget,
    /// A target longer than this many bytes.
    TargetTooLong(usize),
    /// A request line with no end within the target limit, given here, plus
    /// [`REQUEST_LINE_EXTRA`]: its target, or its method, is too long.
    RequestLineTooLong(usize),
    /// An `Expect` other than `100-continue`.
    UnsupportedExpectation,
}

impl ParseError {
    pub fn status(&self) -> u16 {
        match self {
            ParseError::HeadTooLarge(_) | ParseError::TooManyHeaders(_) => 431,
            ParseError::TargetTooLong(_) | ParseError::RequestLineTooLong(_) => 414,
            ParseError::UnsupportedExpectation => 417,
            _ => 400,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::HeadTooLarge(max) => write!(f, "request head larger than {max} bytes"),
            ParseError::TooManyHeaders(max) => write!(f, "more than {max} header fields"),
            ParseError::Invalid(error) => write!(f, "malformed request: {error}"),
            ParseError::InvalidContentLength => {
                f.write_str("invalid Content-Length: expected one whole number")
            }
            ParseError::TransferEncoding => {
                f.write_str("request bodies with Transfer-Encoding are not supported")
            }
            ParseError::InvalidTarget => {
                f.write_str(
                    "invalid request target: expected a path starting with '/' or an absolute http:// or https:// URI",
                )
            }
            ParseError::TargetTooLong(max) => {
                write!(f, "request target longer than {max} bytes")
            }
            ParseError::RequestLineTooLong(max_target) => write!(
                f,
                "request line longer than {} bytes: the target may be at most {max_target} bytes",
                max_target.saturating_add(REQUEST_LINE_EXTRA)
            ),
            ParseError::UnsupportedExpectation => {
                f.write_str("unsupported Expect: only 100-continue is accepted")
            }
        }
    }
}

/// Parses the head at the start of `buffer`, within `limits`.
///
/// Returns the request and the head's length in bytes, or `None` when the
/// head is not complete yet.
pub fn parse(buffer: &[u8], limits: &HeadLimits) -> Result<Option<(Request, usize)>, ParseError> {
    let mut slots = [const { MaybeUninit::uninit() }; HEADERS_CEILING];
    let slots = &mut slots[..limits.max_headers.clamp(1, HEADERS_CEILING)];
    check_request_line(buffer, limits)?;
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(buffer, slots) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() >= limits.max_head => {
            return Err(ParseError::HeadTooLarge(limits.max_head));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ParseError::TooManyHeaders(limits.max_headers));
        }
        Err(error) => return Err(ParseError::Invalid(error)),
    };
    if length > limits.max_head {
        return Err(ParseError::HeadTooLarge(limits.max_head));
    }

    let method = parsed.method.unwrap_or_default().to_string();
    let target = parsed.path.unwrap_or_default();
    if target.len() > limits.max_target {
        return Err(ParseError::TargetTooLong(limits.max_target));
    }
    let target = origin_form(target).ok_or(ParseError::InvalidTarget)?;
    let minor_version = parsed.version.unwrap_or(1);
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut content_length = None;
    let mut request_id = None;
    let mut traceparent = None;
    let mut traceparent_fields = 0;
    let mut expect_continue = false;
    for field in parsed.headers.iter() {
        if field.name.eq_ignore_ascii_case("connection") {
            for token in field.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if field.name.eq_ignore_ascii_case("content-length") {
            let value = parse_content_length(field.value)?;
            if content_length.is_some_and(|previous| previous != value) {
                return Err(ParseError::InvalidContentLength);
            }
            content_length = Some(value);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ParseError::TransferEncoding);
        } else if field.name.eq_ignore_ascii_case(trace::REQUEST_ID_HEADER) {
            request_id = request_id.or(Some(field.value));
        } else if field.name.eq_ignore_ascii_case("traceparent") {
            traceparent = Some(field.value);
            traceparent_fields += 1;
        } else if field.name.eq_ignore_ascii_case("expect") && minor_version >= 1 {
            // HTTP/1.0 has no expectations, so RFC 9110 says to ignore the field there.
            if !field
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue")
            {
                return Err(ParseError::UnsupportedExpectation);
            }
            expect_continue = true;
        }
    }
    // Two `traceparent` fields cannot both name the parent, so neither is trusted.
    if traceparent_fields > 1 {
        traceparent = None;
    }

    // HTTP/1.1 keeps the connection open unless a side sends `Connection: close`; HTTP/1.0
    // closes it unless the client asks to keep it.
    let keep_alive = !connection_close && (minor_version >= 1 || connection_keep_alive);
    let request = Request {
        method,
        target: target.to_string(),
        minor_version,
        keep_alive,
        content_length: content_length.unwrap_or(0),
        request_id: trace::accept_request_id(request_id),
        trace: TraceContext::from_traceparent(traceparent),
        expect_continue,
    };
    Ok(Some((request, length)))
}

/// Rejects with 414 a head whose first line runs past the target limit plus
/// [`REQUEST_LINE_EXTRA`] with no line end, so a client that sends an
/// endless request line gets its response without sending the rest.
///
/// The result is the same whether the bytes arrived at once or a few at a
/// time, because only the bytes up to the limit decide it. When httparse
/// already rejects those bytes, its error wins, as it would on any shorter
/// prefix.
fn check_request_line(buffer: &[u8], limits: &HeadLimits) -> Result<(), ParseError> {
    let max_line = limits.max_target.saturating_add(REQUEST_LINE_EXTRA);
    if buffer.len() <= max_line {
        return Ok(());
    }
    let window = &buffer[..=max_line];
    if window.contains(&b'\n') {
        return Ok(());
    }
    let mut no_fields = [];
    match httparse::Request::new(&mut no_fields).parse(window) {
        Err(error) => Err(ParseError::Invalid(error)),
        Ok(_) => Err(ParseError::RequestLineTooLong(limits.max_target)),
    }
}

/// Returns the path and query of `target`, in origin form, or `None` when
/// it is in neither origin form nor absolute form.
///
/// Clients send absolute-form targets (RFC 9112, section 3.2.2) to proxies,
/// and a server must accept them too. The authority is dropped, because
/// fanout serves one host.
fn origin_form(target: &str) -> Option<String> {
    if target.starts_with('/') {
        return Some(target.to_string());
    }
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
    if path_start == 0 {
        // An absolute URI with an empty authority is invalid.
        return None;
    }
    match &rest[path_start..] {
        "" => Some("/".to_string()),
        query if query.starts_with('?') => Some(format!("/{query}")),
        path => Some(path.to_string()),
    }
}

fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::InvalidContentLength);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(ParseError::InvalidContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_default(input: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
        parse(input, &HeadLimits::default())
    }

    fn parse_complete(input: &[u8]) -> Request {
        parse_default(input).unwrap().unwrap().0
    }

    #[test]
    fn splits_path_and_query() {
        let request = parse_complete(b"GET /api/all?timeout=100&x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(request.path(), "/api/all");
        assert_eq!(request.query(), "timeout=100&x=1");
        assert!(request.keep_alive);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (
                b"GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_complete(input).keep_alive,
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn reads_request_id_and_traceparent() {
        let request = parse_complete(
            b"GET / HTTP/1.1\r\nX-Request-Id: abc-1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
        );
        assert_eq!(request.request_id, "abc-1");
        assert_eq!(
            request.trace.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(request.trace.parent_id.is_some());
    }

    #[test]
    fn duplicate_traceparent_starts_a_new_trace() {
        let request = parse_complete(
            b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
        );
        assert_eq!(request.trace.parent_id, None);
        assert_ne!(
            request.trace.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn absolute_form_is_routed_by_its_path() {
        let cases = [
            ("http://host/api/all?timeout=100", "/api/all", "timeout=100"),
            ("HTTPS://host:8080/api/first", "/api/first", ""),
            ("http://host", "/", ""),
            ("http://host?timeout=5", "/", "timeout=5"),
        ];
        for (target, path, query) in cases {
            let head = format!("GET {target} HTTP/1.1\r\nHost: other\r\n\r\n");
            let request = parse_complete(head.as_bytes());
            assert_eq!(request.path(), path, "{target}");
            assert_eq!(request.query(), query, "{target}");
        }
    }

    #[test]
    fn other_target_forms_are_rejected() {
        for target in [
            "*",
            "host:443",
            "ftp://host/api/all",
            "http:///api/all",
            "api/all",
        ] {
            let head = format!("GET {target} HTTP/1.1\r\n\r\n");
            assert_eq!(
                parse_default(head.as_bytes()),
                Err(ParseError::InvalidTarget),
                "{target}"
            );
        }
    }

    #[test]
    fn partial_head_needs_more() {
        assert_eq!(parse_default(b"GET /api/all HTTP/1.1\r\nHost:"), Ok(None));
    }

    #[test]
    fn rejects_bad_heads() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET /\x01 HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 400),
            (b"GET * HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ];
        for (input, status) in cases {
            let error = parse_default(input).unwrap_err();
            assert_eq!(
                error.status(),
                *status,
                "{:?}: {error}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn long_target_is_414_before_the_head_ends() {
        let target = format!("/{}", "a".repeat(DEFAULT_MAX_TARGET));
        let complete = format!("GET {target} HTTP/1.1\r\n\r\n");
        assert_eq!(
            parse_default(complete.as_bytes()).err(),
            Some(ParseError::TargetTooLong(DEFAULT_MAX_TARGET))
        );
        let longest = format!("GET {} HTTP/1.1\r\n\r\n", &target[..DEFAULT_MAX_TARGET]);
        assert!(parse_default(longest.as_bytes()).is_ok());

        let mut line = format!("GET {target}").into_bytes();
        line.resize(DEFAULT_MAX_TARGET + REQUEST_LINE_EXTRA + 1, b'a');
        assert_eq!(
            parse_default(&line),
            Err(ParseError::RequestLineTooLong(DEFAULT_MAX_TARGET))
        );
        assert_eq!(ParseError::TargetTooLong(1).status(), 414);
        assert_eq!(ParseError::RequestLineTooLong(1).status(), 414);
    }

    #[test]
    fn long_request_line_is_414_however_it_arrives() {
        let limits = HeadLimits {
            max_head: 1024,
            max_headers: 8,
            max_target: 64,
        };
        let method = "M".repeat(100);
        let whole = format!("{method} /x HTTP/1.1\r\n\r\n");
        assert_eq!(
            parse(whole.as_bytes(), &limits),
            Err(ParseError::RequestLineTooLong(64))
        );
        assert_eq!(
            parse(&whole.as_bytes()[..97], &limits),
            Err(ParseError::RequestLineTooLong(64))
        );
        assert_eq!(
            ParseError::RequestLineTooLong(64).to_string(),
            "request line longer than 96 bytes: the target may be at most 64 bytes"
        );

        // A bad byte before the limit is reported as such, whole or in part.
        let bad = format!("GET /\x01{} HTTP/1.1\r\n\r\n", "a".repeat(200));
        assert!(matches!(
            parse(bad.as_bytes(), &limits),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse(&bad.as_bytes()[..10], &limits),
            Err(ParseError::Invalid(_))
        ));
    }

    #[test]
    fn expect_accepts_only_100_continue() {
        let request = parse_complete(b"GET / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n");
        assert!(request.expect_continue);
        assert!(!parse_complete(b"GET / HTTP/1.1\r\n\r\n").expect_continue);

        let error = parse_default(b"GET / HTTP/1.1\r\nExpect: teapot\r\n\r\n").unwrap_err();
        assert_eq!(error, ParseError::UnsupportedExpectation);
        assert_eq!(error.status(), 417);

        let old = parse_complete(b"GET / HTTP/1.0\r\nExpect: teapot\r\n\r\n");
        assert!(!old.expect_continue);
    }

    #[test]
    fn limits_head_size_and_header_count() {
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(DEFAULT_MAX_HEAD, b'a');
        assert_eq!(
            parse_default(&long),
            Err(ParseError::HeadTooLarge(DEFAULT_MAX_HEAD))
        );

        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=DEFAULT_MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_default(&many),
            Err(ParseError::TooManyHeaders(DEFAULT_MAX_HEADERS))
        );
    }

    #[test]
    fn limits_follow_the_options() {
        let limits = HeadLimits {
            max_head: 200,
            max_headers: 2,
            max_target: 20,
        };
        let two = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(parse(two, &limits).is_ok());
        let three = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(parse(three, &limits), Err(ParseError::TooManyHeaders(2)));

        let target = format!("/{}", "a".repeat(19));
        let longest = format!("GET {target} HTTP/1.1\r\n\r\n");
        assert!(parse(longest.as_bytes(), &limits).is_ok());
        let longer = format!("GET {target}a HTTP/1.1\r\n\r\n");
        assert_eq!(
            parse(longer.as_bytes(), &limits),
            Err(ParseError::TargetTooLong(20))
        );

        let mut large = b"GET / HTTP/1.1\r\nX: ".to_vec();
        large.resize(200, b'a');
        assert_eq!(parse(&large, &limits), Err(ParseError::HeadTooLarge(200)));
        assert_eq!(
            ParseError::HeadTooLarge(200).to_string(),
            "request head larger than 200 bytes"
        );
    }

    #[test]
    fn header_count_is_capped_by_the_slot_array() {
        let limits = HeadLimits {
            max_headers: HEADERS_CEILING + 10,
            ..HeadLimits::default()
        };
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=HEADERS_CEILING {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse(&many, &limits),
            Err(ParseError::TooManyHeaders(_))
        ));
    }
}
