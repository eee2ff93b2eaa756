//! Command-line options and their environment-variable equivalents.
//!
//! Every option of the gateway has a `FANOUT_*` variable; a flag on the
//! command line wins over the variable. Scripts and container images depend
//! on these names, so they are part of the interface.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::fanout::Losers;
use crate::log::{Format, Level};
use crate::server::{
    DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_WRITE_TIMEOUT, HEAD_CEILING,
    HEADERS_CEILING, HeadLimits,
};
use crate::simulator::SimulatorConfig;
use crate::upstream::{PoolConfig, UpstreamUrl};

/// The default upstream URL.
pub const DEFAULT_UPSTREAM: &str = "https://exponea-engineering-assignment.appspot.com/api/work";

/// The maximum number of upstream requests per call. Each costs a socket and a
/// descriptor for the length of the request, so a larger fan-out would let
/// one caller hold a disproportionate share of the process's descriptors.
const MAX_FANOUT: u64 = 32;

/// The largest accepted `--max-timeout`, one day in milliseconds, which keeps
/// every deadline far from overflowing `Instant` arithmetic.
const MAX_MAX_TIMEOUT_MS: u64 = 86_400_000;

/// The maximum number of executor threads.
const MAX_THREADS: u64 = 1024;

/// The longest `--summary-interval` accepted: one day, in seconds.
const MAX_SUMMARY_INTERVAL_S: u64 = 86_400;

/// The format and level of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub format: Format,
    /// The least severe level written; `None` turns logging off.
    pub max_level: Option<Level>,
}

/// The largest `--max-connections` and `--max-in-flight` accepted. No
/// descriptor limit on Linux reaches past about a million, so a larger cap
/// could never be used.
const MAX_CAP: u64 = 1_000_000;
/// The largest accepted `--upstream-max-idle`: one source address can hold
/// at most one connection per local port to an upstream address.
const MAX_IDLE_CONNECTIONS: u64 = 65_535;

/// The default of `--losers`. Finishing losers measured faster: closing a
/// loser costs a new connection later, over https a TLS handshake (see
/// docs/PERFORMANCE.md).
pub const DEFAULT_LOSERS: Losers = Losers::Finish;

/// The gateway's configuration.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: UpstreamUrl,
    /// A CA certificate file (PEM) to trust for the upstream, and its contents.
    pub upstream_ca: Option<(PathBuf, Vec<u8>)>,
    /// Upstream requests per API call.
    pub fanout: usize,
    /// The largest `timeout` a caller may ask for, in milliseconds.
    pub max_timeout_ms: u64,
    pub threads: usize,
    /// When set, start a simulated upstream in-process and use it instead of `upstream`.
    pub simulate: Option<SimulatorConfig>,
    pub log: LogConfig,
    /// How often the upstream summary is logged while there is traffic.
    pub summary_interval: Duration,
    /// Client connections open at once; `None` derives it from the descriptor limit.
    pub max_connections: Option<usize>,
    /// API requests handled at once; `None` derives it from the descriptor limit.
    pub max_in_flight: Option<usize>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// The size limits on a request head.
    pub head: HeadLimits,
    /// Reuse of upstream connections.
    pub pool: PoolConfig,
    pub losers: Losers,
}

/// The smallest `--max-head-size` accepted, in bytes: room for a request
/// line and the few fields every client sends.
const MIN_HEAD_SIZE: u64 = 1024;

/// The shortest `--max-target-length` accepted: room for the API's paths
/// and a `timeout` parameter.
const MIN_TARGET_LENGTH: u64 = 64;

/// The command selected by the command line.
#[derive(Debug)]
pub enum Command {
    /// Boxed, since a configuration is far larger than the other variants.
    Serve(Box<Config>),
    /// Run only the simulated upstream, on this address.
    Simulate {
        listen: SocketAddr,
        simulator: SimulatorConfig,
        threads: usize,
        log: LogConfig,
    },
    /// Request `/healthz` from the gateway listening on `listen`, on its loopback address.
    Healthcheck {
        listen: SocketAddr,
        timeout: Duration,
    },
    /// Print this help text and exit.
    Help(String),
    Version,
}

/// An invalid option, reported on one line with exit status 2.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// One option: its flag, variable, value name (`None` for a switch), meaning and default.
struct Spec {
    flag: &'static str,
    env: &'static str,
    value: Option<&'static str>,
    help: &'static str,
    default: &'static str,
}

const LISTEN: usize = 0;
const UPSTREAM: usize = 1;
const UPSTREAM_CA: usize = 2;
const FANOUT: usize = 3;
const MAX_TIMEOUT: usize = 4;
const THREADS: usize = 5;
const SIMULATE_UPSTREAM: usize = 6;
const SIMULATE_FAILURE_RATE: usize = 7;
const SIMULATE_SEED: usize = 8;
const LOG_FORMAT: usize = 9;
const LOG_LEVEL: usize = 10;
const SUMMARY_INTERVAL: usize = 11;

