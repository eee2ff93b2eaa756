//! The `fanout simulate` subcommand as a separate process: it must let go
//! of connections that the client closes while a response is pending.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::TEST_TIMEOUT;

/// A running `fanout simulate` process, killed when dropped.
struct Simulator {
    child: Child,
    addr: SocketAddr,
}

impl Simulator {
    fn start(args: &[&str]) -> Simulator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(["simulate", "--listen", "127.0.0.1:0", "--seed", "1"])
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting fanout simulate");
        let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let mut lines = stderr.lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                let line: serde_json::Value = serde_json::from_str(&line).ok()?;
                line["addr"].as_str()?.parse().ok()
            })
            .expect("the simulator logs its address");
        // Draining stderr keeps the simulator from blocking on a full pipe.
        thread::spawn(move || lines.for_each(drop));
        Simulator { child, addr }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn closed_client_frees_descriptor_during_latency() {
    let simulator = Simulator::start(&[
        "--failure-rate",
        "0",
        "--min-latency",
        "60000",
        "--max-latency",
        "60000",
    ]);
    let pid = simulator.child.id();
    let baseline = support::open_descriptors(pid);

    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(simulator.addr).unwrap();
        stream
            .write_all(b"GET /api/work HTTP/1.1\r\nHost: sim\r\n\r\n")
            .unwrap();
        clients.push(stream);
    }
    let started = Instant::now();
    while support::open_descriptors(pid) < baseline + 20 {
        assert!(started.elapsed() < TEST_TIMEOUT, "connections not accepted");
        thread::sleep(Duration::from_millis(10));
    }

    drop(clients);
    let started = Instant::now();
    loop {
        let open = support::open_descriptors(pid);
        if open <= baseline {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{open} descriptors open 2 s after the clients closed, {baseline} before"
        );
        thread::sleep(Duration::from_millis(10));
    }
}
