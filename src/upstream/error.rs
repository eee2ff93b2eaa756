//! The ways one upstream attempt can fail, each with a stable kind name for logs and metrics.

use std::fmt;
use std::io;

use super::chunked::ChunkedError;
use super::payload::PayloadError;
use super::tls::TlsError;

/// A failed upstream attempt.
#[derive(Debug)]
pub enum AttemptError {
    /// The host name did not resolve to any address.
    Resolve(io::Error),
    /// Every resolved address refused the connection.
    Refused,
    /// Connecting failed for a reason other than a refusal.
    Connect(io::Error),
    Tls(TlsError),
    /// The peer reset the connection after it was established.
    Reset,
    Io(io::Error),
    /// The connection closed before the response was complete.
    Truncated(&'static str),
    /// A response head httparse could not parse.
    MalformedHead(httparse::Error),
    /// A response that parsed but broke the framing rules.
    Malformed(&'static str),
    Chunked(ChunkedError),
    /// A 3xx status; redirects are not followed because the upstream URL is fixed by configuration.
    Redirect {
        status: u16,
        location: Option<String>,
    },
    /// A status other than 200 and 3xx.
    Status(u16),
    /// A body larger than the cap, in bytes.
    TooLarge {
        limit: usize,
    },
    InvalidPayload(PayloadError),
}

impl AttemptError {
    /// Maps an I/O error after connecting, singling out resets.
    pub fn from_io(error: io::Error) -> AttemptError {
        match error.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => AttemptError::Reset,
            _ => AttemptError::Io(error),
        }
    }

    /// Returns a short, stable name for the failure, used in logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            AttemptError::Resolve(_) => "resolve_error",
            AttemptError::Refused => "connect_refused",
            AttemptError::Connect(_) => "connect_error",
            AttemptError::Tls(_) => "tls_error",
            AttemptError::Reset => "reset",
            AttemptError::Io(_) => "io_error",
            AttemptError::Truncated(_) => "truncated",
            AttemptError::MalformedHead(_)
            | AttemptError::Malformed(_)
            | AttemptError::Chunked(_) => "malformed_response",
            AttemptError::Redirect { .. } => "redirect",
            AttemptError::Status(_) => "http_status",
            AttemptError::TooLarge { .. } => "too_large",
            AttemptError::InvalidPayload(_) => "invalid_payload",
        }
    }

    /// Returns the HTTP status the upstream sent, when the attempt got that far.
    pub fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Redirect { status, .. } | AttemptError::Status(status) => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Resolve(error) => write!(f, "name resolution failed: {error}"),
            AttemptError::Refused => f.write_str("connection refused"),
            AttemptError::Connect(error) => write!(f, "connect failed: {error}"),
            AttemptError::Tls(error) => write!(f, "TLS handshake failed: {error}"),
            AttemptError::Reset => f.write_str("connection reset by the upstream"),
            AttemptError::Io(error) => write!(f, "I/O error: {error}"),
            AttemptError::Truncated(detail) => f.write_str(detail),
            AttemptError::MalformedHead(error) => write!(f, "malformed response head: {error}"),
            AttemptError::Malformed(detail) => write!(f, "malformed response: {detail}"),
            AttemptError::Chunked(error) => write!(f, "malformed response: {error}"),
            AttemptError::Redirect {
                status,
                location: Some(location),
            } => {
                write!(f, "redirect {status} to {location:?} not followed")
            }
            AttemptError::Redirect {
                status,
                location: None,
            } => write!(f, "redirect {status} not followed"),
            AttemptError::Status(status) => write!(f, "HTTP status {status}"),
            AttemptError::TooLarge { limit } => write!(f, "body larger than {limit} bytes"),
            AttemptError::InvalidPayload(error) => write!(f, "invalid payload: {error}"),
        }
    }
}

impl std::error::Error for AttemptError {}
