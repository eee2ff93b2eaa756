//! How the gateway holds up against clients that are slow, silent, greedy
//! or gone: the client timeouts, the connection and in-flight caps,
//! cancellation on disconnect, and the statuses for odd requests.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    FakeUpstream, Gateway, Step, TEST_TIMEOUT, parse_response, read_one_response, read_until_closed,
};

/// How late a timeout may fire. The gateway's timer fires on time; the
/// rest is scheduling noise on a shared two-core machine.
const SLACK: Duration = Duration::from_millis(250);

/// Starts a gateway with `args`, in front of an upstream that responds at once.
fn gateway_with(args: &[&str]) -> (FakeUpstream, Gateway) {
    let steps = (0..16).map(|_| Step::ok(0, r#"{"time": 1}"#)).collect();
    let upstream = FakeUpstream::start(steps);
    let url = upstream.url();
    let gateway = Gateway::start(
        &[
            &["--upstream", url.as_str(), "--upstream-max-idle", "0"],
            args,
        ]
        .concat(),
    );
    (upstream, gateway)
}

fn assert_about(elapsed: Duration, expected: Duration, what: &str) {
    assert!(elapsed >= expected, "{what} early: {elapsed:?}");
    assert!(elapsed < expected + SLACK, "{what} late: {elapsed:?}");
}

#[test]
fn silent_connection_closes_after_header_timeout() {
    let (_upstream, gateway) = gateway_with(&["--header-timeout", "300"]);
    let mut stream = gateway.connect();

    let (raw, elapsed) = read_until_closed(&mut stream);

    assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
    assert_about(elapsed, Duration::from_millis(300), "close");
}

#[test]
fn trickled_head_gets_408_at_header_timeout() {
    let (_upstream, gateway) = gateway_with(&["--header-timeout", "400"]);
    let mut stream = gateway.connect();
    let mut writer = stream.try_clone().unwrap();
    let started = Instant::now();
    // One byte every 50 ms never completes the head in time, however steady.
    let trickle = thread::spawn(move || {
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
            if writer.write_all(&[*byte]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });

    let (raw, _) = read_until_closed(&mut stream);
    let elapsed = started.elapsed();
    trickle.join().unwrap();

    let response = parse_response(&raw).expect("a 408 response");
    assert_eq!(response.status, 408);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(response.error().contains("400 ms"), "{}", response.body);
    assert_about(elapsed, Duration::from_millis(400), "408");
}

#[test]
fn first_head_times_out_from_accept() {
    let (_upstream, gateway) = gateway_with(&["--header-timeout", "600"]);
    let mut stream = gateway.connect();
    let started = Instant::now();
    // The first byte comes late; the rest of the head never does.
    thread::sleep(Duration::from_millis(400));
    stream.write_all(b"G").unwrap();

    let (raw, _) = read_until_closed(&mut stream);
    let elapsed = started.elapsed();

    let response = parse_response(&raw).expect("a 408 response");
    assert_eq!(response.status, 408);
    assert_about(elapsed, Duration::from_millis(600), "408");
}

#[test]
fn kept_alive_head_times_out_by_idle_timeout() {
    let (_upstream, gateway) = gateway_with(&["--header-timeout", "2000", "--idle-timeout", "600"]);
    let mut stream = gateway.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_one_response(&mut stream).status, 200);
    let started = Instant::now();
    // A late first byte leaves only what is left of the idle timeout.
    thread::sleep(Duration::from_millis(400));
    stream.write_all(b"G").unwrap();

    let (raw, _) = read_until_closed(&mut stream);
    let elapsed = started.elapsed();

    assert_eq!(parse_response(&raw).expect("a 408 response").status, 408);
    assert_about(elapsed, Duration::from_millis(600), "408");
}

#[test]
fn missing_body_gets_408() {
    let (_upstream, gateway) = gateway_with(&["--header-timeout", "300"]);
    let mut stream = gateway.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();

    let (raw, elapsed) = read_until_closed(&mut stream);

    assert_eq!(parse_response(&raw).unwrap().status, 408);
    assert_about(elapsed, Duration::from_millis(300), "408");
}

#[test]
fn idle_connection_closes_after_idle_timeout() {
    let (_upstream, gateway) = gateway_with(&["--idle-timeout", "300"]);
    let mut stream = gateway.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_one_response(&mut stream).status, 200);

    let (raw, elapsed) = read_until_closed(&mut stream);

    assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
    assert_about(elapsed, Duration::from_millis(300), "idle close");
}

#[test]
fn connections_past_cap_wait_in_backlog() {
    let (_upstream, gateway) = gateway_with(&["--max-connections", "2"]);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = gateway.connect();
            stream.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
            assert_eq!(read_one_response(&mut stream).status, 200);
            stream
        })
        .collect();

    // The third connection completes in the kernel's backlog, and the gateway does not accept it yet.
    let mut third = gateway.connect();
    third.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = std::io::Read::read(&mut third, &mut byte);
    assert!(waited.is_err(), "answered past the cap: {waited:?}");

    drop(held);
    third.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
    let started = Instant::now();
    assert_eq!(read_one_response(&mut third).status, 200);
    assert!(started.elapsed() < SLACK, "took {:?}", started.elapsed());
}

