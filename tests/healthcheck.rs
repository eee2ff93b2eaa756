//! `fanout healthcheck` run as a process against a real gateway and against
//! fake servers that respond badly or not at all.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use support::{FakeUpstream, Gateway, Step, run_fanout};

/// Runs `fanout healthcheck` with `args` and returns its exit code and its stdout and stderr.
fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut all = vec!["healthcheck"];
    all.extend_from_slice(args);
    let output = run_fanout(&all, env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn healthcheck_passes_against_gateway() {
    let gateway = Gateway::start(&["--simulate-upstream"]);
    let listen = gateway.addr.to_string();
    let (code, output) = healthcheck(&["--listen", &listen], &[]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("returned 200"), "{output}");
}

#[test]
fn healthcheck_reads_listen_from_environment() {
    let gateway = Gateway::start(&["--simulate-upstream"]);
    let listen = gateway.addr.to_string();
    let (code, output) = healthcheck(&[], &[("FANOUT_LISTEN", &listen)]);
    assert_eq!(code, Some(0), "{output}");
}

#[test]
fn healthcheck_maps_unspecified_ipv4_to_loopback() {
    // The gateway listens on 127.0.0.1 only. The check is given 0.0.0.0,
    // as inside a container, and must find the gateway on 127.0.0.1.
    let gateway = Gateway::start(&["--simulate-upstream"]);
    let listen = format!("0.0.0.0:{}", gateway.addr.port());
    let (code, output) = healthcheck(&["--listen", &listen], &[]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("http://127.0.0.1:"), "{output}");
}

#[test]
fn healthcheck_maps_unspecified_ipv6_to_loopback() {
    let gateway = Gateway::start(&["--simulate-upstream", "--listen", "[::1]:0"]);
    let listen = format!("[::]:{}", gateway.addr.port());
    let (code, output) = healthcheck(&["--listen", &listen], &[]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("http://[::1]:"), "{output}");
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    // Binding and dropping a listener finds a port that is free for now.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, output) = healthcheck(&["--listen", &format!("127.0.0.1:{port}")], &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("connecting to 127.0.0.1:"), "{output}");
}

#[test]
fn healthcheck_fails_on_status_other_than_200() {
    let server = FakeUpstream::start(vec![Step::status(0, 503)]);
    let (code, output) = healthcheck(&["--listen", &server.addr.to_string()], &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("returned HTTP status 503"), "{output}");
    let request = &server.connections()[0].request;
    assert!(
        request.starts_with("GET /healthz HTTP/1.1\r\n"),
        "{request}"
    );
}

#[test]
fn healthcheck_times_out_on_silent_server() {
    let server = FakeUpstream::start(vec![Step::Hang]);
    let started = Instant::now();
    let (code, output) = healthcheck(
        &["--listen", &server.addr.to_string(), "--timeout", "200"],
        &[],
    );
    let elapsed = started.elapsed();
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("no response within 200 ms"), "{output}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[test]
fn healthcheck_fails_on_garbage_response() {
    let server = FakeUpstream::start(vec![Step::raw(0, b"SSH-2.0-OpenSSH_9.2\r\n\r\n")]);
    let (code, output) = healthcheck(&["--listen", &server.addr.to_string()], &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("malformed response"), "{output}");
}

#[test]
fn healthcheck_invalid_option_exits_unhealthy() {
    // Container engines reserve exit status 2, so a usage error is still 1.
    let (code, output) = healthcheck(&["--listen", "8080"], &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("invalid --listen \"8080\""), "{output}");
}