const LOG_FORMAT_SPEC: Spec = Spec {
    flag: "--log-format",
    env: "FANOUT_LOG_FORMAT",
    value: Some("FORMAT"),
    help: "log line format on stderr: json or text (logfmt)",
    default: "json",
};

const LOG_LEVEL_SPEC: Spec = Spec {
    flag: "--log-level",
    env: "FANOUT_LOG_LEVEL",
    value: Some("LEVEL"),
    help: "least severe level logged: error, warn, info, debug, or off",
    default: "info",
};
const MAX_CONNECTIONS: usize = 12;
const MAX_IN_FLIGHT: usize = 13;
const HEADER_TIMEOUT: usize = 14;
const IDLE_TIMEOUT: usize = 15;
const WRITE_TIMEOUT: usize = 16;
const MAX_HEAD_SIZE: usize = 17;
const MAX_HEADERS: usize = 18;
const MAX_TARGET_LENGTH: usize = 19;
const UPSTREAM_MAX_IDLE: usize = 20;
const UPSTREAM_IDLE_TIMEOUT: usize = 21;
const LOSERS: usize = 22;

const SERVE_OPTIONS: &[Spec] = &[
    Spec {
        flag: "--listen",
        env: "FANOUT_LISTEN",
        value: Some("ADDR"),
        help: "address and port to accept HTTP on",
        default: "127.0.0.1:8080",
    },
    Spec {
        flag: "--upstream",
        env: "FANOUT_UPSTREAM",
        value: Some("URL"),
        help: "http:// or https:// URL each upstream request goes to",
        default: DEFAULT_UPSTREAM,
    },
    Spec {
        flag: "--upstream-ca",
        env: "FANOUT_UPSTREAM_CA",
        value: Some("FILE"),
        help: "PEM file of CA certificates to trust for the upstream, besides the system roots",
        default: "none",
    },
    Spec {
        flag: "--fanout",
        env: "FANOUT_FANOUT",
        value: Some("N"),
        help: "concurrent upstream requests per API call, 1 to 32",
        default: "2",
    },
    Spec {
        flag: "--max-timeout",
        env: "FANOUT_MAX_TIMEOUT",
        value: Some("MS"),
        help: "largest timeout a caller may ask for, in milliseconds",
        default: "60000",
    },
    Spec {
        flag: "--threads",
        env: "FANOUT_THREADS",
        value: Some("N"),
        help: "executor threads",
        default: "the number of CPUs available",
    },
    Spec {
        flag: "--simulate-upstream",
        env: "FANOUT_SIMULATE_UPSTREAM",
        value: None,
        help: "start a simulated upstream on a loopback port and use it instead of --upstream",
        default: "off",
    },
    Spec {
        flag: "--simulate-failure-rate",
        env: "FANOUT_SIMULATE_FAILURE_RATE",
        value: Some("RATE"),
        help: "share of simulated upstream responses that fail, 0 to 1",
        default: "0.25",
    },
    Spec {
        flag: "--simulate-seed",
        env: "FANOUT_SIMULATE_SEED",
        value: Some("N"),
        help: "seed for the simulated upstream's randomness",
        default: "random, printed at start",
    },
    LOG_FORMAT_SPEC,
    LOG_LEVEL_SPEC,
    Spec {
        flag: "--summary-interval",
        env: "FANOUT_SUMMARY_INTERVAL",
        value: Some("SECONDS"),
        help: "how often the last minute's upstream summary is logged while there is traffic",
        default: "60",
    },
    Spec {
        flag: "--max-connections",
        env: "FANOUT_MAX_CONNECTIONS",
        value: Some("N"),
        help: "client connections open at once; more wait in the listen backlog",
        default: "(descriptor limit - 64) / 2",
    },
    Spec {
        flag: "--max-in-flight",
        env: "FANOUT_MAX_IN_FLIGHT",
        value: Some("N"),
        help: "API requests handled at once; more get 503",
        default: "(descriptor limit - 64) / 2 / upstream sockets per request",
    },
    Spec {
        flag: "--header-timeout",
        env: "FANOUT_HEADER_TIMEOUT",
        value: Some("MS"),
        help: "milliseconds for a new connection's first request head and body from accept, and for a later one's from its first byte (then 408)",
        default: "10000",
    },
    Spec {
        flag: "--idle-timeout",
        env: "FANOUT_IDLE_TIMEOUT",
        value: Some("MS"),
        help: "milliseconds a kept-alive connection may wait for its next request head, from the end of the previous response",
        default: "75000",
    },
    Spec {
        flag: "--write-timeout",
        env: "FANOUT_WRITE_TIMEOUT",
        value: Some("MS"),
        help: "milliseconds to write one response before the connection is closed",
        default: "10000",
    },
    Spec {
        flag: "--max-head-size",
        env: "FANOUT_MAX_HEAD_SIZE",
        value: Some("BYTES"),
        help: "maximum request head size, 1024 to 1048576 bytes; larger heads get 431",
        default: "16384",
    },
    Spec {
        flag: "--max-headers",
        env: "FANOUT_MAX_HEADERS",
        value: Some("N"),
        help: "maximum number of header fields in a request, 1 to 256; more get 431",
        default: "64",
    },
    Spec {
        flag: "--max-target-length",
        env: "FANOUT_MAX_TARGET_LENGTH",
        value: Some("BYTES"),
        help: "maximum request target length, 64 bytes to --max-head-size; longer targets get 414",
        default: "8192, or --max-head-size if smaller",
    },
    Spec {
        flag: "--upstream-max-idle",
        env: "FANOUT_UPSTREAM_MAX_IDLE",
        value: Some("N"),
        help: "maximum number of idle keep-alive upstream connections kept for reuse; 0 turns reuse off",
        default: "256",
    },
    Spec {
        flag: "--upstream-idle-timeout",
        env: "FANOUT_UPSTREAM_IDLE_TIMEOUT",
        value: Some("MS"),
        help: "how long an idle upstream connection is kept, in milliseconds",
        default: "4000",
    },
    Spec {
        flag: "--losers",
        env: "FANOUT_LOSERS",
        value: Some("MODE"),
        help: "what /api/first does with upstream requests still running after one succeeded: \
               cancel closes them, finish lets up to --upstream-max-idle of them run until the deadline so their connections are reused",
        default: "finish",
    },
];