#[test]
fn in_flight_cap_sheds_with_503() {
    let upstream = FakeUpstream::start(vec![Step::Hang]);
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--fanout",
        "1",
        "--max-in-flight",
        "1",
    ]);
    let addr = gateway.addr;
    let busy = thread::spawn(move || {
        support::exchange(
            addr,
            b"GET /api/first?timeout=800 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
    });
    while upstream.connections().is_empty() {
        thread::sleep(Duration::from_millis(5));
    }

    let shed = gateway.get("/api/all?timeout=800");
    let health = gateway.get("/readyz");

    assert_eq!(shed.status, 503, "{}", shed.body);
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(
        shed.error().starts_with("overloaded: 1 requests"),
        "{}",
        shed.body
    );
    assert!(shed.elapsed < SLACK, "shedding took {:?}", shed.elapsed);
    assert_eq!(health.status, 200);

    // Once the busy request times out, its slot is free again.
    assert_eq!(busy.join().unwrap().status, 500);
    let after = gateway.get("/api/first?timeout=800");
    assert_ne!(after.status, 503, "{}", after.body);
}

#[test]
fn client_disconnect_cancels_upstream_requests() {
    let upstream = FakeUpstream::start(vec![Step::Hang, Step::Hang]);
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--upstream-max-idle", "0"]);
    let mut stream = gateway.connect();
    stream
        .write_all(b"GET /api/all?timeout=10000 HTTP/1.1\r\n\r\n")
        .unwrap();
    while upstream.connections().len() < 2 {
        thread::sleep(Duration::from_millis(5));
    }

    drop(stream);
    let closed_at = Instant::now();

    for connection in upstream.wait_closed(2) {
        let after = connection.closed_at.unwrap().duration_since(closed_at);
        assert!(after < SLACK, "closed {after:?} after the client left");
    }
    let line = gateway.wait_for_message("request");
    assert_eq!(line["status"], 499, "{line}");
}

