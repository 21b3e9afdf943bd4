//! Audit events and the hash chain that makes the log tamper-evident.
//!
//! Every record stores `prev_hash` and `hash = SHA-256(prev_hash ||
//! canonical(record))`, where the canonical form is a JSON object with
//! sorted keys and no whitespace, built here by hand (not by serde's map
//! ordering, which a feature flag elsewhere could change). Editing, deleting
//! or reordering any record breaks the chain at that record; [`ChainVerifier`]
//! finds the first break. Deleting records at the *end* leaves a valid but
//! shorter chain, which is why operators anchor the head hash elsewhere.

pub mod events;

use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

pub use events::{Audited, GatewayDenial, LoginFailure};

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
    ClientCreated,
    ClientSecretRotated,
    ClientDeleted,
    OAuthTokenIssued,
    ApiKeyCreated,
    ApiKeyRevoked,
}

impl Action {
    pub const ALL: [Action; 21] = [
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
        Action::ClientCreated,
        Action::ClientSecretRotated,
        Action::ClientDeleted,
        Action::OAuthTokenIssued,
        Action::ApiKeyCreated,
        Action::ApiKeyRevoked,
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
            Action::ClientCreated => "client.created",
            Action::ClientSecretRotated => "client.secret.rotated",
            Action::ClientDeleted => "client.deleted",
            Action::OAuthTokenIssued => "oauth.token.issued",
            Action::ApiKeyCreated => "api_key.created",
            Action::ApiKeyRevoked => "api_key.revoked",
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
    /// Builds an event in this context from its parts. Bouncer's own changes
    /// go through [`Audited::event`], which decides the parts; this is for
    /// tools and tests. `details` must hold no secret.
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

/// The hashed fields of a record, borrowed from an event or from a row as
/// stored: both hash through [`Canonical::write`], so a verifier can hash
/// what the database holds without first trusting it to parse.
struct Canonical<'a> {
    seq: i64,
    action: &'a str,
    actor: Option<&'a str>,
    at_us: i128,
    details: &'a str,
    id: &'a str,
    ip: Option<&'a str>,
    outcome: &'a str,
    request_id: Option<&'a str>,
    subject: Option<&'a str>,
    user_agent: Option<&'a str>,
}

impl Canonical<'_> {
    fn write(&self) -> String {
        let text = |v: Option<&str>| v.map_or(Value::Null, |s| Value::String(s.to_owned())).to_string();
        let string = |s: &str| Value::String(s.to_owned()).to_string();
        let mut out = String::with_capacity(256 + self.details.len());
        // Keys in sorted order; details is already canonical JSON text.
        let _ = write!(
            out,
            "{{\"action\":{},\"actor\":{},\"at_us\":{},\"details\":{},\"id\":{},\"ip\":{},\"outcome\":{},\"request_id\":{},\"seq\":{},\"subject\":{},\"user_agent\":{}}}",
            string(self.action),
            text(self.actor),
            self.at_us,
            self.details,
            string(self.id),
            text(self.ip),
            string(self.outcome),
            text(self.request_id),
            self.seq,
            text(self.subject),
            text(self.user_agent),
        );
        out
    }

    fn hash(&self, prev_hash: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(prev_hash);
        h.update(self.write().as_bytes());
        h.finalize().into()
    }
}

/// The canonical bytes of a record's content (everything but the hashes).
pub fn canonical_record(seq: i64, e: &AuditEvent) -> String {
    let id = e.id.to_string();
    canonical_of(seq, e, &id).write()
}

fn canonical_of<'a>(seq: i64, e: &'a AuditEvent, id: &'a str) -> Canonical<'a> {
    Canonical {
        seq,
        action: e.action.as_str(),
        actor: e.actor.as_deref(),
        at_us: e.at.unix_timestamp_nanos() / 1_000,
        details: &e.details,
        id,
        ip: e.ip.as_deref(),
        outcome: e.outcome.as_str(),
        request_id: e.request_id.as_deref(),
        subject: e.subject.as_deref(),
        user_agent: e.user_agent.as_deref(),
    }
}

/// `SHA-256(prev_hash || canonical_record(seq, event))`.
pub fn chain_hash(prev_hash: &[u8; 32], seq: i64, event: &AuditEvent) -> [u8; 32] {
    let id = event.id.to_string();
    canonical_of(seq, event, &id).hash(prev_hash)
}

/// Places `event` after a record with `prev_seq`/`prev_hash` (or first).
pub fn link(prev: Option<(i64, [u8; 32])>, event: AuditEvent) -> AuditRecord {
    let (prev_seq, prev_hash) = prev.unwrap_or((0, GENESIS));
    let seq = prev_seq + 1;
    let hash = chain_hash(&prev_hash, seq, &event);
    AuditRecord { seq, event, prev_hash, hash }
}

