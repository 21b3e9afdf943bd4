//! The login throttle's decision, from the failures the caller looked up.
//!
//! A sliding window: at most `max` failed logins per key within `window`.
//! The account is never locked for good — as failures leave the window,
//! attempts are allowed again. That bounds online guessing without letting
//! an attacker lock a victim out for longer than they keep guessing.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{Audited, LoginFailure};

/// Failures recorded for one key inside the current window, as they bear on
/// a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureWindow {
    pub count: u32,
    /// The failure whose leaving the window brings the count back under the
    /// limit (the oldest one while under it); `None` without failures.
    pub pivot: Option<OffsetDateTime>,
}

impl FailureWindow {
    /// From the failure times inside the window, in ascending order, for a
    /// limit of `max`. With more failures than the limit (possible when
    /// attempts were reserved concurrently before the limit was reached),
    /// the pivot is the `count - max`-th oldest, not the oldest: waiting
    /// only for the oldest would still leave the count at the limit.
    pub fn of(times_ascending: &[OffsetDateTime], max: u32) -> Self {
        let count = times_ascending.len() as u32;
        let index = count.saturating_sub(max) as usize;
        Self { count, pivot: times_ascending.get(index).copied() }
    }
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

/// Decides whether another attempt may proceed under one key's limit.
pub fn decide(seen: FailureWindow, max: u32, window: Duration, now: OffsetDateTime) -> ThrottleDecision {
    if seen.count < max {
        return ThrottleDecision::Allow;
    }
    let frees_at = seen.pivot.unwrap_or(now) + window;
    let wait = (frees_at - now).max(time::Duration::ZERO);
    // Round up: a client that waits exactly Retry-After must be let in.
    let secs = wait.whole_seconds() as u64 + u64::from(wait.subsec_nanoseconds() > 0);
    ThrottleDecision::Deny { retry_after_secs: secs.max(1) }
}

/// Decides under several keys' limits at once: denied when any key is, with
/// the longest wait.
pub fn decide_all(
    seen: impl IntoIterator<Item = (FailureWindow, u32)>,
    window: Duration,
    now: OffsetDateTime,
) -> ThrottleDecision {
    seen.into_iter()
        .filter_map(|(w, max)| match decide(w, max, window, now) {
            ThrottleDecision::Deny { retry_after_secs } => Some(retry_after_secs),
            ThrottleDecision::Allow => None,
        })
        .max()
        .map_or(ThrottleDecision::Allow, |retry_after_secs| ThrottleDecision::Deny { retry_after_secs })
}

/// How a password check under the throttle ended, when it did not end in
/// a new session (a successful login settles its attempt with the session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd<'a> {
    WrongPassword {
        user: Uuid,
        email_key: &'a str,
    },
    UnknownEmail {
        email_key: &'a str,
    },
    /// The right password for a banned account.
    Banned {
        user: Uuid,
        email_key: &'a str,
    },
    /// A password change with the wrong current password.
    WrongCurrentPassword {
        user: Uuid,
    },
    /// A password change with the right current password (audited with
    /// the change itself).
    RightCurrentPassword,
    /// `POST /oauth/token` with a wrong secret, or naming no client.
    WrongClientSecret {
        client: Option<Uuid>,
    },
    /// The right client secret, but a scope beyond the client's roles:
    /// no guess, so forgiven, and refused.
    ScopeRefused {
        client: Uuid,
    },
    /// The right client secret: a token is issued with `scope`.
    ClientAuthenticated {
        client: Uuid,
        scope: &'a [String],
    },
}

