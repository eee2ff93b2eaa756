//! The server's caps and timeouts, and the descriptor budget the default caps come from.

use std::time::Duration;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use super::request::HeadLimits;

/// The default for `--header-timeout`. A client sends this API's heads,
/// well under 2 KiB, in one packet; 10 s tolerates a stalled mobile link yet
/// frees a slot held by a client that trickles its head byte by byte.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The default for `--idle-timeout`. It is longer than the 60 s idle timeout
/// common among load balancers, so they close an idle connection first and
/// never send a request on one that fanout is closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// The default for `--write-timeout`. Responses are usually under 1 KiB and
/// at most 2 MiB (32 payloads of 64 KiB), so they fit the socket buffers or
/// drain within seconds; a client that reads nothing for 10 s is not going
/// to, and would hold its task and buffers until it did.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Descriptors kept out of the budget for everything that is not a
/// connection: standard streams, the reactor's epoll and event descriptors,
/// the listener, the signal pipe, the in-process simulator's listener, and
/// name resolution. About 15 are in use; the rest is headroom, so running
/// out shows up as a refused request rather than a failed accept.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// The largest cap the defaults derive. With no descriptor limit at all the
/// budget would be unbounded, and a million connections is past what one
/// process serves well anyway.
pub const MAX_DERIVED_CAP: u64 = 1_000_000;

/// The soft descriptor limit used when the hard limit is unlimited: the
/// Linux default of `fs.nr_open`, above which `setrlimit` fails.
const UNLIMITED_TARGET: u64 = 1 << 20;

/// Caps on concurrent work, and the time the server waits for each client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Client connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Requests counted against the cap that may be in progress at once; more get 503.
    pub max_in_flight: usize,
    /// For a new connection's first request head (and body) from accept,
    /// and for a later request's from its first byte.
    pub header_timeout: Duration,
    /// For the next request on a kept-alive connection, from the end of the
    /// previous response: its first byte, and its whole head, arrive within it.
    pub idle_timeout: Duration,
    /// For writing one response.
    pub write_timeout: Duration,
    /// The sizes of a request head. Each connection buffers at most one
    /// head of `head.max_head` bytes, so they bound its memory.
    pub head: HeadLimits,
}

/// Raises the soft descriptor limit to the hard limit, and returns the soft limit then in force.
///
/// Many systems start processes with a soft limit of 1024, which a busy
/// gateway reaches quickly, while the hard limit allows far more. `None`
/// means no limit at all.
pub fn raise_descriptor_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let target = limit.maximum.unwrap_or(UNLIMITED_TARGET);
    if limit.current.is_some_and(|current| current < target) {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        // On failure the old limit stays, and the caps are derived from it.
        let _ = setrlimit(Resource::Nofile, raised);
    }
    getrlimit(Resource::Nofile).current
}

/// Derives the default connection and in-flight caps from `descriptors`.
///
/// Half of the budget left after [`RESERVED_DESCRIPTORS`] goes to client
/// connections, one descriptor each; the other half to the upstream
/// sockets of in-flight requests, `descriptors_per_request` each. Together
/// the caps cannot exhaust the limit, so a flood is refused by the caps with
/// a clear answer rather than by the kernel with EMFILE.
pub fn default_caps(descriptors: Option<u64>, descriptors_per_request: u64) -> (usize, usize) {
    let budget = descriptors
        .unwrap_or(u64::MAX)
        .saturating_sub(RESERVED_DESCRIPTORS);
    let half = budget / 2;
    let connections = half.clamp(1, MAX_DERIVED_CAP);
    let in_flight = (half / descriptors_per_request.max(1)).clamp(1, MAX_DERIVED_CAP);
    (connections as usize, in_flight as usize)
}

/// Returns whether caps of `connections` and `in_flight` fit within `descriptors`, by the budget of [`default_caps`].
pub fn caps_fit(
    descriptors: Option<u64>,
    descriptors_per_request: u64,
    connections: usize,
    in_flight: usize,
) -> bool {
    let Some(descriptors) = descriptors else {
        return true;
    };
    let needed = (connections as u64)
        .saturating_add((in_flight as u64).saturating_mul(descriptors_per_request))
        .saturating_add(RESERVED_DESCRIPTORS);
    needed <= descriptors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_caps_split_the_budget() {
        // 20000 descriptors, fan-out 2: (20000 - 64) / 2 = 9968 for connections,
        // the same for upstream sockets, two per request.
        assert_eq!(default_caps(Some(20_000), 2), (9968, 4984));
        assert!(caps_fit(Some(20_000), 2, 9968, 4984));
        assert_eq!(default_caps(Some(1024), 4), (480, 120));
    }

    #[test]
    fn default_caps_stay_in_range() {
        assert_eq!(default_caps(Some(10), 2), (1, 1));
        assert_eq!(default_caps(Some(0), 0), (1, 1));
        let unlimited = MAX_DERIVED_CAP as usize;
        assert_eq!(default_caps(None, 2), (unlimited, unlimited));
    }

    #[test]
    fn caps_fit_counts_every_descriptor() {
        assert!(caps_fit(Some(164), 2, 50, 25));
        assert!(!caps_fit(Some(164), 2, 51, 25));
        assert!(caps_fit(None, 64, usize::MAX, usize::MAX));
    }

    #[test]
    fn raising_keeps_the_limit_within_the_hard_limit() {
        let hard = getrlimit(Resource::Nofile).maximum;
        let soft = raise_descriptor_limit();
        match (soft, hard) {
            (Some(soft), Some(hard)) => assert!(soft <= hard),
            (Some(_), None) | (None, None) => {}
            (None, Some(hard)) => panic!("soft limit unlimited under hard limit {hard}"),
        }
    }
}
