//! An async adapter over `native-tls` that shares one connector across connections.
//!
//! `native-tls` is written for blocking streams. The adapter hands it a
//! [`Bridge`] that polls the async socket with the waker of the current task
//! and turns `Pending` into `WouldBlock`, which TLS libraries treat as "try
//! again later". Each poll of [`TlsStream`] stores the current waker in the
//! bridge before calling into `native-tls`, so a socket that is not ready
//! wakes the right task. No unsafe code and no second runtime are involved.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_lite::{AsyncRead, AsyncWrite};
use native_tls::HandshakeError;

/// A TLS client configuration built once at start and shared by every connection.
///
/// Building a `native_tls::TlsConnector` loads the system CA bundle, which
/// costs tens of milliseconds of CPU; a handshake on a prebuilt connector
/// costs only the handshake itself. Cloning is cheap: the OpenSSL context
/// inside is reference-counted.
#[derive(Clone)]
pub struct TlsConnector {
    inner: native_tls::TlsConnector,
}

impl TlsConnector {
    /// Builds a connector that trusts the system roots plus `extra_ca_pem`, if given.
    ///
    /// Certificate and host-name verification stay on; there is no option to
    /// turn them off.
    pub fn new(extra_ca_pem: Option<&[u8]>) -> Result<TlsConnector, CaError> {
        let mut builder = native_tls::TlsConnector::builder();
        if let Some(pem) = extra_ca_pem {
            let certificates =
                native_tls::Certificate::stack_from_pem(pem).map_err(CaError::Invalid)?;
            // A file with no certificate in it is a mistake, not a request to
            // trust nothing extra.
            if certificates.is_empty() {
                return Err(CaError::Empty);
            }
            for certificate in certificates {
                builder.add_root_certificate(certificate);
            }
        }
        let inner = builder.build().map_err(CaError::Invalid)?;
        Ok(TlsConnector { inner })
    }

    /// Runs a client handshake for `domain` over `stream`.
    pub async fn connect<S>(&self, domain: &str, stream: S) -> Result<TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let bridge = Bridge {
            stream,
            waker: Waker::noop().clone(),
            read_ahead: Vec::new(),
            consumed: 0,
        };
        let mut handshake = match self.inner.connect(domain, bridge) {
            Ok(tls) => return Ok(TlsStream { inner: tls }),
            Err(HandshakeError::Failure(error)) => return Err(TlsError(error)),
            Err(HandshakeError::WouldBlock(mid)) => Some(mid),
        };

