//! Request ids and W3C Trace Context: accepting them from a request,
//! generating them, and the `traceparent` sent with each upstream attempt.
//!
//! The `traceparent` format is `VERSION-TRACEID-PARENTID-FLAGS` in lowercase
//! hex, as defined by the W3C Trace Context recommendation (level 1).

use std::fmt;

/// The longest `X-Request-Id` accepted, in bytes. It fits UUIDs, ULIDs and
/// the composite ids some proxies send. It also bounds what every log line
/// and upstream request carries, so a longer id is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The header that carries the request id, in and out.
pub const REQUEST_ID_HEADER: &str = "X-Request-Id";

/// The `traceparent` flags sent when fanout starts the trace: sampled, because
/// every request's ids are written to the access log.
const NEW_TRACE_FLAGS: u8 = 0x01;

/// A 128-bit trace id, never zero; displayed as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId(pub u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A 64-bit span id, never zero; displayed as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanId(pub u64);

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl SpanId {
    /// Draws a new random span id.
    pub fn generate() -> SpanId {
        SpanId(fastrand::u64(1..))
    }
}

/// The position of a request in its trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    /// The caller's span, from a valid `traceparent`; `None` when fanout started the trace.
    pub parent_id: Option<SpanId>,
    /// fanout's own span for this request.
    pub span_id: SpanId,
    /// The trace flags to pass on; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceContext {
    /// Continues the trace of a valid `traceparent` value, or starts a new one.
    ///
    /// A malformed value is ignored, as the recommendation requires.
    pub fn from_traceparent(value: Option<&[u8]>) -> TraceContext {
        match value.and_then(parse_traceparent) {
            Some((trace_id, parent_id, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent_id),
                span_id: SpanId::generate(),
                flags,
            },
            None => TraceContext {
                trace_id: TraceId(fastrand::u128(1..)),
                parent_id: None,
                span_id: SpanId::generate(),
                flags: NEW_TRACE_FLAGS,
            },
        }
    }

    /// Returns the `traceparent` value for a child span `span_id` of this trace.
    pub fn child(&self, span_id: SpanId) -> Traceparent {
        Traceparent {
            trace_id: self.trace_id,
            span_id,
            flags: self.flags,
        }
    }
}

/// A version 00 `traceparent` value.
pub struct Traceparent {
    trace_id: TraceId,
    span_id: SpanId,
    flags: u8,
}

impl fmt::Display for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// Parses `traceparent`, returning the trace id, parent id and flags.
///
/// Version 00 must be exactly 55 characters. A later version may append
/// fields after a `-`, which are ignored; version `ff` is invalid. All-zero
/// ids are invalid, and hex must be lowercase.
fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, u8)> {
    let value = value.trim_ascii();
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex(&value[0..2])? as u8;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    let trace_id = hex(&value[3..35])?;
    let parent_id = hex(&value[36..52])? as u64;
    let flags = hex(&value[53..55])? as u8;
    if trace_id == 0 || parent_id == 0 {
        return None;
    }
    Some((TraceId(trace_id), SpanId(parent_id), flags))
}

/// Parses up to 32 lowercase hex digits.
fn hex(digits: &[u8]) -> Option<u128> {
    let mut value: u128 = 0;
    for &digit in digits {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        value = value << 4 | u128::from(nibble);
    }
    Some(value)
}

/// Returns the incoming `X-Request-Id` when it is valid, or a new one.
///
/// Valid means 1 to [`MAX_REQUEST_ID_LEN`] bytes of visible ASCII (`!` to
/// `~`), so the id is safe to echo in a header and to write in a log line.
pub fn accept_request_id(value: Option<&[u8]>) -> String {
    match value {
        Some(id) if is_valid_request_id(id) => String::from_utf8_lossy(id).into_owned(),
        _ => new_request_id(),
    }
}

fn is_valid_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(u8::is_ascii_graphic)
}

/// Generates a request id: 32 random lowercase hex digits.
pub fn new_request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn continues_a_valid_traceparent() {
        let context = TraceContext::from_traceparent(Some(VALID.as_bytes()));
        assert_eq!(
            context.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            context.parent_id.map(|id| id.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(context.flags, 1);
        assert_ne!(context.span_id.0, 0x00f0_67aa_0ba9_02b7);
    }

    #[test]
    fn accepts_a_later_version_with_extra_fields() {
        let value = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        let context = TraceContext::from_traceparent(Some(value.as_bytes()));
        assert!(context.parent_id.is_some());
        assert_eq!(context.flags, 0);
    }

    #[test]
    fn ignores_malformed_traceparents() {
        let cases = [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for case in cases {
            let context = TraceContext::from_traceparent(Some(case.as_bytes()));
            assert_eq!(context.parent_id, None, "accepted {case:?}");
            assert_eq!(context.flags, NEW_TRACE_FLAGS, "{case:?}");
            assert_ne!(context.trace_id.0, 0, "{case:?}");
        }
    }

    #[test]
    fn child_traceparent_keeps_trace_and_flags() {
        let context = TraceContext::from_traceparent(Some(VALID.as_bytes()));
        let child = context.child(SpanId(0xab)).to_string();
        assert_eq!(
            child,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00000000000000ab-01"
        );
        let round_trip = TraceContext::from_traceparent(Some(child.as_bytes()));
        assert_eq!(round_trip.trace_id, context.trace_id);
        assert_eq!(round_trip.parent_id, Some(SpanId(0xab)));
    }

    #[test]
    fn request_id_is_kept_or_replaced() {
        assert_eq!(accept_request_id(Some(b"abc-123_X")), "abc-123_X");
        let long = vec![b'a'; MAX_REQUEST_ID_LEN];
        assert_eq!(accept_request_id(Some(&long)).len(), MAX_REQUEST_ID_LEN);
        let too_long = vec![b'a'; MAX_REQUEST_ID_LEN + 1];
        let bad: [&[u8]; 4] = [b"", b"has space", b"tab\tid", &too_long];
        for id in bad {
            let replaced = accept_request_id(Some(id));
            assert_eq!(replaced.len(), 32, "{id:?}");
            assert!(replaced.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(accept_request_id(None), accept_request_id(None));
    }
}