const SIM_LISTEN: usize = 0;
const SIM_FAILURE_RATE: usize = 1;
const SIM_SEED: usize = 2;
const SIM_MIN_LATENCY: usize = 3;
const SIM_MAX_LATENCY: usize = 4;
const SIM_THREADS: usize = 5;
const SIM_LOG_FORMAT: usize = 6;
const SIM_LOG_LEVEL: usize = 7;

const SIMULATE_OPTIONS: &[Spec] = &[
    Spec {
        flag: "--listen",
        env: "FANOUT_SIMULATE_LISTEN",
        value: Some("ADDR"),
        help: "address and port to accept HTTP on",
        default: "127.0.0.1:8081",
    },
    Spec {
        flag: "--failure-rate",
        env: "FANOUT_SIMULATE_FAILURE_RATE",
        value: Some("RATE"),
        help: "share of responses that fail, 0 to 1",
        default: "0.25",
    },
    Spec {
        flag: "--seed",
        env: "FANOUT_SIMULATE_SEED",
        value: Some("N"),
        help: "seed for the randomness",
        default: "random, printed at start",
    },
    Spec {
        flag: "--min-latency",
        env: "FANOUT_SIMULATE_MIN_LATENCY",
        value: Some("MS"),
        help: "minimum delay before each response, in milliseconds",
        default: "100",
    },
    Spec {
        flag: "--max-latency",
        env: "FANOUT_SIMULATE_MAX_LATENCY",
        value: Some("MS"),
        help: "maximum delay before each response, in milliseconds",
        default: "600",
    },
    Spec {
        flag: "--threads",
        env: "FANOUT_THREADS",
        value: Some("N"),
        help: "executor threads",
        default: "the number of CPUs available",
    },
    LOG_FORMAT_SPEC,
    LOG_LEVEL_SPEC,
];

const HEALTH_LISTEN: usize = 0;
const HEALTH_TIMEOUT: usize = 1;

/// The longest `fanout healthcheck --timeout`. Docker and podman stop a
/// health check after 30 s by default, so a longer timeout would never expire.
const MAX_HEALTHCHECK_TIMEOUT_MS: u64 = 30_000;

const HEALTHCHECK_OPTIONS: &[Spec] = &[
    Spec {
        flag: "--listen",
        env: "FANOUT_LISTEN",
        value: Some("ADDR"),
        help: "address the gateway listens on; 0.0.0.0 and :: are probed on 127.0.0.1 and ::1",
        default: "127.0.0.1:8080",
    },
    Spec {
        flag: "--timeout",
        env: "FANOUT_HEALTHCHECK_TIMEOUT",
        value: Some("MS"),
        help: "time allowed for connecting and receiving the response, in milliseconds",
        default: "2000",
    },
];

/// The source of an option's value, for error messages.
#[derive(Clone, Copy)]
enum Origin {
    Flag,
    Env,
}

/// Option values by index into a spec table.
struct Values<'a> {
    specs: &'a [Spec],
    values: Vec<Option<(String, Origin)>>,
}

