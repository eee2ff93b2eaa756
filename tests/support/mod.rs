//! Shared pieces of the end-to-end tests: the gateway binary run as a child
//! process, a raw HTTP client, and a scripted fake upstream on 127.0.0.1.
//!
//! The fake upstream uses blocking sockets on plain threads, so it shares no
//! code with the async gateway it tests.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

pub mod certs;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single test step may block before the test fails instead of hanging.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running gateway process, killed when dropped.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Passed by the stderr reader after each line; holding it stops the reading.
    log_gate: Arc<Mutex<()>>,
}

impl Gateway {
    /// Starts the gateway on an ephemeral loopback port with `args`, and waits until it listens.
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::start_with_env(args, &[])
    }

    /// Starts the gateway with `args` and only the environment variables `env`.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        Gateway::start_under(&[], args, env)
    }

    /// Starts the gateway as `wrapper` followed by the gateway's path and
    /// `args`; the wrapper must exec the gateway, so the pid stays its own.
    pub fn start_under(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let binary = env!("CARGO_BIN_EXE_fanout");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the fanout binary");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (address_sender, address_receiver) = std::sync::mpsc::channel();

        // Draining stderr on a thread keeps the gateway from blocking on a full pipe.
        let sink = logs.clone();
        let log_gate = Arc::new(Mutex::new(()));
        let gate = log_gate.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(address) = listening_address(&line) {
                    let _ = address_sender.send(Some(address));
                }
                sink.lock().unwrap().push(line);
                drop(gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            }
        });

        let addr = match address_receiver.recv_timeout(TEST_TIMEOUT) {
            Ok(Some(addr)) => addr,
            _ => {
                let _ = child.kill();
                panic!(
                    "gateway did not report its address; logs: {:?}",
                    logs.lock().unwrap()
                );
            }
        };
        Gateway {
            child,
            addr,
            logs,
            log_gate,
        }
    }

    /// Stops reading the gateway's stderr until the guard is dropped, as a
    /// stalled log collector would: once the pipe is full, the gateway's
    /// writes to stderr block.
    pub fn stall_stderr(&self) -> std::sync::MutexGuard<'_, ()> {
        self.log_gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `GET target` on a new connection and reads the whole response.
    pub fn get(&self, target: &str) -> HttpResponse {
        let request = format!("GET {target} HTTP/1.1\r\nHost: fanout\r\nConnection: close\r\n\r\n");
        exchange(self.addr, request.as_bytes())
    }

    /// Returns every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits for the first JSON log line for which `matches` holds, failing the test after [`TEST_TIMEOUT`].
    pub fn wait_for_log(&self, matches: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let found = self
                .logs()
                .iter()
                .filter_map(|line| serde_json::from_str(line).ok())
                .find(|value| matches(value));
            if let Some(value) = found {
                return value;
            }
            assert!(
                started.elapsed() < TEST_TIMEOUT,
                "no matching log line in {:?}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the access line of the request with `request_id`.
    pub fn wait_for_access_line(&self, request_id: &str) -> serde_json::Value {
        self.wait_for_log(|line| line["msg"] == "request" && line["request_id"] == request_id)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the gateway process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("a child has a pid");
        rustix::process::kill_process(pid, signal).expect("signalling the gateway");
    }

    /// Waits up to `timeout` for the gateway to exit, and returns its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the gateway") {
                return Some(status);
            }
            if started.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the first JSON log line whose `msg` is `message`, and returns it.
    pub fn wait_for_message(&self, message: &str) -> serde_json::Value {
        self.wait_for_log(|line| line["msg"] == message)
    }

    /// Opens a connection with the test timeout set for reads and writes.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connecting to the gateway");
        stream.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TEST_TIMEOUT)).unwrap();
        stream
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns the address of the `listening` line, in either log format.
fn listening_address(line: &str) -> Option<SocketAddr> {
    let address = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(value) if value["msg"] == "listening" => value["addr"].as_str()?.to_string(),
        Ok(_) => return None,
        Err(_) if line.contains(" msg=listening ") => field(line, "addr")?.to_string(),
        Err(_) => return None,
    };
    address.parse().ok()
}

/// Returns the value of `key=value` in a logfmt line, unquoted.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split(' ').next(),
    }
}

/// A parsed response and how long it took to arrive.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub elapsed: Duration,
    /// When the last byte arrived.
    pub received_at: Instant,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Parses the body as JSON, failing the test when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Returns the `error` member of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error member in {:?}", self.body))
            .to_string()
    }
}

/// Writes `request` on a new connection, reads until the server closes it, and parses one response.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let started = Instant::now();
    let raw = send_raw(addr, request);
    let received_at = Instant::now();
    let mut response = parse_response(&raw)
        .unwrap_or_else(|| panic!("unparsable response: {:?}", String::from_utf8_lossy(&raw)));
    response.elapsed = received_at - started;
    response.received_at = received_at;
    response
}

