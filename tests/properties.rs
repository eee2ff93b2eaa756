//! Property tests of the pure parsers that read bytes from clients and the
//! upstream: the request parser, the query parser, the chunked decoder and
//! the payload validator. Random, mutated and oversized inputs never panic
//! and stay within the parsers' bounds, and the incremental parsers give the
//! same result however their input is split. The upstream response reader
//! has its own, beside it in `src/upstream/response.rs`.
//!
//! Case counts are fixed so the whole file runs in a few seconds in CI.

use std::time::Duration;

use fanout::api::{QueryError, parse_timeout};
use fanout::server::{DEFAULT_MAX_HEAD, DEFAULT_MAX_TARGET, HeadLimits, ParseError, Request};
use fanout::upstream::{ChunkedDecoder, ChunkedError, PayloadError, validate};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};

/// Cases per property: enough to find framing slips at split points, few
/// enough that the file stays fast.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(CASES)
}

/// Bytes from a small alphabet rich in the characters framing depends on,
/// so random input reaches deep parser states more often than uniform bytes.
fn framing_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let alphabet = b"\r\n :;=0123456789abcdefABCDEF/?&%+GETHP.\t\x00\xff".to_vec();
    vec(prop_oneof![select(alphabet), any::<u8>()].boxed(), 0..max)
}

/// One edit of a byte string: where, which kind (replace, insert,
/// remove), and the byte to write.
type Edit = (Index, u8, u8);

/// Generates one to three edits, with bytes biased toward those framing depends on.
fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let byte = prop_oneof![select(b"\r\n :;\t/?0aA{}\"".to_vec()), any::<u8>()];
    vec((any::<Index>(), 0u8..3, byte), 1..4)
}

