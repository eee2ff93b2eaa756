//! Client-facing HTTP behaviour: routing, the timeout parameter, framing,
//! keep-alive, configuration errors and the simulated upstream.

mod support;

use std::io::Write;
use std::net::TcpStream;

use support::{
    FakeUpstream, Gateway, Step, exchange, parse_response, read_one_response, run_fanout, send_raw,
};

/// Starts a gateway whose upstream always responds at once, for tests that never reach it or do not care.
fn gateway() -> (FakeUpstream, Gateway) {
    let steps = (0..64)
        .map(|i| Step::ok(0, &format!("{{\"time\": {i}}}")))
        .collect();
    let upstream = FakeUpstream::start(steps);
    // Each scripted connection answers one request, so the gateway must not
    // reuse upstream connections here; these tests are about the client side.
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--upstream-max-idle", "0"]);
    (upstream, gateway)
}

#[test]
fn timeout_validation_table() {
    let (_upstream, gateway) = gateway();
    let range = "expected a whole number of milliseconds from 1 to 60000";
    let cases = [
        ("", format!("missing query parameter \"timeout\": {range}")),
        (
            "?other=5",
            format!("missing query parameter \"timeout\": {range}"),
        ),
        (
            "?timeout=",
            format!("invalid query parameter \"timeout\" = \"\": {range}"),
        ),
        (
            "?timeout=1&timeout=2",
            "query parameter \"timeout\" given 2 times: expected it once, a whole number of milliseconds from 1 to 60000".to_string(),
        ),
        (
            "?timeout=abc",
            format!("invalid query parameter \"timeout\" = \"abc\": {range}"),
        ),
        (
            "?timeout=-5",
            format!("invalid query parameter \"timeout\" = \"-5\": {range}"),
        ),
        (
            "?timeout=%2B5",
            format!("invalid query parameter \"timeout\" = \"+5\": {range}"),
        ),
        (
            "?timeout=1.5",
            format!("invalid query parameter \"timeout\" = \"1.5\": {range}"),
        ),
        (
            "?timeout=0",
            format!("invalid query parameter \"timeout\" = \"0\": {range}"),
        ),
        (
            "?timeout=60001",
            format!("invalid query parameter \"timeout\" = \"60001\": {range}"),
        ),
        (
            "?timeout=99999999999999999999999",
            format!("invalid query parameter \"timeout\" = \"99999999999999999999999\": {range}"),
        ),
        (
            "?timeout=%zz",
            "invalid percent-encoding in query near \"%zz\": expected '%' and two hex digits"
                .to_string(),
        ),
    ];
    for path in ["/api/all", "/api/first"] {
        for (query, message) in &cases {
            let response = gateway.get(&format!("{path}{query}"));
            assert_eq!(response.status, 400, "{path}{query}: {}", response.body);
            assert_eq!(&response.error(), message, "{path}{query}");
        }
    }
}

#[test]
fn percent_encoded_timeout_is_accepted() {
    let (_upstream, gateway) = gateway();
    let response = gateway.get("/api/first?%74imeout=%31%30%30%30&x=%20");
    assert_eq!(response.status, 200, "{}", response.body);
}

#[test]
fn max_timeout_option_sets_the_range() {
    let upstream = FakeUpstream::start(vec![]);
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--max-timeout", "500"]);

    let response = gateway.get("/api/all?timeout=501");

    assert_eq!(response.status, 400);
    assert!(
        response.error().ends_with("from 1 to 500"),
        "{}",
        response.body
    );
}

#[test]
fn health_endpoints_answer_ok() {
    let (upstream, gateway) = gateway();
    for path in ["/healthz", "/readyz"] {
        let response = gateway.get(path);
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.json()["status"], "ok", "{path}");
    }
    assert!(
        upstream.connections().is_empty(),
        "health checks reached the upstream"
    );
}

#[test]
fn unknown_path_is_404() {
    let (_upstream, gateway) = gateway();
    for path in [
        "/",
        "/api",
        "/api/all/",
        "/api/ALL?timeout=5",
        "/api/firstx",
    ] {
        let response = gateway.get(path);
        assert_eq!(response.status, 404, "{path}");
        assert!(
            response.error().starts_with("no route for path"),
            "{path}: {}",
            response.body
        );
    }
}

#[test]
fn other_methods_are_405_with_allow() {
    let (_upstream, gateway) = gateway();
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let request = format!(
            "{method} /api/first?timeout=100 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let raw = send_raw(gateway.addr, request.as_bytes());
        let response = parse_response(&raw)
            .unwrap_or_else(|| panic!("{method}: {:?}", String::from_utf8_lossy(&raw)));
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(response.header("allow"), Some("GET"), "{method}");
        assert!(
            response.body.contains(method),
            "{method}: {}",
            response.body
        );
    }
}

#[test]
fn head_is_405_without_body() {
    let (_upstream, gateway) = gateway();
    let request = b"HEAD /api/first?timeout=100 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let raw = send_raw(gateway.addr, request);
    let text = String::from_utf8_lossy(&raw);
    let response = parse_response(&raw).unwrap_or_else(|| panic!("{text:?}"));
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET"));
    assert_eq!(response.header("content-length"), Some("0"));
    assert!(text.ends_with("\r\n\r\n"), "bytes after the head: {text:?}");
}