/// Writes `bytes` and returns everything the server sends until it closes the connection.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connecting to the gateway");
    stream.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("reading the response before the test timeout");
    raw
}

/// Parses the first response in `raw`, framed by Content-Length.
pub fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_string(), value.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))?
        .1
        .parse()
        .ok()?;
    let body = raw.get(head_end..head_end + length)?;
    Some(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
        elapsed: Duration::ZERO,
        received_at: Instant::now(),
    })
}

/// Reads one response head, and nothing after it, from a kept-alive connection.
pub fn read_head_only(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "connection closed inside a head: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.push(byte[0]);
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// Reads exactly one Content-Length framed response from a kept-alive connection.
pub fn read_one_response(stream: &mut TcpStream) -> HttpResponse {
    let mut raw = read_head_only(stream).into_bytes();
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let length: usize = head
        .split("content-length: ")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    raw.extend_from_slice(&body);
    parse_response(&raw).unwrap()
}

/// Reads until the peer closes `stream`; returns the bytes and how long the close took.
///
/// A reset counts as a close: a server that closes with unread input sends one.
pub fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => raw.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(error) => panic!("reading until the gateway closes: {error}"),
        }
    }
    (raw, started.elapsed())
}

/// What the fake upstream does with one connection.
#[derive(Clone, Debug)]
pub enum Step {
    /// Waits, then writes these bytes and keeps the connection open until the client closes it.
    Respond { delay: Duration, bytes: Vec<u8> },
    /// Waits, writes these bytes, then closes its side.
    RespondAndClose { delay: Duration, bytes: Vec<u8> },
    /// Reads the request and never sends a response.
    Hang,
    /// Waits, then resets the connection.
    Reset { delay: Duration },
    /// Writes these bytes one at a time, `interval` apart, then keeps the
    /// connection open until the client closes it.
    Trickle { interval: Duration, bytes: Vec<u8> },
    /// Runs these steps in turn on one connection, the n-th for the n-th
    /// request on it, then waits for the client to close. A step that ends
    /// the connection (`RespondAndClose`, `Reset`) ends the list.
    KeepAlive(Vec<Step>),
}

impl Step {
    /// Sends a 200 with `body` framed by Content-Length after `delay_ms`.
    pub fn ok(delay_ms: u64, body: &str) -> Step {
        Step::Respond {
            delay: Duration::from_millis(delay_ms),
            bytes: response(200, body),
        }
    }

    /// Sends a response with `status` and a JSON body after `delay_ms`.
    pub fn status(delay_ms: u64, status: u16) -> Step {
        Step::Respond {
            delay: Duration::from_millis(delay_ms),
            bytes: response(status, "{\"error\": \"fake\"}"),
        }
    }

    /// Exactly these bytes, after `delay_ms`.
    pub fn raw(delay_ms: u64, bytes: &[u8]) -> Step {
        Step::Respond {
            delay: Duration::from_millis(delay_ms),
            bytes: bytes.to_vec(),
        }
    }
}

/// Builds an HTTP/1.1 response with `body` framed by Content-Length.
pub fn response(status: u16, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// What the fake upstream saw of one connection.
#[derive(Clone, Debug)]
pub struct Connection {
    pub accepted_at: Instant,
    /// The first request head, as received.
    pub request: String,
    /// How many request heads arrived on this connection.
    pub requests: usize,
    /// How many bytes arrived after the last scripted step.
    pub bytes_after_script: usize,
    /// When the client closed the connection, if it has.
    pub closed_at: Option<Instant>,
    /// Whether the client ended the connection with a reset rather than a FIN.
    pub reset: bool,
}

/// A scripted upstream: the n-th accepted connection runs the n-th step.
///
/// Connections past the end of the script get HTTP 500.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<Connection>>>,
    /// Connections accepted and not yet finished with.
    open: Arc<AtomicUsize>,
    tls: bool,
}

impl FakeUpstream {
    pub fn start(script: Vec<Step>) -> FakeUpstream {
        FakeUpstream::start_with(script, None)
    }

    /// Starts a fake upstream that speaks TLS with `identity`.
    pub fn start_tls(script: Vec<Step>, identity: native_tls::Identity) -> FakeUpstream {
        FakeUpstream::start_with(
            script,
            Some(native_tls::TlsAcceptor::new(identity).expect("building the TLS acceptor")),
        )
    }

