//! A Prometheus histogram with fixed buckets, kept in atomics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A histogram with fixed bucket bounds, in microseconds.
pub struct Histogram<const N: usize> {
    bounds_us: [u64; N],
    /// Observations per bucket, not cumulative: `counts[i]` counts values
    /// above `bounds_us[i - 1]` and at most `bounds_us[i]`.
    counts: [AtomicU64; N],
    /// Observations above the last bound.
    overflow: AtomicU64,
    sum_us: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub const fn new(bounds_us: [u64; N]) -> Histogram<N> {
        Histogram {
            bounds_us,
            counts: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        match self.bounds_us.iter().position(|bound| micros <= *bound) {
            Some(index) => self.counts[index].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples, with `labels` before `le`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds_us.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{le}\"}} {cumulative}"
            );
        }
        // The count is the +Inf bucket, so the two always agree in one scrape.
        cumulative += self.overflow.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative() {
        let histogram = Histogram::new([1_000, 2_000]);
        histogram.observe(Duration::from_micros(1_000));
        histogram.observe(Duration::from_micros(1_001));
        histogram.observe(Duration::from_secs(1));
        let mut out = String::new();
        histogram.render(&mut out, "h", "");
        let expected = "h_bucket{le=\"0.001\"} 1\nh_bucket{le=\"0.002\"} 2\nh_bucket{le=\"+Inf\"} 3\nh_sum 1.002001\nh_count 3\n";
        assert_eq!(out, expected);
    }
}
