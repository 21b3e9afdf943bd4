//! Audit events and the hash chain that makes the log tamper-evident.
//!
//! Every record stores `prev_hash` and `hash = SHA-256(prev_hash ||
//! canonical(record))`, where the canonical form is a JSON object with
//! sorted keys and no whitespace, built here by hand (not by serde's map
//! ordering, which a feature flag elsewhere could change). Editing, deleting
//! or reordering any record breaks the chain at that record; [`ChainVerifier`]
//! finds the first break. Deleting records at the *end* leaves a valid but
//! shorter chain, which is why operators anchor the head hash elsewhere.

use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

/// `prev_hash` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// What happened. The string forms are stable: they are stored and hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    UserSignup,
    UserCreated,
    LoginSucceeded,
    LoginFailed,
    Refresh,
    RefreshReuseDetected,
    Logout,
    PasswordChanged,
    RolesChanged,
    UserBanned,
    UserUnbanned,
    UserDeleted,
    RoleCreated,
    RoleDeleted,
    GatewayDenied,
}

impl Action {
    pub const ALL: [Action; 15] = [
        Action::UserSignup,
        Action::UserCreated,
        Action::LoginSucceeded,
        Action::LoginFailed,
        Action::Refresh,
        Action::RefreshReuseDetected,
        Action::Logout,
        Action::PasswordChanged,
        Action::RolesChanged,
        Action::UserBanned,
        Action::UserUnbanned,
        Action::UserDeleted,
        Action::RoleCreated,
        Action::RoleDeleted,
        Action::GatewayDenied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::UserSignup => "user.signup",
            Action::UserCreated => "user.created",
            Action::LoginSucceeded => "auth.login.succeeded",
            Action::LoginFailed => "auth.login.failed",
            Action::Refresh => "auth.refresh",
            Action::RefreshReuseDetected => "auth.refresh.reuse_detected",
            Action::Logout => "auth.logout",
            Action::PasswordChanged => "user.password.changed",
            Action::RolesChanged => "user.roles.changed",
            Action::UserBanned => "user.banned",
            Action::UserUnbanned => "user.unbanned",
            Action::UserDeleted => "user.deleted",
            Action::RoleCreated => "role.created",
            Action::RoleDeleted => "role.deleted",
            Action::GatewayDenied => "gateway.denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Whether the action succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Outcome::Success, Outcome::Failure, Outcome::Denied].into_iter().find(|o| o.as_str() == s)
    }
}

/// Who did it, from where: everything about an event but the action itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditContext {
    /// A user id, `cli`, `gateway`, or `None` when anonymous.
    pub actor: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// One event, before it is placed in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: Uuid,
    /// Stored and hashed with microsecond precision.
    pub at: OffsetDateTime,
    pub actor: Option<String>,
    pub action: Action,
    pub subject: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub outcome: Outcome,
    /// Canonical JSON text (see [`canonical_json`]); never a secret.
    pub details: String,
}

impl AuditContext {
    /// Builds an event in this context. `details` must hold no secret.
    pub fn event(
        &self,
        at: OffsetDateTime,
        action: Action,
        subject: Option<String>,
        outcome: Outcome,
        details: &Value,
    ) -> AuditEvent {
        AuditEvent {
            id: Uuid::now_v7(),
            at: truncate_to_micros(at),
            actor: self.actor.clone(),
            action,
            subject,
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
            outcome,
            details: canonical_json(details),
        }
    }
}

/// A chained record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    pub event: AuditEvent,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// Drops sub-microsecond precision, which neither store keeps.
pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.unix_timestamp_nanos();
    OffsetDateTime::from_unix_timestamp_nanos(nanos - nanos.rem_euclid(1_000)).unwrap_or(t)
}

/// JSON with object keys sorted and no insignificant whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The canonical bytes of a record's content (everything but the hashes).
pub fn canonical_record(seq: i64, e: &AuditEvent) -> String {
    let micros = e.at.unix_timestamp_nanos() / 1_000;
    let text = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| Value::String(s.clone())).to_string();
    let mut out = String::with_capacity(256 + e.details.len());
    // Keys in sorted order; details is already canonical JSON text.
    let _ = write!(
        out,
        "{{\"action\":{},\"actor\":{},\"at_us\":{micros},\"details\":{},\"id\":\"{}\",\"ip\":{},\"outcome\":\"{}\",\"request_id\":{},\"seq\":{seq},\"subject\":{},\"user_agent\":{}}}",
        Value::String(e.action.as_str().into()),
        text(&e.actor),
        e.details,
        e.id,
        text(&e.ip),
        e.outcome.as_str(),
        text(&e.request_id),
        text(&e.subject),
        text(&e.user_agent),
    );
    out
}

