//! The upstream's health over the last minute: a ring of per-second buckets
//! of attempt outcomes and latencies, summarized on demand.

use std::sync::Mutex;
use std::time::Duration;

use super::metrics::OutcomeLabel;

/// How much history the summary covers, in seconds.
const WINDOW_SECONDS: usize = 60;

/// Latency bucket upper bounds grow in three ranges, so percentiles are
/// within 5 ms below 1 s (the upstream's usual range), within 100 ms up to
/// 10 s and within 1 s up to 60 s. A latency above 60 s is reported as the
/// largest one seen.
const FINE_STEP_MS: u32 = 5;
const FINE_LIMIT_MS: u32 = 1_000;
const MEDIUM_STEP_MS: u32 = 100;
const MEDIUM_LIMIT_MS: u32 = 10_000;
const COARSE_STEP_MS: u32 = 1_000;
const COARSE_LIMIT_MS: u32 = 60_000;
const FINE_BUCKETS: usize = (FINE_LIMIT_MS / FINE_STEP_MS) as usize;
const MEDIUM_BUCKETS: usize = ((MEDIUM_LIMIT_MS - FINE_LIMIT_MS) / MEDIUM_STEP_MS) as usize;
const COARSE_BUCKETS: usize = ((COARSE_LIMIT_MS - MEDIUM_LIMIT_MS) / COARSE_STEP_MS) as usize;
/// The last bucket counts everything above [`COARSE_LIMIT_MS`].
const LATENCY_BUCKETS: usize = FINE_BUCKETS + MEDIUM_BUCKETS + COARSE_BUCKETS + 1;

/// Returns the bucket for a latency of `ms` milliseconds.
fn bucket_of(ms: u32) -> usize {
    if ms <= FINE_LIMIT_MS {
        (ms.saturating_sub(1) / FINE_STEP_MS) as usize
    } else if ms <= MEDIUM_LIMIT_MS {
        FINE_BUCKETS + ((ms - FINE_LIMIT_MS - 1) / MEDIUM_STEP_MS) as usize
    } else if ms <= COARSE_LIMIT_MS {
        FINE_BUCKETS + MEDIUM_BUCKETS + ((ms - MEDIUM_LIMIT_MS - 1) / COARSE_STEP_MS) as usize
    } else {
        LATENCY_BUCKETS - 1
    }
}

/// Returns the upper bound of `bucket` in milliseconds; `None` for the last, unbounded one.
fn upper_bound_ms(bucket: usize) -> Option<u32> {
    let bucket = bucket as u32;
    let fine = FINE_BUCKETS as u32;
    let medium = MEDIUM_BUCKETS as u32;
    let coarse = COARSE_BUCKETS as u32;
    if bucket < fine {
        Some((bucket + 1) * FINE_STEP_MS)
    } else if bucket < fine + medium {
        Some(FINE_LIMIT_MS + (bucket - fine + 1) * MEDIUM_STEP_MS)
    } else if bucket < fine + medium + coarse {
        Some(MEDIUM_LIMIT_MS + (bucket - fine - medium + 1) * COARSE_STEP_MS)
    } else {
        None
    }
}

/// The attempts of one second.
#[derive(Clone)]
struct Second {
    /// The second, counted from the start of the window's clock, that this
    /// bucket counts; `u64::MAX` when unused.
    stamp: u64,
    outcomes: [u32; OutcomeLabel::ALL.len()],
    latency: [u32; LATENCY_BUCKETS],
    max_latency_ms: u32,
}

impl Second {
    const EMPTY: Second = Second {
        stamp: u64::MAX,
        outcomes: [0; OutcomeLabel::ALL.len()],
        latency: [0; LATENCY_BUCKETS],
        max_latency_ms: 0,
    };
}

/// The last [`WINDOW_SECONDS`] seconds of upstream attempts.
///
/// It sits behind a mutex taken once per request, for a few counter updates.
/// That is cheap next to the request's own work, and the exact Prometheus
/// counters never wait on it.
pub struct Window {
    seconds: Mutex<Vec<Second>>,
}