impl Values<'_> {
    fn get(&self, index: usize) -> Option<&str> {
        self.values[index].as_ref().map(|(value, _)| value.as_str())
    }

    fn is_set(&self, index: usize) -> bool {
        self.values[index].is_some()
    }

    /// Builds the error for the option at `index`, naming its flag, value and origin.
    fn invalid(&self, index: usize, expected: &str) -> ConfigError {
        let spec = &self.specs[index];
        match &self.values[index] {
            Some((value, Origin::Env)) => ConfigError(format!(
                "invalid {} {value:?} (from {}): expected {expected}",
                spec.flag, spec.env
            )),
            Some((value, Origin::Flag)) => ConfigError(format!(
                "invalid {} {value:?}: expected {expected}",
                spec.flag
            )),
            None => ConfigError(format!("invalid {}: expected {expected}", spec.flag)),
        }
    }

    fn number(
        &self,
        index: usize,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, ConfigError> {
        let Some(text) = self.get(index) else {
            return Ok(None);
        };
        let expected = || {
            self.invalid(
                index,
                &format!("a whole number from {} to {}", range.start(), range.end()),
            )
        };
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(expected());
        }
        match text.parse() {
            Ok(value) if range.contains(&value) => Ok(Some(value)),
            _ => Err(expected()),
        }
    }

    fn address(&self, index: usize) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(text) = self.get(index) else {
            return Ok(None);
        };
        text.parse()
            .map(Some)
            .map_err(|_| self.invalid(index, "IP:PORT such as 127.0.0.1:8080 or [::1]:8080"))
    }

    fn rate(&self, index: usize) -> Result<Option<f64>, ConfigError> {
        let Some(text) = self.get(index) else {
            return Ok(None);
        };
        match text.parse::<f64>() {
            Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(Some(rate)),
            _ => Err(self.invalid(index, "a number from 0 to 1, such as 0.25")),
        }
    }

    fn switch(&self, index: usize) -> Result<bool, ConfigError> {
        match self.values[index].as_ref() {
            None => Ok(false),
            Some((_, Origin::Flag)) => Ok(true),
            Some((value, Origin::Env)) => match value.as_str() {
                "1" | "true" | "yes" => Ok(true),
                "" | "0" | "false" | "no" => Ok(false),
                _ => Err(self.invalid(index, "1, true, yes, 0, false or no")),
            },
        }
    }
}

/// Parses the arguments after the program name, reading variables through `env`.
pub fn parse(
    args: Vec<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    if args.first().is_some_and(|arg| arg == "healthcheck") {
        return healthcheck_command(&args[1..], env);
    }
    let (subcommand, args) = match args.first().map(String::as_str) {
        Some("simulate") => (true, &args[1..]),
        _ => (false, &args[..]),
    };
    let specs = if subcommand {
        SIMULATE_OPTIONS
    } else {
        SERVE_OPTIONS
    };
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        return Ok(Command::Help(help(subcommand)));
    }
    if args.iter().any(|arg| arg == "--version" || arg == "-V") {
        return Ok(Command::Version);
    }
    let values = collect(specs, args, env)?;
    if subcommand {
        simulate_command(&values)
    } else {
        serve_command(&values)
    }
}

/// Reads variables first, then flags, so a flag overrides its variable.
fn collect<'a>(
    specs: &'a [Spec],
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Values<'a>, ConfigError> {
    let mut values: Vec<Option<(String, Origin)>> = specs
        .iter()
        .map(|spec| env(spec.env).map(|value| (value, Origin::Env)))
        .collect();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let Some(index) = specs.iter().position(|spec| spec.flag == flag) else {
            return Err(ConfigError(format!("unknown argument {arg:?}; see --help")));
        };
        let value = match (specs[index].value, inline) {
            (None, None) => String::new(),
            (None, Some(_)) => return Err(ConfigError(format!("{flag} takes no value"))),
            (Some(_), Some(value)) => value,
            (Some(name), None) => match args.next() {
                Some(value) => value.clone(),
                None => return Err(ConfigError(format!("{flag} needs a value: {flag} {name}"))),
            },
        };
        values[index] = Some((value, Origin::Flag));
    }
    Ok(Values { specs, values })
}

