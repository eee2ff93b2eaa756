//! Leaks under chaos: thousands of requests, from clients that misbehave
//! in every way the gateway guards against, to an upstream that misbehaves
//! in every way it reads; afterwards the gateway's descriptors and the
//! upstream's open connections are back where they started.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::{FakeUpstream, Gateway, Step, open_descriptors, read_one_response};

/// Requests sent in all. Enough that a leak of one descriptor in a hundred
/// requests shows as dozens; few enough that the test takes about ten seconds.
const REQUESTS: usize = 2000;

/// Client threads sending them at once.
const CLIENTS: usize = 16;

/// How long the counts may take to settle once the load stops: lingering
/// connections close within a second.
const SETTLE: Duration = Duration::from_secs(5);

/// Picks what the upstream does with each connection.
fn chaotic_step(rng: &mut fastrand::Rng) -> Step {
    let ok = br#"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"time": 1}"#;
    let ms = |rng: &mut fastrand::Rng, max| Duration::from_millis(rng.u64(0..max));
    match rng.u8(0..10) {
        0 | 1 => Step::ok(rng.u64(0..60), r#"{"time": 1}"#),
        2 => Step::status(rng.u64(0..30), 500),
        3 => Step::Hang,
        4 => Step::Reset { delay: ms(rng, 50) },
        5 => Step::Trickle {
            interval: Duration::from_millis(20),
            bytes: ok.to_vec(),
        },
        6 => Step::raw(0, b"HTTP/1.1 2OO OK\r\n\r\n"),
        7 => Step::RespondAndClose {
            delay: ms(rng, 30),
            bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"time\"".to_vec(),
        },
        8 => Step::raw(0, &[ok.as_slice(), b"extra"].concat()),
        _ => Step::raw(
            rng.u64(0..30),
            &[b"HTTP/1.1 100 Continue\r\n\r\n".as_slice(), ok].concat(),
        ),
    }
}

/// Sends one request, or misbehaves in one of the ways a client can.
fn chaotic_client(addr: SocketAddr, rng: &mut fastrand::Rng) {
    let path = if rng.bool() { "/api/all" } else { "/api/first" };
    let request = format!("GET {path}?timeout={} HTTP/1.1\r\n\r\n", rng.u64(10..150));
    let mut stream = TcpStream::connect(addr).expect("connecting to the gateway");
    stream
        .set_read_timeout(Some(support::TEST_TIMEOUT))
        .unwrap();
    match rng.u8(0..10) {
        // Leaves in the middle of the request.
        0 => {
            stream.write_all(request.as_bytes()).unwrap();
            thread::sleep(Duration::from_millis(rng.u64(0..60)));
        }
        // Leaves in the middle of the head.
        1 => {
            let _ = stream.write_all(&request.as_bytes()[..10]);
        }
        // Sends half a head and waits for the 408.
        2 => {
            stream.write_all(&request.as_bytes()[..10]).unwrap();
            let mut raw = Vec::new();
            let _ = stream.read_to_end(&mut raw);
            assert!(raw.starts_with(b"HTTP/1.1 408 "), "{raw:?}");
        }
        // Sends garbage.
        3 => {
            stream.write_all(b"BREW /pot HTCPCP/1.0\r\n\r\n").unwrap();
            let mut raw = Vec::new();
            let _ = stream.read_to_end(&mut raw);
        }
        // Pipelines three requests, then a close.
        4 => {
            let last = request.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
            let requests = [request.as_str(), "GET /healthz HTTP/1.1\r\n\r\n", &last].concat();
            stream.write_all(requests.as_bytes()).unwrap();
            for _ in 0..3 {
                assert_answered(read_one_response(&mut stream).status);
            }
        }
        // Asks, then stays idle past the idle timeout.
        5 => {
            stream.write_all(request.as_bytes()).unwrap();
            assert_answered(read_one_response(&mut stream).status);
            let mut raw = Vec::new();
            let _ = stream.read_to_end(&mut raw);
        }
        // Asks and reads the answer.
        _ => {
            stream.write_all(request.as_bytes()).unwrap();
            assert_answered(read_one_response(&mut stream).status);
        }
    }
}

fn assert_answered(status: u16) {
    assert!([200, 500].contains(&status), "status {status}");
}

/// Waits until `count` gives `expected`, and returns the last count.
fn settle(expected: usize, count: impl Fn() -> usize) -> usize {
    let started = Instant::now();
    loop {
        let now = count();
        if now == expected || started.elapsed() > SETTLE {
            return now;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn chaos_leaks_no_descriptors_or_connections() {
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let script = (0..REQUESTS * 4).map(|_| chaotic_step(&mut rng)).collect();
    let upstream = FakeUpstream::start(script);
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--header-timeout",
        "150",
        "--idle-timeout",
        "150",
        "--write-timeout",
        "300",
    ]);

    // The first request starts whatever the runtime creates once, so it is
    // not mistaken for a leak.
    assert_answered(gateway.get("/api/first?timeout=100").status);
    let open_before = settle(0, || upstream.open_connections());
    assert_eq!(open_before, 0, "the warm-up left upstream connections open");
    thread::sleep(Duration::from_millis(200));
    let descriptors_before = open_descriptors(gateway.pid());
    assert!(
        descriptors_before > 0,
        "cannot read /proc/{}/fd",
        gateway.pid()
    );

    let started = Instant::now();
    let addr = gateway.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let mut rng = fastrand::Rng::with_seed(seed ^ index as u64);
            thread::spawn(move || {
                for _ in 0..REQUESTS / CLIENTS {
                    chaotic_client(addr, &mut rng);
                }
            })
        })
        .collect();
    for client in clients {
        client
            .join()
            .unwrap_or_else(|_| panic!("a client failed; seed {seed}"));
    }
    let load_time = started.elapsed();

    let descriptors_after = settle(descriptors_before, || open_descriptors(gateway.pid()));
    let open_after = settle(0, || upstream.open_connections());
    assert_eq!(
        descriptors_after, descriptors_before,
        "gateway descriptors after {REQUESTS} requests in {load_time:?}; seed {seed}"
    );
    assert_eq!(open_after, 0, "upstream connections left open; seed {seed}");
    assert!(
        upstream.connections().len() > REQUESTS,
        "the upstream saw too little traffic to tell"
    );
    assert_eq!(gateway.get("/healthz").status, 200);
}