impl Window {
    pub const fn new() -> Window {
        Window {
            seconds: Mutex::new(Vec::new()),
        }
    }

    /// Adds the attempts of one request, finished during second `now_s`.
    pub fn record(&self, now_s: u64, attempts: impl IntoIterator<Item = (OutcomeLabel, Duration)>) {
        let mut seconds = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        if seconds.is_empty() {
            seconds.resize(WINDOW_SECONDS, Second::EMPTY);
        }
        let second = &mut seconds[(now_s % WINDOW_SECONDS as u64) as usize];
        if second.stamp != now_s {
            *second = Second::EMPTY;
            second.stamp = now_s;
        }
        for (label, elapsed) in attempts {
            second.outcomes[label as usize] += 1;
            if label.completed() {
                let ms = u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX);
                second.latency[bucket_of(ms)] += 1;
                second.max_latency_ms = second.max_latency_ms.max(ms);
            }
        }
    }

    /// Summarizes the seconds from `now_s - 59` to `now_s`.
    pub fn summary(&self, now_s: u64) -> Summary {
        let mut summary = Summary {
            window: Duration::from_secs(WINDOW_SECONDS as u64),
            attempts: 0,
            outcomes: [0; OutcomeLabel::ALL.len()],
            latency: vec![0; LATENCY_BUCKETS],
            max_latency_ms: 0,
        };
        let seconds = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = now_s.saturating_sub(WINDOW_SECONDS as u64 - 1);
        for second in seconds.iter() {
            if second.stamp == u64::MAX || second.stamp < oldest || second.stamp > now_s {
                continue;
            }
            for (total, count) in summary.outcomes.iter_mut().zip(&second.outcomes) {
                *total += u64::from(*count);
            }
            for (total, count) in summary.latency.iter_mut().zip(&second.latency) {
                *total += u64::from(*count);
            }
            summary.max_latency_ms = summary.max_latency_ms.max(second.max_latency_ms);
        }
        summary.attempts = summary.outcomes.iter().sum();
        summary
    }
}

/// Upstream attempts over a recent window.
#[derive(Debug)]
pub struct Summary {
    pub window: Duration,
    pub attempts: u64,
    outcomes: [u64; OutcomeLabel::ALL.len()],
    latency: Vec<u64>,
    max_latency_ms: u32,
}

impl Summary {
    /// The share of decided attempts that succeeded; `None` when none were decided.
    ///
    /// Cancelled attempts are left out: they lost a race that another
    /// attempt won, which shows nothing wrong with the upstream. Timeouts count
    /// as failures, because the upstream was too slow.
    pub fn success_ratio(&self) -> Option<f64> {
        let ok = self.outcomes[OutcomeLabel::Ok as usize];
        let decided = self.attempts - self.outcomes[OutcomeLabel::Cancelled as usize];
        (decided > 0).then(|| ok as f64 / decided as f64)
    }

