//! Idle keep-alive connections to one upstream, kept for later attempts.
//!
//! An attempt takes the most recently returned connection, so a burst reuses
//! a few warm connections and the rest age out. A connection goes back only
//! when its response allowed reuse and was read exactly to its end. Before a
//! connection is handed out again, a read that must find nothing checks that
//! the upstream has neither closed it nor sent stray bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::TcpStream;
use futures_lite::{AsyncReadExt, future};
use rustix::io::Errno;
use rustix::net::RecvFlags;

use super::stream::MaybeTls;

/// A connection to the upstream, plain or TLS.
pub type Connection = MaybeTls<TcpStream>;

/// Settings of the connection pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// The maximum number of idle connections kept; 0 turns reuse off.
    pub max_idle: usize,
    /// How long a connection may stay idle before it is closed.
    pub idle_timeout: Duration,
}

impl PoolConfig {
    /// The default bound on idle connections. It lets 128 concurrent calls
    /// at fan-out 2 reuse every connection, and an idle connection costs one
    /// descriptor and a few KiB of kernel buffers.
    pub const DEFAULT_MAX_IDLE: usize = 256;

    /// The default idle timeout, in milliseconds. It is shorter than the 5 s
    /// keep-alive timeout that Node.js (`server.keepAliveTimeout`) and Apache
    /// httpd (`KeepAliveTimeout`) default to, so fanout usually closes an idle
    /// connection before the upstream does. That makes it rare to write a
    /// request to a socket that the upstream is closing.
    pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 4_000;
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            max_idle: PoolConfig::DEFAULT_MAX_IDLE,
            idle_timeout: Duration::from_millis(PoolConfig::DEFAULT_IDLE_TIMEOUT_MS),
        }
    }
}

/// Something a pool did with a connection, as counted in [`PoolStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PoolEvent {
    /// A new connection was established: TCP, and TLS for https.
    Opened,
    /// A request went out on an idle connection taken from the pool.
    Reused,
    /// A reused connection failed before any response byte, and the
    /// request was sent again on a new connection.
    Retried,
    /// An idle connection was found closed, reset or sending stray bytes
    /// when taken, and was closed.
    Stale,
    /// An idle connection passed the idle timeout and was closed.
    Expired,
    /// A full pool closed its oldest idle connection to keep a newer one.
    Evicted,
}

const EVENT_KINDS: usize = 6;

static EVENTS: [AtomicU64; EVENT_KINDS] = [const { AtomicU64::new(0) }; EVENT_KINDS];
static IDLE: AtomicI64 = AtomicI64::new(0);

/// Counts `count` occurrences of `event`.
pub(super) fn record(event: PoolEvent, count: usize) {
    if count > 0 {
        EVENTS[event as usize].fetch_add(count as u64, Ordering::Relaxed);
    }
}

/// Counters of every upstream pool in the process since it started, and
/// the number of idle connections the pools keep now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub opened: u64,
    pub reused: u64,
    pub retried: u64,
    pub closed_stale: u64,
    pub closed_expired: u64,
    pub closed_evicted: u64,
    pub idle: u64,
}

/// Reads the counters of every pool. Each is a relaxed load, so a snapshot
/// taken under traffic may be a few events apart between counters.
pub fn stats() -> PoolStats {
    let load = |event: PoolEvent| EVENTS[event as usize].load(Ordering::Relaxed);
    PoolStats {
        opened: load(PoolEvent::Opened),
        reused: load(PoolEvent::Reused),
        retried: load(PoolEvent::Retried),
        closed_stale: load(PoolEvent::Stale),
        closed_expired: load(PoolEvent::Expired),
        closed_evicted: load(PoolEvent::Evicted),
        idle: IDLE.load(Ordering::Relaxed).max(0) as u64,
    }
}

