//! An incremental decoder for `Transfer-Encoding: chunked` bodies (RFC 9112, section 7.1).
//!
//! The decoder is a byte-at-a-time state machine over whatever slices the
//! socket yields, so a body split at any byte boundary decodes the same way,
//! and its memory is bounded by the body cap alone: chunk sizes, extensions
//! and trailers are checked as they stream past and never buffered.

use std::fmt;

/// The maximum length of a chunk extension, in bytes. Extensions carry nothing
/// fanout uses, so this only stops a peer from streaming one forever.
pub const MAX_EXTENSION: usize = 1024;

/// The maximum size of the trailer section after the last chunk, in bytes.
pub const MAX_TRAILERS: usize = 8 * 1024;

/// Hex digits in a chunk size: 16 fill a `u64`, so more would overflow.
const MAX_SIZE_DIGITS: u32 = 16;

/// A framing error in a chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkedError {
    /// A chunk-size line held something other than hex digits and an extension.
    InvalidSize,
    /// A chunk size with more hex digits than fit in 64 bits.
    SizeOverflow,
    ExtensionTooLong,
    TrailersTooLong,
    /// A line that did not end in CRLF, or chunk data not followed by CRLF.
    MissingCrlf,
    /// The decoded body grew past the cap.
    TooLarge,
}

impl fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkedError::InvalidSize => "invalid chunk size",
            ChunkedError::SizeOverflow => "chunk size overflows 64 bits",
            ChunkedError::ExtensionTooLong => "chunk extension too long",
            ChunkedError::TrailersTooLong => "trailer section too long",
            ChunkedError::MissingCrlf => "missing CRLF in chunked framing",
            ChunkedError::TooLarge => "chunked body larger than the cap",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size {
        size: u64,
        digits: u32,
    },
    /// Past the size: optional whitespace and `;`-led extensions up to CR.
    Extension {
        size: u64,
        length: usize,
    },
    /// Seen CR after a size line; LF must follow.
    SizeLf {
        size: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// Inside the trailer section; `at_line_start` is true when a CRLF here ends it.
    Trailer {
        at_line_start: bool,
        seen_cr: bool,
    },
    Done,
}

