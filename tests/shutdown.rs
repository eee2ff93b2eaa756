//! Graceful shutdown of the real binary: SIGTERM or SIGINT stops accepting,
//! fails readiness, lets in-flight requests finish, closes idle
//! connections and exits with status 0.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::{FakeUpstream, Gateway, Step, read_one_response, read_until_closed};

/// How soon the gateway must act on a signal or finish once nothing holds it.
const PROMPT: Duration = Duration::from_millis(500);

/// Waits until connecting to `gateway` is refused, and returns how long that took.
fn wait_refused(gateway: &Gateway) -> Duration {
    let started = Instant::now();
    while TcpStream::connect(gateway.addr).is_ok() {
        assert!(started.elapsed() < PROMPT, "still accepting connections");
        thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

#[test]
fn sigterm_finishes_in_flight_then_exits_0() {
    let upstream = FakeUpstream::start(vec![Step::ok(600, r#"{"time": 600}"#)]);
    let mut gateway = Gateway::start(&["--upstream", &upstream.url(), "--fanout", "1"]);
    let mut stream = gateway.connect();
    stream
        .write_all(b"GET /api/first?timeout=3000 HTTP/1.1\r\n\r\n")
        .unwrap();
    while upstream.connections().is_empty() {
        thread::sleep(Duration::from_millis(5));
    }

    gateway.signal(Signal::TERM);
    wait_refused(&gateway);

    let response = read_one_response(&mut stream);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, r#"{"time": 600}"#);
    assert_eq!(response.header("connection"), Some("close"));
    let (rest, _) = read_until_closed(&mut stream);
    assert!(rest.is_empty());
    // Closing as told lets the gateway stop lingering on the connection.
    drop(stream);

    let status = gateway.wait_exit(PROMPT).expect("the gateway did not exit");
    assert_eq!(status.code(), Some(0));
    assert_eq!(gateway.wait_for_message("draining")["signal"], "SIGTERM");
    gateway.wait_for_message("stopped");
}

#[test]
fn readiness_is_503_while_draining() {
    let upstream = FakeUpstream::start(vec![]);
    let mut gateway = Gateway::start(&["--upstream", &upstream.url()]);
    assert_eq!(gateway.get("/readyz").status, 200);

    // A request whose head is half-sent when the signal arrives still gets a response.
    let mut stream = gateway.connect();
    stream.write_all(b"GET /readyz HTTP/1.1\r\n").unwrap();
    thread::sleep(Duration::from_millis(100));
    gateway.signal(Signal::TERM);
    wait_refused(&gateway);
    stream.write_all(b"Host: x\r\n\r\n").unwrap();

    let response = read_one_response(&mut stream);
    assert_eq!(response.status, 503);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        response.error().starts_with("draining"),
        "{}",
        response.body
    );
    drop(stream);
    let status = gateway.wait_exit(PROMPT).expect("the gateway did not exit");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_closes_idle_connections_at_once() {
    let upstream = FakeUpstream::start(vec![]);
    let mut gateway = Gateway::start(&["--upstream", &upstream.url()]);
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = gateway.connect();
            stream.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
            assert_eq!(read_one_response(&mut stream).status, 200);
            stream
        })
        .collect();
    // A connection that never sent a byte is idle too.
    idle.push(gateway.connect());
    thread::sleep(Duration::from_millis(50));

    gateway.signal(Signal::INT);

    for stream in &mut idle {
        let (raw, elapsed) = read_until_closed(stream);
        assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
        assert!(elapsed < PROMPT, "idle connection closed after {elapsed:?}");
    }
    let status = gateway.wait_exit(PROMPT).expect("the gateway did not exit");
    assert_eq!(status.code(), Some(0));
    assert_eq!(gateway.wait_for_message("draining")["signal"], "SIGINT");
}

#[test]
fn second_signal_stops_without_draining() {
    let upstream = FakeUpstream::start(vec![Step::Hang]);
    let mut gateway = Gateway::start(&["--upstream", &upstream.url(), "--fanout", "1"]);
    let mut stream = gateway.connect();
    stream
        .write_all(b"GET /api/first?timeout=30000 HTTP/1.1\r\n\r\n")
        .unwrap();
    while upstream.connections().is_empty() {
        thread::sleep(Duration::from_millis(5));
    }

    gateway.signal(Signal::TERM);
    wait_refused(&gateway);
    assert!(
        gateway.wait_exit(Duration::from_millis(200)).is_none(),
        "exited with a request in flight"
    );
    gateway.signal(Signal::TERM);

    let status = gateway.wait_exit(PROMPT).expect("the gateway did not exit");
    assert_eq!(status.code(), Some(1));
    gateway.wait_for_message("stopping without draining");
}
