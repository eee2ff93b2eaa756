//! Responses: a status, a body (JSON unless another content type is set), and their encoding into one buffer.

use std::io::Write;

use crate::log::AttemptRecord;

/// A response to one request. Bodies are framed by Content-Length.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// `application/json` unless built by [`Response::with_content_type`].
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Headers beyond the framing ones, such as `Allow`.
    pub headers: Vec<(&'static str, String)>,
    /// The upstream attempts behind this response, for the access log.
    pub attempts: Vec<AttemptRecord>,
    /// The request's valid `timeout` parameter, for the access log.
    pub timeout_ms: Option<u64>,
}

impl Response {
    /// Creates a response with a body that is already JSON.
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response::with_content_type(status, "application/json", body)
    }

    /// Creates a response whose body is of `content_type`.
    pub fn with_content_type(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            body,
            headers: Vec::new(),
            attempts: Vec::new(),
            timeout_ms: None,
        }
    }

    /// Creates an error response with the body `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        let body = serde_json::json!({ "error": message })
            .to_string()
            .into_bytes();
        Response::json(status, body)
    }

    /// Drops the body, for a response to `HEAD`, which carries none.
    ///
    /// The head then says `Content-Length: 0`. RFC 9110 lets a HEAD response
    /// give the length a GET would get instead, but no handler computes
    /// that, and a length of 0 keeps a client that reads a body anyway in
    /// step with the connection.
    pub fn without_body(mut self) -> Response {
        self.body.clear();
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Encodes the head and body into `out`, so the response goes out in one write.
    ///
    /// `Connection: close` is sent when the connection will close;
    /// `Connection: keep-alive` only to an HTTP/1.0 client that asked for it,
    /// since keep-alive is the default in HTTP/1.1.
    pub fn encode(&self, keep_alive: bool, minor_version: u8, out: &mut Vec<u8>) {
        out.reserve(160 + self.body.len());
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
        );
        match (keep_alive, minor_version) {
            (false, _) => out.extend_from_slice(b"Connection: close\r\n"),
            (true, 0) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            (true, _) => {}
        }
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
    }
}

/// Returns the reason phrase for the statuses fanout sends.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_error_with_framing() {
        let mut out = Vec::new();
        Response::error(405, "method \"POST\" not allowed")
            .with_header("Allow", "GET")
            .encode(false, 1, &mut out);
        let text = String::from_utf8(out).unwrap();
        let body = r#"{"error":"method \"POST\" not allowed"}"#;
        let expected = format!(
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nAllow: GET\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn sends_the_content_type_it_was_given() {
        let mut out = Vec::new();
        Response::with_content_type(200, "text/plain; version=0.0.4", b"x 1\n".to_vec())
            .encode(true, 1, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"),
            "{text}"
        );
    }

    #[test]
    fn marks_http10_keep_alive() {
        let mut out = Vec::new();
        Response::json(200, b"{}".to_vec()).encode(true, 0, &mut out);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("\r\nConnection: keep-alive\r\n")
        );
    }
}