fn serve_command(values: &Values<'_>) -> Result<Command, ConfigError> {
    let simulate = values.switch(SIMULATE_UPSTREAM)?;
    if simulate && values.is_set(UPSTREAM) {
        return Err(ConfigError(
            "--upstream and --simulate-upstream cannot be used together".into(),
        ));
    }
    let upstream_text = values.get(UPSTREAM).unwrap_or(DEFAULT_UPSTREAM);
    let upstream = UpstreamUrl::parse(upstream_text)
        .map_err(|error| values.invalid(UPSTREAM, &format!("a valid URL ({error})")))?;

    let upstream_ca = match values.get(UPSTREAM_CA) {
        None => None,
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some((PathBuf::from(path), pem)),
            Err(error) => {
                return Err(values.invalid(UPSTREAM_CA, &format!("a readable PEM file ({error})")));
            }
        },
    };
    let simulator = SimulatorConfig {
        failure_rate: values
            .rate(SIMULATE_FAILURE_RATE)?
            .unwrap_or(SimulatorConfig::DEFAULT_FAILURE_RATE),
        seed: values.number(SIMULATE_SEED, 0..=u64::MAX)?,
        ..SimulatorConfig::default()
    };

    let config = Config {
        listen: values
            .address(LISTEN)?
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
        upstream,
        upstream_ca,
        fanout: values.number(FANOUT, 1..=MAX_FANOUT)?.unwrap_or(2) as usize,
        max_timeout_ms: values
            .number(MAX_TIMEOUT, 1..=MAX_MAX_TIMEOUT_MS)?
            .unwrap_or(60_000),
        threads: threads(values, THREADS)?,
        simulate: simulate.then_some(simulator),
        log: log_config(values, LOG_FORMAT, LOG_LEVEL)?,
        summary_interval: values
            .number(SUMMARY_INTERVAL, 1..=MAX_SUMMARY_INTERVAL_S)?
            .map_or(
                crate::observe::DEFAULT_SUMMARY_INTERVAL,
                Duration::from_secs,
            ),
        max_connections: values
            .number(MAX_CONNECTIONS, 1..=MAX_CAP)?
            .map(|n| n as usize),
        max_in_flight: values
            .number(MAX_IN_FLIGHT, 1..=MAX_CAP)?
            .map(|n| n as usize),
        header_timeout: millis(values, HEADER_TIMEOUT, DEFAULT_HEADER_TIMEOUT)?,
        idle_timeout: millis(values, IDLE_TIMEOUT, DEFAULT_IDLE_TIMEOUT)?,
        write_timeout: millis(values, WRITE_TIMEOUT, DEFAULT_WRITE_TIMEOUT)?,
        head: head_limits(values)?,
        pool: PoolConfig {
            max_idle: values
                .number(UPSTREAM_MAX_IDLE, 0..=MAX_IDLE_CONNECTIONS)?
                .map_or(PoolConfig::DEFAULT_MAX_IDLE, |n| n as usize),
            idle_timeout: Duration::from_millis(
                values
                    .number(UPSTREAM_IDLE_TIMEOUT, 1..=MAX_MAX_TIMEOUT_MS)?
                    .unwrap_or(PoolConfig::DEFAULT_IDLE_TIMEOUT_MS),
            ),
        },
        losers: losers(values)?,
    };
    Ok(Command::Serve(Box::new(config)))
}

/// Reads the request head limits. The target must fit in a head, or a long
/// one would get 431 before it could get 414.
fn head_limits(values: &Values<'_>) -> Result<HeadLimits, ConfigError> {
    let defaults = HeadLimits::default();
    let max_head = values
        .number(MAX_HEAD_SIZE, MIN_HEAD_SIZE..=HEAD_CEILING as u64)?
        .map_or(defaults.max_head, |n| n as usize);
    let max_headers = values
        .number(MAX_HEADERS, 1..=HEADERS_CEILING as u64)?
        .map_or(defaults.max_headers, |n| n as usize);
    let max_target = values
        .number(MAX_TARGET_LENGTH, MIN_TARGET_LENGTH..=HEAD_CEILING as u64)?
        .map_or(defaults.max_target.min(max_head), |n| n as usize);
    if max_target > max_head {
        let expected = format!("at most --max-head-size ({max_head})");
        return Err(values.invalid(MAX_TARGET_LENGTH, &expected));
    }
    Ok(HeadLimits {
        max_head,
        max_headers,
        max_target,
    })
}

/// Reads a duration in milliseconds, from 1 ms to one day.
fn millis(values: &Values<'_>, index: usize, default: Duration) -> Result<Duration, ConfigError> {
    Ok(values
        .number(index, 1..=MAX_MAX_TIMEOUT_MS)?
        .map_or(default, Duration::from_millis))
}

fn simulate_command(values: &Values<'_>) -> Result<Command, ConfigError> {
    let defaults = SimulatorConfig::default();
    let min_ms = values.number(SIM_MIN_LATENCY, 0..=MAX_MAX_TIMEOUT_MS)?;
    let max_ms = values.number(SIM_MAX_LATENCY, 0..=MAX_MAX_TIMEOUT_MS)?;
    let min_latency = min_ms.map_or(defaults.min_latency, Duration::from_millis);
    let max_latency = max_ms.map_or(defaults.max_latency, Duration::from_millis);
    if min_latency > max_latency {
        return Err(values.invalid(SIM_MAX_LATENCY, "a value no smaller than --min-latency"));
    }
    let simulator = SimulatorConfig {
        failure_rate: values
            .rate(SIM_FAILURE_RATE)?
            .unwrap_or(defaults.failure_rate),
        seed: values.number(SIM_SEED, 0..=u64::MAX)?,
        min_latency,
        max_latency,
    };
    Ok(Command::Simulate {
        listen: values
            .address(SIM_LISTEN)?
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8081))),
        simulator,
        threads: threads(values, SIM_THREADS)?,
        log: log_config(values, SIM_LOG_FORMAT, SIM_LOG_LEVEL)?,
    })
}

