//! The upstream client: one attempt is connect, optional TLS handshake, one
//! request, one response, and validation of its payload.
//!
//! An attempt has no timeout of its own. The caller races it against the
//! request's deadline and drops it when the deadline passes or the race is
//! decided; dropping closes its socket at once, whatever phase it is in.

mod chunked;
mod error;
mod payload;
mod response;
mod stream;
mod tls;
mod url;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_net::TcpStream;
use futures_lite::AsyncWriteExt;

pub use self::chunked::{ChunkedDecoder, ChunkedError};
pub use self::error::AttemptError;
pub use self::payload::{PayloadError, validate};
pub use self::response::{Limits, MAX_HEAD};
pub use self::stream::MaybeTls;
pub use self::tls::{CaError, TlsConnector, TlsError, TlsStream};
pub use self::url::{Scheme, UpstreamUrl, UrlError};

/// The largest upstream body accepted, in bytes. The real upstream sends
/// about 15; the cap leaves room for richer payloads while keeping the memory
/// of each attempt small.
pub const MAX_BODY: usize = 64 * 1024;

/// A successful upstream payload: one JSON object, as the upstream sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload(Vec<u8>);

impl Payload {
    /// Wraps bytes that a test treats as an already validated payload.
    #[cfg(test)]
    pub(crate) fn from_static(bytes: &'static str) -> Payload {
        Payload(bytes.as_bytes().to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Sends requests to one upstream URL. Cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    url: UpstreamUrl,
    /// Present exactly when the scheme is https.
    tls: Option<TlsConnector>,
    /// The request head up to the per-request headers, built once because it
    /// never changes; it ends with a field's CRLF, not the blank line.
    request_start: Vec<u8>,
    limits: Limits,
}

impl Client {
    /// Creates a client for `url`, trusting `extra_ca_pem` in addition to the system roots.
    pub fn new(url: UpstreamUrl, extra_ca_pem: Option<&[u8]>) -> Result<Client, CaError> {
        let tls = match url.scheme {
            Scheme::Https => Some(TlsConnector::new(extra_ca_pem)?),
            Scheme::Http => None,
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: fanout/{}\r\nAccept: application/json\r\nConnection: close\r\n",
            url.target,
            url.authority,
            env!("CARGO_PKG_VERSION"),
        );
        let limits = Limits {
            max_head: MAX_HEAD,
            max_body: MAX_BODY,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                url,
                tls,
                request_start: request.into_bytes(),
                limits,
            }),
        })
    }

    pub fn url(&self) -> &UpstreamUrl {
        &self.inner.url
    }

    /// Makes one upstream request and returns its payload if it is a success.
    ///
    /// `extra_headers` are added to the request as they are: complete header
    /// fields, each ending in CRLF, which the caller has checked are safe to
    /// send (no CR or LF inside a value).
    pub async fn fetch(&self, extra_headers: &str) -> Result<Payload, AttemptError> {
        let inner = &*self.inner;
        // One buffer so the request goes out in one write.
        let mut request = Vec::with_capacity(inner.request_start.len() + extra_headers.len() + 2);
        request.extend_from_slice(&inner.request_start);
        request.extend_from_slice(extra_headers.as_bytes());
        request.extend_from_slice(b"\r\n");

        let tcp = connect(&inner.url).await?;
        let mut stream = match &inner.tls {
            None => MaybeTls::Plain(tcp),
            Some(connector) => {
                let tls = connector
                    .connect(&inner.url.host, tcp)
                    .await
                    .map_err(AttemptError::Tls)?;
                MaybeTls::Tls(Box::new(tls))
            }
        };

        stream
            .write_all(&request)
            .await
            .map_err(AttemptError::from_io)?;
        stream.flush().await.map_err(AttemptError::from_io)?;
        let body = response::read_body(&mut stream, inner.limits).await?;
        let payload = validate(&body).map_err(AttemptError::InvalidPayload)?;
        Ok(Payload(payload.to_vec()))
    }
}

/// Connects to the first address of `url` that accepts, trying them in resolver order.
async fn connect(url: &UpstreamUrl) -> Result<TcpStream, AttemptError> {
    let addresses: Vec<SocketAddr> = match url.ip() {
        Some(ip) => vec![SocketAddr::new(ip, url.port)],
        None => async_net::resolve((url.host.as_str(), url.port))
            .await
            .map_err(AttemptError::Resolve)?,
    };
    if addresses.is_empty() {
        let error = io::Error::new(io::ErrorKind::NotFound, "no addresses");
        return Err(AttemptError::Resolve(error));
    }

    let mut last_error = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                // Requests are written whole, so Nagle's delay would only add latency.
                stream.set_nodelay(true).map_err(AttemptError::Connect)?;
                return Ok(stream);
            }
            Err(error) => last_error = Some(error),
        }
    }
    match last_error {
        Some(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            Err(AttemptError::Refused)
        }
        Some(error) => Err(AttemptError::Connect(error)),
        None => Err(AttemptError::Refused),
    }
}
