//! Rate limiting of repeated warning and error lines.
//!
//! Each message gets a window of [`WINDOW`]: its first [`BURST`] lines in a
//! window are written, the rest are only counted, and the count is written as
//! one summary line when the window ends.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one rate-limiting window lasts.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Lines of one message written per window before the rest are counted
/// instead. Ten lines show the pattern and the cause; more only bury other
/// lines and cost a write each.
pub const BURST: u32 = 10;

/// The most distinct messages tracked. Messages are fixed strings in the
/// code, so far fewer exist; past this bound new messages are written
/// unlimited rather than dropped.
const MAX_TRACKED: usize = 64;

/// The decision for one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Write,
    /// Count it instead of writing it.
    Suppress,
}

/// Lines of one message suppressed in a window that has ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Suppressed {
    pub msg: String,
    pub count: u64,
    pub window: Duration,
}

struct Entry {
    msg: String,
    window_start: Instant,
    written: u32,
    suppressed: u64,
}

/// Per-message counts; a mutex is fine here because only warning and error
/// lines pass through it, never the per-request access line.
pub struct Limiter {
    entries: Mutex<Vec<Entry>>,
}

impl Limiter {
    pub const fn new() -> Limiter {
        Limiter {
            entries: Mutex::new(Vec::new()),
        }
    }

    /// Decides whether a line with `msg` is written at `now`.
    ///
    /// When `msg` starts a new window, the summary of its previous window is
    /// returned as well, so it is written before the line.
    pub fn admit(&self, msg: &str, now: Instant) -> (Admission, Option<Suppressed>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = entries.iter_mut().find(|entry| entry.msg == msg) else {
            if entries.len() >= MAX_TRACKED {
                entries.retain(|entry| entry.suppressed > 0 || now < entry.window_start + WINDOW);
            }
            if entries.len() < MAX_TRACKED {
                entries.push(Entry {
                    msg: msg.to_string(),
                    window_start: now,
                    written: 1,
                    suppressed: 0,
                });
            }
            return (Admission::Write, None);
        };

        let mut summary = None;
        if now >= entry.window_start + WINDOW {
            summary = take_summary(entry);
            entry.window_start = now;
            entry.written = 0;
        }
        if entry.written < BURST {
            entry.written += 1;
            (Admission::Write, summary)
        } else {
            entry.suppressed += 1;
            (Admission::Suppress, summary)
        }
    }

    /// Returns the summaries of windows that ended by `now` with lines suppressed.
    pub fn drain_ended(&self, now: Instant) -> Vec<Suppressed> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter_mut()
            .filter(|entry| now >= entry.window_start + WINDOW)
            .filter_map(take_summary)
            .collect()
    }
}

fn take_summary(entry: &mut Entry) -> Option<Suppressed> {
    if entry.suppressed == 0 {
        return None;
    }
    let count = std::mem::take(&mut entry.suppressed);
    Some(Suppressed {
        msg: entry.msg.clone(),
        count,
        window: WINDOW,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_burst_then_counts() {
        let limiter = Limiter::new();
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limiter.admit("accept failed", start).0, Admission::Write);
        }
        for _ in 0..5 {
            assert_eq!(limiter.admit("accept failed", start).0, Admission::Suppress);
        }
        assert_eq!(limiter.admit("other", start).0, Admission::Write);
        assert!(limiter.drain_ended(start + WINDOW / 2).is_empty());
    }

    #[test]
    fn summarizes_when_the_window_ends() {
        let limiter = Limiter::new();
        let start = Instant::now();
        for _ in 0..BURST + 3 {
            limiter.admit("accept failed", start);
        }
        let (admission, summary) = limiter.admit("accept failed", start + WINDOW);
        assert_eq!(admission, Admission::Write);
        let summary = summary.expect("a summary of the ended window");
        assert_eq!(summary.msg, "accept failed");
        assert_eq!(summary.count, 3);
        assert!(limiter.drain_ended(start + WINDOW * 3).is_empty());
    }

    #[test]
    fn drain_reports_each_ended_window_once() {
        let limiter = Limiter::new();
        let start = Instant::now();
        for _ in 0..BURST + 2 {
            limiter.admit("panicked", start);
        }
        let summaries = limiter.drain_ended(start + WINDOW);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].count, 2);
        assert!(limiter.drain_ended(start + WINDOW * 2).is_empty());
    }
}
