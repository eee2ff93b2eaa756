//! The `fanout` command: parse options, start the runtime, serve until
//! SIGTERM or SIGINT, then drain.

use std::future::Future;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;

use async_net::TcpListener;
use async_signal::{Signal, Signals};
use fanout::api::Api;
use fanout::config::{self, Command, Config};
use fanout::fanout::Losers;
use fanout::log::{self, Level};
use fanout::server::{Limits, Shutdown};
use fanout::simulator::{self, SimulatorConfig};
use fanout::upstream::{Client, UpstreamUrl};
use fanout::{healthcheck, observe, runtime, server};
use futures_lite::{FutureExt, StreamExt};
use smol::Executor;

/// Exit status for invalid configuration, as is usual for usage errors.
const EXIT_USAGE: u8 = 2;

/// Exit status of a failed health check. Container engines read 1 as
/// unhealthy and reserve 2, so the health check exits 1 on every failure,
/// invalid options included.
const EXIT_UNHEALTHY: u8 = 1;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let is_healthcheck = args.first().is_some_and(|arg| arg == "healthcheck");
    let command = match config::parse(args, |key| std::env::var(key).ok()) {
        Ok(command) => command,
        Err(error) if is_healthcheck => {
            eprintln!("fanout healthcheck: {error}");
            return ExitCode::from(EXIT_UNHEALTHY);
        }
        Err(error) => {
            eprintln!("fanout: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match &command {
        Command::Serve(config) => log::init(config.log.format, config.log.max_level),
        Command::Simulate { log, .. } => log::init(log.format, log.max_level),
        Command::Help(_) | Command::Version | Command::Healthcheck { .. } => {}
    }
    let code = match command {
        Command::Help(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("fanout {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Serve(config) => serve(*config),
        Command::Simulate {
            listen,
            simulator,
            threads,
            ..
        } => simulate(listen, simulator, threads),
        Command::Healthcheck { listen, timeout } => run_healthcheck(listen, timeout),
    };
    // Log lines still queued for stderr would be lost at exit. A stalled
    // stderr must not hold the exit up for long, though.
    log::flush(LOG_FLUSH_TIMEOUT);
    code
}

/// The maximum time the process waits at exit for its last log lines to be written.
const LOG_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn run_healthcheck(listen: std::net::SocketAddr, timeout: std::time::Duration) -> ExitCode {
    match healthcheck::check(listen, timeout) {
        Ok(address) => {
            println!(
                "fanout healthcheck: GET http://{address}{} returned 200",
                healthcheck::PATH
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("fanout healthcheck: {error}");
            ExitCode::from(EXIT_UNHEALTHY)
        }
    }
}

fn serve(config: Config) -> ExitCode {
    let threads = config.threads;
    let descriptors = server::raise_descriptor_limit();
    let limits = limits(&config, descriptors);
    runtime::run(threads, |executor| async move {
        let listener = match server::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => return startup_failed("cannot listen", &config.listen, &error),
        };
        let upstream = match &config.simulate {
            Some(simulator) => match start_simulator(simulator.clone(), &executor).await {
                Ok(url) => url,
                Err(error) => {
                    return startup_failed(
                        "cannot start the simulated upstream",
                        &"127.0.0.1:0",
                        &error,
                    );
                }
            },
            None => config.upstream.clone(),
        };
        let client = match Client::new(
            upstream,
            config.upstream_ca.as_ref().map(|(_, pem)| pem.as_slice()),
            config.pool,
        ) {
            Ok(client) => client,
            Err(error) => {
                let path = config
                    .upstream_ca
                    .as_ref()
                    .map(|(path, _)| path.display().to_string())
                    .unwrap_or_default();
                eprintln!(
                    "fanout: invalid --upstream-ca {path:?}: expected PEM CA certificates ({error})"
                );
                return ExitCode::from(EXIT_USAGE);
            }
        };

        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        log::event(
            Level::Info,
            "listening",
            &[
                ("addr", &address),
                ("upstream", client.url()),
                ("fanout", &config.fanout),
                ("max_timeout_ms", &config.max_timeout_ms),
                ("threads", &threads),
                ("max_connections", &limits.max_connections),
                ("max_in_flight", &limits.max_in_flight),
                ("descriptor_limit", &Limit(descriptors)),
                ("upstream_max_idle", &config.pool.max_idle),
                (
                    "upstream_idle_timeout_ms",
                    &config.pool.idle_timeout.as_millis(),
                ),
                ("losers", &config.losers.as_str()),
            ],
        );
        executor
            .spawn(observe::report_periodically(config.summary_interval))
            .detach();
        executor.spawn(client.close_idle_connections()).detach();
        let shutdown = Shutdown::new();
        let mut api = Api::new(
            client,
            config.fanout,
            config.max_timeout_ms,
            executor.clone(),
        )
        .with_shutdown(shutdown.clone());
        if config.losers == Losers::Finish {
            // A loser is finished only so that its connection can be pooled,
            // so more of them than the pool keeps would hold descriptors for
            // nothing.
            api = api.finish_losers(config.pool.max_idle);
        }
        let serving = server::serve(listener, Arc::new(api), executor, limits, shutdown.clone());
        run_until_signal(serving, Some(shutdown)).await
    })
}

/// Builds the server's limits, deriving the caps not given from the descriptor limit.
fn limits(config: &Config, descriptors: Option<u64>) -> Limits {
    // The in-process simulator owns the other end of each upstream socket.
    let per_attempt = if config.simulate.is_some() { 2 } else { 1 };
    let per_request = config.fanout as u64 * per_attempt;
    let (connections, in_flight) = server::default_caps(descriptors, per_request);
    let limits = Limits {
        max_connections: config.max_connections.unwrap_or(connections),
        max_in_flight: config.max_in_flight.unwrap_or(in_flight),
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        write_timeout: config.write_timeout,
        head: config.head,
    };
    if !server::caps_fit(
        descriptors,
        per_request,
        limits.max_connections,
        limits.max_in_flight,
    ) {
        log::event(
            Level::Warn,
            "caps exceed the descriptor limit; accepts may fail with EMFILE under load",
            &[
                ("max_connections", &limits.max_connections),
                ("max_in_flight", &limits.max_in_flight),
                ("descriptor_limit", &Limit(descriptors)),
            ],
        );
    }
    limits
}

/// A resource limit for the log, where `None` is unlimited.
struct Limit(Option<u64>);

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(limit) => write!(f, "{limit}"),
            None => f.write_str("unlimited"),
        }
    }
}