/// Idle connections to one upstream.
pub struct Pool {
    config: PoolConfig,
    /// Idle connections, the oldest at the front. Never longer than `max_idle`.
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    connection: Connection,
    since: Instant,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Pool {
        Pool {
            config,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// Tells whether connections are kept at all.
    pub fn is_enabled(&self) -> bool {
        self.config.max_idle > 0
    }

    /// Takes the most recently returned connection that is still usable, if any.
    ///
    /// Connections found closed, sending stray bytes or past the idle timeout
    /// are closed on the way.
    pub async fn take(&self) -> Option<Connection> {
        loop {
            let now = Instant::now();
            let (candidate, expired) = {
                let mut idle = self.lock();
                let expired = self.split_expired(&mut idle, now);
                let candidate = idle.pop_back();
                IDLE.fetch_sub(candidate.is_some() as i64, Ordering::Relaxed);
                (candidate, expired)
            };
            // Closing sockets is a system call each, so it happens outside the lock.
            drop(expired);

            let mut connection = candidate?.connection;
            if is_idle(&mut connection).await {
                return Some(connection);
            }
            record(PoolEvent::Stale, 1);
        }
    }

    /// Keeps `connection` for reuse, closing the oldest idle one when the pool is full.
    ///
    /// The caller returns only connections whose last response was read
    /// exactly to its end and allowed the connection to stay open.
    pub fn put(&self, connection: Connection) {
        if !self.is_enabled() {
            return;
        }
        let now = Instant::now();
        let (expired, evicted) = {
            let mut idle = self.lock();
            let expired = self.split_expired(&mut idle, now);
            let evicted = if idle.len() >= self.config.max_idle {
                idle.pop_front()
            } else {
                None
            };
            idle.push_back(Idle {
                connection,
                since: now,
            });
            IDLE.fetch_add(1 - evicted.is_some() as i64, Ordering::Relaxed);
            (expired, evicted)
        };
        record(PoolEvent::Evicted, evicted.is_some() as usize);
        drop(expired);
        drop(evicted);
    }

    /// Closes every idle connection past the idle timeout.
    pub fn close_expired(&self) {
        let expired = {
            let mut idle = self.lock();
            self.split_expired(&mut idle, Instant::now())
        };
        drop(expired);
    }

    /// Removes the connections idle for longer than the timeout and returns them.
    fn split_expired(&self, idle: &mut VecDeque<Idle>, now: Instant) -> Vec<Idle> {
        let fresh = idle
            .iter()
            .position(|entry| now.duration_since(entry.since) < self.config.idle_timeout)
            .unwrap_or(idle.len());
        IDLE.fetch_sub(fresh as i64, Ordering::Relaxed);
        record(PoolEvent::Expired, fresh);
        idle.drain(..fresh).collect()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        // The queue is valid after any panic, because every change to it is
        // a single push or pop.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(PoisonError::into_inner);
        IDLE.fetch_sub(idle.len() as i64, Ordering::Relaxed);
    }
}

/// Closes expired idle connections of `pool` every quarter of its idle
/// timeout, until the pool is dropped.
///
/// Without it, a pool without traffic would keep its connections, and their
/// descriptors, until the next attempt.
pub async fn close_expired_forever(pool: Weak<Pool>) {
    let Some(period) = pool.upgrade().map(|pool| pool.config.idle_timeout / 4) else {
        return;
    };
    // A zero timeout expires every connection at once, and each access
    // already clears them, so there is nothing for a timer to do.
    if period.is_zero() {
        return;
    }
    loop {
        Timer::after(period).await;
        match pool.upgrade() {
            Some(pool) => pool.close_expired(),
            None => return,
        }
    }
}

/// Tells whether an idle connection is still open and silent.
///
/// A read that completes at once means the upstream closed the connection
/// (end of stream), reset it (an error) or sent bytes that belong to no
/// request. In every case the connection is unusable. Only a read that would
/// block leaves it fit for a new request.
async fn is_idle(connection: &mut Connection) -> bool {
    // A non-blocking peek at the socket is one system call and leaves its
    // registration with the reactor untouched.
    let (tcp, read_ahead) = match connection {
        MaybeTls::Plain(tcp) => (&*tcp, false),
        MaybeTls::Tls(tls) => (tls.get_ref(), tls.has_read_ahead()),
    };
    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
    // Bytes the TLS adapter already read ahead are waiting as surely as
    // bytes in the socket. Decrypted bytes left inside OpenSSL are not seen
    // here, but reads take up to a whole record, so none are left after a
    // response read to its end.
    let peeked = if read_ahead {
        Ok((1, 1))
    } else {
        rustix::net::recv(tcp, &mut [0u8; 1], flags)
    };
    match peeked {
        Err(error) => error == Errno::WOULDBLOCK,
        Ok((_, 0)) => false,
        Ok(_) => match connection {
            MaybeTls::Plain(_) => false,
            // Bytes on a TLS connection may be records without application
            // data, such as TLS 1.3 session tickets. A read through TLS
            // consumes those and still finds the connection silent.
            MaybeTls::Tls(_) => {
                let mut byte = [0u8; 1];
                future::poll_once(connection.read(&mut byte))
                    .await
                    .is_none()
            }
        },
    }
}
