#!/usr/bin/env python3
"""Measures how the gateway responds when the upstream misbehaves or the client
does something unusual, and prints one Markdown table row per case.

Every server binds to 127.0.0.1: the gateway (target/release/fanout), and
`fanout simulate` as the upstream. Each case sends a bounded number of
requests, every socket has a timeout, and all processes are stopped on exit.
Takes about 10 seconds.

Usage: scripts/measure-edge-cases.py   (run `cargo build --release` first)
"""

import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BINARY = Path(__file__).resolve().parent.parent / "target" / "release" / "fanout"
ROUNDS = 5
SOCKET_TIMEOUT = 15.0

processes = []


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def start(args, log=subprocess.DEVNULL):
    process = subprocess.Popen([str(BINARY), *args], stdout=subprocess.DEVNULL, stderr=log)
    processes.append(process)
    return process


def start_simulator(*options):
    port = free_port()
    start(["simulate", "--listen", f"127.0.0.1:{port}", "--failure-rate", "0", *options])
    wait_listening(port)
    return f"http://127.0.0.1:{port}/api/work"


def start_gateway(upstream, log=subprocess.DEVNULL):
    port = free_port()
    start(["--listen", f"127.0.0.1:{port}", "--upstream", upstream], log)
    wait_listening(port)
    return port


def get(port, target):
    """Sends one request on a new connection; returns (status, body, seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as stream:
        stream.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := stream.recv(65536):
            raw += chunk
    elapsed = time.monotonic() - started
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode(), elapsed


def row(case, results):
    statuses = sorted({status for status, _, _ in results})
    median_ms = statistics.median(elapsed for _, _, elapsed in results) * 1000
    body = results[0][1]
    if len(body) > 110:
        body = body[:107] + "..."
    print(f"| {case} | {statuses} | {median_ms:.1f} | `{body}` |")


def upstream_refused():
    # A port that was free a moment ago: connecting to it is refused.
    gateway = start_gateway(f"http://127.0.0.1:{free_port()}/api/work")
    results = [get(gateway, "/api/first?timeout=5000") for _ in range(ROUNDS)]
    row("upstream refuses connections, timeout=5000", results)


def upstream_hangs():
    upstream = start_simulator("--min-latency", "60000", "--max-latency", "60000")
    gateway = start_gateway(upstream)
    for timeout in (1, 100, 1000):
        results = [get(gateway, f"/api/all?timeout={timeout}") for _ in range(ROUNDS)]
        row(f"upstream never answers in time, timeout={timeout}", results)


def upstream_healthy_tiny_timeout():
    gateway = start_gateway(start_simulator("--min-latency", "0", "--max-latency", "0"))
    for timeout in (1, 5):
        results = [get(gateway, f"/api/first?timeout={timeout}") for _ in range(ROUNDS)]
        row(f"upstream answers at once, timeout={timeout}", results)


def client_disconnects():
    """Reports how long the gateway keeps working on a request whose client left."""
    upstream = start_simulator("--min-latency", "60000", "--max-latency", "60000")
    log_path = Path(f"/tmp/fanout-edge-{time.monotonic_ns()}.log")
    with open(log_path, "w") as log:
        gateway = start_gateway(upstream, log)
        with socket.create_connection(("127.0.0.1", gateway), timeout=SOCKET_TIMEOUT) as stream:
            stream.sendall(b"GET /api/all?timeout=2000 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.1)
        time.sleep(2.5)
    lines = [line for line in log_path.read_text().splitlines() if "/api/all" in line]
    log_path.unlink()
    print(f"| client closes after 100 ms, timeout=2000 | access log: `{lines[0]}` | | |")


def pipelined():
    """Sends three requests in one write; reports when each response arrived."""
    gateway = start_gateway(start_simulator("--min-latency", "300", "--max-latency", "300"))
    request = b"GET /api/first?timeout=2000 HTTP/1.1\r\nHost: x\r\n\r\n"
    started = time.monotonic()
    arrivals = []
    with socket.create_connection(("127.0.0.1", gateway), timeout=SOCKET_TIMEOUT) as stream:
        stream.sendall(request * 3)
        raw = b""
        while len(arrivals) < 3:
            chunk = stream.recv(65536)
            if not chunk:
                break
            raw += chunk
            while raw.count(b"HTTP/1.1 ") > len(arrivals):
                arrivals.append(time.monotonic() - started)
    times = ", ".join(f"{arrival * 1000:.0f}" for arrival in arrivals)
    print(f"| 3 pipelined /api/first, upstream takes 300 ms | responses at {times} ms | | |")


def main():
    if not BINARY.exists():
        sys.exit(f"{BINARY} is missing: run cargo build --release first")
    print("| case | statuses | median ms | first body or log line |")
    print("|---|---|---|---|")
    try:
        for case in (upstream_refused, upstream_hangs, upstream_healthy_tiny_timeout,
                     client_disconnects, pipelined):
            case()
            while processes:
                process = processes.pop()
                process.terminate()
                process.wait(timeout=10)
    finally:
        for process in processes:
            process.kill()


if __name__ == "__main__":
    main()