fn healthcheck_command(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        let usage = "fanout healthcheck [OPTIONS]\n\nRequests GET /healthz from the gateway on its loopback address and exits 0 on\nstatus 200, 1 otherwise. It never connects to an address other than loopback.";
        return Ok(Command::Help(options_help(usage, HEALTHCHECK_OPTIONS)));
    }
    let values = collect(HEALTHCHECK_OPTIONS, args, env)?;
    let timeout_ms = values.number(HEALTH_TIMEOUT, 1..=MAX_HEALTHCHECK_TIMEOUT_MS)?;
    Ok(Command::Healthcheck {
        listen: values
            .address(HEALTH_LISTEN)?
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
        timeout: Duration::from_millis(timeout_ms.unwrap_or(2000)),
    })
}

fn log_config(values: &Values<'_>, format: usize, level: usize) -> Result<LogConfig, ConfigError> {
    let format = match values.get(format) {
        None => Format::Json,
        Some(text) => Format::parse(text).map_err(|_| values.invalid(format, "json or text"))?,
    };
    let max_level = match values.get(level) {
        None => Some(Level::Info),
        Some(text) => Level::parse_filter(text)
            .map_err(|_| values.invalid(level, "error, warn, info, debug or off"))?,
    };
    Ok(LogConfig { format, max_level })
}

fn losers(values: &Values<'_>) -> Result<Losers, ConfigError> {
    match values.get(LOSERS) {
        None => Ok(DEFAULT_LOSERS),
        Some("cancel") => Ok(Losers::Cancel),
        Some("finish") => Ok(Losers::Finish),
        Some(_) => Err(values.invalid(LOSERS, "cancel or finish")),
    }
}

fn threads(values: &Values<'_>, index: usize) -> Result<usize, ConfigError> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(values
        .number(index, 1..=MAX_THREADS)?
        .map_or(available, |n| n as usize))
}

/// Builds the `--help` text from the option table.
fn help(subcommand: bool) -> String {
    let (usage, specs) = if subcommand {
        (
            "fanout simulate [OPTIONS]\n\nRuns only the simulated upstream: it answers {\"time\": N} after a random delay,\nand fails a share of requests with HTTP 500, an invalid payload, a hang, a reset or a slow body.",
            SIMULATE_OPTIONS,
        )
    } else {
        (
            "fanout [OPTIONS]\n       fanout simulate [OPTIONS]\n       fanout healthcheck [OPTIONS]\n\nServes GET /api/all?timeout=MS and GET /api/first?timeout=MS, fanning each request\nout to the upstream and answering within the timeout.",
            SERVE_OPTIONS,
        )
    };
    options_help(usage, specs)
}