/// An audit row exactly as the database holds it, before anything about it
/// is believed: the verifier hashes these bytes, and only then asks whether
/// they are an event Bouncer could have written. Backends fill it without
/// interpreting a column; a value of the wrong type (SQLite keeps whatever
/// is written) is kept as a description in `Err`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: Result<i64, String>,
    /// The id column as text (for messages, and hashed as stored).
    pub id: String,
    pub content: Result<StoredContent, String>,
}

/// The columns of a [`StoredRecord`] besides `seq` and `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredContent {
    /// `at` in microseconds since the Unix epoch.
    pub at_us: i64,
    pub actor: Option<String>,
    pub action: String,
    pub subject: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub outcome: String,
    pub details: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl StoredContent {
    fn canonical<'a>(&'a self, seq: i64, id: &'a str) -> Canonical<'a> {
        Canonical {
            seq,
            action: &self.action,
            actor: self.actor.as_deref(),
            at_us: i128::from(self.at_us),
            details: &self.details,
            id,
            ip: self.ip.as_deref(),
            outcome: &self.outcome,
            request_id: self.request_id.as_deref(),
            subject: self.subject.as_deref(),
            user_agent: self.user_agent.as_deref(),
        }
    }
}

impl StoredRecord {
    /// The record as the services use it, or why these bytes are not an
    /// event Bouncer writes (an unknown action or outcome, details that are
    /// not JSON, an id that is not a UUID, a time out of range, a hash that
    /// is not 32 bytes).
    pub fn to_record(&self) -> Result<AuditRecord, String> {
        let seq = self.seq.clone()?;
        let c = self.content.as_ref().map_err(Clone::clone)?;
        let id = Uuid::parse_str(&self.id).map_err(|_| format!("id {:?} is not a UUID", self.id))?;
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(c.at_us) * 1_000)
            .map_err(|_| format!("at ({} µs) is not a representable time", c.at_us))?;
        let action = Action::parse(&c.action)
            .ok_or_else(|| format!("action {:?} is not one Bouncer writes", c.action))?;
        let outcome = Outcome::parse(&c.outcome)
            .ok_or_else(|| format!("outcome {:?} is not one Bouncer writes", c.outcome))?;
        let details: Value =
            serde_json::from_str(&c.details).map_err(|_| "details are not JSON".to_owned())?;
        if canonical_json(&details) != c.details {
            return Err("details are not canonical JSON".into());
        }
        let hash32 = |name: &str, v: &[u8]| -> Result<[u8; 32], String> {
            v.try_into().map_err(|_| format!("{name} is {} bytes, not 32", v.len()))
        };
        Ok(AuditRecord {
            seq,
            event: AuditEvent {
                id,
                at,
                actor: c.actor.clone(),
                action,
                subject: c.subject.clone(),
                ip: c.ip.clone(),
                user_agent: c.user_agent.clone(),
                request_id: c.request_id.clone(),
                outcome,
                details: c.details.clone(),
            },
            prev_hash: hash32("prev_hash", &c.prev_hash)?,
            hash: hash32("hash", &c.hash)?,
        })
    }
}

/// The first place the chain is broken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainBreak {
    #[error(
        "record seq {found} (id {id}) is out of place: expected seq {expected} — a record was deleted or reordered before it"
    )]
    Gap { expected: i64, found: i64, id: String },
    #[error(
        "record seq {seq} (id {id}) does not link to the record before it (prev_hash differs) — a record before it was removed, inserted or reordered"
    )]
    BrokenLink { seq: i64, id: String },
    #[error("record seq {seq} (id {id}) was edited: its content no longer matches its hash{}", because(.reason))]
    Edited { seq: i64, id: String, reason: Option<String> },
    /// Content that matches its hash but is not an event Bouncer writes:
    /// the record was rewritten and the chain re-hashed from it onwards.
    #[error(
        "record seq {seq} (id {id}) was rewritten: {reason} (its hash was recomputed, so compare the head hash with your anchor)"
    )]
    Rewritten { seq: i64, id: String, reason: String },
    /// A column no longer holds a value of its type.
    #[error("record {at} (id {id}) cannot be read: {reason}")]
    Unreadable { at: String, id: String, reason: String },
}

