//! Revocations: what every verifier of access tokens must refuse from now on.
//!
//! The admin service records one in the same transaction as the change that
//! causes it and publishes it after commit; gateways keep the recent ones in
//! memory. A revocation older than the access-token lifetime (plus leeway)
//! can no longer affect a live token and may be forgotten.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::claims::LEEWAY;

/// The longest access-token lifetime the admin accepts (`admin.access_token_ttl`).
pub const MAX_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a revocation can matter for tokens of lifetime `access_token_ttl`:
/// the longest an access token issued before it stays alive (lifetime plus
/// clock leeway), plus a minute for propagation. Older revocations can match
/// no live token; stores, the Redis record and gateways forget them.
pub fn relevance(access_token_ttl: Duration) -> Duration {
    access_token_ttl + LEEWAY + Duration::from_secs(60)
}

/// Why sessions or users were revoked. The string forms are stored in the
/// database and travel to gateways; gateways never act on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevokeReason {
    Logout,
    LogoutAll,
    PasswordChanged,
    ReuseDetected,
    RolesRemoved,
    Banned,
    Deleted,
    RoleDeleted,
    /// A machine client was deleted: its tokens die (its id is their `sub`).
    ClientDeleted,
    /// A reason this version does not know (written by a newer one): still
    /// a revocation, only its label is lost.
    Other,
}

impl RevokeReason {
    const ALL: [RevokeReason; 10] = [
        RevokeReason::Logout,
        RevokeReason::LogoutAll,
        RevokeReason::PasswordChanged,
        RevokeReason::ReuseDetected,
        RevokeReason::RolesRemoved,
        RevokeReason::Banned,
        RevokeReason::Deleted,
        RevokeReason::RoleDeleted,
        RevokeReason::ClientDeleted,
        RevokeReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::LogoutAll => "logout_all",
            RevokeReason::PasswordChanged => "password_changed",
            RevokeReason::ReuseDetected => "reuse_detected",
            RevokeReason::RolesRemoved => "roles_removed",
            RevokeReason::Banned => "banned",
            RevokeReason::Deleted => "deleted",
            RevokeReason::RoleDeleted => "role_deleted",
            RevokeReason::ClientDeleted => "client_deleted",
            RevokeReason::Other => "other",
        }
    }

    /// Never fails: a revocation must be enforced whatever its label says.
    pub fn parse(s: &str) -> Self {
        Self::ALL.into_iter().find(|r| r.as_str() == s).unwrap_or(RevokeReason::Other)
    }
}

impl std::fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    pub reason: RevokeReason,
}

impl Revocation {
    pub fn user(user_id: Uuid, at: OffsetDateTime, reason: RevokeReason) -> Self {
        Self { kind: RevocationKind::User, id: user_id, user_id, at, reason }
    }

    pub fn session(session_id: Uuid, user_id: Uuid, at: OffsetDateTime, reason: RevokeReason) -> Self {
        Self { kind: RevocationKind::Session, id: session_id, user_id, at, reason }
    }

    /// What revoking a whole user writes: the user's revoked-before time,
    /// and each of its live sessions (a token minted in the same second as
    /// the revocation survives the first, never the second).
    pub fn of_user(user_id: Uuid, sessions: &[Uuid], at: OffsetDateTime, reason: RevokeReason) -> Vec<Self> {
        let mut all = Vec::with_capacity(1 + sessions.len());
        all.push(Self::user(user_id, at, reason));
        all.extend(sessions.iter().map(|&s| Self::session(s, user_id, at, reason)));
        all
    }

    /// What deleting a service client writes: its revoked-before time at
    /// the start of the next whole second, so it kills every token with
    /// `iat` up to the second of the deletion. A client's tokens have no
    /// session to revoke by id, so one minted in that second would
    /// otherwise survive (`iat` has whole seconds); and a deleted client
    /// can never mint another, so nothing valid is lost.
    pub fn of_client(client_id: Uuid, at: OffsetDateTime, reason: RevokeReason) -> Self {
        let whole = at.replace_nanosecond(0).unwrap_or(at);
        Self::user(client_id, whole + time::Duration::SECOND, reason)
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
        let r = Revocation::user(u, at, RevokeReason::Banned);
        assert!(r.kills(u, s, at.unix_timestamp() - 1));
        assert!(
            !r.kills(u, s, at.unix_timestamp()),
            "same-second tokens are left to the session revocations"
        );
        assert!(!r.kills(other, s, 0));
        let session = Revocation::session(s, u, at, RevokeReason::Logout);
        assert!(session.kills(u, s, i64::MAX));
        assert!(!session.kills(u, Uuid::from_u128(4), 0));
        assert_eq!(RevocationKind::parse(RevocationKind::Session.as_str()), Some(RevocationKind::Session));
    }

    #[test]
    fn a_client_deletion_kills_tokens_of_its_own_second() {
        let c = Uuid::from_u128(7);
        for at in [datetime!(2026-01-01 00:00:10 UTC), datetime!(2026-01-01 00:00:10.999 UTC)] {
            let r = Revocation::of_client(c, at, RevokeReason::ClientDeleted);
            assert!(r.kills(c, Uuid::nil(), 10), "a token of the deletion's second, deleted at {at}");
            assert!(r.kills(c, Uuid::nil(), 9));
            assert!(!r.kills(Uuid::from_u128(8), Uuid::nil(), 9), "another subject");
        }
    }

    #[test]
    fn reasons_round_trip_and_unknown_ones_still_revoke() {
        for r in RevokeReason::ALL {
            assert_eq!(RevokeReason::parse(r.as_str()), r);
        }
        assert_eq!(RevokeReason::parse("cosmic_ray"), RevokeReason::Other);
        let (u, s) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let at = datetime!(2026-01-01 00:00:10 UTC);
        let all = Revocation::of_user(u, &[s], at, RevokeReason::Banned);
        assert_eq!(
            all,
            [
                Revocation::user(u, at, RevokeReason::Banned),
                Revocation::session(s, u, at, RevokeReason::Banned)
            ]
        );
    }

    #[test]
    fn relevance_covers_the_token_lifetime_and_leeway() {
        assert_eq!(relevance(Duration::from_secs(900)), Duration::from_secs(900 + 30 + 60));
    }
}
