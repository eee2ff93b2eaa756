//! Every log line fanout writes: lifecycle events and one access line per request.
//!
//! Lines go to stderr in logfmt (`ts=… level=… msg=… key=value`), each
//! written with a single `write` call so lines from different threads never
//! interleave. All formatting lives here, so changing the format touches
//! only this file.

use std::fmt::{self, Display, Write as _};
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Severity of a log line.
#[derive(Clone, Copy, Debug)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// What the access log records of one upstream attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Outcome kind: `ok`, `timeout`, `cancelled` or a failure kind such as `http_status`.
    pub kind: &'static str,
    /// The upstream's HTTP status, when the attempt got that far and failed on it.
    pub status: Option<u16>,
    pub elapsed: Duration,
}

/// Writes an event line with `msg` and extra `fields`.
pub fn event(level: Level, msg: &str, fields: &[(&str, &dyn Display)]) {
    let mut line = start_line(level, msg);
    for (key, value) in fields {
        push_field(&mut line, key, value);
    }
    finish_line(line);
}

/// Writes the access line for one request.
pub fn access(
    method: &str,
    target_path: &str,
    status: u16,
    duration: Duration,
    attempts: &[AttemptRecord],
) {
    let mut line = start_line(Level::Info, "request");
    push_field(&mut line, "method", &method);
    push_field(&mut line, "path", &target_path);
    push_field(&mut line, "status", &status);
    push_field(&mut line, "duration_ms", &Millis(duration));
    if !attempts.is_empty() {
        let mut summary = String::new();
        for (index, attempt) in attempts.iter().enumerate() {
            if index > 0 {
                summary.push(',');
            }
            summary.push_str(attempt.kind);
            if let Some(status) = attempt.status {
                let _ = write!(summary, "({status})");
            }
            let _ = write!(summary, ":{}", Millis(attempt.elapsed));
        }
        push_field(&mut line, "attempts", &summary);
    }
    finish_line(line);
}

/// A duration shown in milliseconds with one decimal.
struct Millis(Duration);

impl Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}", self.0.as_secs_f64() * 1000.0)
    }
}

fn start_line(level: Level, msg: &str) -> String {
    let mut line = String::with_capacity(200);
    let _ = write!(
        line,
        "ts={} level={}",
        Timestamp(SystemTime::now()),
        level.as_str()
    );
    push_field(&mut line, "msg", &msg);
    line
}

fn finish_line(mut line: String) {
    line.push('\n');
    // A failed write to stderr has nowhere to be reported, so it is dropped.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Appends ` key=value`, quoting the value when it holds spaces, quotes or control characters.
fn push_field(line: &mut String, key: &str, value: &dyn Display) {
    let start = line.len();
    let _ = write!(line, " {key}=");
    let value_start = line.len();
    let _ = write!(line, "{value}");
    let needs_quotes = line[value_start..].is_empty()
        || line[value_start..]
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control());
    if needs_quotes {
        let value = line.split_off(value_start);
        line.truncate(start);
        let _ = write!(line, " {key}={value:?}");
    }
}

/// A UTC time in RFC 3339 form with milliseconds, such as `2026-12-04T15:52:38.123Z`.
struct Timestamp(SystemTime);

impl Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since_epoch = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since_epoch.as_secs();
        let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
        let second_of_day = seconds % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60,
            since_epoch.subsec_millis(),
        )
    }
}

/// Converts days since 1970-01-01 to a (year, month, day) date in the proleptic Gregorian calendar.
///
/// This is Howard Hinnant's `civil_from_days` algorithm, which counts in
/// 400-year eras that start on March 1 so leap days fall at the end of a year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_timestamps() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (1_796_399_558, "2026-12-04T15:52:38.000Z"),
        ];
        for (seconds, expected) in cases {
            let time = UNIX_EPOCH + Duration::from_secs(seconds);
            assert_eq!(Timestamp(time).to_string(), expected);
        }
    }

    #[test]
    fn quotes_values_that_need_it() {
        let mut line = String::new();
        push_field(&mut line, "a", &"plain");
        push_field(&mut line, "b", &"two words");
        push_field(&mut line, "c", &"");
        push_field(&mut line, "d", &"x\"y\n");
        assert_eq!(line, r#" a=plain b="two words" c="" d="x\"y\n""#);
    }
}