/// `SHA-256(prev_hash || canonical_record(seq, event))`.
pub fn chain_hash(prev_hash: &[u8; 32], seq: i64, event: &AuditEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(canonical_record(seq, event).as_bytes());
    h.finalize().into()
}

/// Places `event` after a record with `prev_seq`/`prev_hash` (or first).
pub fn link(prev: Option<(i64, [u8; 32])>, event: AuditEvent) -> AuditRecord {
    let (prev_seq, prev_hash) = prev.unwrap_or((0, GENESIS));
    let seq = prev_seq + 1;
    let hash = chain_hash(&prev_hash, seq, &event);
    AuditRecord { seq, event, prev_hash, hash }
}

/// The first place the chain is broken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainBreak {
    #[error(
        "record seq {found} (id {id}) is out of place: expected seq {expected} — a record was deleted or reordered before it"
    )]
    Gap { expected: i64, found: i64, id: Uuid },
    #[error(
        "record seq {seq} (id {id}) does not link to the record before it (prev_hash differs) — a record before it was removed, inserted or reordered"
    )]
    BrokenLink { seq: i64, id: Uuid },
    #[error("record seq {seq} (id {id}) was edited: its content no longer matches its hash")]
    Edited { seq: i64, id: Uuid },
}

/// Walks records in `seq` order and reports the first break.
#[derive(Debug)]
pub struct ChainVerifier {
    next_seq: i64,
    prev_hash: [u8; 32],
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { next_seq: 1, prev_hash: GENESIS }
    }
}

impl ChainVerifier {
    /// Checks the next record.
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), ChainBreak> {
        if r.seq != self.next_seq {
            return Err(ChainBreak::Gap { expected: self.next_seq, found: r.seq, id: r.event.id });
        }
        if r.prev_hash != self.prev_hash {
            return Err(ChainBreak::BrokenLink { seq: r.seq, id: r.event.id });
        }
        if chain_hash(&r.prev_hash, r.seq, &r.event) != r.hash {
            return Err(ChainBreak::Edited { seq: r.seq, id: r.event.id });
        }
        self.next_seq += 1;
        self.prev_hash = r.hash;
        Ok(())
    }

    /// Records verified so far.
    pub fn count(&self) -> i64 {
        self.next_seq - 1
    }

    /// Hash of the last verified record (the head), for anchoring elsewhere.
    pub fn head(&self) -> [u8; 32] {
        self.prev_hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn event(n: u32) -> AuditEvent {
        let ctx =
            AuditContext { actor: Some("cli".into()), ip: Some("192.0.2.1".into()), ..Default::default() };
        ctx.event(
            datetime!(2026-01-01 00:00:00.123456789 UTC),
            Action::UserSignup,
            Some(format!("user-{n}")),
            Outcome::Success,
            &json!({"b": [1, {"z": true, "a": null}], "a": "x\"y"}),
        )
    }

    fn chain(n: u32) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|r| (r.seq, r.hash));
            out.push(link(prev, event(i)));
        }
        out
    }

    fn verify(records: &[AuditRecord]) -> Result<i64, ChainBreak> {
        let mut v = ChainVerifier::default();
        for r in records {
            v.push(r)?;
        }
        Ok(v.count())
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        assert_eq!(
            canonical_json(&json!({"b": [1, {"z": true, "a": null}], "a": "x\"y"})),
            r#"{"a":"x\"y","b":[1,{"a":null,"z":true}]}"#
        );
    }

    #[test]
    fn events_keep_microseconds_only() {
        assert_eq!(event(0).at, datetime!(2026-01-01 00:00:00.123456 UTC));
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
        assert_eq!(verify(&[]), Ok(0));
    }

    #[test]
    fn edits_deletions_and_reordering_are_named() {
        let mut edited = chain(5);
        edited[2].event.subject = Some("someone-else".into());
        assert!(matches!(verify(&edited), Err(ChainBreak::Edited { seq: 3, .. })));

        let mut deleted = chain(5);
        deleted.remove(1);
        assert!(matches!(verify(&deleted), Err(ChainBreak::Gap { expected: 2, found: 3, .. })));

        // Swapping the contents (and renumbering to hide the gap) breaks the link.
        let mut reordered = chain(5);
        reordered.swap(1, 2);
        reordered[1].seq = 2;
        reordered[2].seq = 3;
        assert!(matches!(verify(&reordered), Err(ChainBreak::BrokenLink { seq: 2, .. })));

        // Re-hashing an edited record without fixing its successors is caught at the successor.
        let mut rehashed = chain(5);
        rehashed[2].event.outcome = Outcome::Failure;
        rehashed[2].hash = chain_hash(&rehashed[2].prev_hash, 3, &rehashed[2].event);
        assert!(matches!(verify(&rehashed), Err(ChainBreak::BrokenLink { seq: 4, .. })));
    }

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("auth.refresh.reuse_detected"), Some(Action::RefreshReuseDetected));
    }
}
