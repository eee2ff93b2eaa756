//! The accept loop at the descriptor limit: the gateway runs under a low
//! `RLIMIT_NOFILE` set by `prlimit` (util-linux), with a connection cap
//! above it, so accepts fail with EMFILE for real.

mod support;

use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use support::{FakeUpstream, Gateway};

/// The descriptor limit the gateway runs under: room for its standard
/// streams, reactor, listener and signal pipe, and a few dozen connections.
const DESCRIPTOR_LIMIT: usize = 64;

/// Connections opened against it. The gateway starts with about 13
/// descriptors open, so about 50 are accepted and the rest wait in the
/// listen backlog. The backlog stays well under 50, so accepting it once
/// the first ones close cannot run out again and start a second burst.
const CONNECTIONS: usize = 75;

/// How long the descriptors stay exhausted. Accepts retry after 10, 20,
/// 40, ... ms, so this spans several failed attempts.
const BURST: Duration = Duration::from_millis(1500);

/// Returns the path of `prlimit`, if it is on the PATH.
fn prlimit() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("prlimit"))
        .find(|candidate| candidate.is_file())
}

/// Returns the `accept failed` log lines so far.
fn accept_failures(gateway: &Gateway) -> Vec<serde_json::Value> {
    gateway
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["msg"] == "accept failed")
        .collect()
}

#[test]
fn emfile_burst_is_logged_once_and_survived() {
    let Some(prlimit) = prlimit() else {
        eprintln!("skipped: prlimit (util-linux) is not on the PATH");
        return;
    };
    let prlimit = prlimit.to_string_lossy().into_owned();
    let limit = format!("--nofile={DESCRIPTOR_LIMIT}:{DESCRIPTOR_LIMIT}");
    let upstream = FakeUpstream::start(Vec::new());
    let url = upstream.url();
    let gateway = Gateway::start_under(
        &[&prlimit, &limit],
        &["--upstream", &url, "--max-connections", "1000"],
        &[],
    );
    let listening = gateway.wait_for_message("listening");
    assert_eq!(
        listening["descriptor_limit"].as_str(),
        Some(DESCRIPTOR_LIMIT.to_string().as_str()),
        "{listening}"
    );

    let clients: Vec<TcpStream> = (0..CONNECTIONS).map(|_| gateway.connect()).collect();
    thread::sleep(BURST);
    assert!(
        accept_failures(&gateway).is_empty(),
        "a burst that has not ended was logged before its summary: {:?}",
        accept_failures(&gateway)
    );
    drop(clients);

    // Once descriptors are free again, the next accept succeeds and ends the burst.
    let line = gateway.wait_for_message("accept failed");
    let failures = line["failures"]
        .as_str()
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no failures count in {line}"));
    assert!(failures >= 3, "{failures} failures in {BURST:?}: {line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap_or("")
            .contains("Too many open files"),
        "{line}"
    );

    let response = gateway.get("/healthz");
    assert_eq!(response.status, 200);

    // The burst is over, so no further line follows.
    thread::sleep(Duration::from_millis(500));
    let lines = accept_failures(&gateway);
    assert_eq!(lines.len(), 1, "{lines:?}");
}