#[test]
fn head_then_get_keeps_framing() {
    let (_upstream, gateway) = gateway();
    let mut stream = gateway.connect();
    stream
        .write_all(b"HEAD /api/first?timeout=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = support::read_head_only(&mut stream);
    assert!(head.starts_with("HTTP/1.1 405 "), "{head:?}");

    stream
        .write_all(b"GET /api/first?timeout=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let response = read_one_response(&mut stream);
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.json()["time"].is_u64(), "{}", response.body);
}

#[test]
fn unparsable_request_is_400() {
    let (_upstream, gateway) = gateway();
    let cases: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET /api/all HTTP/9.9\r\n\r\n",
        b"GET /api/all?timeout=5 HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET /api/all?timeout=5 HTTP/1.1\r\nContent-Length: 5x\r\n\r\n",
        b"GET * HTTP/1.1\r\n\r\n",
        b"GET fanout:80 HTTP/1.1\r\n\r\n",
        b"GET ftp://host/api/all?timeout=5 HTTP/1.1\r\n\r\n",
    ];
    for request in cases {
        let response = exchange(gateway.addr, request);
        assert_eq!(
            response.status,
            400,
            "{:?}",
            String::from_utf8_lossy(request)
        );
        assert!(!response.error().is_empty());
        assert_eq!(response.header("connection"), Some("close"));
    }
}

#[test]
fn other_target_forms_are_400_with_reason() {
    let (_upstream, gateway) = gateway();
    for target in ["*", "fanout:80"] {
        let request = format!("OPTIONS {target} HTTP/1.1\r\nHost: fanout\r\n\r\n");
        let response = exchange(gateway.addr, request.as_bytes());
        assert_eq!(response.status, 400, "{target}");
        assert!(
            response.error().starts_with("invalid request target"),
            "{target}: {}",
            response.body
        );
    }
}

#[test]
fn absolute_form_target_is_routed_by_path() {
    let (_upstream, gateway) = gateway();
    let request = b"GET http://elsewhere.example/api/first?timeout=1000 HTTP/1.1\r\nHost: fanout\r\nConnection: close\r\n\r\n";
    let response = exchange(gateway.addr, request);
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.json()["time"].is_u64(), "{}", response.body);

    let unknown = exchange(
        gateway.addr,
        b"GET http://fanout/nowhere HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(unknown.status, 404);
    assert!(unknown.error().contains("\"/nowhere\""), "{}", unknown.body);
}

#[test]
fn oversized_head_is_431() {
    let (_upstream, gateway) = gateway();
    let request = format!(
        "GET /api/all?timeout=5 HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let response = exchange(gateway.addr, request.as_bytes());
    assert_eq!(response.status, 431);
}

#[test]
fn keep_alive_serves_several_requests() {
    let (_upstream, gateway) = gateway();
    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream
        .set_read_timeout(Some(support::TEST_TIMEOUT))
        .unwrap();

    for _ in 0..3 {
        stream
            .write_all(b"GET /api/first?timeout=2000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let response = read_one_response(&mut stream);
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.header("connection"), None);
    }
}

#[test]
fn http10_closes_unless_asked() {
    let (_upstream, gateway) = gateway();

    let raw = send_raw(
        gateway.addr,
        b"GET /api/first?timeout=2000 HTTP/1.0\r\n\r\n",
    );
    let response = parse_response(&raw).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));

    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream
        .set_read_timeout(Some(support::TEST_TIMEOUT))
        .unwrap();
    for _ in 0..2 {
        stream
            .write_all(b"GET /api/first?timeout=2000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let response = read_one_response(&mut stream);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn small_request_body_is_discarded() {
    let (_upstream, gateway) = gateway();
    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream
        .set_read_timeout(Some(support::TEST_TIMEOUT))
        .unwrap();

    stream.write_all(b"GET /api/first?timeout=2000 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /nope HTTP/1.1\r\n\r\n").unwrap();

    assert_eq!(read_one_response(&mut stream).status, 200);
    assert_eq!(read_one_response(&mut stream).status, 404);
}

#[test]
fn simulated_upstream_serves_both_endpoints() {
    let gateway = Gateway::start(&[
        "--simulate-upstream",
        "--simulate-failure-rate",
        "0",
        "--simulate-seed",
        "1",
    ]);

    let first = gateway.get("/api/first?timeout=2000");
    assert_eq!(first.status, 200, "{}", first.body);
    let time = first.json()["time"].as_u64().unwrap();
    assert!((100..=600).contains(&time), "{time}");

    let all = gateway.get("/api/all?timeout=2000");
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.json().as_array().unwrap().len(), 2);
}

/// Arguments, environment variables, and the expected message or option name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn invalid_configuration_exits_with_2() {
    let cases: &[Case] = &[
        (&["--fanout", "0"], &[], "--fanout"),
        (&["--listen", "nowhere"], &[], "--listen"),
        (&["--upstream", "gopher://x/"], &[], "--upstream"),
        (&["--upstream-ca", "/nonexistent.pem"], &[], "--upstream-ca"),
        (&["--max-timeout", "1.5"], &[], "--max-timeout"),
        (&[], &[("FANOUT_FANOUT", "many")], "FANOUT_FANOUT"),
        (&["--no-such-option"], &[], "--no-such-option"),
    ];
    for (args, env, option) in cases {
        let output = run_fanout(args, env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(option), "{args:?}: {stderr}");
    }
}

#[test]
fn invalid_ca_file_exits_with_2() {
    let path =
        std::env::temp_dir().join(format!("fanout-test-{}-not-a-cert.pem", std::process::id()));
    std::fs::write(&path, "not a certificate").unwrap();
    let output = run_fanout(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "https://localhost:1/",
            "--upstream-ca",
            path.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--upstream-ca"), "{stderr}");
}

#[test]
fn help_describes_every_option() {
    let output = run_fanout(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--listen",
        "--upstream",
        "--upstream-ca",
        "--fanout",
        "--max-timeout",
        "--simulate-upstream",
    ] {
        assert!(help.contains(option), "{option} missing from help");
    }
    assert!(help.contains("milliseconds"));
}
