//! Building one log line in either format: JSON object or logfmt text.

use std::fmt::{self, Display, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Format, Level};

/// A log line being built; [`Line::finish`] returns it with its newline.
pub(super) struct Line {
    text: String,
    format: Format,
}

impl Line {
    /// Starts a line with the timestamp, level and message, which every line has.
    pub fn start(format: Format, level: Level, msg: &str) -> Line {
        let mut text = String::with_capacity(320);
        let now = Timestamp(SystemTime::now());
        match format {
            Format::Json => {
                let _ = write!(text, "{{\"ts\":\"{now}\",\"level\":\"{}\"", level.as_str());
            }
            Format::Text => {
                let _ = write!(text, "ts={now} level={}", level.as_str());
            }
        }
        let mut line = Line { text, format };
        line.str("msg", msg);
        line
    }

    /// Adds a string field.
    pub fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        match self.format {
            Format::Json => push_json_str(&mut self.text, value),
            Format::Text => push_text_value(&mut self.text, &value),
        }
    }

    /// Adds a field whose value is the `Display` text of `value`, as a JSON string.
    pub fn display(&mut self, key: &str, value: &dyn Display) {
        self.key(key);
        match self.format {
            Format::Json => push_json_display(&mut self.text, value),
            Format::Text => push_text_value(&mut self.text, value),
        }
    }

    /// Adds a string field that may be absent: JSON `null`, or `-` in text.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(value) => self.str(key, value),
            None => self.bare(key, &NULL_OR_DASH[self.format as usize]),
        }
    }

    /// Adds a `Display` field that may be absent: JSON `null`, or `-` in text.
    pub fn opt_display(&mut self, key: &str, value: Option<&dyn Display>) {
        match value {
            Some(value) => self.display(key, value),
            None => self.bare(key, &NULL_OR_DASH[self.format as usize]),
        }
    }

    /// Adds a number field.
    pub fn number(&mut self, key: &str, value: impl Display) {
        self.bare(key, &value);
    }

    /// Adds a number field that may be absent: JSON `null`, or `-` in text.
    pub fn opt_number(&mut self, key: &str, value: Option<impl Display>) {
        match value {
            Some(value) => self.bare(key, &value),
            None => self.bare(key, &NULL_OR_DASH[self.format as usize]),
        }
    }

    /// Adds a duration in milliseconds with microsecond precision.
    pub fn millis(&mut self, key: &str, value: Duration) {
        self.bare(key, &Millis(value));
    }

    /// Adds a field whose JSON value is written by `json` and whose text value by `text`.
    pub fn nested(
        &mut self,
        key: &str,
        json: impl FnOnce(&mut String),
        text: impl FnOnce(&mut String),
    ) {
        self.key(key);
        match self.format {
            Format::Json => json(&mut self.text),
            Format::Text => {
                let mut value = String::new();
                text(&mut value);
                push_text_value(&mut self.text, &value);
            }
        }
    }

    /// Closes the line and appends its newline.
    pub fn finish(mut self) -> String {
        if self.format == Format::Json {
            self.text.push('}');
        }
        self.text.push('\n');
        self.text
    }

    fn key(&mut self, key: &str) {
        match self.format {
            Format::Json => {
                self.text.push_str(",\"");
                self.text.push_str(key);
                self.text.push_str("\":");
            }
            Format::Text => {
                self.text.push(' ');
                self.text.push_str(key);
                self.text.push('=');
            }
        }
    }

    /// Adds a value written as is, unquoted in both formats.
    fn bare(&mut self, key: &str, value: &dyn Display) {
        self.key(key);
        let _ = write!(self.text, "{value}");
    }
}

/// The text of an absent value, indexed by [`Format`].
const NULL_OR_DASH: [&str; 2] = ["null", "-"];

/// Whether a character must be escaped inside a JSON string.
fn needs_json_escape(c: char) -> bool {
    c == '"' || c == '\\' || c.is_control()
}

/// Appends `value` as a JSON string.
pub(super) fn push_json_str(text: &mut String, value: &str) {
    if value.chars().any(needs_json_escape) {
        // serde_json writes a quoted, escaped string; serializing a str cannot fail.
        text.push_str(&serde_json::to_string(value).unwrap_or_default());
    } else {
        text.push('"');
        text.push_str(value);
        text.push('"');
    }
}

/// Appends the `Display` text of `value` as a JSON string, escaping only when needed.
fn push_json_display(text: &mut String, value: &dyn Display) {
    let start = text.len();
    text.push('"');
    let _ = write!(text, "{value}");
    if text[start + 1..].chars().any(needs_json_escape) {
        let raw = text.split_off(start + 1);
        text.truncate(start);
        push_json_str(text, &raw);
    } else {
        text.push('"');
    }
}

/// Appends a logfmt value, quoting it when it contains spaces, quotes or control characters.
pub(super) fn push_text_value(text: &mut String, value: &dyn Display) {
    let start = text.len();
    let _ = write!(text, "{value}");
    let needs_quotes = text[start..].is_empty()
        || text[start..]
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control());
    if needs_quotes {
        let value = text.split_off(start);
        let _ = write!(text, "{value:?}");
    }
}

/// A duration shown in milliseconds with three decimals, such as `12.345`.
pub(super) struct Millis(pub Duration);

impl Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Integer arithmetic, because float formatting costs more and this
        // runs several times per access line.
        let micros = self.0.as_micros();
        write!(f, "{}.{:03}", micros / 1000, micros % 1000)
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
    fn millis_have_three_decimals() {
        let cases = [
            (0, "0.000"),
            (1, "0.001"),
            (1_500, "1.500"),
            (60_000_123, "60000.123"),
        ];
        for (micros, expected) in cases {
            assert_eq!(Millis(Duration::from_micros(micros)).to_string(), expected);
        }
    }

    #[test]
    fn text_quotes_values_that_need_it() {
        let mut line = String::new();
        for value in ["plain", "two words", "", "x\"y\n"] {
            line.push(' ');
            push_text_value(&mut line, &value);
        }
        assert_eq!(line, r#" plain "two words" "" "x\"y\n""#);
    }

    #[test]
    fn json_escapes_strings_and_display_values() {
        let mut line = Line::start(Format::Json, Level::Warn, "say \"hi\"");
        line.display("error", &"line\nbreak\u{1}");
        line.str("plain", "ok");
        line.opt_str("absent", None);
        line.opt_number("count", Some(3));
        line.millis("took", Duration::from_micros(1500));
        let text = line.finish();
        assert!(text.ends_with("}\n"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["level"], "warn");
        assert_eq!(value["msg"], "say \"hi\"");
        assert_eq!(value["error"], "line\nbreak\u{1}");
        assert_eq!(value["plain"], "ok");
        assert!(value["absent"].is_null());
        assert_eq!(value["count"], 3);
        assert_eq!(value["took"], 1.5);
    }

    #[test]
    fn text_line_is_logfmt() {
        let mut line = Line::start(Format::Text, Level::Info, "listening");
        line.str("addr", "127.0.0.1:1");
        line.opt_number("timeout_ms", None::<u64>);
        let text = line.finish();
        assert!(
            text.ends_with(" level=info msg=listening addr=127.0.0.1:1 timeout_ms=-\n"),
            "{text}"
        );
    }
}