/// Applies `edits` to `bytes` in turn.
fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for (at, kind, byte) in edits {
        let at = at.index(bytes.len() + 1);
        match kind {
            0 if at < bytes.len() => bytes[at] = *byte,
            1 => bytes.insert(at, *byte),
            _ if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
    bytes
}

// The chunked decoder.

/// Encodes `body` in chunks of the given sizes, with optional extensions and trailers.
fn encode_chunked(body: &[u8], sizes: &[usize], extension: bool, trailers: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut turn = 0;
    while !rest.is_empty() {
        let size = sizes[turn % sizes.len()].clamp(1, rest.len());
        let ext = if extension { " ; name=\"v\"" } else { "" };
        out.extend_from_slice(format!("{size:X}{ext}\r\n").as_bytes());
        out.extend_from_slice(&rest[..size]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[size..];
        turn += 1;
    }
    out.extend_from_slice(b"0\r\n");
    for trailer in trailers {
        out.extend_from_slice(format!("X-{trailer}: {trailer}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Feeds `input` to a decoder in the pieces `cuts` make, stopping at the
/// first error; returns the body, and whether the body is complete with the
/// bytes consumed, or the error.
fn decode_in_pieces(
    input: &[u8],
    cuts: &[Index],
    max_body: usize,
) -> (Vec<u8>, Result<(bool, usize), ChunkedError>) {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut decoder = ChunkedDecoder::new(max_body);
    let mut body = Vec::new();
    let mut consumed = 0;
    let mut start = 0;
    for end in points {
        match decoder.decode(&input[start..end], &mut body) {
            Ok(count) => consumed += count,
            Err(error) => return (body, Err(error)),
        }
        start = end;
    }
    (body, Ok((decoder.is_done(), consumed)))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn chunked_round_trips_at_any_split(
        body in vec(any::<u8>(), 0..300),
        sizes in vec(1usize..40, 1..6),
        extension in any::<bool>(),
        trailers in vec("[a-z]{1,8}", 0..3),
        rest in vec(any::<u8>(), 0..20),
        cuts in vec(any::<Index>(), 0..4),
    ) {
        let encoded = encode_chunked(&body, &sizes, extension, &trailers);
        let mut input = encoded.clone();
        input.extend_from_slice(&rest);

        let (decoded, outcome) = decode_in_pieces(&input, &cuts, body.len());

        // Bytes past the last chunk belong to whatever follows.
        prop_assert_eq!(outcome, Ok((true, encoded.len())));
        prop_assert_eq!(decoded, body);
    }

    #[test]
    fn chunked_result_does_not_depend_on_splits(
        input in framing_bytes(200),
        cuts in vec(any::<Index>(), 1..4),
        max_body in 0usize..64,
    ) {
        let (whole_body, whole) = decode_in_pieces(&input, &[], max_body);
        let (split_body, split) = decode_in_pieces(&input, &cuts, max_body);
        prop_assert_eq!(&whole, &split);
        // After an error the partial body is thrown away, and how much of
        // it was decoded depends on where the pieces ended.
        if whole.is_ok() {
            prop_assert_eq!(&whole_body, &split_body);
        }
        prop_assert!(whole_body.len() <= max_body);
        prop_assert!(split_body.len() <= max_body);
        if let Ok((_, consumed)) = whole {
            prop_assert!(consumed <= input.len());
        }
    }

    #[test]
    fn mutated_chunked_result_does_not_depend_on_splits(
        body in vec(any::<u8>(), 0..120),
        sizes in vec(1usize..40, 1..6),
        extension in any::<bool>(),
        edits in edits(),
        cuts in vec(any::<Index>(), 1..5),
    ) {
        let input = mutate(encode_chunked(&body, &sizes, extension, &[]), &edits);
        let max_body = body.len() + 8;
        let (whole_body, whole) = decode_in_pieces(&input, &[], max_body);
        let (split_body, split) = decode_in_pieces(&input, &cuts, max_body);
        prop_assert_eq!(&whole, &split);
        // After an error the partial body is thrown away, and how much of
        // it was decoded depends on where the pieces ended.
        if whole.is_ok() {
            prop_assert_eq!(&whole_body, &split_body);
        }
        prop_assert!(whole_body.len() <= max_body);
        prop_assert!(split_body.len() <= max_body);
    }

    #[test]
    fn chunked_endless_extension_fails(
        length in 1100usize..4000,
        cuts in vec(any::<Index>(), 0..4),
    ) {
        // Past the decoder's 1 KiB bound on an extension.
        let mut input = format!("5;{}", "x".repeat(length)).into_bytes();
        input.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        let (body, outcome) = decode_in_pieces(&input, &cuts, 64);
        prop_assert_eq!(outcome, Err(ChunkedError::ExtensionTooLong));
        prop_assert!(body.is_empty());
    }

    #[test]
    fn chunked_size_overflow_fails(
        digits in "[1-9a-fA-F][0-9a-fA-F]{16,40}",
        cuts in vec(any::<Index>(), 0..4),
    ) {
        let input = format!("{digits}\r\nhello\r\n0\r\n\r\n").into_bytes();
        let (body, outcome) = decode_in_pieces(&input, &cuts, 64);
        prop_assert_eq!(outcome, Err(ChunkedError::SizeOverflow));
        prop_assert!(body.is_empty());
    }

    #[test]
    fn chunked_body_over_the_cap_fails(
        body in vec(any::<u8>(), 1..200),
        sizes in vec(1usize..40, 1..6),
    ) {
        let encoded = encode_chunked(&body, &sizes, false, &[]);
        let (decoded, outcome) = decode_in_pieces(&encoded, &[], body.len() - 1);
        prop_assert_eq!(outcome, Err(ChunkedError::TooLarge));
        prop_assert!(decoded.len() < body.len());
    }
}

// The request parser.

/// Parses a request head with the default limits.
fn parse_head(input: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    fanout::server::parse(input, &HeadLimits::default())
}

/// A request head built from parts, and what parsing it must give.
#[derive(Debug, Clone)]
struct Head {
    bytes: Vec<u8>,
    method: String,
    target: String,
    minor_version: u8,
    keep_alive: bool,
    content_length: u64,
}

fn head() -> impl Strategy<Value = Head> {
    (
        select(vec!["GET", "POST", "DELETE", "PATCH", "X-CUSTOM"]),
        "(/[a-zA-Z0-9._~-]{0,12}){1,4}(\\?[a-zA-Z0-9=&%+.-]{0,40})?",
        0u8..2,
        select(vec![
            None,
            Some("close"),
            Some("keep-alive"),
            Some("Upgrade, CLOSE"),
        ]),
        proptest::option::of(0u64..100_000),
        vec(("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,30}"), 0..8),
    )
        .prop_map(
            |(method, target, minor_version, connection, length, extra)| {
                let mut text = format!("{method} {target} HTTP/1.{minor_version}\r\n");
                for (name, value) in &extra {
                    // Names the parser acts on are set on purpose below.
                    let lower = name.to_ascii_lowercase();
                    if [
                        "connection",
                        "content-length",
                        "transfer-encoding",
                        "expect",
                    ]
                    .contains(&lower.as_str())
                    {
                        continue;
                    }
                    text.push_str(&format!("{name}: {}\r\n", value.trim()));
                }
                if let Some(connection) = connection {
                    text.push_str(&format!("Connection: {connection}\r\n"));
                }
                if let Some(length) = length {
                    text.push_str(&format!("Content-Length: {length}\r\n"));
                }
                text.push_str("\r\n");
                let close = connection.is_some_and(|c| c.to_ascii_lowercase().contains("close"));
                let keep_alive = !close && (minor_version == 1 || connection == Some("keep-alive"));
                Head {
                    bytes: text.into_bytes(),
                    method: method.to_string(),
                    target,
                    minor_version,
                    keep_alive,
                    content_length: length.unwrap_or(0),
                }
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_parse_reads_every_field(head in head(), next in vec(any::<u8>(), 0..40)) {
        let mut input = head.bytes.clone();
        // Bytes of a pipelined request after the head change nothing.
        input.extend_from_slice(&next);

        let (request, length) = parse_head(&input).unwrap().unwrap();

        prop_assert_eq!(length, head.bytes.len());
        prop_assert_eq!(&request.method, &head.method);
        prop_assert_eq!(&request.target, &head.target);
        prop_assert_eq!(request.minor_version, head.minor_version);
        prop_assert_eq!(request.keep_alive, head.keep_alive);
        prop_assert_eq!(request.content_length, head.content_length);
    }

    #[test]
    fn request_prefix_needs_more(head in head(), cut in any::<Index>()) {
        let cut = cut.index(head.bytes.len());
        prop_assert_eq!(parse_head(&head.bytes[..cut]), Ok(None));
    }

    #[test]
    fn request_parse_never_panics_and_stays_in_bounds(input in framing_bytes(400)) {
        match parse_head(&input) {
            Ok(Some((request, length))) => {
                prop_assert!(length <= input.len() && length <= DEFAULT_MAX_HEAD);
                prop_assert!(request.target.starts_with('/'));
                prop_assert!(request.target.len() <= DEFAULT_MAX_TARGET);
            }
            Ok(None) => prop_assert!(input.len() < DEFAULT_MAX_HEAD),
            Err(error) => prop_assert!([400, 414, 417, 431].contains(&error.status())),
        }
    }

    #[test]
    fn request_with_garbage_line_is_rejected(garbage in "[A-Za-z0-9][^\r\n:]{0,39}", head in head()) {
        let mut input = head.bytes.clone();
        // A header line with no colon.
        let at = input.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        input.splice(at..at, format!("{garbage}\r\n").into_bytes());
        let result = parse_head(&input);
        prop_assert!(
            matches!(result, Err(ParseError::Invalid(_))),
            "{:?}", result
        );
    }
}

/// Small limits, so random heads of a few hundred bytes reach the 414 and 431 paths.
const SMALL: HeadLimits = HeadLimits {
    max_head: 256,
    max_headers: 6,
    max_target: 64,
};

/// Parses `input` as a connection reads it: the prefixes ending at `cuts`
/// in turn, then the whole, stopping at the first prefix that gives a
/// request or an error.
fn parse_incrementally(
    input: &[u8],
    cuts: &[Index],
    limits: &HeadLimits,
) -> Result<Option<(Request, usize)>, ParseError> {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
    points.sort_unstable();
    for end in points {
        let result = fanout::server::parse(&input[..end], limits);
        if !matches!(result, Ok(None)) {
            return result;
        }
    }
    fanout::server::parse(input, limits)
}

/// The fields of a parse result that do not depend on randomness: the
/// request id and trace are generated anew for each parse.
type Outcome = Result<Option<(String, String, u8, bool, u64, bool, usize)>, ParseError>;

fn outcome(result: Result<Option<(Request, usize)>, ParseError>) -> Outcome {
    result.map(|parsed| {
        parsed.map(|(request, length)| {
            (
                request.method,
                request.target,
                request.minor_version,
                request.keep_alive,
                request.content_length,
                request.expect_continue,
                length,
            )
        })
    })
}

/// Generates a valid head with a few bytes replaced, inserted or removed.
fn mutated_head() -> impl Strategy<Value = Vec<u8>> {
    (head(), edits()).prop_map(|(head, edits)| mutate(head.bytes, &edits))
}

/// Generates a head with a long run of one byte, so the small limits are
/// crossed in the method, the target or a field.
fn long_head() -> impl Strategy<Value = Vec<u8>> {
    (0usize..3, 40usize..300, select(b"aG/ ".to_vec())).prop_map(|(place, length, byte)| {
        let run = String::from_utf8(vec![byte; length]).unwrap();
        let text = match place {
            0 => format!("{run} /x HTTP/1.1\r\n\r\n"),
            1 => format!("GET /{run} HTTP/1.1\r\n\r\n"),
            _ => format!("GET /x HTTP/1.1\r\nX: {run}\r\n\r\n"),
        };
        text.into_bytes()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_result_does_not_depend_on_splits(
        input in prop_oneof![framing_bytes(300), mutated_head(), long_head()],
        cuts in vec(any::<Index>(), 1..6),
    ) {
        // A connection reads at most one byte past the head limit.
        let input = &input[..input.len().min(SMALL.max_head + 1)];
        let whole = outcome(fanout::server::parse(input, &SMALL));
        let split = outcome(parse_incrementally(input, &cuts, &SMALL));
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn request_parse_stays_within_small_limits(
        input in prop_oneof![framing_bytes(300), mutated_head(), long_head()],
    ) {
        match fanout::server::parse(&input, &SMALL) {
            Ok(Some((request, length))) => {
                prop_assert!(length <= SMALL.max_head);
                prop_assert!(request.target.len() <= SMALL.max_target);
            }
            // Waiting for more never lets a connection buffer past the limit.
            Ok(None) => prop_assert!(input.len() < SMALL.max_head),
            Err(error) => prop_assert!([400, 414, 417, 431].contains(&error.status())),
        }
    }
}

// The query parser.

/// Percent-encodes each byte of `text` whose flag is set.
fn encode_some(text: &str, flags: &[bool]) -> String {
    text.bytes()
        .enumerate()
        .map(|(index, byte)| {
            if flags.get(index).copied().unwrap_or(false) {
                format!("%{byte:02X}")
            } else {
                (byte as char).to_string()
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn query_finds_the_timeout_however_written(
        ms in 1u64..=60_000,
        zeros in 0usize..3,
        key_flags in vec(any::<bool>(), 7),
        value_flags in vec(any::<bool>(), 8),
        others in vec(("x[a-z0-9]{0,6}", "([a-z0-9+]|%2B){0,6}"), 0..4),
        position in any::<Index>(),
    ) {
        let value = format!("{}{ms}", "0".repeat(zeros));
        let timeout = format!("{}={}", encode_some("timeout", &key_flags), encode_some(&value, &value_flags));
        let mut pairs: Vec<String> = others.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.insert(position.index(pairs.len() + 1), timeout);
        let query = pairs.join("&");

        prop_assert_eq!(parse_timeout(&query, 60_000), Ok(Duration::from_millis(ms)));
    }

    #[test]
    fn query_rejects_out_of_range(ms in prop_oneof![Just(0u64), 60_001u64..u64::MAX]) {
        let result = parse_timeout(&format!("timeout={ms}"), 60_000);
        prop_assert_eq!(result, Err(QueryError::Invalid(ms.to_string())));
    }

    #[test]
    fn mutated_query_never_panics_and_stays_in_range(
        ms in 1u64..=60_000,
        edits in edits(),
    ) {
        let query = mutate(format!("x=1&timeout={ms}&y=%41").into_bytes(), &edits);
        // The API receives the query as a `&str`, so invalid UTF-8 never reaches it.
        let query = String::from_utf8_lossy(&query);
        match parse_timeout(&query, 60_000) {
            Ok(timeout) => prop_assert!((1..=60_000).contains(&(timeout.as_millis() as u64))),
            // An error repeats at most the query's own bytes.
            Err(QueryError::Invalid(value) | QueryError::InvalidEscape(value)) => {
                prop_assert!(value.len() <= query.len());
            }
            Err(_) => {}
        }
    }

    #[test]
    fn query_never_panics_and_stays_in_range(query in "[ -~]{0,80}", max in 1u64..100_000) {
        if let Ok(timeout) = parse_timeout(&query, max) {
            let ms = timeout.as_millis() as u64;
            prop_assert!((1..=max).contains(&ms));
        }
    }
}

// The payload validator.

/// A JSON value that is not a non-negative integer.
fn not_a_count() -> impl Strategy<Value = String> {
    prop_oneof![
        (i64::MIN..0).prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        "[a-z0-9]{0,5}".prop_map(|s| format!("\"{s}\"")),
        Just("true".to_string()),
        Just("null".to_string()),
        Just("[1]".to_string()),
        Just("{}".to_string()),
    ]
}

/// Whitespace JSON allows around a value.
fn space() -> impl Strategy<Value = String> {
    "[ \t\r\n]{0,3}"
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn payload_accepts_any_count_verbatim(
        time in any::<u64>(),
        extra in vec(("[a-s]{1,6}", 0i64..1000), 0..4),
        before in space(),
        after in space(),
    ) {
        let mut members = vec![format!("\"time\": {time}")];
        members.extend(extra.iter().map(|(k, v)| format!("\"{k}\": {v}")));
        let object = format!("{{{}}}", members.join(", "));
        let body = format!("{before}{object}{after}");

        prop_assert_eq!(validate(body.as_bytes()), Ok(object.as_bytes()));
    }

    #[test]
    fn payload_rejects_time_that_is_not_a_count(time in not_a_count()) {
        let body = format!("{{\"time\": {time}}}");
        let result = validate(body.as_bytes());
        prop_assert!(matches!(result, Err(PayloadError::TimeInvalid(_))), "{} gave {:?}", body, result);
    }

    #[test]
    fn mutated_payload_is_judged_without_copying(
        time in any::<u64>(),
        extra in vec(("[a-s]{1,6}", 0i64..1000), 0..3),
        edits in edits(),
    ) {
        let mut members = vec![format!("\"time\": {time}")];
        members.extend(extra.iter().map(|(k, v)| format!("\"{k}\": {v}")));
        let body = mutate(format!("{{{}}}", members.join(", ")).into_bytes(), &edits);
        if let Ok(payload) = validate(&body) {
            // The payload is a slice of the body, so a valid payload is
            // never copied.
            let range = body.as_ptr_range();
            prop_assert!(range.contains(&payload.as_ptr()));
            prop_assert!(payload.len() <= body.len());
            let value: serde_json::Value = serde_json::from_slice(payload).unwrap();
            prop_assert!(value["time"].is_u64());
        }
    }

    #[test]
    fn deeply_nested_payload_is_rejected(depth in 100usize..5000, object in any::<bool>()) {
        // serde_json stops at a nesting depth of 128 instead of overflowing the stack.
        let (open, close) = if object { ("{\"a\":", "}") } else { ("[", "]") };
        let body = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        prop_assert!(validate(body.as_bytes()).is_err());
    }

    #[test]
    fn payload_never_panics_and_accepts_only_objects_with_a_count(body in framing_bytes(120)) {
        if let Ok(payload) = validate(&body) {
            let value: serde_json::Value = serde_json::from_slice(payload).unwrap();
            prop_assert!(value["time"].is_u64());
        }
    }
}
