//! The `fanout healthcheck` client: one `GET /healthz` to the gateway on the
//! same host, for container engines that run a command to probe health.
//!
//! A `FROM scratch` image has no curl, so the binary probes itself. The probe
//! only ever connects to a loopback address: it derives that address from
//! the gateway's listen address and rejects any other, so a misconfigured
//! health check cannot send traffic off the host.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use async_io::Timer;
use async_net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};

/// The path probed: it returns 200 while the process serves requests.
pub const PATH: &str = "/healthz";

/// The largest response head read. The gateway's health response is under
/// 200 bytes; anything longer than this is not the gateway.
const MAX_HEAD: usize = 4096;

/// The maximum number of header fields parsed in the response head.
const MAX_HEADERS: usize = 32;

/// A failed health check.
#[derive(Debug)]
pub enum HealthError {
    /// The listen address gives no loopback address to connect to.
    NotLoopback(SocketAddr),
    /// The listen address has port 0, so the gateway's port is unknown.
    NoPort(SocketAddr),
    Connect(SocketAddr, io::Error),
    Io(io::Error),
    /// The response head did not parse, or the connection closed before it ended.
    Malformed(String),
    /// The gateway responded with a status other than 200.
    Status(u16),
    TimedOut(Duration),
}

impl fmt::Display for HealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthError::NotLoopback(listen) => write!(
                f,
                "listen address {listen} is not loopback or unspecified (0.0.0.0 or ::): \
                 the health check connects only to loopback, so set --listen to the gateway's"
            ),
            HealthError::NoPort(listen) => write!(
                f,
                "listen address {listen} has port 0: set --listen to the port the gateway listens on"
            ),
            HealthError::Connect(address, error) => {
                write!(f, "connecting to {address} failed: {error}")
            }
            HealthError::Io(error) => write!(f, "I/O error: {error}"),
            HealthError::Malformed(detail) => write!(f, "malformed response: {detail}"),
            HealthError::Status(status) => write!(f, "GET {PATH} returned HTTP status {status}"),
            HealthError::TimedOut(timeout) => {
                write!(f, "no response within {} ms", timeout.as_millis())
            }
        }
    }
}

impl std::error::Error for HealthError {}

/// Returns the loopback address to probe for a gateway listening on `listen`.
///
/// An unspecified address (`0.0.0.0`, `::`) accepts on every interface, so
/// the same family's loopback reaches it. A loopback address is used as is.
/// Any other address is rejected instead of being contacted.
pub fn probe_address(listen: SocketAddr) -> Result<SocketAddr, HealthError> {
    if listen.port() == 0 {
        return Err(HealthError::NoPort(listen));
    }
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip if ip.is_loopback() => ip,
        _ => return Err(HealthError::NotLoopback(listen)),
    };
    Ok(SocketAddr::new(ip, listen.port()))
}

/// Requests `GET /healthz` from the gateway listening on `listen` and
/// succeeds only on status 200 within `timeout`, which bounds all phases together.
pub fn check(listen: SocketAddr, timeout: Duration) -> Result<SocketAddr, HealthError> {
    let address = probe_address(listen)?;
    let expired = async {
        Timer::after(timeout).await;
        Err(HealthError::TimedOut(timeout))
    };
    // The request is polled first, so a response that arrives in the same
    // wakeup as the deadline still counts.
    let status = futures_lite::future::block_on(request_status(address).or(expired))?;
    match status {
        200 => Ok(address),
        status => Err(HealthError::Status(status)),
    }
}

/// Sends the request on a new connection and returns the response status.
async fn request_status(address: SocketAddr) -> Result<u16, HealthError> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|error| HealthError::Connect(address, error))?;
    let request = format!(
        "GET {PATH} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: fanout-healthcheck/{}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(HealthError::Io)?;

    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let read = stream.read(&mut chunk).await.map_err(HealthError::Io)?;
        if read == 0 {
            let detail = "connection closed before the end of the response head";
            return Err(HealthError::Malformed(detail.into()));
        }
        head.extend_from_slice(&chunk[..read]);
        if let Some(status) = parse_status(&head)? {
            return Ok(status);
        }
        if head.len() >= MAX_HEAD {
            let detail = format!("response head longer than {MAX_HEAD} bytes");
            return Err(HealthError::Malformed(detail));
        }
    }
}

/// Returns the status of a complete response head, or `None` while it is incomplete.
fn parse_status(head: &[u8]) -> Result<Option<u16>, HealthError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => Ok(response.code),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(error) => Err(HealthError::Malformed(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(listen: &str) -> Result<String, String> {
        probe_address(listen.parse().unwrap())
            .map(|address| address.to_string())
            .map_err(|error| error.to_string())
    }

    #[test]
    fn unspecified_maps_to_loopback() {
        assert_eq!(probe("0.0.0.0:8080"), Ok("127.0.0.1:8080".into()));
        assert_eq!(probe("[::]:8080"), Ok("[::1]:8080".into()));
    }

    #[test]
    fn loopback_is_kept() {
        assert_eq!(probe("127.0.0.1:9000"), Ok("127.0.0.1:9000".into()));
        assert_eq!(probe("127.0.0.2:9000"), Ok("127.0.0.2:9000".into()));
        assert_eq!(probe("[::1]:9000"), Ok("[::1]:9000".into()));
    }

    #[test]
    fn other_addresses_are_rejected() {
        for listen in ["192.0.2.1:8080", "10.0.0.1:8080", "[2001:db8::1]:8080"] {
            let error = probe(listen).unwrap_err();
            assert!(error.contains("is not loopback or unspecified"), "{error}");
        }
    }

    #[test]
    fn port_zero_is_rejected() {
        let error = probe("0.0.0.0:0").unwrap_err();
        assert!(error.contains("has port 0"), "{error}");
    }

    #[test]
    fn status_parses_only_from_a_complete_head() {
        assert!(matches!(parse_status(b"HTTP/1.1 200 OK\r\n"), Ok(None)));
        let head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(parse_status(head), Ok(Some(503))));
        assert!(matches!(
            parse_status(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(HealthError::Malformed(_))
        ));
    }
}
