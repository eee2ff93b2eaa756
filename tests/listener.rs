//! The listening socket's accept queue: a burst of connections larger than
//! the standard library's default queue of 128 must all complete their
//! handshakes, even while the gateway is not accepting.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use support::{FakeUpstream, Gateway, Step};

/// More connections than the standard library's backlog of 128.
const BURST: usize = 400;

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {name} {pid} failed");
}

#[test]
fn burst_beyond_128_completes_handshakes() {
    // The kernel caps every backlog at net.core.somaxconn.
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    if somaxconn < BURST {
        eprintln!("skipped: net.core.somaxconn is {somaxconn}, below {BURST}");
        return;
    }
    let upstream = FakeUpstream::start(vec![Step::ok(0, r#"{"time": 1}"#)]);
    let gateway = Gateway::start(&["--upstream", &upstream.url()]);

    // A stopped process accepts nothing, so every connection must wait in
    // the kernel's accept queue.
    signal(gateway.pid(), "-STOP");
    let mut connected = Vec::new();
    for _ in 0..BURST {
        match TcpStream::connect_timeout(&gateway.addr, Duration::from_millis(500)) {
            Ok(stream) => connected.push(stream),
            Err(_) => break,
        }
    }
    signal(gateway.pid(), "-CONT");
    assert_eq!(connected.len(), BURST, "handshakes completed");

    // The last connection in the queue is served once the gateway runs again.
    let mut last = connected.pop().unwrap();
    last.set_read_timeout(Some(support::TEST_TIMEOUT)).unwrap();
    last.write_all(b"GET /healthz HTTP/1.1\r\nHost: fanout\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    last.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
}
