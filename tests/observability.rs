//! End-to-end behaviour of the observability features: request ids, trace
//! context, JSON and text logs, /metrics, /debug/upstream and the periodic
//! upstream summary.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use support::{FakeUpstream, Gateway, HttpResponse, Step, TEST_TIMEOUT};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn gateway_for(upstream: &FakeUpstream) -> Gateway {
    Gateway::start(&["--upstream", &upstream.url(), "--upstream-max-idle", "0"])
}

/// Sends `GET target` with extra header lines, each ending in CRLF.
fn get_with(gateway: &Gateway, target: &str, headers: &str) -> HttpResponse {
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: fanout\r\nConnection: close\r\n{headers}\r\n");
    support::exchange(gateway.addr, request.as_bytes())
}

/// Returns the value of header `name` in a raw request head, if present.
fn header_in(head: &str, name: &str) -> Option<String> {
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

fn is_hex(text: &str, length: usize) -> bool {
    text.len() == length
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn request_id_is_echoed_and_sent_upstream() {
    let upstream = FakeUpstream::start(vec![Step::ok(0, r#"{"time": 1}"#); 2]);
    let gateway = gateway_for(&upstream);

    let response = get_with(
        &gateway,
        "/api/all?timeout=2000",
        "X-Request-Id: req-42\r\n",
    );

    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("x-request-id"), Some("req-42"));
    let connections = upstream.connections();
    assert_eq!(connections.len(), 2);
    for connection in connections {
        assert_eq!(
            header_in(&connection.request, "x-request-id").as_deref(),
            Some("req-42"),
            "{}",
            connection.request
        );
    }
    let line = gateway.wait_for_access_line("req-42");
    assert_eq!(line["path"], "/api/all");
}

#[test]
fn invalid_request_id_is_replaced() {
    let upstream = FakeUpstream::start(vec![Step::ok(0, r#"{"time": 1}"#); 4]);
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--upstream-max-idle",
        "0",
        "--fanout",
        "1",
    ]);
    let too_long = "a".repeat(129);
    let cases = [
        format!("X-Request-Id: {too_long}\r\n"),
        "X-Request-Id: two words\r\n".to_string(),
    ];

    for header in cases {
        let response = get_with(&gateway, "/api/first?timeout=2000", &header);

        let id = response.header("x-request-id").unwrap();
        assert!(is_hex(id, 32), "{header:?} kept as {id:?}");
        let sent = upstream.connections().last().unwrap().request.clone();
        assert_eq!(header_in(&sent, "x-request-id").as_deref(), Some(id));
    }
}

#[test]
fn every_response_carries_a_request_id() {
    let upstream = FakeUpstream::start(vec![]);
    let gateway = gateway_for(&upstream);

    let not_found = gateway.get("/nowhere");
    let health = gateway.get("/healthz");
    let unparsable = support::exchange(gateway.addr, b"GET nowhere HTTP/1.1\r\n\r\n");

    for response in [&not_found, &health, &unparsable] {
        let id = response.header("x-request-id");
        assert!(id.is_some_and(|id| is_hex(id, 32)), "{response:?}");
    }
    assert_ne!(
        not_found.header("x-request-id"),
        health.header("x-request-id")
    );
    assert_eq!(unparsable.status, 400);
    let line = gateway.wait_for_access_line(unparsable.header("x-request-id").unwrap());
    assert_eq!(line["status"], 400);
    assert!(line["method"].is_null(), "{line}");
    assert!(line["trace_id"].is_null(), "{line}");
}

#[test]
fn traceparent_is_continued_with_a_span_per_attempt() {
    let upstream = FakeUpstream::start(vec![Step::ok(0, r#"{"time": 1}"#); 2]);
    let gateway = gateway_for(&upstream);

    let header = format!("traceparent: {TRACEPARENT}\r\nX-Request-Id: traced\r\n");
    let response = get_with(&gateway, "/api/all?timeout=2000", &header);
    assert_eq!(response.status, 200, "{}", response.body);

    let mut sent_spans = Vec::new();
    for connection in upstream.connections() {
        let value = header_in(&connection.request, "traceparent").expect("a traceparent upstream");
        let parts: Vec<&str> = value.split('-').collect();
        assert_eq!(parts.len(), 4, "{value}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], TRACE_ID);
        assert!(is_hex(parts[2], 16), "{value}");
        assert_ne!(parts[2], PARENT_ID);
        assert_eq!(parts[3], "01");
        sent_spans.push(parts[2].to_string());
    }
    assert_eq!(sent_spans.len(), 2);
    assert_ne!(sent_spans[0], sent_spans[1]);

    let line = gateway.wait_for_access_line("traced");
    assert_eq!(line["trace_id"], TRACE_ID);
    assert_eq!(line["parent_span_id"], PARENT_ID);
    let own_span = line["span_id"].as_str().unwrap();
    assert!(is_hex(own_span, 16));
    assert!(!sent_spans.iter().any(|span| span == own_span));
    let mut logged: Vec<String> = line["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["span_id"].as_str().unwrap().to_string())
        .collect();
    logged.sort();
    sent_spans.sort();
    assert_eq!(logged, sent_spans);
}

#[test]
fn malformed_traceparent_starts_a_new_trace() {
    let upstream = FakeUpstream::start(vec![Step::ok(0, r#"{"time": 1}"#)]);
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--upstream-max-idle",
        "0",
        "--fanout",
        "1",
    ]);

    let header = "traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01\r\nX-Request-Id: fresh\r\n";
    let response = get_with(&gateway, "/api/first?timeout=2000", header);
    assert_eq!(response.status, 200, "{}", response.body);

    let sent = header_in(&upstream.connections()[0].request, "traceparent").unwrap();
    let trace_id = sent.split('-').nth(1).unwrap().to_string();
    assert!(is_hex(&trace_id, 32), "{sent}");
    assert_ne!(trace_id, TRACE_ID.to_string());
    let line = gateway.wait_for_access_line("fresh");
    assert_eq!(line["trace_id"], trace_id.as_str());
    assert!(line["parent_span_id"].is_null(), "{line}");
}

#[test]
fn log_lines_are_json_with_fixed_fields() {
    let upstream = FakeUpstream::start(vec![Step::ok(0, r#"{"time": 1}"#); 2]);
    let gateway = gateway_for(&upstream);

    let response = gateway.get("/api/first?timeout=2000");
    gateway.wait_for_access_line(response.header("x-request-id").unwrap());

    let logs = gateway.logs();
    assert!(logs.len() >= 2, "{logs:?}");
    for line in &logs {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let ts = value["ts"]
            .as_str()
            .unwrap_or_else(|| panic!("no ts: {line}"));
        assert_eq!(ts.len(), "2026-12-04T15:52:38.123Z".len(), "{ts}");
        assert!(ts.ends_with('Z'), "{ts}");
        assert_eq!(ts.as_bytes()[10], b'T', "{ts}");
        assert!(value["level"].is_string(), "{line}");
        assert!(value["msg"].is_string(), "{line}");
    }
}

#[test]
fn text_format_writes_logfmt() {
    let upstream = FakeUpstream::start(vec![Step::ok(0, r#"{"time": 1}"#); 2]);
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--upstream-max-idle",
        "0",
        "--log-format",
        "text",
    ]);

    let response = get_with(
        &gateway,
        "/api/all?timeout=2000",
        "X-Request-Id: text-1\r\n",
    );
    assert_eq!(response.status, 200, "{}", response.body);

    let started = Instant::now();
    let line = loop {
        let found = gateway
            .logs()
            .into_iter()
            .find(|line| line.contains(" msg=request "));
        if let Some(line) = found {
            break line;
        }
        assert!(started.elapsed() < TEST_TIMEOUT, "{:?}", gateway.logs());
        thread::sleep(Duration::from_millis(5));
    };
    assert!(line.starts_with("ts="), "{line}");
    assert_eq!(support::field(&line, "request_id"), Some("text-1"));
    assert_eq!(support::field(&line, "status"), Some("200"));
    assert_eq!(support::field(&line, "timeout_ms"), Some("2000"));
    let attempts = support::field(&line, "attempts").unwrap();
    assert_eq!(attempts.matches("ok(200):").count(), 2, "{attempts}");
}

#[test]
fn log_level_comes_from_the_environment() {
    let upstream = FakeUpstream::start(vec![]);
    let gateway = Gateway::start_with_env(
        &["--upstream", &upstream.url()],
        &[("FANOUT_LOG_LEVEL", "debug")],
    );

    let response = get_with(&gateway, "/healthz", "X-Request-Id: dbg\r\n");
    assert_eq!(response.status, 200);

    let line = gateway.wait_for_log(|line| line["msg"] == "request started");
    assert_eq!(line["level"], "debug");
    assert_eq!(line["request_id"], "dbg");
    assert_eq!(line["path"], "/healthz");
}

/// Fetches and parses `/metrics`, checking the status and content type.
fn scrape(gateway: &Gateway) -> Scrape {
    let response = gateway.get("/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for line in response.body.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        assert!(
            series.starts_with("fanout_") && !series.contains(' '),
            "bad series in {line:?}"
        );
    }
    Scrape::parse(response.body.lines().map(|line| Ok(line.to_string())))
        .expect("valid exposition text")
}

/// Returns the value of the series `metric` with `labels`: a counter, a gauge, an
/// untyped sample, or a histogram's total count. Absent series count as 0.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape.samples.iter().find(|sample| {
        sample.metric == metric
            && labels
                .iter()
                .all(|(name, value)| sample.labels.get(name) == Some(*value))
    });
    match sample.map(|sample| &sample.value) {
        None => 0.0,
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        Some(Value::Histogram(buckets)) => buckets
            .iter()
            .find(|bucket| bucket.less_than.is_infinite())
            .map(|bucket| bucket.count)
            .expect("a +Inf bucket"),
        Some(other) => panic!("unexpected value {other:?} for {metric}"),
    }
}

/// Pipelines `count` `/healthz` requests on one connection and returns how
/// many 200 responses arrived before `TEST_TIMEOUT`.
fn pipeline_health_checks(gateway: &Gateway, count: usize) -> usize {
    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();

    // The requests outgrow the socket buffers, so they go out from another
    // thread while this one reads the responses.
    let sender = thread::spawn(move || {
        let request = b"GET /healthz HTTP/1.1\r\nHost: fanout\r\n\r\n";
        for _ in 0..count {
            if writer.write_all(request).is_err() {
                break;
            }
        }
    });

    let marker = b"HTTP/1.1 200 ";
    let started = Instant::now();
    let mut seen = 0;
    let mut tail: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while seen < count && started.elapsed() < TEST_TIMEOUT {
        let read = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        tail.extend_from_slice(&chunk[..read]);
        seen += tail.windows(marker.len()).filter(|w| w == marker).count();
        // Keep only what could be the start of a marker cut by the read.
        let keep = tail.len().min(marker.len() - 1);
        tail.drain(..tail.len() - keep);
    }

    drop(stream);
    let _ = sender.join();
    seen
}

#[test]
fn stalled_stderr_does_not_stall_requests() {
    let gateway = Gateway::start(&["--upstream", "http://127.0.0.1:9/api/work"]);
    // More access lines than the pipe, the reader's buffer and the log
    // queue together hold, so some must be dropped.
    let count = 20_000;

    let stalled = gateway.stall_stderr();
    let answered = pipeline_health_checks(&gateway, count);
    let metrics = scrape(&gateway);
    drop(stalled);

    assert_eq!(answered, count, "responses while stderr was stalled");
    let dropped = value(&metrics, "fanout_log_lines_dropped_total", &[]);
    assert!(dropped > 0.0, "no line counted as dropped");
    let report = gateway
        .wait_for_log(|line| line["msg"] == "log lines dropped because stderr did not keep up");
    assert_eq!(report["level"], "warn", "{report}");
    let reported = report["count"].as_u64().unwrap_or(0);
    assert!(reported > 0, "{report}");
    // The report follows the stall, so it covers every drop counted during it.
    assert!(
        reported as f64 >= dropped,
        "{report} against {dropped} counted"
    );
}

#[test]
fn metrics_counters_move_with_requests() {
    let upstream = FakeUpstream::start(vec![Step::status(5, 503), Step::ok(5, r#"{"time": 1}"#)]);
    let gateway = gateway_for(&upstream);
    let ok = [("endpoint", "/api/all"), ("status", "200")];
    let before = scrape(&gateway);
    assert_eq!(value(&before, "fanout_http_requests_total", &ok), 0.0);
    assert_eq!(
        value(
            &before,
            "fanout_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(
        before
            .samples
            .iter()
            .any(|s| s.metric == "fanout_requests_shed_total"),
        "no shed counter"
    );

    let response = gateway.get("/api/all?timeout=2000");
    assert_eq!(response.status, 200, "{}", response.body);
    let after = scrape(&gateway);

    assert_eq!(value(&after, "fanout_http_requests_total", &ok), 1.0);
    let all = [("endpoint", "/api/all")];
    assert_eq!(
        value(&after, "fanout_http_request_duration_seconds", &all),
        1.0
    );
    let metrics = [("endpoint", "/metrics"), ("status", "200")];
    assert_eq!(value(&after, "fanout_http_requests_total", &metrics), 1.0);
    let attempts = "fanout_upstream_attempts_total";
    assert_eq!(value(&after, attempts, &[("outcome", "ok")]), 1.0);
    assert_eq!(value(&after, attempts, &[("outcome", "http_status")]), 1.0);
    assert_eq!(value(&after, attempts, &[("outcome", "timeout")]), 0.0);
    assert_eq!(
        value(&after, "fanout_upstream_attempt_duration_seconds", &[]),
        2.0
    );
}

#[test]
fn metrics_count_timeouts_and_connect_errors() {
    let upstream = FakeUpstream::start(vec![Step::ok(0, r#"{"time": 1}"#), Step::Hang]);
    let gateway = gateway_for(&upstream);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = Gateway::start(&["--upstream", &format!("http://127.0.0.1:{closed_port}/")]);

    assert_eq!(gateway.get("/api/all?timeout=200").status, 500);
    assert_eq!(refused.get("/api/first?timeout=2000").status, 500);

    let attempts = "fanout_upstream_attempts_total";
    let timed_out = scrape(&gateway);
    assert_eq!(value(&timed_out, attempts, &[("outcome", "timeout")]), 1.0);
    assert_eq!(value(&timed_out, attempts, &[("outcome", "ok")]), 1.0);
    // The timed-out attempt's duration is when fanout gave up, so only the ok one is in the histogram.
    assert_eq!(
        value(&timed_out, "fanout_upstream_attempt_duration_seconds", &[]),
        1.0
    );
    let failed = [("endpoint", "/api/all"), ("status", "500")];
    assert_eq!(
        value(&timed_out, "fanout_http_requests_total", &failed),
        1.0
    );
    let connect = scrape(&refused);
    assert_eq!(
        value(&connect, attempts, &[("outcome", "connect_error")]),
        2.0
    );
}

#[test]
fn gauges_track_in_flight_requests_and_connections() {
    let upstream = FakeUpstream::start(vec![Step::Hang, Step::Hang]);
    let gateway = gateway_for(&upstream);

    // A kept-alive connection that has been served once and now sits idle.
    let mut idle = TcpStream::connect(gateway.addr).unwrap();
    idle.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: fanout\r\n\r\n")
        .unwrap();
    let mut buffer = [0u8; 1024];
    let read = idle.read(&mut buffer).unwrap();
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));

    let address = gateway.addr;
    let hanging = thread::spawn(move || {
        let request =
            b"GET /api/all?timeout=1500 HTTP/1.1\r\nHost: fanout\r\nConnection: close\r\n\r\n";
        support::exchange(address, request)
    });
    let started = Instant::now();
    while upstream.connections().len() < 2 {
        assert!(
            started.elapsed() < TEST_TIMEOUT,
            "the upstream saw no requests"
        );
        thread::sleep(Duration::from_millis(2));
    }

    // The scrape is itself a request on its own connection.
    let during = scrape(&gateway);
    assert_eq!(value(&during, "fanout_http_requests_in_flight", &[]), 2.0);
    assert_eq!(value(&during, "fanout_open_connections", &[]), 3.0);

    assert_eq!(hanging.join().unwrap().status, 500);
    drop(idle);
    let started = Instant::now();
    loop {
        let after = scrape(&gateway);
        let open = value(&after, "fanout_open_connections", &[]);
        if open == 1.0 {
            assert_eq!(value(&after, "fanout_http_requests_in_flight", &[]), 1.0);
            break;
        }
        assert!(
            started.elapsed() < TEST_TIMEOUT,
            "{open} connections still open"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn debug_upstream_summarizes_the_last_minute() {
    let upstream = FakeUpstream::start(vec![Step::status(5, 503), Step::ok(120, r#"{"time": 1}"#)]);
    let gateway = gateway_for(&upstream);
    let empty = gateway.get("/debug/upstream").json();
    assert_eq!(empty["attempts"], 0);
    assert!(empty["success_ratio"].is_null(), "{empty}");

    assert_eq!(gateway.get("/api/all?timeout=2000").status, 200);
    let summary = gateway.get("/debug/upstream");

    assert_eq!(summary.status, 200);
    assert_eq!(summary.header("content-type"), Some("application/json"));
    let summary = summary.json();
    assert_eq!(summary["window_seconds"], 60);
    assert_eq!(summary["attempts"], 2);
    assert_eq!(summary["success_ratio"], 0.5);
    assert_eq!(summary["outcomes"]["ok"], 1);
    assert_eq!(summary["outcomes"]["http_status"], 1);
    assert_eq!(summary["outcomes"]["timeout"], 0);
    let p99 = summary["latency_ms"]["p99"].as_u64().unwrap();
    assert!((120..1000).contains(&p99), "p99 {p99} ms: {summary}");
    let p50 = summary["latency_ms"]["p50"].as_u64().unwrap();
    assert!(p50 <= p99, "{summary}");
}

#[test]
fn upstream_summary_is_logged_only_with_traffic() {
    let upstream = FakeUpstream::start(vec![Step::status(0, 500), Step::ok(0, r#"{"time": 1}"#)]);
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--upstream-max-idle",
        "0",
        "--summary-interval",
        "1",
    ]);

    thread::sleep(Duration::from_millis(2_300));
    let quiet = gateway
        .logs()
        .into_iter()
        .filter(|line| line.contains("upstream summary"))
        .count();
    assert_eq!(
        quiet,
        0,
        "summary logged without traffic: {:?}",
        gateway.logs()
    );

    assert_eq!(gateway.get("/api/all?timeout=2000").status, 200);
    let line = gateway.wait_for_log(|line| line["msg"] == "upstream summary");
    assert_eq!(line["level"], "info");
    assert_eq!(line["window_s"], 60);
    assert_eq!(line["attempts"], 2);
    assert_eq!(line["success_ratio"], 0.5);
    assert_eq!(line["outcomes"]["http_status"], 1);
    assert!(line["latency_p99_ms"].is_u64(), "{line}");
}

#[test]
fn in_flight_ends_when_the_response_is_written() {
    let upstream = FakeUpstream::start(vec![]);
    let gateway = gateway_for(&upstream);

    // After a `Connection: close` response the server lingers until the
    // client closes; this client keeps its socket open meanwhile.
    let mut client = TcpStream::connect(gateway.addr).unwrap();
    client.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: fanout\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    client.read_to_end(&mut response).unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"));

    let during_linger = scrape(&gateway);
    assert_eq!(
        value(&during_linger, "fanout_http_requests_in_flight", &[]),
        1.0
    );
    assert_eq!(value(&during_linger, "fanout_open_connections", &[]), 2.0);
    drop(client);
}

#[test]
fn log_level_filters_lines_below_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let args = ["--listen", &address, "--upstream", "http://127.0.0.1:9/"];

    let off = support::run_fanout(&args, &[("FANOUT_LOG_LEVEL", "off")]);
    let error = support::run_fanout(&args, &[("FANOUT_LOG_LEVEL", "error")]);

    assert!(!off.status.success());
    assert_eq!(String::from_utf8_lossy(&off.stderr), "");
    assert!(!error.status.success());
    let stderr = String::from_utf8_lossy(&error.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(line["level"], "error");
    assert_eq!(line["msg"], "cannot listen");
    assert_eq!(line["addr"], address.as_str());
}

#[test]
fn shed_requests_are_counted() {
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
            b"GET /api/first?timeout=500 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
    });
    while upstream.connections().is_empty() {
        thread::sleep(Duration::from_millis(5));
    }

    let shed = gateway.get("/api/all?timeout=500");
    // The scrape itself stays outside the in-flight cap.
    let scraped = scrape(&gateway);

    assert_eq!(shed.status, 503, "{}", shed.body);
    assert_eq!(value(&scraped, "fanout_requests_shed_total", &[]), 1.0);
    let shed_503 = [("endpoint", "/api/all"), ("status", "503")];
    assert_eq!(
        value(&scraped, "fanout_http_requests_total", &shed_503),
        1.0
    );
    assert_eq!(busy.join().unwrap().status, 500);
}