    /// Returns every outcome label with its count, zeros included.
    pub fn outcomes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        OutcomeLabel::ALL
            .iter()
            .map(|label| (label.as_str(), self.outcomes[*label as usize]))
    }

    /// Returns the 50th, 90th and 99th percentile latencies of completed
    /// attempts in milliseconds. Each is the upper bound of the bucket it
    /// falls in, or `None` when no attempt completed.
    pub fn latency_percentiles_ms(&self) -> [Option<u32>; 3] {
        [0.50, 0.90, 0.99].map(|quantile| self.percentile_ms(quantile))
    }

    fn percentile_ms(&self, quantile: f64) -> Option<u32> {
        let completed: u64 = self.latency.iter().sum();
        if completed == 0 {
            return None;
        }
        // The rank of the observation at `quantile`, counting from 1.
        let rank = ((quantile * completed as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let bound = upper_bound_ms(bucket).unwrap_or(self.max_latency_ms);
                return Some(bound.min(self.max_latency_ms.max(1)));
            }
        }
        Some(self.max_latency_ms)
    }

    /// The summary as the JSON object `GET /debug/upstream` returns.
    pub fn to_json(&self) -> serde_json::Value {
        let outcomes: serde_json::Map<String, serde_json::Value> = self
            .outcomes()
            .map(|(label, count)| (label.to_string(), count.into()))
            .collect();
        let [p50, p90, p99] = self.latency_percentiles_ms();
        serde_json::json!({
            "window_seconds": self.window.as_secs(),
            "attempts": self.attempts,
            "success_ratio": self.success_ratio(),
            "outcomes": outcomes,
            "latency_ms": { "p50": p50, "p90": p90, "p99": p99 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn bucket_bounds_contain_their_values() {
        for value in [0, 1, 5, 6, 999, 1_000, 1_001, 9_999, 10_000, 10_001, 60_000] {
            let bucket = bucket_of(value);
            let upper = upper_bound_ms(bucket).unwrap();
            assert!(
                value <= upper,
                "{value} above bucket {bucket}'s bound {upper}"
            );
            if bucket > 0 {
                let lower = upper_bound_ms(bucket - 1).unwrap();
                assert!(
                    value > lower,
                    "{value} below bucket {bucket}'s lower bound {lower}"
                );
            }
        }
        assert_eq!(upper_bound_ms(bucket_of(60_001)), None);
    }

    #[test]
    fn summary_counts_outcomes_and_ratio() {
        let window = Window::new();
        window.record(
            10,
            [
                (OutcomeLabel::Ok, ms(200)),
                (OutcomeLabel::Ok, ms(300)),
                (OutcomeLabel::HttpStatus, ms(100)),
                (OutcomeLabel::Timeout, ms(5_000)),
            ],
        );
        let summary = window.summary(10);
        assert_eq!(summary.attempts, 4);
        assert_eq!(summary.success_ratio(), Some(0.5));
        let outcomes: Vec<_> = summary.outcomes().filter(|(_, n)| *n > 0).collect();
        assert_eq!(outcomes, [("ok", 2), ("http_status", 1), ("timeout", 1)]);
    }

    #[test]
    fn success_ratio_leaves_out_cancelled_attempts() {
        let window = Window::new();
        window.record(
            0,
            [
                (OutcomeLabel::Ok, ms(100)),
                (OutcomeLabel::Cancelled, ms(100)),
            ],
        );
        assert_eq!(window.summary(0).success_ratio(), Some(1.0));
        window.record(0, [(OutcomeLabel::Cancelled, ms(100))]);
        window.record(1, [(OutcomeLabel::Timeout, ms(900))]);
        assert_eq!(window.summary(1).success_ratio(), Some(0.5));
        let only_cancelled = Window::new();
        only_cancelled.record(0, [(OutcomeLabel::Cancelled, ms(100))]);
        assert_eq!(only_cancelled.summary(0).success_ratio(), None);
    }

    #[test]
    fn percentiles_come_from_completed_attempts() {
        let window = Window::new();
        let attempts = (1..=100).map(|i| (OutcomeLabel::Ok, ms(i * 5)));
        window.record(0, attempts);
        window.record(1, [(OutcomeLabel::Cancelled, ms(60_000))]);
        let summary = window.summary(1);
        assert_eq!(
            summary.latency_percentiles_ms(),
            [Some(250), Some(450), Some(495)]
        );
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let window = Window::new();
        window.record(5, [(OutcomeLabel::Ok, ms(100))]);
        window.record(64, [(OutcomeLabel::IoError, ms(10))]);
        assert_eq!(window.summary(64).attempts, 2);
        let later = window.summary(65);
        assert_eq!(later.attempts, 1);
        assert_eq!(later.success_ratio(), Some(0.0));
        // Second 65 reuses second 5's slot and must not inherit its counts.
        window.record(65, [(OutcomeLabel::Ok, ms(100))]);
        assert_eq!(window.summary(65).attempts, 2);
    }

    #[test]
    fn empty_window_has_no_ratio_or_latency() {
        let summary = Window::new().summary(100);
        assert_eq!(summary.attempts, 0);
        assert_eq!(summary.success_ratio(), None);
        assert_eq!(summary.latency_percentiles_ms(), [None, None, None]);
        let json = summary.to_json();
        assert!(json["success_ratio"].is_null());
        assert_eq!(json["outcomes"]["ok"], 0);
    }
}
