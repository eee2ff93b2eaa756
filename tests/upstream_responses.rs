//! How the gateway reads and judges what the upstream sends: framing,
//! failure kinds, and TLS verification.

mod support;

use std::time::Duration;

use support::certs::Ca;
use support::{FakeUpstream, Gateway, Step};

/// Runs /api/first with fan-out 1 against one scripted response and returns the gateway's response.
fn first_with(step: Step) -> support::HttpResponse {
    let upstream = FakeUpstream::start(vec![step]);
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--fanout", "1"]);
    gateway.get("/api/first?timeout=3000")
}

#[test]
fn accepts_each_body_framing() {
    let cases: &[(&str, Step)] = &[
        ("content-length", Step::raw(0, b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"time\": 42}\n")),
        (
            "chunked",
            Step::raw(0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"tim\r\n8;ext=1\r\ne\": 42}\n\r\n0\r\n\r\n"),
        ),
        (
            "connection close",
            Step::RespondAndClose { delay: Duration::ZERO, bytes: b"HTTP/1.0 200 OK\r\n\r\n{\"time\": 42}".to_vec() },
        ),
    ];
    for (name, step) in cases {
        let response = first_with(step.clone());
        assert_eq!(response.status, 200, "{name}: {}", response.body);
        assert_eq!(response.body, r#"{"time": 42}"#, "{name}");
    }
}

#[test]
fn counts_bad_responses_as_failures() {
    let mut oversized =
        b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n{\"time\": 1, \"pad\": \"".to_vec();
    oversized.resize(oversized.len() + 69_980, b'a');
    oversized.extend_from_slice(b"\"}");

    let cases: Vec<(&str, Step, &str)> = vec![
        ("oversized body", Step::raw(0, &oversized), "too_large"),
        (
            "oversized close-delimited body",
            Step::RespondAndClose {
                delay: Duration::ZERO,
                bytes: [b"HTTP/1.0 200 OK\r\n\r\n".as_slice(), &vec![b' '; 70_000]].concat(),
            },
            "too_large",
        ),
        (
            "redirect",
            Step::raw(
                0,
                b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
            ),
            "redirect",
        ),
        ("server error", Step::status(0, 500), "http_status"),
        (
            "not JSON",
            Step::ok(0, "<html>busy</html>"),
            "invalid_payload",
        ),
        (
            "data after JSON",
            Step::ok(0, r#"{"time": 1} {"time": 2}"#),
            "invalid_payload",
        ),
        (
            "time missing",
            Step::ok(0, r#"{"duration": 1}"#),
            "invalid_payload",
        ),
        (
            "time as string",
            Step::ok(0, r#"{"time": "1"}"#),
            "invalid_payload",
        ),
        (
            "time as float",
            Step::ok(0, r#"{"time": 1.5}"#),
            "invalid_payload",
        ),
        (
            "time as boolean",
            Step::ok(0, r#"{"time": true}"#),
            "invalid_payload",
        ),
        (
            "negative time",
            Step::ok(0, r#"{"time": -1}"#),
            "invalid_payload",
        ),
        ("array", Step::ok(0, r#"[{"time": 1}]"#), "invalid_payload"),
        ("null", Step::ok(0, "null"), "invalid_payload"),
        (
            "reset",
            Step::Reset {
                delay: Duration::from_millis(5),
            },
            "reset",
        ),
        (
            "malformed head",
            Step::raw(0, b"HTTP/1.1 2OO OK\r\n\r\n"),
            "malformed_response",
        ),
        (
            "closed mid-body",
            Step::RespondAndClose {
                delay: Duration::ZERO,
                bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{\"time\"".to_vec(),
            },
            "truncated",
        ),
    ];
    for (name, step, kind) in cases {
        let response = first_with(step);
        assert_eq!(response.status, 500, "{name}: {}", response.body);
        let error = response.error();
        assert!(error.contains(kind), "{name}: expected {kind} in {error:?}");
        assert!(
            response.elapsed < Duration::from_millis(2000),
            "{name}: waited for the deadline"
        );
    }
}

#[test]
fn refused_connection_is_a_failure() {
    // Bind a port, then free it, so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = Gateway::start(&["--upstream", &format!("http://127.0.0.1:{port}/api/work")]);

    let response = gateway.get("/api/first?timeout=3000");

    assert_eq!(response.status, 500);
    assert!(
        response.error().contains("connect_refused"),
        "{}",
        response.body
    );
}

#[test]
fn https_upstream_trusted_through_ca_option() {
    let ca = Ca::new("fanout test CA");
    let ca_file = ca.write_pem("trusted");
    let identity = ca.issue(&["localhost", "127.0.0.1"]);
    let upstream = FakeUpstream::start_tls(
        vec![Step::ok(0, r#"{"time": 1}"#), Step::ok(0, r#"{"time": 2}"#)],
        identity,
    );

    for url in [upstream.url_localhost(), upstream.url()] {
        let gateway = Gateway::start(&[
            "--upstream",
            &url,
            "--upstream-ca",
            ca_file.to_str().unwrap(),
            "--fanout",
            "1",
        ]);
        let response = gateway.get("/api/first?timeout=3000");
        assert_eq!(response.status, 200, "{url}: {}", response.body);
        assert!(
            response.body.starts_with(r#"{"time": "#),
            "{url}: {}",
            response.body
        );
    }
}

#[test]
fn https_rejects_untrusted_certificate() {
    let trusted = Ca::new("trusted CA");
    let ca_file = trusted.write_pem("untrusted-case");
    let other = Ca::new("other CA");
    let upstream = FakeUpstream::start_tls(
        vec![Step::ok(0, r#"{"time": 1}"#)],
        other.issue(&["localhost"]),
    );
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url_localhost(),
        "--upstream-ca",
        ca_file.to_str().unwrap(),
        "--fanout",
        "1",
    ]);

    let response = gateway.get("/api/first?timeout=3000");

    assert_eq!(response.status, 500);
    assert!(response.error().contains("tls_error"), "{}", response.body);
}

#[test]
fn https_rejects_wrong_host_name() {
    let ca = Ca::new("fanout test CA");
    let ca_file = ca.write_pem("wrong-host");
    let upstream = FakeUpstream::start_tls(
        vec![Step::ok(0, r#"{"time": 1}"#)],
        ca.issue(&["other.example"]),
    );
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url_localhost(),
        "--upstream-ca",
        ca_file.to_str().unwrap(),
        "--fanout",
        "1",
    ]);

    let response = gateway.get("/api/first?timeout=3000");

    assert_eq!(response.status, 500);
    assert!(response.error().contains("tls_error"), "{}", response.body);
}
