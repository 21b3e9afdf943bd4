//! The revocations a gateway enforces, fed by the revocation bus.
//!
//! Read on every authenticated request, written rarely: a `RwLock` of two
//! small maps. Entries older than the longest token lifetime can no longer
//! match a live token and are pruned.

use std::{collections::HashMap, sync::RwLock, time::Duration};

use bouncer_core::revocation::{Revocation, RevocationKind};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Default)]
struct Entries {
    /// Tokens of the user issued before this Unix second are dead.
    users: HashMap<Uuid, i64>,
    /// Every token of these sessions is dead; the value is when recorded.
    sessions: HashMap<Uuid, i64>,
}

/// What this gateway refuses.
#[derive(Default)]
pub struct RevocationSet {
    entries: RwLock<Entries>,
}

impl RevocationSet {
    pub fn apply(&self, r: &Revocation) {
        let mut e = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let at = r.at.unix_timestamp();
        match r.kind {
            RevocationKind::User => {
                let slot = e.users.entry(r.user_id).or_insert(at);
                *slot = (*slot).max(at);
            }
            RevocationKind::Session => {
                e.sessions.insert(r.id, at);
            }
        }
    }

    /// Whether a token of `user` in `session` issued at `iat` is revoked.
    pub fn is_revoked(&self, user: Uuid, session: Uuid, iat: i64) -> bool {
        let e = self.entries.read().unwrap_or_else(|p| p.into_inner());
        e.sessions.contains_key(&session) || e.users.get(&user).is_some_and(|&before| iat < before)
    }

    /// Forgets entries older than `max_token_age` before `now`.
    pub fn prune(&self, now: OffsetDateTime, max_token_age: Duration) {
        let horizon = (now - max_token_age).unix_timestamp();
        let mut e = self.entries.write().unwrap_or_else(|p| p.into_inner());
        e.users.retain(|_, at| *at >= horizon);
        e.sessions.retain(|_, at| *at >= horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn users_and_sessions_are_refused_until_pruned() {
        let set = RevocationSet::default();
        let (u, s, other) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let at = datetime!(2026-01-01 00:00:10 UTC);
        set.apply(&Revocation::user(u, at, "banned"));
        set.apply(&Revocation::session(s, other, at, "logout"));
        assert!(set.is_revoked(u, Uuid::from_u128(9), at.unix_timestamp() - 1));
        assert!(
            !set.is_revoked(u, Uuid::from_u128(9), at.unix_timestamp()),
            "tokens minted after stay valid"
        );
        assert!(set.is_revoked(other, s, i64::MAX));
        assert!(!set.is_revoked(other, Uuid::from_u128(8), 0));
        set.prune(at + Duration::from_secs(3600), Duration::from_secs(900));
        assert!(!set.is_revoked(other, s, 0), "entries older than any live token are forgotten");
    }
}
