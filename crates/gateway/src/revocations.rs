//! The revocations a gateway enforces, fed by the revocation bus.
//!
//! Read on every authenticated request, written rarely: a `RwLock` of two
//! small maps. Entries older than the longest token lifetime can no longer
//! match a live token and are pruned.
//!
//! Until the first complete snapshot has arrived the set is not *ready*,
//! and the gateway answers authenticated requests with 503 rather than
//! accept a token that may have been revoked (as with keys: never loaded →
//! never accept).

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bouncer_core::revocation::{Revocation, RevocationKind};
use bouncer_shared_state::RevocationBus;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use time::OffsetDateTime;
use tokio::sync::{Mutex, broadcast};
use uuid::Uuid;

/// How long a revocation can matter for the longest access-token lifetime
/// an admin accepts: older ones cannot match a live token. (A gateway does
/// not know its admins' configured lifetime, so it assumes the longest.)
pub fn max_token_age() -> Duration {
    bouncer_core::revocation::relevance(bouncer_core::revocation::MAX_ACCESS_TOKEN_TTL)
}

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
    ready: AtomicBool,
}

impl RevocationSet {
    /// Whether a complete snapshot has been applied.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!("revocations loaded; authenticated routes are open");
        }
    }

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

    /// Whether a token of `user` (a user or a client) in `session` (a
    /// user's; clients have none) issued at `iat` is revoked.
    pub fn is_revoked(&self, user: Uuid, session: Option<Uuid>, iat: i64) -> bool {
        let e = self.entries.read().unwrap_or_else(|p| p.into_inner());
        session.is_some_and(|s| e.sessions.contains_key(&s))
            || e.users.get(&user).is_some_and(|&before| iat < before)
    }

    /// Forgets entries older than `max_token_age` before `now`.
    pub fn prune(&self, now: OffsetDateTime, max_token_age: Duration) {
        let horizon = (now - max_token_age).unix_timestamp();
        let mut e = self.entries.write().unwrap_or_else(|p| p.into_inner());
        e.users.retain(|_, at| *at >= horizon);
        e.sessions.retain(|_, at| *at >= horizon);
    }
}

/// Applies every revocation the bus delivers to the set, and prunes it.
pub struct Feed {
    pub bus: Arc<RevocationBus>,
    pub set: Arc<RevocationSet>,
    /// A receiver taken before the publishers started (in-process), or
    /// `None` to subscribe when the service starts.
    pub events: Mutex<Option<broadcast::Receiver<Revocation>>>,
    /// Whether the bus decides readiness (shared bus: after its snapshot).
    /// Otherwise whoever loads the initial set marks it ready.
    pub ready_from_bus: bool,
}

#[async_trait]
impl BackgroundService for Feed {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.events.lock().await.take();
        let mut events = taken.unwrap_or_else(|| self.bus.subscribe());
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut since_prune = 0u32;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(r) => self.set.apply(&r),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "revocation feed lagged; reloading the snapshot");
                        self.bus.resnapshot();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    if self.ready_from_bus && !self.set.is_ready() && self.bus.is_synced() {
                        // The snapshot was sent before the bus said synced:
                        // apply what is queued, then open up.
                        while let Ok(r) = events.try_recv() {
                            self.set.apply(&r);
                        }
                        self.set.mark_ready();
                    }
                    since_prune += 1;
                    if since_prune >= 600 {
                        since_prune = 0;
                        self.set.prune(OffsetDateTime::now_utc(), max_token_age());
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bouncer_core::revocation::RevokeReason;
    use time::macros::datetime;

    #[test]
    fn users_and_sessions_are_refused_until_pruned() {
        let set = RevocationSet::default();
        let (u, s, other) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let at = datetime!(2026-01-01 00:00:10 UTC);
        set.apply(&Revocation::user(u, at, RevokeReason::Banned));
        set.apply(&Revocation::session(s, other, at, RevokeReason::Logout));
        let some = |n: u128| Some(Uuid::from_u128(n));
        assert!(set.is_revoked(u, some(9), at.unix_timestamp() - 1));
        assert!(!set.is_revoked(u, some(9), at.unix_timestamp()), "tokens minted after stay valid");
        // A client's token (no session) is revoked by its subject alone.
        assert!(set.is_revoked(u, None, at.unix_timestamp() - 1));
        assert!(!set.is_revoked(other, None, i64::MAX), "a session revocation touches no client token");
        assert!(set.is_revoked(other, Some(s), i64::MAX));
        assert!(!set.is_revoked(other, some(8), 0));
        set.prune(at + Duration::from_secs(3600), Duration::from_secs(900));
        assert!(!set.is_revoked(other, Some(s), 0), "entries older than any live token are forgotten");
    }
}
