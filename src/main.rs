//! The `fanout` command: parse options, start the runtime, serve until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use async_net::TcpListener;
use async_signal::{Signal, Signals};
use fanout::api::Api;
use fanout::config::{self, Command, Config};
use fanout::fanout::Losers;
use fanout::log::{self, Level};
use fanout::simulator::{self, SimulatorConfig};
use fanout::upstream::{Client, UpstreamUrl};
use fanout::{runtime, server};
use futures_lite::{FutureExt, StreamExt};
use smol::Executor;

/// Exit status for invalid configuration, as is usual for usage errors.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = std::env::args().skip(1).collect();
    let command = match config::parse(args, |key| std::env::var(key).ok()) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("fanout: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match command {
        Command::Help(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("fanout {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Serve(config) => serve(config),
        Command::Simulate {
            listen,
            simulator,
            threads,
        } => simulate(listen, simulator, threads),
    }
}

fn serve(config: Config) -> ExitCode {
    let threads = config.threads;
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
                ("upstream_max_idle", &config.pool.max_idle),
                (
                    "upstream_idle_timeout_ms",
                    &config.pool.idle_timeout.as_millis(),
                ),
                ("losers", &config.losers.as_str()),
            ],
        );
        executor.spawn(client.close_idle_connections()).detach();
        let mut api = Api::new(client, config.fanout, config.max_timeout_ms);
        if config.losers == Losers::Finish {
            // A loser is finished only so that its connection can be pooled,
            // so more of them than the pool keeps would hold descriptors for
            // nothing.
            api = api.finish_losers(executor.clone(), config.pool.max_idle);
        }
        let api = Arc::new(api);
        run_until_signal(server::serve(listener, api, executor)).await
    })
}

fn simulate(listen: std::net::SocketAddr, simulator: SimulatorConfig, threads: usize) -> ExitCode {
    runtime::run(threads, |executor| async move {
        let listener = match server::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => return startup_failed("cannot listen", &listen, &error),
        };
        run_until_signal(simulator::run(listener, simulator, executor)).await
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

/// Runs `work` until SIGTERM or SIGINT arrives, then exits with status 0.
async fn run_until_signal(work: impl std::future::Future<Output = ()>) -> ExitCode {
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
    let stopped_by = async {
        let signal = signals.next().await;
        Some(signal)
    };
    let work = async {
        work.await;
        None
    };
    match work.or(stopped_by).await {
        Some(signal) => {
            let name = match signal {
                Some(Ok(Signal::Int)) => "SIGINT",
                _ => "SIGTERM",
            };
            log::event(Level::Info, "stopping", &[("signal", &name)]);
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

fn startup_failed(what: &str, address: &dyn std::fmt::Display, error: &std::io::Error) -> ExitCode {
    log::event(Level::Error, what, &[("addr", address), ("error", error)]);
    ExitCode::FAILURE
}
