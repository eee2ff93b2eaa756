//! Socket reads that hold no buffer while they wait.
//!
//! A future keeps every local that lives across an `.await`. A read into an
//! array would keep that array in the future of every connection or attempt
//! that waits, and a read into spare room of a `Vec` would keep the room.
//! These reads use an array on the stack during each poll instead.

use std::io;
use std::pin::Pin;
use std::task::Poll;

use futures_lite::{AsyncRead, future};

/// Reads at most `limit` bytes, and at most `CHUNK`, onto the end of `buffer`.
///
/// Each poll appends only the bytes that arrived. A future dropped mid-read,
/// as the losing side of a race, leaves `buffer` as it was.
pub(crate) async fn append<R, const CHUNK: usize>(
    stream: &mut R,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize>
where
    R: AsyncRead + Unpin,
{
    let limit = limit.clamp(1, CHUNK);
    future::poll_fn(|cx| {
        let mut chunk = [0u8; CHUNK];
        let poll = Pin::new(&mut *stream).poll_read(cx, &mut chunk[..limit]);
        if let Poll::Ready(Ok(read)) = poll {
            buffer.extend_from_slice(&chunk[..read]);
        }
        poll
    })
    .await
}

/// Reads at most `limit` bytes, and at most `CHUNK`, and discards them.
///
/// Returns the number of bytes read.
pub(crate) async fn discard<R, const CHUNK: usize>(
    stream: &mut R,
    limit: usize,
) -> io::Result<usize>
where
    R: AsyncRead + Unpin,
{
    let limit = limit.clamp(1, CHUNK);
    future::poll_fn(|cx| {
        let mut chunk = [0u8; CHUNK];
        Pin::new(&mut *stream).poll_read(cx, &mut chunk[..limit])
    })
    .await
}