        // The first attempt above ran with a no-op waker, so the handshake is
        // resumed right away with the real one before the task can sleep.
        poll_fn(|cx| {
            let mut mid = handshake.take().expect("handshake polled after completion");
            mid.get_mut().set_waker(cx);
            match mid.handshake() {
                Ok(tls) => Poll::Ready(Ok(TlsStream { inner: tls })),
                Err(HandshakeError::Failure(error)) => Poll::Ready(Err(TlsError(error))),
                Err(HandshakeError::WouldBlock(mid)) => {
                    handshake = Some(mid);
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// An error from loading the extra CA certificates.
#[derive(Debug)]
pub enum CaError {
    /// The PEM data holds no `CERTIFICATE` block.
    Empty,
    Invalid(native_tls::Error),
}

impl std::fmt::Display for CaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaError::Empty => f.write_str("no PEM certificate found"),
            CaError::Invalid(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for CaError {}

/// A failed TLS handshake: an untrusted certificate, a host-name mismatch, or a protocol error.
#[derive(Debug)]
pub struct TlsError(native_tls::Error);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TlsError {}

/// The maximum number of bytes [`Bridge`] reads from the socket at once when TLS requests fewer.
const READ_AHEAD: usize = 4096;

/// Read-ahead space kept past this capacity is released once drained, so
/// an idle connection holds at most this much.
const MAX_KEPT_AHEAD: usize = 1024;

/// A blocking-style view of an async stream, for `native-tls`.
///
/// OpenSSL reads a record's 5-byte header, then its body, in two calls. The
/// bridge reads up to [`READ_AHEAD`] bytes in one system call and serves
/// later calls from what is left, so a response in one record costs one
/// read instead of two.
struct Bridge<S> {
    stream: S,
    /// The waker of the task that last polled the TLS stream.
    waker: Waker,
    /// Bytes read from the socket that TLS has not requested yet, from `consumed` on.
    read_ahead: Vec<u8>,
    consumed: usize,
}

impl<S> Bridge<S> {
    fn set_waker(&mut self, cx: &Context<'_>) {
        if !self.waker.will_wake(cx.waker()) {
            self.waker = cx.waker().clone();
        }
    }

    fn poll_with<T>(
        &mut self,
        poll: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T>
    where
        S: Unpin,
    {
        let mut cx = Context::from_waker(&self.waker);
        match poll(Pin::new(&mut self.stream), &mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S> Bridge<S> {
    /// Tells whether bytes read ahead from the socket wait for TLS.
    fn has_read_ahead(&self) -> bool {
        self.consumed < self.read_ahead.len()
    }
}

impl<S: AsyncRead + Unpin> Read for Bridge<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.has_read_ahead() {
            let count = buf.len().min(self.read_ahead.len() - self.consumed);
            buf[..count].copy_from_slice(&self.read_ahead[self.consumed..self.consumed + count]);
            self.consumed += count;
            if !self.has_read_ahead() {
                self.consumed = 0;
                if self.read_ahead.capacity() > MAX_KEPT_AHEAD {
                    self.read_ahead = Vec::new();
                } else {
                    self.read_ahead.clear();
                }
            }
            return Ok(count);
        }
        if buf.len() >= READ_AHEAD {
            return self.poll_with(|stream, cx| stream.poll_read(cx, buf));
        }
        let mut chunk = [0u8; READ_AHEAD];
        let read = self.poll_with(|stream, cx| stream.poll_read(cx, &mut chunk))?;
        let count = read.min(buf.len());
        buf[..count].copy_from_slice(&chunk[..count]);
        self.read_ahead.extend_from_slice(&chunk[count..read]);
        Ok(count)
    }
}

impl<S: AsyncWrite + Unpin> Write for Bridge<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.poll_with(|stream, cx| stream.poll_write(cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.poll_with(|stream, cx| stream.poll_flush(cx))
    }
}

/// An established client TLS session over an async stream.
pub struct TlsStream<S> {
    inner: native_tls::TlsStream<Bridge<S>>,
}

impl<S> TlsStream<S> {
    /// Returns the transport under the TLS session.
    pub fn get_ref(&self) -> &S {
        &self.inner.get_ref().stream
    }

    /// Tells whether bytes already read from the transport wait for TLS to
    /// process them, which a look at the transport alone would miss.
    pub fn has_read_ahead(&self) -> bool {
        self.inner.get_ref().has_read_ahead()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Runs one `native-tls` call with the current task's waker, mapping `WouldBlock` to `Pending`.
    fn poll_tls<T>(
        &mut self,
        cx: &Context<'_>,
        call: impl FnOnce(&mut native_tls::TlsStream<Bridge<S>>) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        self.inner.get_mut().set_waker(cx);
        match call(&mut self.inner) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            result => Poll::Ready(result),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_tls(cx, |tls| tls.read(buf))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_tls(cx, |tls| tls.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_tls(cx, |tls| tls.flush())
    }

    /// Sends the TLS close notification, then closes the socket.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        futures_lite::ready!(this.poll_tls(cx, |tls| tls.shutdown()))?;
        Pin::new(&mut this.inner.get_mut().stream).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that hands out `data` in reads of at most `step` bytes and counts the reads.
    struct Counted {
        data: Vec<u8>,
        step: usize,
        reads: usize,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.reads += 1;
            let count = buf.len().min(this.step).min(this.data.len());
            buf[..count].copy_from_slice(&this.data[..count]);
            this.data.drain(..count);
            Poll::Ready(Ok(count))
        }
    }

    fn bridge(data: &[u8], step: usize) -> Bridge<Counted> {
        Bridge {
            stream: Counted {
                data: data.to_vec(),
                step,
                reads: 0,
            },
            waker: Waker::noop().clone(),
            read_ahead: Vec::new(),
            consumed: 0,
        }
    }

    /// Reads `sizes` in turn, as OpenSSL would, and returns what came back.
    fn read_in(bridge: &mut Bridge<Counted>, sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for &size in sizes {
            let mut buf = vec![0u8; size];
            let read = bridge.read(&mut buf).unwrap();
            out.extend_from_slice(&buf[..read]);
        }
        out
    }

    #[test]
    fn bridge_reads_record_in_one_call() {
        let record: Vec<u8> = (0..200u8).collect();
        let mut bridge = bridge(&record, usize::MAX);
        assert_eq!(read_in(&mut bridge, &[5, 195]), record);
        assert_eq!(bridge.stream.reads, 1);
        assert!(!bridge.has_read_ahead());
    }

    #[test]
    fn bridge_keeps_bytes_in_order() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        for step in [1, 7, 300, 4096, 10_000] {
            for sizes in [&[5, 1][..], &[5, 300, 16_384], &[4096], &[1, 2, 3, 5000]] {
                let mut bridge = bridge(&data, step);
                let mut out = Vec::new();
                // Every round reads at least one byte until the end, so
                // this bound only stops a bridge that loses bytes.
                for _ in 0..data.len() {
                    out.extend(read_in(&mut bridge, sizes));
                    if out.len() >= data.len() {
                        break;
                    }
                }
                assert_eq!(out, data, "step {step}, sizes {sizes:?}");
                assert!(!bridge.has_read_ahead());
            }
        }
    }

    #[test]
    fn bridge_releases_drained_space() {
        let data = vec![7u8; 3000];
        let mut bridge = bridge(&data, usize::MAX);
        assert_eq!(read_in(&mut bridge, &[5, 2995]), data);
        assert!(bridge.read_ahead.capacity() <= MAX_KEPT_AHEAD);
    }
}
