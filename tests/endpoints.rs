//! End-to-end behaviour of /api/all and /api/first against a scripted fake upstream.

mod support;

use std::time::Duration;

use support::{FakeUpstream, Gateway, Step};

/// How late a deadline response may arrive. The gateway fires its timer at
/// the deadline; the rest is scheduling noise on a shared two-core machine.
const DEADLINE_SLACK: Duration = Duration::from_millis(60);

/// The maximum time between the gateway's response and the fake upstream seeing its connection closed.
const CLOSE_SLACK: Duration = Duration::from_millis(50);

fn gateway_for(upstream: &FakeUpstream) -> Gateway {
    Gateway::start(&["--upstream", &upstream.url()])
}

#[test]
fn all_returns_both_payloads() {
    let upstream = FakeUpstream::start(vec![
        Step::ok(10, r#"{"time": 1}"#),
        Step::ok(10, r#"{"time": 2}"#),
    ]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/all?timeout=2000");

    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let mut times: Vec<u64> = response
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["time"].as_u64().unwrap())
        .collect();
    times.sort();
    assert_eq!(times, [1, 2]);
}

#[test]
fn all_keeps_payload_verbatim() {
    let payload = r#"{"time":160,"extra":{"nested":[1,2.5,"x"]}}"#;
    let upstream = FakeUpstream::start(vec![Step::ok(0, payload), Step::status(0, 503)]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/all?timeout=2000");

    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, format!("[{payload}]"));
}

#[test]
fn all_skips_a_failed_request() {
    let upstream = FakeUpstream::start(vec![Step::status(5, 500), Step::ok(5, r#"{"time": 7}"#)]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/all?timeout=2000");

    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, r#"[{"time": 7}]"#);
}

#[test]
fn all_fails_fast_when_both_fail() {
    let upstream = FakeUpstream::start(vec![Step::status(5, 500), Step::status(5, 502)]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/all?timeout=5000");

    assert_eq!(response.status, 500);
    assert!(
        response.elapsed < Duration::from_millis(1000),
        "took {:?}",
        response.elapsed
    );
    let error = response.error();
    assert!(
        error.starts_with("all 2 upstream requests failed"),
        "{error}"
    );
    assert!(error.contains("HTTP status 500"), "{error}");
    assert!(error.contains("HTTP status 502"), "{error}");
}

#[test]
fn all_times_out_when_one_hangs() {
    let upstream = FakeUpstream::start(vec![Step::ok(5, r#"{"time": 1}"#), Step::Hang]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/all?timeout=300");

    assert_eq!(response.status, 500);
    assert!(
        response.elapsed >= Duration::from_millis(300),
        "early: {:?}",
        response.elapsed
    );
    assert!(
        response.elapsed < Duration::from_millis(300) + DEADLINE_SLACK,
        "late: {:?}",
        response.elapsed
    );
    let error = response.error();
    assert!(
        error.starts_with("timeout of 300 ms reached with 1 of 2 upstream requests finished"),
        "{error}"
    );
}

#[test]
fn first_returns_fast_success_at_its_latency() {
    let upstream = FakeUpstream::start(vec![
        Step::ok(20, r#"{"time": 20}"#),
        Step::ok(800, r#"{"time": 800}"#),
    ]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/first?timeout=3000");

    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, r#"{"time": 20}"#);
    assert!(
        response.elapsed < Duration::from_millis(400),
        "waited for the slow one: {:?}",
        response.elapsed
    );
}

#[test]
fn first_skips_fast_failure() {
    let upstream = FakeUpstream::start(vec![
        Step::status(5, 500),
        Step::ok(100, r#"{"time": 100}"#),
    ]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/first?timeout=3000");

    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, r#"{"time": 100}"#);
}

#[test]
fn first_skips_invalid_payload() {
    let upstream = FakeUpstream::start(vec![
        Step::ok(5, r#"{"time": "5"}"#),
        Step::ok(100, r#"{"time": 100}"#),
    ]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/first?timeout=3000");

    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, r#"{"time": 100}"#);
}

#[test]
fn first_fails_at_once_when_all_fail() {
    let upstream = FakeUpstream::start(vec![Step::status(5, 500), Step::ok(5, "not json")]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/first?timeout=5000");

    assert_eq!(response.status, 500);
    assert!(
        response.elapsed < Duration::from_millis(1000),
        "waited for the deadline: {:?}",
        response.elapsed
    );
    let error = response.error();
    assert!(error.contains("http_status"), "{error}");
    assert!(error.contains("invalid_payload"), "{error}");
}

#[test]
fn first_times_out_at_deadline_when_both_hang() {
    let upstream = FakeUpstream::start(vec![Step::Hang, Step::Hang]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/first?timeout=250");

    assert_eq!(response.status, 500);
    assert!(
        response.elapsed >= Duration::from_millis(250),
        "early: {:?}",
        response.elapsed
    );
    assert!(
        response.elapsed < Duration::from_millis(250) + DEADLINE_SLACK,
        "late: {:?}",
        response.elapsed
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    let error = response.error();
    assert!(
        error.starts_with("timeout of 250 ms reached before any of 2 upstream requests succeeded"),
        "{error}"
    );
}

#[test]
fn lost_race_closes_loser_connection() {
    let upstream = FakeUpstream::start(vec![Step::ok(10, r#"{"time": 10}"#), Step::Hang]);
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--losers", "cancel"]);

    let response = gateway.get("/api/first?timeout=5000");
    assert_eq!(response.status, 200, "{}", response.body);

    let connections = upstream.wait_closed(1);
    let closed: Vec<_> = connections
        .iter()
        .filter(|c| c.closed_at.is_some())
        .collect();
    assert_eq!(closed.len(), 1, "{connections:?}");
    let after_response = closed[0]
        .closed_at
        .unwrap()
        .saturating_duration_since(response.received_at);
    assert!(
        after_response < CLOSE_SLACK,
        "closed {after_response:?} after the response: {connections:?}"
    );

    // The winner's connection stays open for reuse.
    std::thread::sleep(CLOSE_SLACK);
    let open = upstream
        .connections()
        .iter()
        .filter(|c| c.closed_at.is_none())
        .count();
    assert_eq!(open, 1, "{:?}", upstream.connections());
}

#[test]
fn lost_race_without_pool_closes_both() {
    let upstream = FakeUpstream::start(vec![Step::ok(10, r#"{"time": 10}"#), Step::Hang]);
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--upstream-max-idle", "0"]);

    let response = gateway.get("/api/first?timeout=5000");
    assert_eq!(response.status, 200, "{}", response.body);

    for connection in upstream.wait_closed(2) {
        let closed_at = connection.closed_at.unwrap();
        let after_response = closed_at.saturating_duration_since(response.received_at);
        assert!(
            after_response < CLOSE_SLACK,
            "closed {after_response:?} after the response: {connection:?}"
        );
    }
}

#[test]
fn expired_deadline_closes_connections() {
    let upstream = FakeUpstream::start(vec![Step::Hang, Step::Hang]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/all?timeout=200");
    assert_eq!(response.status, 500);

    for connection in upstream.wait_closed(2) {
        let closed_at = connection.closed_at.unwrap();
        let after_response = closed_at.saturating_duration_since(response.received_at);
        assert!(
            after_response < CLOSE_SLACK,
            "closed {after_response:?} after the response: {connection:?}"
        );
    }
}

#[test]
fn fanout_option_sets_request_count() {
    let steps = (1..=4)
        .map(|i| Step::ok(5, &format!("{{\"time\": {i}}}")))
        .collect();
    let upstream = FakeUpstream::start(steps);
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--fanout", "4"]);

    let response = gateway.get("/api/all?timeout=2000");

    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json().as_array().unwrap().len(), 4);
    assert_eq!(upstream.connections().len(), 4);
}

#[test]
fn upstream_request_has_expected_headers() {
    let upstream = FakeUpstream::start(vec![
        Step::ok(0, r#"{"time": 1}"#),
        Step::ok(0, r#"{"time": 1}"#),
    ]);
    let gateway = gateway_for(&upstream);

    gateway.get("/api/all?timeout=2000");

    let request = &upstream.connections()[0].request;
    assert!(
        request.starts_with("GET /api/work HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains(&format!("\r\nHost: {}\r\n", upstream.addr)),
        "{request}"
    );
    assert!(
        request.contains(&format!(
            "\r\nUser-Agent: fanout/{}\r\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{request}"
    );
    assert!(
        request.contains("\r\nAccept: application/json\r\n"),
        "{request}"
    );
}

#[test]
fn access_log_lists_attempt_outcomes() {
    let upstream = FakeUpstream::start(vec![Step::status(5, 503), Step::ok(5, r#"{"time": 1}"#)]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/all?timeout=2000");

    let request_id = response.header("x-request-id").unwrap();
    let line = gateway.wait_for_access_line(request_id);
    assert_eq!(line["level"], "info");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/api/all");
    assert_eq!(line["status"], 200);
    assert_eq!(line["timeout_ms"], 2000);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
    let attempts = line["attempts"].as_array().unwrap();
    let mut kinds: Vec<(&str, u64)> = attempts
        .iter()
        .map(|a| (a["kind"].as_str().unwrap(), a["status"].as_u64().unwrap()))
        .collect();
    kinds.sort();
    assert_eq!(kinds, [("http_status", 503), ("ok", 200)]);
    for attempt in attempts {
        assert!(attempt["latency_ms"].as_f64().unwrap() > 0.0, "{attempt}");
    }
    let failed = attempts
        .iter()
        .find(|a| a["kind"] == "http_status")
        .unwrap();
    assert_eq!(failed["error"], "HTTP status 503");
}