/// Decodes a chunked body into a caller-owned buffer, one slice at a time.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    max_body: usize,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    /// Creates a decoder that fails once the decoded body exceeds `max_body` bytes.
    pub fn new(max_body: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
            max_body,
            trailer_bytes: 0,
        }
    }

    /// Returns whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as belongs to the body, appending data to `body`.
    ///
    /// Returns how many bytes were consumed; fewer than `input.len()` only
    /// once the body is complete, and the rest belongs to whatever follows.
    pub fn decode(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<usize, ChunkedError> {
        let mut position = 0;
        while position < input.len() && self.state != State::Done {
            if let State::Data { remaining } = self.state {
                let available = input.len() - position;
                let take = available.min(usize::try_from(remaining).unwrap_or(usize::MAX));
                if body.len() + take > self.max_body {
                    return Err(ChunkedError::TooLarge);
                }
                body.extend_from_slice(&input[position..position + take]);
                position += take;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining }
                };
                continue;
            }
            self.state = self.step(input[position])?;
            position += 1;
        }
        Ok(position)
    }

    /// Advances the framing state machine by one byte outside chunk data.
    fn step(&mut self, byte: u8) -> Result<State, ChunkedError> {
        let next = match self.state {
            State::Size { size, digits } => match hex_value(byte) {
                Some(_) if digits == MAX_SIZE_DIGITS => return Err(ChunkedError::SizeOverflow),
                Some(value) => State::Size {
                    size: size << 4 | u64::from(value),
                    digits: digits + 1,
                },
                None if digits == 0 => return Err(ChunkedError::InvalidSize),
                None => return self.after_size(size, byte, 0),
            },
            State::Extension { size, length } => return self.after_size(size, byte, length),
            State::SizeLf { size } => match byte {
                b'\n' if size == 0 => State::Trailer {
                    at_line_start: true,
                    seen_cr: false,
                },
                b'\n' => State::Data { remaining: size },
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataLf => match byte {
                b'\n' => State::Size { size: 0, digits: 0 },
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::Trailer {
                at_line_start,
                seen_cr,
            } => self.trailer_step(byte, at_line_start, seen_cr)?,
            State::Data { .. } | State::Done => unreachable!("handled by decode"),
        };
        Ok(next)
    }

    /// Handles a byte after the size digits: whitespace, an extension, or the line end.
    fn after_size(&self, size: u64, byte: u8, length: usize) -> Result<State, ChunkedError> {
        if length >= MAX_EXTENSION {
            return Err(ChunkedError::ExtensionTooLong);
        }
        match byte {
            b'\r' => Ok(State::SizeLf { size }),
            b'\n' => Err(ChunkedError::MissingCrlf),
            // Whitespace may precede ';' (RFC 9112's BWS) and the extension
            // itself may hold any visible character, tab or space.
            b' ' | b'\t' if length == 0 => Ok(State::Extension { size, length: 0 }),
            b';' => Ok(State::Extension {
                size,
                length: length + 1,
            }),
            b' ' | b'\t' | 0x21..=0x7e if length > 0 => Ok(State::Extension {
                size,
                length: length + 1,
            }),
            _ => Err(ChunkedError::InvalidSize),
        }
    }

    fn trailer_step(
        &mut self,
        byte: u8,
        at_line_start: bool,
        seen_cr: bool,
    ) -> Result<State, ChunkedError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(ChunkedError::TrailersTooLong);
        }
        match (byte, seen_cr) {
            (b'\n', true) if at_line_start => Ok(State::Done),
            (b'\n', true) => Ok(State::Trailer {
                at_line_start: true,
                seen_cr: false,
            }),
            (_, true) | (b'\n', false) => Err(ChunkedError::MissingCrlf),
            (b'\r', false) => Ok(State::Trailer {
                at_line_start,
                seen_cr: true,
            }),
            (_, false) => Ok(State::Trailer {
                at_line_start: false,
                seen_cr: false,
            }),
        }
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max_body: usize) -> Result<(Vec<u8>, usize), ChunkedError> {
        let mut decoder = ChunkedDecoder::new(max_body);
        let mut body = Vec::new();
        let consumed = decoder.decode(input, &mut body)?;
        assert!(decoder.is_done(), "decoder not done after {input:?}");
        Ok((body, consumed))
    }

    #[test]
    fn decodes_chunks_and_stops_at_end() {
        let input = b"4\r\n{\"ti\r\n9;name=value\r\nme\": 160}\r\n0\r\n\r\nNEXT";
        let (body, consumed) = decode_all(input, 1024).unwrap();
        assert_eq!(body, b"{\"time\": 160}");
        assert_eq!(&input[consumed..], b"NEXT");
    }

    #[test]
    fn accepts_trailers_and_uppercase_hex() {
        let (body, _) = decode_all(b"A\r\n0123456789\r\n0\r\nX-Check: 1\r\n\r\n", 1024).unwrap();
        assert_eq!(body, b"0123456789");
    }

    #[test]
    fn same_result_at_every_split() {
        let input = b"3 ; ext\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n";
        for split in 0..=input.len() {
            let mut decoder = ChunkedDecoder::new(64);
            let mut body = Vec::new();
            let first = decoder.decode(&input[..split], &mut body).unwrap();
            assert_eq!(first, split);
            decoder.decode(&input[split..], &mut body).unwrap();
            assert!(decoder.is_done(), "split at {split}");
            assert_eq!(body, b"abcde", "split at {split}");
        }
    }

    #[test]
    fn rejects_bad_framing() {
        let cases: &[(&[u8], ChunkedError)] = &[
            (b"\r\n", ChunkedError::InvalidSize),
            (b"g\r\n", ChunkedError::InvalidSize),
            (b"-1\r\n", ChunkedError::InvalidSize),
            (b"1\nx", ChunkedError::MissingCrlf),
            (b"1\r\nxy", ChunkedError::MissingCrlf),
            (b"1\r\nx\rz", ChunkedError::MissingCrlf),
            (b"10000000000000000\r\n", ChunkedError::SizeOverflow),
            (b"0\r\nX: 1\n", ChunkedError::MissingCrlf),
            (b"5\r\n12345\r\n", ChunkedError::TooLarge),
        ];
        for (input, expected) in cases {
            let mut body = Vec::new();
            let result = ChunkedDecoder::new(4).decode(input, &mut body);
            assert_eq!(
                result,
                Err(*expected),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rejects_endless_extension_and_trailers() {
        let mut extension = b"1;".to_vec();
        extension.resize(MAX_EXTENSION + 10, b'a');
        let result = ChunkedDecoder::new(64).decode(&extension, &mut Vec::new());
        assert_eq!(result, Err(ChunkedError::ExtensionTooLong));

        let mut trailers = b"0\r\n".to_vec();
        trailers.resize(MAX_TRAILERS + 10, b'a');
        let result = ChunkedDecoder::new(64).decode(&trailers, &mut Vec::new());
        assert_eq!(result, Err(ChunkedError::TrailersTooLong));
    }
}
