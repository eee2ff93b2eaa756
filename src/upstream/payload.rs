//! Validation of an upstream body: exactly one JSON object whose `time` is a non-negative integer.

use std::fmt;

use serde_json::Value;

/// A reason why the body of a 200 response is not a usable payload.
#[derive(Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// The body does not start with a valid JSON value.
    NotJson(String),
    /// A valid JSON value followed by more than whitespace.
    TrailingData,
    /// A JSON value other than an object, with its type.
    NotObject(&'static str),
    TimeMissing,
    /// A `time` member that is not a non-negative integer, with the type it has.
    TimeInvalid(&'static str),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::NotJson(error) => write!(f, "body is not JSON: {error}"),
            PayloadError::TrailingData => f.write_str("body has data after the JSON value"),
            PayloadError::NotObject(found) => write!(f, "body is {found}, expected a JSON object"),
            PayloadError::TimeMissing => f.write_str("body has no \"time\" member"),
            PayloadError::TimeInvalid(found) => {
                write!(f, "\"time\" is {found}, expected a non-negative integer")
            }
        }
    }
}

/// Checks `body` and returns it without surrounding whitespace, exactly as the upstream sent it.
///
/// The payload is passed on byte for byte, so members fanout does not know
/// are kept and numbers are not reformatted.
pub fn validate(body: &[u8]) -> Result<&[u8], PayloadError> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    let value = match values.next() {
        Some(Ok(value)) => value,
        Some(Err(error)) => return Err(PayloadError::NotJson(error.to_string())),
        None => return Err(PayloadError::NotJson("empty body".to_string())),
    };
    let end = values.byte_offset();
    if !body[end..].trim_ascii().is_empty() {
        return Err(PayloadError::TrailingData);
    }

    let Value::Object(members) = value else {
        return Err(PayloadError::NotObject(describe(&value)));
    };
    match members.get("time") {
        None => Err(PayloadError::TimeMissing),
        Some(Value::Number(number)) if number.is_u64() => Ok(body.trim_ascii()),
        Some(other) => Err(PayloadError::TimeInvalid(describe(other))),
    }
}

/// Names the JSON type of `value` for an error message.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(number) if number.is_u64() => "an integer",
        Value::Number(number) if number.is_i64() => "a negative integer",
        Value::Number(_) => "a fraction or an integer too large for 64 bits",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_payloads_verbatim() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"{\"time\": 160}", b"{\"time\": 160}"),
            (b"  {\"time\":0}\r\n", b"{\"time\":0}"),
            (
                b"{\"time\": 18446744073709551615, \"extra\": [1, {}]}",
                b"{\"time\": 18446744073709551615, \"extra\": [1, {}]}",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(validate(body), Ok(*expected));
        }
    }

    #[test]
    fn rejects_each_invalid_shape() {
        let cases: &[(&[u8], PayloadError)] = &[
            (b"{\"time\": 160} x", PayloadError::TrailingData),
            (b"{\"time\": 160}{}", PayloadError::TrailingData),
            (b"[{\"time\": 160}]", PayloadError::NotObject("an array")),
            (b"160", PayloadError::NotObject("an integer")),
            (b"null", PayloadError::NotObject("null")),
            (b"{}", PayloadError::TimeMissing),
            (b"{\"Time\": 1}", PayloadError::TimeMissing),
            (
                b"{\"time\": \"160\"}",
                PayloadError::TimeInvalid("a string"),
            ),
            (
                b"{\"time\": 160.5}",
                PayloadError::TimeInvalid("a fraction or an integer too large for 64 bits"),
            ),
            (
                b"{\"time\": 160.0}",
                PayloadError::TimeInvalid("a fraction or an integer too large for 64 bits"),
            ),
            (
                b"{\"time\": 1e3}",
                PayloadError::TimeInvalid("a fraction or an integer too large for 64 bits"),
            ),
            (
                b"{\"time\": 18446744073709551616}",
                PayloadError::TimeInvalid("a fraction or an integer too large for 64 bits"),
            ),
            (b"{\"time\": true}", PayloadError::TimeInvalid("a boolean")),
            (
                b"{\"time\": -1}",
                PayloadError::TimeInvalid("a negative integer"),
            ),
            (b"{\"time\": [1]}", PayloadError::TimeInvalid("an array")),
            (b"{\"time\": null}", PayloadError::TimeInvalid("null")),
            (b"{\"time\": {}}", PayloadError::TimeInvalid("an object")),
        ];
        for (body, expected) in cases {
            assert_eq!(
                validate(body).as_ref(),
                Err(expected),
                "body {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn rejects_non_json() {
        for body in [&b""[..], b"   ", b"<html>", b"{\"time\": 1", b"\xff\xfe"] {
            assert!(
                matches!(validate(body), Err(PayloadError::NotJson(_))),
                "body {body:?}"
            );
        }
    }
}
