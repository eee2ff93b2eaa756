//! The thread that writes log lines to stderr, so that no executor thread
//! waits for stderr.
//!
//! A write to stderr blocks while the pipe behind it is full, as it is when
//! a container's log collector falls behind. Request handling therefore only
//! queues each line, without waiting: when the queue is full the line is
//! dropped and counted, and the writer reports the count in a line of its
//! own once stderr accepts writes again. The writer takes every line queued
//! at once and writes them with a single `write` call, then sleeps briefly
//! so that the next lines gather, so a busy gateway also makes fewer system
//! calls than with one write per line.

use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

/// The maximum number of lines waiting for the writer. At about 500 bytes
/// an access line, a full queue takes about 8 MB.
const QUEUE_LINES: usize = 16 * 1024;

/// The maximum number of bytes gathered for one `write` call.
const MAX_BATCH: usize = 64 * 1024;

/// How long the writer sleeps after each batch, so that lines gather. A
/// writer blocked on an empty queue is woken by each new line, which costs
/// a system call and a thread switch for every request. A sleeping writer
/// is not woken.
const GATHER: Duration = Duration::from_millis(2);

/// Lines dropped because the queue was full, since the process started.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The queue to the writer thread, or `None` when that thread could not
/// start, in which case lines are written directly.
static QUEUE: OnceLock<Option<SyncSender<Message>>> = OnceLock::new();

enum Message {
    Line(String),
    /// A request to signal the sender once every line queued before it is written.
    Flush(SyncSender<()>),
}

/// Queues `line`, which ends in a newline, for stderr without waiting.
pub(super) fn write(line: String) {
    let Some(queue) = queue() else {
        write_now(&line);
        return;
    };
    match queue.try_send(Message::Line(line)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        // The writer thread is gone only if it panicked, so write directly.
        Err(TrySendError::Disconnected(message)) => {
            if let Message::Line(line) = message {
                write_now(&line);
            }
        }
    }
}

/// Returns how many lines were dropped because stderr did not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Waits until every line queued so far is written, for at most `timeout`.
///
/// Call it before the process exits: lines still queued then are lost.
pub fn flush(timeout: Duration) {
    let Some(Some(queue)) = QUEUE.get() else {
        return;
    };
    let deadline = Instant::now() + timeout;
    let (done, written) = mpsc::sync_channel(1);
    let mut message = Message::Flush(done);
    loop {
        match queue.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(returned)) if Instant::now() < deadline => {
                message = returned;
                thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
    let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

fn queue() -> Option<&'static SyncSender<Message>> {
    QUEUE
        .get_or_init(|| {
            let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
            thread::Builder::new()
                .name("fanout-log".into())
                .spawn(move || run(lines))
                .ok()?;
            Some(queue)
        })
        .as_ref()
}

/// Writes queued lines in batches until every sender is gone.
fn run(lines: Receiver<Message>) {
    let mut batch = String::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    let mut reported = 0;
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Line(line) => batch.push_str(&line),
                Message::Flush(done) => flushes.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = lines.try_recv().ok();
            }
        }
        // A batch cut short by its size leaves lines queued: write on at once.
        let drained = batch.len() < MAX_BATCH;
        write_now(&batch);
        batch.clear();
        let dropped = dropped();
        if dropped > reported {
            write_now(&super::dropped_line(dropped - reported));
            reported = dropped;
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        if drained {
            thread::sleep(GATHER);
        }
    }
}

fn write_now(text: &str) {
    // A failed write to stderr has nowhere to be reported, so it is dropped.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
