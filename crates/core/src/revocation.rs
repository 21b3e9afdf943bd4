//! Revocations: what every verifier of access tokens must refuse from now on.
//!
//! The admin service records one in the same transaction as the change that
//! causes it and publishes it after commit; gateways keep the recent ones in
//! memory. A revocation older than the access-token lifetime (plus leeway)
//! can no longer affect a live token and may be forgotten.

use time::OffsetDateTime;
use uuid::Uuid;

/// What a revocation covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// Every token of `user_id` issued (`iat`, whole seconds) before `at`.
    User,
    /// Every token of session `id`.
    Session,
}

impl RevocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::User => "user",
            RevocationKind::Session => "session",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(RevocationKind::User),
            "session" => Some(RevocationKind::Session),
            _ => None,
        }
    }
}

/// One revocation record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub kind: RevocationKind,
    /// The user id (kind `User`) or the session id (kind `Session`).
    pub id: Uuid,
    pub user_id: Uuid,
    pub at: OffsetDateTime,
    /// `logout`, `logout_all`, `password_changed`, `reuse_detected`,
    /// `roles_removed`, `banned`, `deleted`, `role_deleted`.
    pub reason: String,
}

impl Revocation {
    pub fn user(user_id: Uuid, at: OffsetDateTime, reason: &str) -> Self {
        Self { kind: RevocationKind::User, id: user_id, user_id, at, reason: reason.to_owned() }
    }

    pub fn session(session_id: Uuid, user_id: Uuid, at: OffsetDateTime, reason: &str) -> Self {
        Self { kind: RevocationKind::Session, id: session_id, user_id, at, reason: reason.to_owned() }
    }

    /// Whether this revocation kills a token of `user_id` in `session_id`
    /// issued at `iat` (Unix seconds).
    pub fn kills(&self, user_id: Uuid, session_id: Uuid, iat: i64) -> bool {
        match self.kind {
            RevocationKind::User => self.user_id == user_id && iat < self.at.unix_timestamp(),
            RevocationKind::Session => self.id == session_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn user_revocations_kill_older_tokens_of_that_user_only() {
        let (u, other, s) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let at = datetime!(2026-01-01 00:00:10.5 UTC);
        let r = Revocation::user(u, at, "banned");
        assert!(r.kills(u, s, at.unix_timestamp() - 1));
        assert!(
            !r.kills(u, s, at.unix_timestamp()),
            "same-second tokens are left to the session revocations"
        );
        assert!(!r.kills(other, s, 0));
        let session = Revocation::session(s, u, at, "logout");
        assert!(session.kills(u, s, i64::MAX));
        assert!(!session.kills(u, Uuid::from_u128(4), 0));
        assert_eq!(RevocationKind::parse(RevocationKind::Session.as_str()), Some(RevocationKind::Session));
    }
}
