//! Token-bucket arithmetic, shared by the in-memory limiter and (mirrored
//! line for line) the Redis Lua script, with the clock passed in.
//!
//! The bucket is kept in its GCRA form: one number per bucket, the
//! *theoretical arrival time* (TAT) at which the bucket would be full again.
//! This is exactly a token bucket of capacity `burst` refilled at `rate`
//! (admitted over any span = burst + rate × span), but it needs one integer
//! of state instead of a (tokens, timestamp) pair, so a Redis bucket is one
//! `SET` with a TTL and no floating-point drift between replicas.
//!
//! All times are integer microseconds.

use crate::routes::RateLimitSpec;

/// A route's limit, converted once when the route table loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// `burst`: requests admitted at once from a full bucket.
    pub burst: u32,
    /// Microseconds per token (1 / rate).
    pub interval_us: u64,
}

impl Limit {
    pub fn of(spec: &RateLimitSpec) -> Self {
        let per_second = match (spec.per_second, spec.per_minute) {
            (Some(r), _) => r,
            (None, Some(r)) => r / 60.0,
            // Route validation requires one of them.
            (None, None) => 1.0,
        };
        let interval_us = (1_000_000.0 / per_second).round().max(1.0) as u64;
        Self { burst: spec.burst, interval_us }
    }

    /// How far ahead of now the TAT may run: the whole bucket.
    pub fn capacity_us(&self) -> u64 {
        u64::from(self.burst) * self.interval_us
    }
}

/// What one request gets from its bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole requests still admitted right now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Microseconds until the bucket is full again (`RateLimit-Reset`).
    pub reset_us: u64,
    /// Microseconds until one request would be admitted; 0 when allowed.
    pub retry_after_us: u64,
}

impl Decision {
    /// Builds the decision from what the step (or the Lua script) returned:
    /// whether it admitted, and how far the TAT now runs ahead of `now`.
    pub fn from_parts(limit: &Limit, allowed: bool, ahead_us: u64) -> Self {
        let capacity = limit.capacity_us();
        let free = capacity.saturating_sub(ahead_us);
        let remaining = (free / limit.interval_us).min(u64::from(limit.burst)) as u32;
        let retry_after_us =
            if allowed { 0 } else { (ahead_us + limit.interval_us).saturating_sub(capacity) };
        Self { allowed, remaining, reset_us: ahead_us, retry_after_us }
    }

    /// Seconds for `RateLimit-Reset`, rounded up.
    pub fn reset_secs(&self) -> u64 {
        self.reset_us.div_ceil(1_000_000)
    }

    /// Seconds for `Retry-After`, rounded up and at least 1 (0 would invite
    /// an immediate retry that is certain to fail).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_us.div_ceil(1_000_000).max(1)
    }
}

/// One request against a bucket whose stored TAT is `tat` (`None`: never
/// seen or expired). Returns the decision and the TAT to store, if any.
pub fn take(limit: &Limit, tat: Option<u64>, now_us: u64) -> (Decision, Option<u64>) {
    let tat = tat.unwrap_or(now_us).max(now_us);
    let next = tat + limit.interval_us;
    if next - now_us > limit.capacity_us() {
        (Decision::from_parts(limit, false, tat - now_us), None)
    } else {
        (Decision::from_parts(limit, true, next - now_us), Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::LimitKey;

    fn limit(burst: u32, per_second: f64) -> Limit {
        Limit::of(&RateLimitSpec { key: LimitKey::Ip, burst, per_second: Some(per_second), per_minute: None })
    }

    /// Runs `n` requests at `now`, returning how many were admitted.
    fn hammer(l: &Limit, tat: &mut Option<u64>, now: u64, n: u32) -> u32 {
        let mut admitted = 0;
        for _ in 0..n {
            let (d, next) = take(l, *tat, now);
            if d.allowed {
                admitted += 1;
                *tat = next;
            }
        }
        admitted
    }

    #[test]
    fn a_full_bucket_admits_burst_then_refuses() {
        let l = limit(5, 1.0);
        let mut tat = None;
        let now = 1_000_000_000;
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let (d, next) = take(&l, tat, now);
            assert!(d.allowed);
            remaining.push(d.remaining);
            tat = next;
        }
        assert_eq!(remaining, [4, 3, 2, 1, 0], "RateLimit-Remaining counts down to zero");
        let (d, next) = take(&l, tat, now);
        assert!(!d.allowed && next.is_none(), "the sixth request is refused and stores nothing");
        assert_eq!((d.remaining, d.retry_after_us, d.retry_after_secs()), (0, 1_000_000, 1));
        assert_eq!(d.reset_secs(), 5, "five tokens at one per second refill in five seconds");
    }

    #[test]
    fn tokens_refill_at_the_rate_and_never_beyond_burst() {
        let l = limit(2, 10.0);
        let mut tat = None;
        assert_eq!(hammer(&l, &mut tat, 0, 10), 2);
        assert_eq!(hammer(&l, &mut tat, 100_000, 10), 1, "one token after 100 ms at 10/s");
        assert_eq!(hammer(&l, &mut tat, 250_000, 10), 1, "1.5 tokens back: one is admitted, the half waits");
        assert_eq!(hammer(&l, &mut tat, 300_000, 10), 1, "but is once it completes");
        assert_eq!(hammer(&l, &mut tat, 100_000_000, 10), 2, "a long idle period refills only to burst");
    }

    #[test]
    fn admitted_over_a_span_is_burst_plus_rate_times_span() {
        let l = limit(20, 50.0);
        let mut tat = None;
        let mut admitted = 0;
        // 10 s of requests every millisecond: far more than the rate.
        for ms in 0..10_000u64 {
            admitted += hammer(&l, &mut tat, ms * 1000, 1);
        }
        assert_eq!(admitted, 20 + 50 * 10 - 1, "burst + rate × span (the last token lands at 10 s)");
    }

    #[test]
    fn retry_after_is_when_one_token_is_back_rounded_up() {
        let l = limit(1, 0.5); // one token per two seconds
        let (first, tat) = take(&l, None, 0);
        assert!(first.allowed);
        let (d, _) = take(&l, tat, 500_000);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, 1_500_000);
        assert_eq!(d.retry_after_secs(), 2, "1.5 s rounds up");
        let (d, _) = take(&l, tat, 2_000_000);
        assert!(d.allowed, "exactly at the refill instant the token is there");
    }

    #[test]
    fn per_minute_and_fractional_rates_convert_to_whole_microseconds() {
        let spec = RateLimitSpec { key: LimitKey::User, burst: 3, per_second: None, per_minute: Some(30.0) };
        assert_eq!(Limit::of(&spec), Limit { burst: 3, interval_us: 2_000_000 });
        assert_eq!(limit(1, 3.0).interval_us, 333_333, "1/3 s rounds to the nearest microsecond");
        assert_eq!(limit(1, 1e9).interval_us, 1, "absurd rates still advance the clock");
    }

    #[test]
    fn a_clock_that_steps_back_never_grants_extra_tokens() {
        let l = limit(1, 1.0);
        let (_, tat) = take(&l, None, 10_000_000);
        let (d, _) = take(&l, tat, 9_000_000);
        assert!(!d.allowed, "an earlier now sees the bucket even emptier");
    }
}
