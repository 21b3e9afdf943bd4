//! The login throttle's decision, from failure counts the caller looked up.
//!
//! A sliding window: at most `max_failures` failed logins per key within
//! `window`. The account is never locked for good — once the oldest failure
//! leaves the window, one more attempt is allowed. That bounds online
//! guessing without letting an attacker lock a victim out indefinitely
//! cheaper than by continuing to guess.

use std::time::Duration;

use time::OffsetDateTime;

/// Failures recorded for one key inside the current window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureWindow {
    pub count: u32,
    /// When the oldest failure still inside the window happened.
    pub oldest: Option<OffsetDateTime>,
}

/// The throttle's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleDecision {
    Allow,
    /// Refuse; the client may try again after this many whole seconds.
    Deny {
        retry_after_secs: u64,
    },
}

/// Decides whether another login attempt may proceed.
pub fn decide(
    seen: FailureWindow,
    max_failures: u32,
    window: Duration,
    now: OffsetDateTime,
) -> ThrottleDecision {
    if seen.count < max_failures {
        return ThrottleDecision::Allow;
    }
    let oldest = seen.oldest.unwrap_or(now);
    let frees_at = oldest + window;
    let wait = (frees_at - now).max(time::Duration::ZERO);
    // Round up: a client that waits exactly Retry-After must be let in.
    let secs = wait.whole_seconds() as u64 + u64::from(wait.subsec_nanoseconds() > 0);
    ThrottleDecision::Deny { retry_after_secs: secs.max(1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const WINDOW: Duration = Duration::from_secs(900);

    #[test]
    fn allows_until_the_limit() {
        let now = datetime!(2026-01-01 12:00 UTC);
        let seen = FailureWindow { count: 4, oldest: Some(now) };
        assert_eq!(decide(seen, 5, WINDOW, now), ThrottleDecision::Allow);
    }

    #[test]
    fn denies_until_the_oldest_failure_leaves_the_window() {
        let oldest = datetime!(2026-01-01 12:00 UTC);
        let seen = FailureWindow { count: 5, oldest: Some(oldest) };
        let now = oldest + time::Duration::seconds(100);
        assert_eq!(decide(seen, 5, WINDOW, now), ThrottleDecision::Deny { retry_after_secs: 800 });
        let now = oldest + time::Duration::milliseconds(100_500);
        assert_eq!(decide(seen, 5, WINDOW, now), ThrottleDecision::Deny { retry_after_secs: 800 });
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let oldest = datetime!(2026-01-01 12:00 UTC);
        let seen = FailureWindow { count: 9, oldest: Some(oldest) };
        let now = oldest + time::Duration::seconds(900);
        assert_eq!(decide(seen, 5, WINDOW, now), ThrottleDecision::Deny { retry_after_secs: 1 });
    }
}
