//! A simulated upstream that behaves like the real one: `{"time": N}` after
//! a uniform random delay, and a configurable share of failures.
//!
//! Failures are spread evenly over five kinds: HTTP 500, an invalid payload,
//! a hang, a connection reset and a body trickled too slowly to be useful.
//! With a seed, the sequence of choices repeats; with concurrent clients the
//! order in which connections draw from it still depends on timing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_io::Timer;
use async_net::{TcpListener, TcpStream};
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use smol::Executor;

use crate::log::{self, Level};

/// The largest request head the simulator reads.
const MAX_HEAD: usize = 16 * 1024;

/// The maximum time a hanging response keeps its connection open, so a client
/// that never gives up cannot pin the simulator's sockets forever.
const MAX_HANG: Duration = Duration::from_secs(600);

/// The pause between bytes of a slow body; 13 bytes take 1.3 s, longer than most callers wait.
const SLOW_BYTE_INTERVAL: Duration = Duration::from_millis(100);

/// Bodies of 200 responses that are not valid payloads.
const INVALID_PAYLOADS: &[&str] = &[
    "{\"time\": \"160\"}",
    "{\"time\": -1}",
    "{\"duration\": 160}",
    "[160]",
    "<html>busy</html>",
    "{\"time\": 160}{",
];

/// Settings of the simulated upstream.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulatorConfig {
    /// Share of responses that fail, from 0 to 1.
    pub failure_rate: f64,
    /// Seed for the random choices; `None` draws one at start and logs it.
    pub seed: Option<u64>,
    pub min_latency: Duration,
    pub max_latency: Duration,
}

impl SimulatorConfig {
    pub const DEFAULT_FAILURE_RATE: f64 = 0.25;
}

