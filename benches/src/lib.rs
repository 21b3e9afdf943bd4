//! Shared helpers of the benchmark harnesses: latency summaries and a
//! release `bouncer` process to measure.

use std::time::Duration;

/// Percentiles of a set of latencies.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub count: usize,
}

impl Latency {
    /// Summarises samples (sorted in place). `None` when empty.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
        Some(Self { p50: at(0.50), p99: at(0.99), max: samples[samples.len() - 1], count: samples.len() })
    }
}

/// Milliseconds with two decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&mut v).unwrap();
        assert_eq!(
            (l.p50, l.p99, l.max, l.count),
            (Duration::from_millis(50), Duration::from_millis(99), Duration::from_millis(100), 100)
        );
        assert!(Latency::of(&mut []).is_none());
    }
}