fn because(reason: &Option<String>) -> String {
    reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
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
    /// Checks the next row as stored.
    pub fn push(&mut self, r: &StoredRecord) -> Result<(), ChainBreak> {
        let id = r.id.clone();
        let seq = match &r.seq {
            Ok(seq) => *seq,
            Err(reason) => {
                let at = format!("after seq {}", self.next_seq - 1);
                return Err(ChainBreak::Unreadable { at, id, reason: reason.clone() });
            }
        };
        if seq != self.next_seq {
            return Err(ChainBreak::Gap { expected: self.next_seq, found: seq, id });
        }
        let content = r.content.as_ref().map_err(|reason| ChainBreak::Unreadable {
            at: format!("seq {seq}"),
            id: id.clone(),
            reason: reason.clone(),
        })?;
        if content.prev_hash != self.prev_hash {
            return Err(ChainBreak::BrokenLink { seq, id });
        }
        if content.canonical(seq, &r.id).hash(&self.prev_hash)[..] != content.hash[..] {
            return Err(ChainBreak::Edited { seq, id, reason: r.to_record().err() });
        }
        if let Err(reason) = r.to_record() {
            return Err(ChainBreak::Rewritten { seq, id, reason });
        }
        self.next_seq += 1;
        self.prev_hash.copy_from_slice(&content.hash);
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

impl AuditRecord {
    /// The row a backend would store for this record (tests, and backends
    /// that write what they later read).
    pub fn stored(&self) -> StoredRecord {
        let e = &self.event;
        StoredRecord {
            seq: Ok(self.seq),
            id: e.id.to_string(),
            content: Ok(StoredContent {
                at_us: (e.at.unix_timestamp_nanos() / 1_000) as i64,
                actor: e.actor.clone(),
                action: e.action.as_str().to_owned(),
                subject: e.subject.clone(),
                ip: e.ip.clone(),
                user_agent: e.user_agent.clone(),
                request_id: e.request_id.clone(),
                outcome: e.outcome.as_str().to_owned(),
                details: e.details.clone(),
                prev_hash: self.prev_hash.to_vec(),
                hash: self.hash.to_vec(),
            }),
        }
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
        verify_stored(&records.iter().map(AuditRecord::stored).collect::<Vec<_>>())
    }

    fn verify_stored(rows: &[StoredRecord]) -> Result<i64, ChainBreak> {
        let mut v = ChainVerifier::default();
        for r in rows {
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
    fn the_canonical_form_is_stable() {
        // Records already in databases were hashed over exactly this text.
        let mut e = event(1);
        e.id = Uuid::from_u128(0x0123);
        assert_eq!(
            canonical_record(7, &e),
            r#"{"action":"user.signup","actor":"cli","at_us":1767225600123456,"details":{"a":"x\"y","b":[1,{"a":null,"z":true}]},"id":"00000000-0000-0000-0000-000000000123","ip":"192.0.2.1","outcome":"success","request_id":null,"seq":7,"subject":"user-1","user_agent":null}"#
        );
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
        assert_eq!(verify(&[]), Ok(0));
        for r in chain(3) {
            assert_eq!(r.stored().to_record(), Ok(r), "a stored record reads back as written");
        }
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

    /// Edits that leave bytes Bouncer would never write are still named
    /// by seq and id, with the reason, whatever column they touch.
    #[test]
    fn columns_that_no_longer_parse_are_named_not_fatal() {
        let rows: Vec<StoredRecord> = chain(3).iter().map(AuditRecord::stored).collect();
        let edit = |f: &dyn Fn(&mut StoredContent)| {
            let mut rows = rows.clone();
            f(rows[1].content.as_mut().unwrap());
            verify_stored(&rows).unwrap_err()
        };
        let id = rows[1].id.clone();
        for (what, err, reason) in [
            ("action", edit(&|c| c.action = "auth.login.succeeded-x".into()), "action"),
            ("outcome", edit(&|c| c.outcome = "maybe".into()), "outcome"),
            ("details", edit(&|c| c.details = "{not json".into()), "details are not JSON"),
            ("at", edit(&|c| c.at_us = i64::MAX), "not a representable time"),
        ] {
            match &err {
                ChainBreak::Edited { seq: 2, id: got, reason: Some(r) }
                    if *got == id && r.contains(reason) => {}
                other => panic!("{what}: expected an edit of seq 2 naming {reason:?}, got {other:?}"),
            }
            let text = err.to_string();
            assert!(text.contains("seq 2") && text.contains(&id), "{what}: {text}");
        }

        // A column that lost its type (SQLite keeps what it is given).
        let mut unreadable = rows.clone();
        unreadable[1].content = Err("at holds the text 'yesterday', not a time".into());
        let err = verify_stored(&unreadable).unwrap_err();
        assert!(matches!(&err, ChainBreak::Unreadable { at, .. } if at == "seq 2"), "{err:?}");
        assert!(err.to_string().contains("yesterday"), "{err}");

        // Rewritten and re-hashed from there on: the hashes agree, the content cannot be Bouncer's.
        let original = chain(2);
        let mut rows: Vec<StoredRecord> = original.iter().map(AuditRecord::stored).collect();
        let c = rows[1].content.as_mut().unwrap();
        c.action = "user.promoted".into();
        let fixed = StoredContent { hash: Vec::new(), ..c.clone() };
        let hash = fixed.canonical(2, &rows[1].id).hash(&original[0].hash);
        rows[1].content.as_mut().unwrap().hash = hash.to_vec();
        let err = verify_stored(&rows).unwrap_err();
        assert!(
            matches!(&err, ChainBreak::Rewritten { seq: 2, reason, .. } if reason.contains("user.promoted")),
            "{err:?}"
        );
    }

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("auth.refresh.reuse_detected"), Some(Action::RefreshReuseDetected));
    }
}