impl Default for SimulatorConfig {
    /// Returns the real upstream's behaviour: 100-600 ms and frequent failures.
    fn default() -> SimulatorConfig {
        SimulatorConfig {
            failure_rate: SimulatorConfig::DEFAULT_FAILURE_RATE,
            seed: None,
            min_latency: Duration::from_millis(100),
            max_latency: Duration::from_millis(600),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Ok,
    ServerError,
    /// A 200 whose body is one of [`INVALID_PAYLOADS`].
    InvalidPayload(usize),
    Hang,
    Reset,
    SlowBody,
}

/// The shared random source and the configuration that shapes each draw.
struct Dice {
    rng: Mutex<fastrand::Rng>,
    config: SimulatorConfig,
}

impl Dice {
    fn roll(&self) -> (Behaviour, Duration) {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let min = self.config.min_latency.as_millis() as u64;
        let max = self.config.max_latency.as_millis() as u64;
        let latency = Duration::from_millis(rng.u64(min..=max));
        let behaviour = if rng.f64() >= self.config.failure_rate {
            Behaviour::Ok
        } else {
            match rng.u8(0..5) {
                0 => Behaviour::ServerError,
                1 => Behaviour::InvalidPayload(rng.usize(0..INVALID_PAYLOADS.len())),
                2 => Behaviour::Hang,
                3 => Behaviour::Reset,
                _ => Behaviour::SlowBody,
            }
        };
        (behaviour, latency)
    }
}

/// Serves the simulated upstream on `listener` forever.
pub async fn run(listener: TcpListener, config: SimulatorConfig, executor: Arc<Executor<'static>>) {
    let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    log::event(
        Level::Info,
        "simulated upstream listening",
        &[
            ("addr", &address),
            ("failure_rate", &config.failure_rate),
            ("seed", &seed),
        ],
    );
    let dice = Arc::new(Dice {
        rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        config,
    });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => executor
                .spawn(serve_connection(stream, dice.clone()))
                .detach(),
            Err(error) => {
                log::event(
                    Level::Warn,
                    "simulated upstream accept failed",
                    &[("error", &error)],
                );
                Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(mut stream: TcpStream, dice: Arc<Dice>) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    while let Some(keep_alive) = read_request(&mut stream, &mut buffer).await {
        let (behaviour, latency) = dice.roll();
        if closed_within(&mut stream, &mut buffer, latency).await {
            return;
        }
        let served = match behaviour {
            Behaviour::Ok => {
                let body = format!("{{\"time\": {}}}", latency.as_millis());
                respond(&mut stream, "200 OK", &body, keep_alive).await
            }
            Behaviour::ServerError => {
                respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "{\"error\": \"simulated failure\"}",
                    keep_alive,
                )
                .await
            }
            Behaviour::InvalidPayload(index) => {
                respond(&mut stream, "200 OK", INVALID_PAYLOADS[index], keep_alive).await
            }
            Behaviour::Hang => return hang(&mut stream).await,
            Behaviour::Reset => {
                // A zero linger time makes close send RST instead of FIN.
                let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
                return;
            }
            Behaviour::SlowBody => {
                return trickle(
                    &mut stream,
                    &format!("{{\"time\": {}}}", latency.as_millis()),
                )
                .await;
            }
        };
        if served.is_err() || !keep_alive {
            return;
        }
    }
}

/// Waits for `latency`, and returns early with `true` when the client closes
/// the connection meanwhile. Bytes that arrive in the wait are kept in
/// `buffer` for the next request.
///
/// Without the early return, a client that gives up, as fanout does at its
/// deadline, would leave the connection and its descriptor open for the
/// whole latency.
async fn closed_within(stream: &mut TcpStream, buffer: &mut Vec<u8>, latency: Duration) -> bool {
    let closed = async {
        let mut chunk = [0u8; 1024];
        while buffer.len() < MAX_HEAD {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        // A client that sends this much without waiting is not served further.
        true
    };
    let waited = async {
        Timer::after(latency).await;
        false
    };
    waited.or(closed).await
}

/// Reads one request head and returns whether the connection stays open after it.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<bool> {
    let mut chunk = [0u8; 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buffer) {
            Ok(httparse::Status::Complete(length)) => {
                let close = request.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("connection")
                        && h.value.trim_ascii().eq_ignore_ascii_case(b"close")
                });
                let keep_alive = request.version == Some(1) && !close;
                buffer.drain(..length);
                return Some(keep_alive);
            }
            Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD => {}
            _ => return None,
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    body: &str,
    keep_alive: bool,
) -> std::io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

/// Keeps the connection open without a response until the client closes it or [`MAX_HANG`] passes.
async fn hang(stream: &mut TcpStream) {
    let mut scratch = [0u8; 1024];
    let wait_for_close = async {
        while let Ok(read) = stream.read(&mut scratch).await {
            if read == 0 {
                return;
            }
        }
    };
    wait_for_close
        .or(async {
            Timer::after(MAX_HANG).await;
        })
        .await;
}

/// Sends a valid head, then the body one byte per [`SLOW_BYTE_INTERVAL`].
async fn trickle(stream: &mut TcpStream, body: &str) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for byte in body.as_bytes() {
        Timer::after(SLOW_BYTE_INTERVAL).await;
        if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dice(failure_rate: f64, seed: u64) -> Dice {
        let config = SimulatorConfig {
            failure_rate,
            seed: Some(seed),
            ..SimulatorConfig::default()
        };
        Dice {
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            config,
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let (a, b) = (dice(0.5, 42), dice(0.5, 42));
        for _ in 0..100 {
            assert_eq!(a.roll(), b.roll());
        }
    }

    #[test]
    fn latency_stays_in_range_and_failures_match_rate() {
        let dice = dice(0.25, 7);
        let mut failures = 0;
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let (behaviour, latency) = dice.roll();
            assert!(
                (100..=600).contains(&latency.as_millis()),
                "latency {latency:?}"
            );
            if behaviour != Behaviour::Ok {
                failures += 1;
                kinds.insert(std::mem::discriminant(&behaviour));
            }
        }
        assert!(
            (2_200..=2_800).contains(&failures),
            "{failures} failures in 10000"
        );
        assert_eq!(kinds.len(), 5, "every failure kind appears");
    }
}
