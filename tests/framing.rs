//! Request framing against hostile clients: heads that could be read two
//! ways are rejected and the connection closed, a body never runs as a
//! request, and bare-LF line endings are accepted wherever CRLF is.

mod support;

use std::io::Write;
use std::time::Duration;

use support::{FakeUpstream, Gateway, Step, parse_response, read_one_response, read_until_closed};

/// Well under the header timeout: a complete head must get its response at
/// once, not when the timeout expires.
const PROMPT: Duration = Duration::from_secs(2);

/// Starts a gateway with a short header timeout, in front of an upstream that responds at once.
fn gateway() -> (FakeUpstream, Gateway) {
    let steps = (0..64).map(|_| Step::ok(0, r#"{"time": 1}"#)).collect();
    let upstream = FakeUpstream::start(steps);
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--upstream-max-idle",
        "0",
        "--header-timeout",
        "5000",
    ]);
    (upstream, gateway)
}

/// Writes `bytes` on a new connection and returns everything until the gateway closes it.
fn send_until_closed(gateway: &Gateway, bytes: &[u8]) -> (String, Duration) {
    let mut stream = gateway.connect();
    stream.write_all(bytes).unwrap();
    let (raw, elapsed) = read_until_closed(&mut stream);
    (String::from_utf8_lossy(&raw).into_owned(), elapsed)
}

/// Counts the responses in `raw` by their status lines.
fn count_responses(raw: &str) -> usize {
    raw.matches("HTTP/1.1 ").count()
}

#[test]
fn ambiguous_heads_are_400_and_close() {
    let (upstream, gateway) = gateway();
    // Each head is followed by a request that must never run: the
    // connection closes after the 400.
    let next = "GET /api/all?timeout=1000 HTTP/1.1\r\n\r\n";
    let cases = [
        ("obs-fold with a space", "Host: x\r\nX-A: 1\r\n folded\r\n"),
        ("obs-fold with a tab", "Host: x\r\nX-A: 1\r\n\tfolded\r\n"),
        ("space before colon", "Host : x\r\n"),
        ("tab before colon", "Content-Length\t: 0\r\n"),
        ("bare CR in a value", "Host: a\rb\r\n"),
        ("bare CR ending a field", "Host: x\r\r\n"),
        (
            "Content-Length with Transfer-Encoding",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "Transfer-Encoding with Content-Length",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        ),
        (
            "differing Content-Length fields",
            "Content-Length: 0\r\nContent-Length: 5\r\n",
        ),
        ("Content-Length list", "Content-Length: 0, 5\r\n"),
        ("signed Content-Length", "Content-Length: +0\r\n"),
        ("hex Content-Length", "Content-Length: 0x0\r\n"),
        (
            "overflowing Content-Length",
            "Content-Length: 184467440737095516160\r\n",
        ),
    ];
    for (case, fields) in cases {
        let request = format!("GET /healthz HTTP/1.1\r\n{fields}\r\n0\r\n\r\n{next}");
        let (raw, elapsed) = send_until_closed(&gateway, request.as_bytes());
        assert_eq!(count_responses(&raw), 1, "{case}: {raw:?}");
        let response = parse_response(raw.as_bytes()).unwrap_or_else(|| panic!("{case}: {raw:?}"));
        assert_eq!(response.status, 400, "{case}: {raw:?}");
        assert_eq!(response.header("connection"), Some("close"), "{case}");
        assert!(elapsed < PROMPT, "{case}: closed after {elapsed:?}");
    }
    assert!(
        upstream.connections().is_empty(),
        "a request after a rejected head reached the upstream"
    );
}

#[test]
fn request_inside_body_never_runs() {
    let (upstream, gateway) = gateway();
    let smuggled = "GET /api/all?timeout=1000 HTTP/1.1\r\nHost: x\r\n\r\n";
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n",
        smuggled.len()
    );
    let (raw, _) = send_until_closed(&gateway, request.as_bytes());

    assert_eq!(count_responses(&raw), 2, "{raw:?}");
    assert!(raw.starts_with("HTTP/1.1 200 "), "{raw:?}");
    assert!(
        !raw.contains("\"time\""),
        "the body ran as a request: {raw:?}"
    );
    assert!(
        upstream.connections().is_empty(),
        "the body reached the upstream as a request"
    );
}

#[test]
fn body_of_rejected_request_never_runs() {
    let (upstream, gateway) = gateway();
    // A server that took Transfer-Encoding over Content-Length would read
    // an empty chunked body here and run the request after it.
    let smuggled = "GET /api/all?timeout=1000 HTTP/1.1\r\nHost: x\r\n\r\n";
    let request = format!(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        smuggled.len() + 5
    );
    let (raw, _) = send_until_closed(&gateway, request.as_bytes());

    assert_eq!(count_responses(&raw), 1, "{raw:?}");
    assert!(raw.starts_with("HTTP/1.1 400 "), "{raw:?}");
    assert!(upstream.connections().is_empty());
}

#[test]
fn bare_lf_heads_are_accepted() {
    let (_upstream, gateway) = gateway();
    let cases = [
        (
            "all LF",
            "GET /api/first?timeout=1000 HTTP/1.1\nHost: x\n\n",
        ),
        (
            "LF request line",
            "GET /api/first?timeout=1000 HTTP/1.1\nHost: x\r\n\r\n",
        ),
        (
            "LF field line",
            "GET /api/first?timeout=1000 HTTP/1.1\r\nHost: x\n\r\n",
        ),
        (
            "LF final line",
            "GET /api/first?timeout=1000 HTTP/1.1\r\nHost: x\r\n\n",
        ),
        (
            "LF without fields",
            "GET /api/first?timeout=1000 HTTP/1.1\n\n",
        ),
        (
            "mixed",
            "GET /api/first?timeout=1000 HTTP/1.1\nHost: x\r\nX-A: 1\nX-B: 2\r\n\n",
        ),
    ];
    // Every case runs twice on one kept-alive connection, so a head that
    // was misread shows up as a broken second response.
    let mut stream = gateway.connect();
    for (case, head) in cases {
        for round in 0..2 {
            stream.write_all(head.as_bytes()).unwrap();
            let started = std::time::Instant::now();
            let response = read_one_response(&mut stream);
            assert_eq!(response.status, 200, "{case}, round {round}: {response:?}");
            assert_eq!(response.body, r#"{"time": 1}"#, "{case}, round {round}");
            assert!(
                started.elapsed() < PROMPT,
                "{case}: answered after {:?}",
                started.elapsed()
            );
        }
    }
}

#[test]
fn bare_lf_body_boundary_is_exact() {
    let (_upstream, gateway) = gateway();
    // The body starts right after the LF that ends the head, so its five
    // bytes are dropped and the next request follows.
    let request = "GET /healthz HTTP/1.1\nContent-Length: 5\n\nhelloGET /readyz HTTP/1.1\nConnection: close\n\n";
    let (raw, elapsed) = send_until_closed(&gateway, request.as_bytes());
    assert_eq!(count_responses(&raw), 2, "{raw:?}");
    assert!(!raw.contains("400"), "{raw:?}");
    assert!(elapsed < PROMPT, "closed after {elapsed:?}");
}