    fn start_with(script: Vec<Step>, tls: Option<native_tls::TlsAcceptor>) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let log = connections.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let counter = open.clone();
        let is_tls = tls.is_some();
        thread::spawn(move || {
            for (index, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let step = script
                    .get(index)
                    .cloned()
                    .unwrap_or_else(|| Step::status(0, 500));
                let log = log.clone();
                let tls = tls.clone();
                let counter = counter.clone();
                thread::spawn(move || {
                    serve(stream, step, tls, log);
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        FakeUpstream {
            addr,
            connections,
            open,
            tls: is_tls,
        }
    }

    /// Counts the connections that are open: accepted, and not yet closed by the client or reset.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Returns the upstream URL for this fake, by IP address.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/api/work", self.addr)
    }

    /// Returns the upstream URL for this fake, by the host name `localhost`.
    pub fn url_localhost(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}/api/work", self.addr.port())
    }

    pub fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap().clone()
    }

    /// Waits until `count` connections have been closed by the client, or the test timeout passes.
    pub fn wait_closed(&self, count: usize) -> Vec<Connection> {
        let started = Instant::now();
        loop {
            let connections = self.connections();
            if connections.iter().filter(|c| c.closed_at.is_some()).count() >= count {
                return connections;
            }
            assert!(
                started.elapsed() < TEST_TIMEOUT,
                "connections not closed: {connections:?}"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A blocking read-and-write stream, plain or TLS.
trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

fn serve(
    stream: TcpStream,
    step: Step,
    tls: Option<native_tls::TlsAcceptor>,
    log: Arc<Mutex<Vec<Connection>>>,
) {
    let accepted_at = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let raw = stream.try_clone().unwrap();
    let mut stream: Box<dyn Duplex> = match tls {
        Some(acceptor) => match acceptor.accept(stream) {
            Ok(tls) => Box::new(tls),
            Err(_) => {
                // The client rejected the certificate or the handshake failed:
                // record the connection as closed and stop.
                log.lock().unwrap().push(Connection {
                    accepted_at,
                    request: String::new(),
                    requests: 0,
                    bytes_after_script: 0,
                    closed_at: Some(Instant::now()),
                    reset: false,
                });
                return;
            }
        },
        None => Box::new(stream),
    };

    let request = read_head(&mut stream);
    let index = {
        let mut log = log.lock().unwrap();
        log.push(Connection {
            accepted_at,
            request,
            requests: 1,
            bytes_after_script: 0,
            closed_at: None,
            reset: false,
        });
        log.len() - 1
    };

    let steps = match step {
        Step::KeepAlive(steps) => steps,
        step => vec![step],
    };
    for (position, step) in steps.into_iter().enumerate() {
        if position > 0 {
            if read_head(&mut stream).is_empty() {
                break;
            }
            log.lock().unwrap()[index].requests += 1;
        }
        match step {
            Step::Respond { delay, bytes } => {
                thread::sleep(delay);
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
            }
            Step::RespondAndClose { delay, bytes } => {
                thread::sleep(delay);
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
                let _ = raw.shutdown(std::net::Shutdown::Write);
                break;
            }
            Step::Hang => break,
            Step::Trickle { interval, bytes } => {
                for byte in bytes {
                    thread::sleep(interval);
                    if stream.write_all(&[byte]).is_err() || stream.flush().is_err() {
                        break;
                    }
                }
                break;
            }
            Step::Reset { delay } => {
                thread::sleep(delay);
                let _ = rustix::net::sockopt::set_socket_linger(&raw, Some(Duration::ZERO));
                drop(stream);
                drop(raw);
                log.lock().unwrap()[index].closed_at = Some(Instant::now());
                return;
            }
            Step::KeepAlive(_) => panic!("KeepAlive steps do not nest"),
        }
    }

    // Wait for the client to close its side, and note when. Anything sent
    // after the script, further requests included, is read and ignored.
    let mut scratch = [0u8; 1024];
    let mut reset = false;
    loop {
        match stream.read(&mut scratch) {
            Ok(0) => break,
            Err(error) => {
                reset = error.kind() == std::io::ErrorKind::ConnectionReset;
                break;
            }
            Ok(read) => log.lock().unwrap()[index].bytes_after_script += read,
        }
    }
    let mut log = log.lock().unwrap();
    log[index].closed_at = Some(Instant::now());
    log[index].reset = reset;
}

/// Reads up to the end of a request head; returns what was read.
fn read_head(stream: &mut Box<dyn Duplex>) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Runs the fanout binary to completion with only `env` set, killing it after [`TEST_TIMEOUT`].
pub fn run_fanout(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the fanout binary");
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(TEST_TIMEOUT) {
        Ok(output) => output.expect("waiting for the fanout binary"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("fanout {args:?} did not exit within {TEST_TIMEOUT:?}");
        }
    }
}

/// Counts the open file descriptors of process `pid`.
pub fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}
