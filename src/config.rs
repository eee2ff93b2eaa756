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
use crate::simulator::SimulatorConfig;
use crate::upstream::{PoolConfig, UpstreamUrl};

/// The upstream fanout calls unless told otherwise.
pub const DEFAULT_UPSTREAM: &str = "https://exponea-engineering-assignment.appspot.com/api/work";

/// The most upstream requests per call. Each costs a socket and a
/// descriptor for the length of the request, so a larger fan-out would let
/// one caller hold a disproportionate share of the process's descriptors.
const MAX_FANOUT: u64 = 32;

/// The largest accepted `--max-timeout`, one day in milliseconds, which keeps
/// every deadline far from overflowing `Instant` arithmetic.
const MAX_MAX_TIMEOUT_MS: u64 = 86_400_000;

/// The most executor threads accepted.
const MAX_THREADS: u64 = 1024;

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
    /// Reuse of upstream connections.
    pub pool: PoolConfig,
    pub losers: Losers,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Serve(Config),
    /// Run only the simulated upstream, on this address.
    Simulate {
        listen: SocketAddr,
        simulator: SimulatorConfig,
        threads: usize,
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
const UPSTREAM_MAX_IDLE: usize = 9;
const UPSTREAM_IDLE_TIMEOUT: usize = 10;
const LOSERS: usize = 11;

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
        help: "shortest delay before answering, in milliseconds",
        default: "100",
    },
    Spec {
        flag: "--max-latency",
        env: "FANOUT_SIMULATE_MAX_LATENCY",
        value: Some("MS"),
        help: "longest delay before answering, in milliseconds",
        default: "600",
    },
    Spec {
        flag: "--threads",
        env: "FANOUT_THREADS",
        value: Some("N"),
        help: "executor threads",
        default: "the number of CPUs available",
    },
];

/// Where an option's value came from, for error messages.
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

    Ok(Command::Serve(Config {
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
    }))
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
    })
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
            "fanout [OPTIONS]\n       fanout simulate [OPTIONS]\n\nServes GET /api/all?timeout=MS and GET /api/first?timeout=MS, fanning each request\nout to the upstream and answering within the timeout.",
            SERVE_OPTIONS,
        )
    };
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
            Ok(Command::Serve(config)) => config,
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
