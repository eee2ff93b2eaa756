//! The upstream client: one attempt is an idle pooled connection or a new
//! one (connect and optional TLS handshake), one request, one response, and
//! validation of its payload.
//!
//! An attempt has no timeout of its own. The caller races it against the
//! request's deadline and drops it when the deadline passes or the race is
//! decided. Dropping closes its socket at once, whatever phase it is in (with
//! a reset once its exchange has begun), and the connection never returns to
//! the pool.

mod chunked;
mod error;
mod exchange;
mod payload;
mod pool;
mod response;
mod stream;
mod tls;
mod url;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_net::TcpStream;

pub use self::chunked::{ChunkedDecoder, ChunkedError};
pub use self::error::AttemptError;
pub use self::payload::{PayloadError, validate};
pub use self::pool::{PoolConfig, PoolStats, stats as pool_stats};
pub use self::response::{Limits, MAX_HEAD};
pub use self::stream::MaybeTls;
pub use self::tls::{CaError, TlsConnector, TlsError, TlsStream};
pub use self::url::{Scheme, UpstreamUrl, UrlError};

use self::pool::Pool;

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
    pool: Arc<Pool>,
}

impl Client {
    /// Creates a client for `url`, trusting `extra_ca_pem` in addition to the
    /// system roots, and keeping idle connections with the settings in `pool`.
    pub fn new(
        url: UpstreamUrl,
        extra_ca_pem: Option<&[u8]>,
        pool: PoolConfig,
    ) -> Result<Client, CaError> {
        let tls = match url.scheme {
            Scheme::Https => Some(TlsConnector::new(extra_ca_pem)?),
            Scheme::Http => None,
        };
        let pool = Pool::new(pool);
        // Without a pool, the request carries `Connection: close`, so neither
        // side keeps a connection that will never carry a second request.
        let connection = if pool.is_enabled() {
            ""
        } else {
            "Connection: close\r\n"
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: fanout/{}\r\nAccept: application/json\r\n{connection}",
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
                pool: Arc::new(pool),
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

        let open = || open(&inner.url, inner.tls.as_ref());
        let mut body = exchange::send(&inner.pool, &request, inner.limits, open).await?;
        validate(&body).map_err(AttemptError::InvalidPayload)?;
        // The payload is the body without surrounding whitespace, so the
        // body's buffer is trimmed in place instead of copied.
        body.truncate(body.trim_ascii_end().len());
        let start = body.len() - body.trim_ascii_start().len();
        body.drain(..start);
        Ok(Payload(body))
    }

    /// Returns a task that closes connections idle past the timeout, and
    /// ends once every clone of this client is dropped. Spawn it once.
    pub fn close_idle_connections(&self) -> impl Future<Output = ()> + Send + 'static {
        pool::close_expired_forever(Arc::downgrade(&self.inner.pool))
    }
}

/// Opens a new connection to `url`: TCP, then a TLS handshake when `tls` is given.
async fn open(
    url: &UpstreamUrl,
    tls: Option<&TlsConnector>,
) -> Result<pool::Connection, AttemptError> {
    let tcp = connect(url).await?;
    match tls {
        None => Ok(MaybeTls::Plain(tcp)),
        Some(connector) => {
            let tls = connector
                .connect(&url.host, tcp)
                .await
                .map_err(AttemptError::Tls)?;
            Ok(MaybeTls::Tls(Box::new(tls)))
        }
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