impl AttemptEnd<'_> {
    /// Whether the attempt's reserved failure rows are deleted: the right
    /// password was no guess, whatever happens next.
    pub fn forgiven(&self) -> bool {
        matches!(
            self,
            AttemptEnd::Banned { .. }
                | AttemptEnd::RightCurrentPassword
                | AttemptEnd::ScopeRefused { .. }
                | AttemptEnd::ClientAuthenticated { .. }
        )
    }

    /// What the audit log records for it, if anything.
    pub fn audited(&self) -> Option<Audited<'_>> {
        Some(match *self {
            AttemptEnd::WrongPassword { user, email_key } => {
                Audited::LoginFailed { user: Some(user), email_key, reason: LoginFailure::WrongPassword }
            }
            AttemptEnd::UnknownEmail { email_key } => {
                Audited::LoginFailed { user: None, email_key, reason: LoginFailure::UnknownEmail }
            }
            AttemptEnd::Banned { user, email_key } => {
                Audited::LoginFailed { user: Some(user), email_key, reason: LoginFailure::Banned }
            }
            AttemptEnd::WrongCurrentPassword { user } => Audited::PasswordChangeRefused { user },
            AttemptEnd::RightCurrentPassword => return None,
            AttemptEnd::WrongClientSecret { client } => {
                Audited::TokenRefused { client, reason: "invalid_client" }
            }
            AttemptEnd::ScopeRefused { client } => {
                Audited::TokenRefused { client: Some(client), reason: "invalid_scope" }
            }
            AttemptEnd::ClientAuthenticated { client, scope } => Audited::TokenIssued { client, scope },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const WINDOW: Duration = Duration::from_secs(900);
    const T0: OffsetDateTime = datetime!(2026-01-01 12:00 UTC);

    fn at(secs: i64) -> OffsetDateTime {
        T0 + time::Duration::seconds(secs)
    }

    #[test]
    fn allows_until_the_limit() {
        let seen = FailureWindow::of(&[at(0), at(1), at(2), at(3)], 5);
        assert_eq!(decide(seen, 5, WINDOW, at(4)), ThrottleDecision::Allow);
        assert_eq!(decide(FailureWindow::of(&[], 5), 5, WINDOW, at(4)), ThrottleDecision::Allow);
    }

    #[test]
    fn denies_until_the_pivot_leaves_the_window() {
        let seen = FailureWindow::of(&[at(0), at(10), at(20), at(30), at(40)], 5);
        assert_eq!(seen.pivot, Some(at(0)));
        assert_eq!(decide(seen, 5, WINDOW, at(100)), ThrottleDecision::Deny { retry_after_secs: 800 });
        let fractional = T0 + time::Duration::milliseconds(100_500);
        assert_eq!(decide(seen, 5, WINDOW, fractional), ThrottleDecision::Deny { retry_after_secs: 800 });
    }

    #[test]
    fn over_the_limit_waits_for_enough_failures_to_expire() {
        // Seven failures against a limit of five: the count drops under the
        // limit only when the third oldest leaves the window.
        let times: Vec<_> = (0..7).map(|i| at(i * 100)).collect();
        let seen = FailureWindow::of(&times, 5);
        assert_eq!(seen.pivot, Some(at(200)));
        assert_eq!(decide(seen, 5, WINDOW, at(700)), ThrottleDecision::Deny { retry_after_secs: 400 });
    }

    #[test]
    fn only_a_right_password_or_secret_is_forgiven() {
        let user = Uuid::from_u128(1);
        let k = "a@example.com";
        let ends = [
            (
                AttemptEnd::WrongPassword { user, email_key: k },
                false,
                Some(crate::audit::Action::LoginFailed),
            ),
            (AttemptEnd::UnknownEmail { email_key: k }, false, Some(crate::audit::Action::LoginFailed)),
            (AttemptEnd::Banned { user, email_key: k }, true, Some(crate::audit::Action::LoginFailed)),
            (AttemptEnd::WrongCurrentPassword { user }, false, Some(crate::audit::Action::PasswordChanged)),
            (AttemptEnd::RightCurrentPassword, true, None),
            (
                AttemptEnd::WrongClientSecret { client: None },
                false,
                Some(crate::audit::Action::OAuthTokenIssued),
            ),
            (AttemptEnd::ScopeRefused { client: user }, true, Some(crate::audit::Action::OAuthTokenIssued)),
            (
                AttemptEnd::ClientAuthenticated { client: user, scope: &[] },
                true,
                Some(crate::audit::Action::OAuthTokenIssued),
            ),
        ];
        for (end, forgiven, action) in ends {
            assert_eq!((end.forgiven(), end.audited().map(|a| a.action())), (forgiven, action), "{end:?}");
        }
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let seen = FailureWindow::of(&[at(0); 9], 5);
        assert_eq!(decide(seen, 5, WINDOW, at(900)), ThrottleDecision::Deny { retry_after_secs: 1 });
    }

    #[test]
    fn several_keys_take_the_longest_wait() {
        let account = FailureWindow::of(&[at(0), at(1)], 2);
        let ip = FailureWindow::of(&[at(50)], 10);
        let ip_full = FailureWindow::of(&[at(100); 10], 10);
        assert_eq!(
            decide_all([(account, 2), (ip, 10)], WINDOW, at(200)),
            ThrottleDecision::Deny { retry_after_secs: 700 }
        );
        assert_eq!(
            decide_all([(account, 2), (ip_full, 10)], WINDOW, at(200)),
            ThrottleDecision::Deny { retry_after_secs: 800 }
        );
        assert_eq!(decide_all([(ip, 10)], WINDOW, at(200)), ThrottleDecision::Allow);
    }
}