#[test]
fn pipelined_requests_answered_in_order() {
    let upstream = FakeUpstream::start(vec![Step::ok(300, r#"{"time": 300}"#)]);
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--upstream-max-idle",
        "0",
        "--fanout",
        "1",
    ]);
    let mut stream = gateway.connect();
    stream
        .write_all(b"GET /api/first?timeout=3000 HTTP/1.1\r\n\r\n")
        .unwrap();
    while upstream.connections().is_empty() {
        thread::sleep(Duration::from_millis(5));
    }

    // These arrive while the first request is in flight.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n\r\nGET /nowhere HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();

    let first = read_one_response(&mut stream);
    assert_eq!(first.status, 200);
    assert_eq!(first.body, r#"{"time": 300}"#);
    assert_eq!(read_one_response(&mut stream).status, 200);
    assert_eq!(read_one_response(&mut stream).status, 404);
    let last = read_one_response(&mut stream);
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
}

#[test]
fn write_timeout_closes_stalled_client() {
    // Each response carries 32 payloads of 60 KB, about 2 MB, so a few of
    // them overflow the socket buffers of a client that reads nothing.
    const RESPONSES: usize = 6;
    let payload = format!(r#"{{"time": 1, "pad": "{}"}}"#, "a".repeat(60_000));
    let steps = (0..RESPONSES * 32).map(|_| Step::ok(0, &payload)).collect();
    let upstream = FakeUpstream::start(steps);
    // Each scripted connection serves one request, so none is reused.
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--upstream-max-idle",
        "0",
        "--fanout",
        "32",
        "--write-timeout",
        "300",
    ]);
    let mut stream = gateway.connect();
    rustix::net::sockopt::set_socket_recv_buffer_size(&stream, 4096).unwrap();
    let request = b"GET /api/all?timeout=5000 HTTP/1.1\r\n\r\n".repeat(RESPONSES);
    stream.write_all(&request).unwrap();

    // Long enough for the gateway's writes to stall and time out.
    thread::sleep(Duration::from_millis(1000));
    let (raw, elapsed) = read_until_closed(&mut stream);

    let complete = RESPONSES * 32 * payload.len();
    assert!(
        raw.len() < complete,
        "all {} bytes arrived; the gateway never gave up",
        raw.len()
    );
    // The gateway reset the connection rather than leave the kernel
    // delivering megabytes through a 4 KiB window.
    assert!(elapsed < SLACK, "the close took {elapsed:?}");
    let line = gateway.wait_for_message("request");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(gateway.get("/healthz").status, 200);
}

#[test]
fn long_target_is_414() {
    let (_upstream, gateway) = gateway_with(&[]);
    let request = format!(
        "GET /api/all?timeout=100&pad={} HTTP/1.1\r\n\r\n",
        "a".repeat(9000)
    );

    let response = support::exchange(gateway.addr, request.as_bytes());

    assert_eq!(response.status, 414);
    assert!(response.error().contains("8192"), "{}", response.body);
}

/// Sends `head` on a new connection and returns the response's status.
fn status_of(gateway: &Gateway, head: &str) -> u16 {
    support::exchange(gateway.addr, head.as_bytes()).status
}

#[test]
fn head_limits_follow_the_options() {
    let upstream = FakeUpstream::start(Vec::new());
    let url = upstream.url();
    let gateway = Gateway::start_with_env(
        &[
            "--upstream",
            &url,
            "--max-head-size",
            "2048",
            "--max-headers=8",
        ],
        &[("FANOUT_MAX_TARGET_LENGTH", "100")],
    );

    // A target of exactly 100 bytes passes, 101 gets 414.
    let target = |length: usize| format!("/healthz?{}", "a".repeat(length - 9));
    let request = |target: &str| format!("GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&gateway, &request(&target(100))), 200);
    let long = support::exchange(gateway.addr, request(&target(101)).as_bytes());
    assert_eq!(long.status, 414);
    assert_eq!(long.error(), "request target longer than 100 bytes");

    // Eight fields (Connection plus seven) pass, nine get 431.
    let fields = |count: usize| {
        let extra: String = (1..count).map(|i| format!("X-{i}: 1\r\n")).collect();
        format!("GET /healthz HTTP/1.1\r\nConnection: close\r\n{extra}\r\n")
    };
    assert_eq!(status_of(&gateway, &fields(8)), 200);
    let many = support::exchange(gateway.addr, fields(9).as_bytes());
    assert_eq!(many.status, 431);
    assert_eq!(many.error(), "more than 8 header fields");

    // A head of exactly 2048 bytes passes, 2049 gets 431.
    let sized = |size: usize| {
        let start = "GET /healthz HTTP/1.1\r\nConnection: close\r\nX-Pad: ";
        let pad = "a".repeat(size - start.len() - 4);
        format!("{start}{pad}\r\n\r\n")
    };
    assert_eq!(sized(2048).len(), 2048);
    assert_eq!(status_of(&gateway, &sized(2048)), 200);
    let large = support::exchange(gateway.addr, sized(2049).as_bytes());
    assert_eq!(large.status, 431);
    assert_eq!(large.error(), "request head larger than 2048 bytes");
}

#[test]
fn long_method_is_414() {
    let (_upstream, gateway) = gateway_with(&["--max-target-length", "100"]);
    // Sent whole, the head is complete, so only its first line decides.
    let request = format!("{} /healthz HTTP/1.1\r\n\r\n", "M".repeat(200));

    let response = support::exchange(gateway.addr, request.as_bytes());

    assert_eq!(response.status, 414);
    assert_eq!(
        response.error(),
        "request line longer than 132 bytes: the target may be at most 100 bytes"
    );
}

#[test]
fn unknown_expectation_is_417() {
    let (_upstream, gateway) = gateway_with(&[]);

    let response = support::exchange(
        gateway.addr,
        b"GET /healthz HTTP/1.1\r\nExpect: something-else\r\n\r\n",
    );

    assert_eq!(response.status, 417);
}

#[test]
fn expect_continue_gets_100_before_the_body() {
    let (_upstream, gateway) = gateway_with(&[]);
    let mut stream = gateway.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap();

    let mut interim = [0u8; 25];
    std::io::Read::read_exact(&mut stream, &mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").unwrap();

    assert_eq!(read_one_response(&mut stream).status, 200);
}

#[test]
fn oversized_expected_body_gets_413() {
    let (_upstream, gateway) = gateway_with(&[]);

    let raw = support::send_raw(
        gateway.addr,
        b"GET /healthz HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n",
    );

    let response = parse_response(&raw).unwrap();
    assert_eq!(response.status, 413, "{:?}", String::from_utf8_lossy(&raw));
}

#[test]
fn help_lists_the_limits() {
    let output = support::run_fanout(&["--help"], &[]);
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--max-connections",
        "FANOUT_MAX_CONNECTIONS",
        "--max-in-flight",
        "FANOUT_MAX_IN_FLIGHT",
        "--header-timeout",
        "FANOUT_HEADER_TIMEOUT",
        "--idle-timeout",
        "FANOUT_IDLE_TIMEOUT",
        "--write-timeout",
        "FANOUT_WRITE_TIMEOUT",
        "--max-head-size",
        "FANOUT_MAX_HEAD_SIZE",
        "--max-headers",
        "FANOUT_MAX_HEADERS",
        "--max-target-length",
        "FANOUT_MAX_TARGET_LENGTH",
    ] {
        assert!(help.contains(option), "{option} missing from help");
    }
}

#[test]
fn caps_derive_from_descriptor_limit() {
    let (_upstream, gateway) = gateway_with(&[]);

    let line = gateway.wait_for_message("listening");

    let limit: u64 = line["descriptor_limit"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no descriptor_limit in {line}"));
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    assert_eq!(
        Some(limit),
        hard.or(Some(1 << 20)),
        "the soft limit was not raised"
    );
    let (connections, in_flight) = fanout::server::default_caps(Some(limit), 2);
    assert_eq!(
        line["max_connections"].as_str(),
        Some(connections.to_string().as_str())
    );
    assert_eq!(
        line["max_in_flight"].as_str(),
        Some(in_flight.to_string().as_str())
    );
}