/// Formats a usage text and an option table as help.
fn options_help(usage: &str, specs: &[Spec]) -> String {
    let mut text =
        format!("Usage: {usage}\n\nOptions (a flag overrides its environment variable):\n");
    for spec in specs {
        let flag = match spec.value {
            Some(value) => format!("{} {value}", spec.flag),
            None => spec.flag.to_string(),
        };
        text.push_str(&format!(
            "  {flag:<30} {}\n  {:<30} [env: {}] [default: {}]\n",
            spec.help, "", spec.env, spec.default
        ));
    }
    text.push_str("  -h, --help                     print this help\n  -V, --version                  print the version\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str], env: &[(&str, &str)]) -> Result<Command, ConfigError> {
        let args = args.iter().map(|arg| arg.to_string()).collect();
        parse(args, |key| {
            env.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })
    }

    fn serve(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse_args(args, env) {
            Ok(Command::Serve(config)) => *config,
            other => panic!("expected a serve command, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_help() {
        let config = serve(&[], &[]);
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.upstream.to_string(), DEFAULT_UPSTREAM);
        assert_eq!(config.fanout, 2);
        assert_eq!(config.max_timeout_ms, 60_000);
        assert!(config.simulate.is_none());
        assert!(config.upstream_ca.is_none());
        assert_eq!(config.log.format, Format::Json);
        assert_eq!(config.log.max_level, Some(Level::Info));
        assert_eq!(config.summary_interval, Duration::from_secs(60));
        assert_eq!(config.max_connections, None);
        assert_eq!(config.max_in_flight, None);
        for (index, value) in [
            (HEADER_TIMEOUT, config.header_timeout),
            (IDLE_TIMEOUT, config.idle_timeout),
            (WRITE_TIMEOUT, config.write_timeout),
        ] {
            assert_eq!(
                SERVE_OPTIONS[index].default,
                value.as_millis().to_string(),
                "{}",
                SERVE_OPTIONS[index].flag
            );
        }
    }

    #[test]
    fn reads_limits_from_flags_and_environment() {
        let config = serve(
            &["--max-connections", "100", "--header-timeout=250"],
            &[
                ("FANOUT_MAX_IN_FLIGHT", "7"),
                ("FANOUT_IDLE_TIMEOUT", "500"),
                ("FANOUT_WRITE_TIMEOUT", "60"),
            ],
        );
        assert_eq!(config.max_connections, Some(100));
        assert_eq!(config.max_in_flight, Some(7));
        assert_eq!(config.header_timeout, Duration::from_millis(250));
        assert_eq!(config.idle_timeout, Duration::from_millis(500));
        assert_eq!(config.write_timeout, Duration::from_millis(60));
    }

    #[test]
    fn head_limits_from_flags_and_environment() {
        let defaults = serve(&[], &[]).head;
        for (index, value) in [
            (MAX_HEAD_SIZE, defaults.max_head),
            (MAX_HEADERS, defaults.max_headers),
        ] {
            assert_eq!(SERVE_OPTIONS[index].default, value.to_string());
        }
        assert!(
            SERVE_OPTIONS[MAX_TARGET_LENGTH]
                .default
                .starts_with(&defaults.max_target.to_string())
        );
        let small = serve(&["--max-head-size", "2048"], &[]).head;
        assert_eq!(small.max_target, 2048);

        let config = serve(
            &["--max-head-size", "4096", "--max-headers=8"],
            &[("FANOUT_MAX_TARGET_LENGTH", "100")],
        );
        let expected = HeadLimits {
            max_head: 4096,
            max_headers: 8,
            max_target: 100,
        };
        assert_eq!(config.head, expected);
    }

    #[test]
    fn head_limits_are_range_checked() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--max-head-size", "1023"],
                "invalid --max-head-size \"1023\": expected a whole number from 1024 to 1048576",
            ),
            (
                &["--max-headers", "257"],
                "invalid --max-headers \"257\": expected a whole number from 1 to 256",
            ),
            (
                &["--max-headers", "0"],
                "invalid --max-headers \"0\": expected a whole number from 1 to 256",
            ),
            (
                &["--max-head-size", "2048", "--max-target-length", "4096"],
                "invalid --max-target-length \"4096\": expected at most --max-head-size (2048)",
            ),
        ];
        for (args, message) in cases {
            let error = parse_args(args, &[]).unwrap_err();
            assert_eq!(error.to_string(), *message, "{args:?}");
        }
    }

    #[test]
    fn log_options_from_flag_and_environment() {
        let config = serve(
            &["--log-format", "text"],
            &[("FANOUT_LOG_LEVEL", "off"), ("FANOUT_LOG_FORMAT", "json")],
        );
        assert_eq!(config.log.format, Format::Text);
        assert_eq!(config.log.max_level, None);
        let Ok(Command::Simulate { log, .. }) =
            parse_args(&["simulate"], &[("FANOUT_LOG_LEVEL", "debug")])
        else {
            panic!("expected a simulate command");
        };
        assert_eq!(log.max_level, Some(Level::Debug));
    }

    #[test]
    fn pool_defaults_match_the_help() {
        let config = serve(&[], &[]);
        assert_eq!(config.pool, PoolConfig::default());
        assert_eq!(config.losers, DEFAULT_LOSERS);
        let help = help(false);
        for default in [
            PoolConfig::DEFAULT_MAX_IDLE as u64,
            PoolConfig::DEFAULT_IDLE_TIMEOUT_MS,
        ] {
            assert!(help.contains(&format!("[default: {default}]")), "{help}");
        }
        assert!(
            help.contains(&format!("[default: {}]", DEFAULT_LOSERS.as_str())),
            "{help}"
        );
    }

    #[test]
    fn pool_and_loser_options_parse() {
        let config = serve(
            &["--upstream-max-idle", "0", "--losers", "finish"],
            &[("FANOUT_UPSTREAM_IDLE_TIMEOUT", "250")],
        );
        assert_eq!(config.pool.max_idle, 0);
        assert_eq!(config.pool.idle_timeout, Duration::from_millis(250));
        assert_eq!(config.losers, Losers::Finish);
    }

    #[test]
    fn flag_overrides_environment() {
        let config = serve(
            &["--fanout", "3", "--listen=[::1]:9000"],
            &[("FANOUT_FANOUT", "5"), ("FANOUT_MAX_TIMEOUT", "100")],
        );
        assert_eq!(config.fanout, 3);
        assert_eq!(config.max_timeout_ms, 100);
        assert_eq!(config.listen.to_string(), "[::1]:9000");
    }

    /// Arguments, environment variables, and the expected message or option name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn errors_name_the_option_and_value() {
        let cases: &[Case] = &[
            (
                &["--fanout", "0"],
                &[],
                "invalid --fanout \"0\": expected a whole number from 1 to 32",
            ),
            (
                &[],
                &[("FANOUT_FANOUT", "x")],
                "invalid --fanout \"x\" (from FANOUT_FANOUT): expected a whole number from 1 to 32",
            ),
            (
                &["--max-timeout", "-1"],
                &[],
                "invalid --max-timeout \"-1\": expected a whole number from 1 to 86400000",
            ),
            (
                &["--listen", "8080"],
                &[],
                "invalid --listen \"8080\": expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080",
            ),
            (
                &["--upstream", "ftp://x"],
                &[],
                "invalid --upstream \"ftp://x\": expected a valid URL (unsupported scheme: expected http or https)",
            ),
            (
                &["--bogus"],
                &[],
                "unknown argument \"--bogus\"; see --help",
            ),
            (&["--fanout"], &[], "--fanout needs a value: --fanout N"),
            (
                &["--simulate-upstream=1"],
                &[],
                "--simulate-upstream takes no value",
            ),
            (
                &["--simulate-upstream", "--upstream", "http://a/"],
                &[],
                "--upstream and --simulate-upstream cannot be used together",
            ),
            (
                &["--losers", "wait"],
                &[],
                "invalid --losers \"wait\": expected cancel or finish",
            ),
            (
                &["--upstream-idle-timeout", "0"],
                &[],
                "invalid --upstream-idle-timeout \"0\": expected a whole number from 1 to 86400000",
            ),
            (
                &["--simulate-failure-rate", "1.5"],
                &[],
                "invalid --simulate-failure-rate \"1.5\": expected a number from 0 to 1, such as 0.25",
            ),
            (
                &[],
                &[("FANOUT_LOG_LEVEL", "verbose")],
                "invalid --log-level \"verbose\" (from FANOUT_LOG_LEVEL): expected error, warn, info, debug or off",
            ),
            (
                &["--log-format", "yaml"],
                &[],
                "invalid --log-format \"yaml\": expected json or text",
            ),
            (
                &["--summary-interval", "0"],
                &[],
                "invalid --summary-interval \"0\": expected a whole number from 1 to 86400",
            ),
            (
                &["--max-connections", "0"],
                &[],
                "invalid --max-connections \"0\": expected a whole number from 1 to 1000000",
            ),
            (
                &[],
                &[("FANOUT_MAX_IN_FLIGHT", "lots")],
                "invalid --max-in-flight \"lots\" (from FANOUT_MAX_IN_FLIGHT): expected a whole number from 1 to 1000000",
            ),
            (
                &["--header-timeout", "0"],
                &[],
                "invalid --header-timeout \"0\": expected a whole number from 1 to 86400000",
            ),
            (
                &["--idle-timeout", "1s"],
                &[],
                "invalid --idle-timeout \"1s\": expected a whole number from 1 to 86400000",
            ),
            (
                &["--write-timeout", ""],
                &[],
                "invalid --write-timeout \"\": expected a whole number from 1 to 86400000",
            ),
        ];
        for (args, env, expected) in cases {
            let error = parse_args(args, env).unwrap_err();
            assert_eq!(error.to_string(), *expected, "args {args:?}");
        }
    }

    #[test]
    fn unreadable_ca_file_is_an_error() {
        let error = parse_args(&["--upstream-ca", "/nonexistent/ca.pem"], &[]).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "invalid --upstream-ca \"/nonexistent/ca.pem\": expected a readable PEM file ("
            ),
            "{error}"
        );
    }

    #[test]
    fn simulate_subcommand_checks_latency_order() {
        let error = parse_args(
            &["simulate", "--min-latency", "500", "--max-latency", "100"],
            &[],
        )
        .unwrap_err();
        assert!(error.to_string().contains("--max-latency"), "{error}");
        let Ok(Command::Simulate { simulator, .. }) =
            parse_args(&["simulate", "--seed", "7", "--failure-rate", "0"], &[])
        else {
            panic!("expected a simulate command");
        };
        assert_eq!(simulator.seed, Some(7));
        assert_eq!(simulator.failure_rate, 0.0);
    }

    #[test]
    fn healthcheck_reads_the_gateway_listen_variable() {
        let Ok(Command::Healthcheck { listen, timeout }) =
            parse_args(&["healthcheck"], &[("FANOUT_LISTEN", "0.0.0.0:9090")])
        else {
            panic!("expected a healthcheck command");
        };
        assert_eq!(listen.to_string(), "0.0.0.0:9090");
        assert_eq!(timeout, Duration::from_millis(2000));
    }

    #[test]
    fn healthcheck_checks_its_timeout() {
        let error = parse_args(&["healthcheck", "--timeout", "0"], &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid --timeout \"0\": expected a whole number from 1 to 30000"
        );
        let Ok(Command::Healthcheck { timeout, .. }) =
            parse_args(&["healthcheck", "--timeout=250"], &[])
        else {
            panic!("expected a healthcheck command");
        };
        assert_eq!(timeout, Duration::from_millis(250));
    }

    #[test]
    fn healthcheck_help_lists_its_options() {
        let Ok(Command::Help(text)) = parse_args(&["healthcheck", "--help"], &[]) else {
            panic!("expected help")
        };
        assert!(text.starts_with("Usage: fanout healthcheck"), "{text}");
        for spec in HEALTHCHECK_OPTIONS {
            assert!(text.contains(spec.flag), "missing {}", spec.flag);
            assert!(text.contains(spec.env), "missing {}", spec.env);
        }
    }

    #[test]
    fn help_lists_every_option_with_env_and_default() {
        let Ok(Command::Help(text)) = parse_args(&["--help"], &[]) else {
            panic!("expected help")
        };
        for spec in SERVE_OPTIONS {
            assert!(text.contains(spec.flag), "missing {}", spec.flag);
            assert!(text.contains(spec.env), "missing {}", spec.env);
        }
    }
}
