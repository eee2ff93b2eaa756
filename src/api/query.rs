//! The query string: form-style decoding and the `timeout` parameter.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// The name of the required query parameter.
const TIMEOUT: &[u8] = b"timeout";

/// The maximum length of a value echoed back in an error message, in characters.
const MAX_ECHOED: usize = 64;

/// A reason why the query gave no usable timeout.
#[derive(Debug, PartialEq, Eq)]
pub enum QueryError {
    /// A `%` not followed by two hex digits.
    InvalidEscape(String),
    Missing,
    Repeated(usize),
    /// A value that is not a whole number of milliseconds in range, with the decoded value.
    Invalid(String),
}

/// A query error together with the accepted range, ready to show to the client.
pub struct QueryErrorMessage<'a> {
    pub error: &'a QueryError,
    pub max_timeout_ms: u64,
}

impl fmt::Display for QueryErrorMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = self.max_timeout_ms;
        match self.error {
            QueryError::InvalidEscape(text) => {
                write!(
                    f,
                    "invalid percent-encoding in query near {text:?}: expected '%' and two hex digits"
                )
            }
            QueryError::Missing => write!(
                f,
                "missing query parameter \"timeout\": expected a whole number of milliseconds from 1 to {max}"
            ),
            QueryError::Repeated(count) => write!(
                f,
                "query parameter \"timeout\" given {count} times: expected it once, a whole number of milliseconds from 1 to {max}"
            ),
            QueryError::Invalid(value) => write!(
                f,
                "invalid query parameter \"timeout\" = {value:?}: expected a whole number of milliseconds from 1 to {max}"
            ),
        }
    }
}

/// Finds the one `timeout` parameter in `query` and checks it is from 1 to `max_ms` milliseconds.
///
/// Keys and values are decoded alike: `+` is a space and `%XY` a byte.
/// Parameters other than `timeout` are ignored, but a bad escape anywhere
/// rejects the query, since the intended key cannot be known.
pub fn parse_timeout(query: &str, max_ms: u64) -> Result<Duration, QueryError> {
    let mut found = None;
    let mut count = 0;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key)?;
        let value = decode(value)?;
        if key.as_ref() == TIMEOUT {
            count += 1;
            found = Some(value);
        }
    }
    let value = match (count, found) {
        (0, _) | (_, None) => return Err(QueryError::Missing),
        (1, Some(value)) => value,
        (count, Some(_)) => return Err(QueryError::Repeated(count)),
    };

    let invalid = || QueryError::Invalid(echo(&value));
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    // Digits only, so the only parse failure left is overflow.
    let ms: u64 = std::str::from_utf8(&value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(invalid)?;
    if ms == 0 || ms > max_ms {
        return Err(invalid());
    }
    Ok(Duration::from_millis(ms))
}

/// Decodes `+` and `%XY` escapes, borrowing when there is nothing to decode.
fn decode(text: &str) -> Result<Cow<'_, [u8]>, QueryError> {
    if !text.contains(['%', '+']) {
        return Ok(Cow::Borrowed(text.as_bytes()));
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' => {
                let digits = bytes.get(index + 1..index + 3);
                let byte = digits
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .and_then(|d| u8::from_str_radix(d, 16).ok());
                // from_str_radix accepts a leading '+', which is not a hex digit here.
                match byte {
                    Some(byte) if digits.is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit)) => {
                        decoded.push(byte);
                        index += 2;
                    }
                    _ => return Err(QueryError::InvalidEscape(echo(&bytes[index..]))),
                }
            }
            other => decoded.push(other),
        }
        index += 1;
    }
    Ok(Cow::Owned(decoded))
}

/// Shows client bytes in an error message: lossy UTF-8, cut to [`MAX_ECHOED`] characters.
fn echo(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(MAX_ECHOED) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_timeouts() {
        let cases = [
            ("timeout=1", 1),
            ("timeout=60000", 60_000),
            ("a=b&timeout=250&c", 250),
            ("timeout=0250", 250),
            ("%74imeout=%32%35%30", 250),
            ("&&timeout=5&", 5),
        ];
        for (query, ms) in cases {
            assert_eq!(
                parse_timeout(query, 60_000),
                Ok(Duration::from_millis(ms)),
                "query {query:?}"
            );
        }
    }

    #[test]
    fn rejects_each_bad_form() {
        let cases = [
            ("", QueryError::Missing),
            ("other=1", QueryError::Missing),
            ("timeout", QueryError::Invalid(String::new())),
            ("timeout=", QueryError::Invalid(String::new())),
            ("timeout=1&timeout=2", QueryError::Repeated(2)),
            ("timeout=abc", QueryError::Invalid("abc".into())),
            ("timeout=-5", QueryError::Invalid("-5".into())),
            ("timeout=+5", QueryError::Invalid(" 5".into())),
            ("timeout=%2B5", QueryError::Invalid("+5".into())),
            ("timeout=1.5", QueryError::Invalid("1.5".into())),
            ("timeout=1e3", QueryError::Invalid("1e3".into())),
            ("timeout=0", QueryError::Invalid("0".into())),
            ("timeout=60001", QueryError::Invalid("60001".into())),
            (
                "timeout=18446744073709551616",
                QueryError::Invalid("18446744073709551616".into()),
            ),
            ("timeout=%31%", QueryError::InvalidEscape("%".into())),
            ("timeout=%zz", QueryError::InvalidEscape("%zz".into())),
            ("timeout=%+1", QueryError::InvalidEscape("%+1".into())),
            ("timeout=%C3%A9", QueryError::Invalid("é".into())),
            ("timeout=%FF", QueryError::Invalid("\u{fffd}".into())),
        ];
        for (query, expected) in cases {
            assert_eq!(
                parse_timeout(query, 60_000),
                Err(expected),
                "query {query:?}"
            );
        }
    }

    #[test]
    fn echo_cuts_long_values() {
        let long = "9".repeat(200);
        let Err(QueryError::Invalid(echoed)) = parse_timeout(&format!("timeout={long}"), 60_000)
        else {
            panic!("expected an invalid timeout");
        };
        assert_eq!(echoed.len(), MAX_ECHOED + 3);
    }

    #[test]
    fn message_names_parameter_and_range() {
        let error = QueryError::Invalid("abc".into());
        let message = QueryErrorMessage {
            error: &error,
            max_timeout_ms: 60_000,
        }
        .to_string();
        assert_eq!(
            message,
            "invalid query parameter \"timeout\" = \"abc\": expected a whole number of milliseconds from 1 to 60000"
        );
    }
}
