//! Reuse of upstream connections: when a connection goes back to the pool,
//! when it must not, the retry on a stale connection, the idle timeout, and
//! the losers of `/api/first` that finish in the background.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use support::certs::Ca;
use support::{FakeUpstream, Gateway, Step};

/// The maximum time between the gateway's decision to close and the fake
/// upstream seeing it, with room for a machine busy with other builds.
const CLOSE_SLACK: Duration = Duration::from_millis(100);

fn ok() -> Step {
    Step::ok(0, r#"{"time": 1}"#)
}

/// Starts a gateway with fan-out 1 for `upstream`, plus `args`.
fn gateway(upstream: &FakeUpstream, args: &[&str]) -> Gateway {
    let url = upstream.url();
    let mut all = vec!["--upstream", url.as_str(), "--fanout", "1"];
    all.extend_from_slice(args);
    Gateway::start(&all)
}

/// Calls `/api/first` `count` times in a row and checks that each succeeds.
fn succeed(gateway: &Gateway, count: usize) {
    for call in 0..count {
        let response = gateway.get("/api/first?timeout=3000");
        assert_eq!(response.status, 200, "call {call}: {}", response.body);
    }
}

/// Returns the value of the unlabelled sample, or the sample with exactly
/// the given labels, of metric `name` in the gateway's `/metrics`.
fn metric(gateway: &Gateway, sample: &str) -> u64 {
    let response = gateway.get("/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    let prefix = format!("{sample} ");
    response
        .body
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no sample {sample} in {}", response.body))
        .parse()
        .unwrap()
}

/// Returns how many requests each connection carried, in accept order.
fn requests_per_connection(upstream: &FakeUpstream) -> Vec<usize> {
    let mut connections = upstream.connections();
    connections.sort_by_key(|c| c.accepted_at);
    connections.iter().map(|c| c.requests).collect()
}

#[test]
fn reuses_connection_across_requests() {
    let upstream = FakeUpstream::start(vec![Step::KeepAlive(vec![ok(), ok(), ok()])]);
    let gateway = gateway(&upstream, &[]);

    succeed(&gateway, 3);

    assert_eq!(requests_per_connection(&upstream), [3]);
    assert_eq!(
        metric(&gateway, "fanout_upstream_connections_opened_total"),
        1
    );
    assert_eq!(
        metric(&gateway, "fanout_upstream_connection_reuses_total"),
        2
    );
    assert_eq!(
        metric(&gateway, "fanout_upstream_connection_retries_total"),
        0
    );
    assert_eq!(metric(&gateway, "fanout_upstream_idle_connections"), 1);
    let request = &upstream.connections()[0].request;
    assert!(
        !request.to_ascii_lowercase().contains("connection: close"),
        "{request}"
    );
}

#[test]
fn reuses_tls_connection_across_requests() {
    let ca = Ca::new("fanout test CA");
    let ca_file = ca.write_pem("pool");
    let upstream = FakeUpstream::start_tls(
        vec![Step::KeepAlive(vec![ok(), ok(), ok()])],
        ca.issue(&["localhost", "127.0.0.1"]),
    );
    let gateway = gateway(&upstream, &["--upstream-ca", ca_file.to_str().unwrap()]);

    succeed(&gateway, 3);

    assert_eq!(requests_per_connection(&upstream), [3]);
}

#[test]
fn disabled_pool_sends_connection_close() {
    let upstream = FakeUpstream::start(vec![
        Step::KeepAlive(vec![ok(), ok()]),
        Step::KeepAlive(vec![ok(), ok()]),
    ]);
    let gateway = gateway(&upstream, &["--upstream-max-idle", "0"]);

    succeed(&gateway, 2);

    assert_eq!(requests_per_connection(&upstream), [1, 1]);
    for connection in upstream.wait_closed(2) {
        assert!(
            connection
                .request
                .to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{}",
            connection.request
        );
    }
}

#[test]
fn no_reuse_after_unreusable_response() {
    let close_header =
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 11\r\n\r\n{\"time\": 1}";
    let http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\n{\"time\": 1}";
    // A failed status is not read past what came with its head.
    let partial_500 = b"HTTP/1.1 500 Oops\r\nContent-Length: 20\r\n\r\n{\"err";
    let close_500 = b"HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
    let cases: Vec<(&str, Step, u16)> = vec![
        ("Connection: close", Step::raw(0, close_header), 200),
        ("HTTP/1.0", Step::raw(0, http10), 200),
        (
            "status 500, body still to come",
            Step::raw(0, partial_500),
            500,
        ),
        (
            "status 500, Connection: close",
            Step::raw(0, close_500),
            500,
        ),
    ];
    for (name, first, status) in cases {
        // Each connection would serve a second request if the gateway sent one.
        let upstream = FakeUpstream::start(vec![
            Step::KeepAlive(vec![first, ok()]),
            Step::KeepAlive(vec![ok(), ok()]),
        ]);
        let gateway = gateway(&upstream, &[]);

        let response = gateway.get("/api/first?timeout=3000");
        assert_eq!(response.status, status, "{name}: {}", response.body);
        succeed(&gateway, 1);

        assert_eq!(requests_per_connection(&upstream), [1, 1], "{name}");
        let first = upstream.wait_closed(1);
        assert!(first[0].closed_at.is_some(), "{name}: {first:?}");
    }
}

#[test]
fn reuses_connection_after_complete_failed_response() {
    let upstream = FakeUpstream::start(vec![Step::KeepAlive(vec![
        Step::status(0, 500),
        Step::status(0, 503),
        ok(),
    ])]);
    let gateway = gateway(&upstream, &[]);

    for status in [500, 503] {
        let response = gateway.get("/api/first?timeout=3000");
        assert_eq!(response.status, 500, "upstream {status}: {}", response.body);
        assert!(
            response.body.contains(&status.to_string()),
            "{}",
            response.body
        );
    }
    succeed(&gateway, 1);

    assert_eq!(requests_per_connection(&upstream), [3]);
}

#[test]
fn abandoned_connections_are_reset_and_finished_ones_closed() {
    // A hanging response times out, and a cut-short body fails the attempt;
    // neither connection can carry another request.
    let cut_short = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{\"ti";
    let cases: Vec<(&str, Step, bool)> = vec![
        ("timed out", Step::Hang, true),
        ("failed mid-body", Step::raw(0, cut_short), true),
        (
            "Connection: close after a whole response",
            Step::raw(
                0,
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 11\r\n\r\n{\"time\": 1}",
            ),
            false,
        ),
    ];
    for (name, step, reset) in cases {
        let upstream = FakeUpstream::start(vec![step]);
        let gateway = gateway(&upstream, &[]);

        let response = gateway.get("/api/first?timeout=300");
        let connection = &upstream.wait_closed(1)[0];

        assert!(
            response.status == 200 || response.status == 500,
            "{name}: {}",
            response.body
        );
        assert_eq!(connection.reset, reset, "{name}: {connection:?}");
    }
}

#[test]
fn no_reuse_after_peer_close() {
    // The upstream responds and closes its side without a `Connection: close`
    // header.
    let upstream = FakeUpstream::start(vec![
        Step::KeepAlive(vec![Step::RespondAndClose {
            delay: Duration::ZERO,
            bytes: support::response(200, r#"{"time": 1}"#),
        }]),
        Step::KeepAlive(vec![ok(), ok()]),
    ]);
    let gateway = gateway(&upstream, &[]);

    succeed(&gateway, 1);
    // Give the end of stream time to reach the gateway's socket.
    thread::sleep(Duration::from_millis(50));
    succeed(&gateway, 1);

    // The check before reuse found the end of stream, so the second request
    // was never written to the closed connection.
    assert_eq!(requests_per_connection(&upstream), [1, 1]);
    let stale = r#"fanout_upstream_idle_connections_closed_total{reason="stale"}"#;
    assert_eq!(metric(&gateway, stale), 1);
    assert_eq!(
        metric(&gateway, "fanout_upstream_connection_retries_total"),
        0
    );
    let first = upstream
        .connections()
        .into_iter()
        .min_by_key(|c| c.accepted_at)
        .unwrap();
    assert_eq!(first.bytes_after_script, 0, "{first:?}");
}

#[test]
fn no_reuse_after_extra_bytes_in_tls_record() {
    // One TLS record contains a response of exactly 4 KiB, then stray bytes.
    // A read that took only the first 4 KiB of the record would leave the
    // stray bytes inside OpenSSL, where neither the body's framing nor the
    // check before reuse sees them.
    let mut bytes = (3900..4096)
        .map(|padding| support::response(200, &format!("{{\"time\": 1}}{}", " ".repeat(padding))))
        .find(|response| response.len() == 4096)
        .expect("a padding that makes the response 4 KiB");
    bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"time\": 9}");
    let ca = Ca::new("fanout test CA");
    let ca_file = ca.write_pem("pool-record");
    let upstream = FakeUpstream::start_tls(
        vec![
            Step::KeepAlive(vec![Step::raw(0, &bytes), ok()]),
            Step::KeepAlive(vec![ok()]),
        ],
        ca.issue(&["localhost", "127.0.0.1"]),
    );
    let gateway = gateway(&upstream, &["--upstream-ca", ca_file.to_str().unwrap()]);

    let first = gateway.get("/api/first?timeout=3000");
    let second = gateway.get("/api/first?timeout=3000");

    assert_eq!(first.status, 500, "{}", first.body);
    assert!(
        first.body.contains("more bytes than Content-Length"),
        "{}",
        first.body
    );
    assert_eq!(second.status, 200, "{}", second.body);
    assert!(second.body.contains(r#""time": 1"#), "{}", second.body);
    assert_eq!(requests_per_connection(&upstream), [1, 1]);
}

#[test]
fn no_reuse_after_tls_peer_close() {
    let ca = Ca::new("fanout test CA");
    let ca_file = ca.write_pem("pool-close");
    let upstream = FakeUpstream::start_tls(
        vec![
            Step::KeepAlive(vec![Step::RespondAndClose {
                delay: Duration::ZERO,
                bytes: support::response(200, r#"{"time": 1}"#),
            }]),
            Step::KeepAlive(vec![ok(), ok()]),
        ],
        ca.issue(&["localhost", "127.0.0.1"]),
    );
    let gateway = gateway(&upstream, &["--upstream-ca", ca_file.to_str().unwrap()]);

    succeed(&gateway, 1);
    thread::sleep(Duration::from_millis(50));
    succeed(&gateway, 1);

    assert_eq!(requests_per_connection(&upstream), [1, 1]);
    let first = upstream
        .connections()
        .into_iter()
        .min_by_key(|c| c.accepted_at)
        .unwrap();
    assert_eq!(first.bytes_after_script, 0, "{first:?}");
}

#[test]
fn retries_once_on_stale_connection() {
    // The upstream takes the second request on the kept-alive connection and
    // resets it without a response byte, as when it closes an idle
    // connection just as the request arrives.
    let upstream = FakeUpstream::start(vec![
        Step::KeepAlive(vec![
            ok(),
            Step::Reset {
                delay: Duration::ZERO,
            },
        ]),
        Step::KeepAlive(vec![ok()]),
    ]);
    let gateway = gateway(&upstream, &[]);

    succeed(&gateway, 2);

    assert_eq!(requests_per_connection(&upstream), [2, 1]);
    assert_eq!(
        metric(&gateway, "fanout_upstream_connection_retries_total"),
        1
    );
    assert_eq!(
        metric(&gateway, "fanout_upstream_connections_opened_total"),
        2
    );
}

#[test]
fn no_retry_after_response_began() {
    let upstream = FakeUpstream::start(vec![
        Step::KeepAlive(vec![
            ok(),
            Step::RespondAndClose {
                delay: Duration::ZERO,
                bytes: b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(),
            },
        ]),
        Step::KeepAlive(vec![ok()]),
    ]);
    let gateway = gateway(&upstream, &[]);

    succeed(&gateway, 1);
    let response = gateway.get("/api/first?timeout=3000");

    assert_eq!(response.status, 500, "{}", response.body);
    assert!(response.error().contains("truncated"), "{}", response.body);
    assert_eq!(requests_per_connection(&upstream), [2]);
}

#[test]
fn idle_timeout_closes_connection() {
    let upstream = FakeUpstream::start(vec![
        Step::KeepAlive(vec![ok(), ok()]),
        Step::KeepAlive(vec![ok(), ok()]),
    ]);
    let gateway = gateway(&upstream, &["--upstream-idle-timeout", "200"]);

    let response = gateway.get("/api/first?timeout=3000");
    assert_eq!(response.status, 200, "{}", response.body);
    let connections = upstream.wait_closed(1);

    // The connection goes idle between the request and the response, and
    // the sweep runs every quarter of the timeout.
    let closed_at = connections[0].closed_at.unwrap();
    let sent_at = response.received_at - response.elapsed;
    let since_request = closed_at.saturating_duration_since(sent_at);
    let since_response = closed_at.saturating_duration_since(response.received_at);
    assert!(
        since_request >= Duration::from_millis(200),
        "closed {since_request:?} after the request"
    );
    assert!(
        since_response < Duration::from_millis(250) + CLOSE_SLACK,
        "closed {since_response:?} after the response"
    );
    succeed(&gateway, 1);
    assert_eq!(requests_per_connection(&upstream), [1, 1]);
    let expired = r#"fanout_upstream_idle_connections_closed_total{reason="expired"}"#;
    assert_eq!(metric(&gateway, expired), 1);
}

#[test]
fn max_idle_bounds_kept_connections() {
    let upstream = FakeUpstream::start(vec![
        Step::KeepAlive(vec![ok(), ok()]),
        Step::KeepAlive(vec![ok(), ok()]),
    ]);
    let url = upstream.url();
    let gateway = Gateway::start(&[
        "--upstream",
        &url,
        "--fanout",
        "2",
        "--upstream-max-idle",
        "1",
    ]);

    let response = gateway.get("/api/all?timeout=3000");
    assert_eq!(response.status, 200, "{}", response.body);

    // One of the two connections is closed because the pool keeps one.
    let connections = upstream.wait_closed(1);
    let after_response = connections
        .iter()
        .filter_map(|c| c.closed_at)
        .map(|closed_at| closed_at.saturating_duration_since(response.received_at))
        .max()
        .unwrap();
    assert!(
        after_response < CLOSE_SLACK,
        "closed {after_response:?} late"
    );
    thread::sleep(CLOSE_SLACK);
    let open = upstream
        .connections()
        .iter()
        .filter(|c| c.closed_at.is_none())
        .count();
    assert_eq!(open, 1, "{:?}", upstream.connections());
    let evicted = r#"fanout_upstream_idle_connections_closed_total{reason="evicted"}"#;
    assert_eq!(metric(&gateway, evicted), 1);
    assert_eq!(metric(&gateway, "fanout_upstream_idle_connections"), 1);
}

#[test]
fn finished_loser_returns_to_pool() {
    // The winner's connection cannot be reused, so only the loser's can be
    // in the pool for the second call.
    let close_header =
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 11\r\n\r\n{\"time\": 1}";
    let upstream = FakeUpstream::start(vec![
        Step::raw(0, close_header),
        Step::KeepAlive(vec![Step::ok(150, r#"{"time": 150}"#), ok(), ok()]),
        Step::KeepAlive(vec![ok(), ok()]),
        Step::KeepAlive(vec![ok(), ok()]),
    ]);
    let url = upstream.url();
    let gateway = Gateway::start(&["--upstream", &url, "--losers", "finish"]);

    let started = Instant::now();
    let response = gateway.get("/api/first?timeout=3000");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.elapsed < Duration::from_millis(100),
        "waited for the loser: {:?}",
        response.elapsed
    );

    thread::sleep(Duration::from_millis(300).saturating_sub(started.elapsed()));
    let response = gateway.get("/api/all?timeout=3000");
    assert_eq!(response.status, 200, "{}", response.body);
    // Without the loser's connection in the pool, every connection would
    // have carried one request.
    let max_requests = requests_per_connection(&upstream).into_iter().max();
    assert!(max_requests >= Some(2), "{:?}", upstream.connections());
}

#[test]
fn finished_loser_stops_at_deadline() {
    let upstream = FakeUpstream::start(vec![ok(), Step::Hang]);
    let url = upstream.url();
    let gateway = Gateway::start(&["--upstream", &url, "--losers", "finish"]);

    let sent_at = Instant::now();
    let response = gateway.get("/api/first?timeout=300");
    assert_eq!(response.status, 200, "{}", response.body);

    // The hanging loser runs on after the response and is dropped at the
    // request's deadline, which closes its connection.
    let connections = upstream.wait_closed(1);
    let closed_at = connections.iter().find_map(|c| c.closed_at).unwrap();
    let lived = closed_at.saturating_duration_since(sent_at);
    assert!(
        lived >= Duration::from_millis(300),
        "closed after {lived:?}"
    );
    assert!(
        lived < Duration::from_millis(300) + CLOSE_SLACK,
        "closed after {lived:?}"
    );
}

#[test]
fn finished_losers_bounded_by_max_idle() {
    let upstream = FakeUpstream::start(vec![ok(), Step::Hang, Step::Hang]);
    let url = upstream.url();
    let gateway = Gateway::start(&[
        "--upstream",
        &url,
        "--fanout",
        "3",
        "--losers",
        "finish",
        "--upstream-max-idle",
        "1",
    ]);

    let response = gateway.get("/api/first?timeout=2000");
    assert_eq!(response.status, 200, "{}", response.body);

    // One loser runs on in the background; the other is dropped at once.
    let connections = upstream.wait_closed(1);
    let first_close = connections
        .iter()
        .filter_map(|c| c.closed_at)
        .map(|closed_at| closed_at.saturating_duration_since(response.received_at))
        .min()
        .unwrap();
    assert!(first_close < CLOSE_SLACK, "closed {first_close:?} late");
    thread::sleep(CLOSE_SLACK);
    let open = upstream
        .connections()
        .iter()
        .filter(|c| c.closed_at.is_none())
        .count();
    // The winner's connection is pooled and one hanging loser still runs.
    assert_eq!(open, 2, "{:?}", upstream.connections());
}