fn simulate(listen: std::net::SocketAddr, simulator: SimulatorConfig, threads: usize) -> ExitCode {
    runtime::run(threads, |executor| async move {
        let listener = match server::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => return startup_failed("cannot listen", &listen, &error),
        };
        run_until_signal(simulator::run(listener, simulator, executor), None).await
    })
}

/// Starts the simulated upstream on an ephemeral loopback port and returns its URL.
async fn start_simulator(
    simulator: SimulatorConfig,
    executor: &Arc<Executor<'static>>,
) -> std::io::Result<UpstreamUrl> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}/api/work", listener.local_addr()?);
    executor
        .spawn(simulator::run(listener, simulator, executor.clone()))
        .detach();
    Ok(UpstreamUrl::parse(&url).expect("a loopback URL is valid"))
}

/// Runs `work` until SIGTERM or SIGINT arrives.
///
/// Without a `shutdown`, the signal ends the process with status 0 at once.
/// With one, the signal begins draining and `work` runs on until it has
/// finished, which gives status 0; a second signal stops at once with
/// status 1.
async fn run_until_signal(work: impl Future<Output = ()>, shutdown: Option<Shutdown>) -> ExitCode {
    // Installing handlers matters when fanout is PID 1 in a container: there
    // the kernel ignores SIGTERM for a process that has no handler.
    let mut signals = match Signals::new([Signal::Term, Signal::Int]) {
        Ok(signals) => signals,
        Err(error) => {
            log::event(
                Level::Error,
                "cannot install signal handlers",
                &[("error", &error)],
            );
            return ExitCode::FAILURE;
        }
    };
    let mut work = pin!(work);

    let Some(signal) = until_signal(work.as_mut(), &mut signals).await else {
        return ExitCode::FAILURE;
    };
    let Some(shutdown) = shutdown else {
        log::event(Level::Info, "stopping", &[("signal", &signal)]);
        return ExitCode::SUCCESS;
    };
    log::event(Level::Info, "draining", &[("signal", &signal)]);
    shutdown.begin();

    match until_signal(work, &mut signals).await {
        None => {
            log::event(Level::Info, "stopped", &[]);
            ExitCode::SUCCESS
        }
        Some(signal) => {
            log::event(
                Level::Warn,
                "stopping without draining",
                &[("signal", &signal)],
            );
            ExitCode::FAILURE
        }
    }
}

/// Polls `work` until it finishes, giving `None`, or a signal arrives, giving its name.
async fn until_signal(
    work: impl Future<Output = ()>,
    signals: &mut Signals,
) -> Option<&'static str> {
    let finished = async {
        work.await;
        None
    };
    let signalled = async {
        match signals.next().await {
            Some(Ok(Signal::Int)) => Some("SIGINT"),
            _ => Some("SIGTERM"),
        }
    };
    // The work is polled first, so a drain that completes in the same
    // wakeup as a second signal still exits with status 0.
    finished.or(signalled).await
}

fn startup_failed(what: &str, address: &dyn std::fmt::Display, error: &std::io::Error) -> ExitCode {
    log::event(Level::Error, what, &[("addr", address), ("error", error)]);
    ExitCode::FAILURE
}
