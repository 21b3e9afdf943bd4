//! Durable state of the admin service behind one [`Store`] trait.
//!
//! Two implementations pass the same conformance suite (`tests/conformance.rs`):
//! [`postgres::PgStore`] for production and [`sqlite::SqliteStore`] for the
//! embedded default. [`open`] picks one from the database URL's scheme.
//! Rows are mapped to the domain types in [`model`] here, so no SQL type leaks
//! out of this crate.
#![forbid(unsafe_code)]

pub mod migrate;
pub mod model;
pub mod postgres;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;

use async_trait::async_trait;
use bouncer_core::{
    audit::{self, AuditContext, AuditEvent, AuditRecord, StoredRecord},
    config::DatabaseUrl,
    credential,
    revocation::{Revocation, RevocationKind},
    throttle::{AttemptEnd, ThrottleDecision},
    token::TokenHash,
};
use time::OffsetDateTime;
use uuid::Uuid;

pub use migrate::{Migration, MigrationReport};
pub use model::*;

/// What can go wrong in the store. Conflicts are domain errors (the caller
/// answers 409/422); `Unavailable` means the database could not be reached
/// (503); `Database` is anything else (500).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("email already registered")]
    EmailTaken,
    #[error("unknown role {0:?}")]
    UnknownRole(String),
    #[error("not found")]
    NotFound,
    #[error("user is already banned")]
    AlreadyBanned,
    #[error("role already exists")]
    RoleExists,
    #[error("built-in roles cannot be deleted")]
    BuiltinRole,
    #[error("role is held by {0} user(s)")]
    RoleInUse(u64),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("migration {version:04} ({name}) failed, schema left unchanged: {reason}")]
    MigrationFailed { version: u32, name: String, reason: String },
    #[error(
        "migration {version:04} ({name}) was edited after it was applied (checksum differs); released migrations must never change"
    )]
    MigrationEdited { version: u32, name: String },
    #[error(
        "the database has migration {0:04}, which this binary does not know: is it older than the schema?"
    )]
    UnknownMigration(u32),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the admin service persists. Every method is one transaction:
/// when it returns `Err` nothing it would have written is visible.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"postgres"` or `"sqlite"`, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Applies pending migrations in order, each in its own transaction.
    async fn migrate(&self) -> Result<MigrationReport>;

    /// Versions this binary knows that the database has not applied yet.
    /// Fails like [`Store::migrate`] when an applied migration was edited or
    /// is unknown. Used by `--no-migrate` to refuse an out-of-date schema.
    async fn pending_migrations(&self) -> Result<Vec<u32>>;

    /// Cheap round trip proving the database answers (readiness).
    async fn ping(&self) -> Result<()>;

    /// Creates a user with `roles` and records `user.signup` or
    /// `user.created` (per `new.origin`). `EmailTaken` when the case-folded
    /// email exists; `UnknownRole` when a role does not.
    async fn create_user(&self, new: NewUser, ctx: &AuditContext) -> Result<User>;

    async fn user(&self, id: Uuid) -> Result<Option<User>>;

    /// The user and password hash for a login, by case-folded email.
    async fn credential_by_email(&self, email_key: &str) -> Result<Option<Credential>>;

    async fn credential(&self, id: Uuid) -> Result<Option<Credential>>;

    /// Replaces the stored hash `old` by `new` without touching sessions
    /// (rehash on login). Conditional, so a password changed meanwhile is
    /// never overwritten with a rehash of the old one; `false` when it was.
    async fn replace_password_hash(&self, id: Uuid, old: &str, new: &str) -> Result<bool>;

    /// Stores a new password hash and revokes every live session of the user
    /// except `keep_session`; records `user.password.changed`. Returns the
    /// ids of the sessions revoked.
    async fn change_password(
        &self,
        id: Uuid,
        hash: &str,
        keep_session: Option<Uuid>,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>>;

    /// Stores a session and its first refresh token, settles the login
    /// attempt that earned it (`new.attempt`), and records
    /// `auth.login.succeeded`.
    async fn create_session(&self, new: NewSession, ctx: &AuditContext) -> Result<()>;

    /// The session and its user, for checking a bearer token's `sid`.
    async fn session(&self, id: Uuid) -> Result<Option<(Session, User)>>;

    /// Exchanges `presented` for `next` in one atomic conditional update:
    /// of two concurrent calls with the same token exactly one can rotate.
    /// A token that was already rotated revokes its whole session. Records
    /// `auth.refresh` or `auth.refresh.reuse_detected` in the same transaction.
    async fn rotate_refresh_token(
        &self,
        presented: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Rotation>;

    /// Revokes the session `presented` belongs to (logout) and records
    /// `auth.logout`. Returns its id, or `None` when the token is unknown.
    async fn revoke_session_by_token(
        &self,
        presented: TokenHash,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Option<Revocation>>;

    /// Revokes every live session of the user, sets its revoked-before time
    /// to `now` (logout-all) and records `auth.logout`. Returns the ids.
    async fn revoke_all_sessions(
        &self,
        user_id: Uuid,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>>;

    /// Starts a password check under the login throttle, atomically: counts
    /// each key's failures in the window and, when every key is under its
    /// limit, inserts one failure row per key tagged with the attempt id —
    /// before the password is verified, so parallel guesses cannot all pass.
    /// Also forgets failures older than the window.
    async fn begin_login_attempt(&self, attempt: &LoginAttempt) -> Result<ThrottleDecision>;

    /// Settles an attempt that did not end in a session, as `end` says
    /// (core's [`AttemptEnd`]): a forgiven attempt's failure rows are
    /// deleted (the password was right), otherwise they stay as the
    /// failure; records what `end` audits.
    async fn finish_login_attempt(
        &self,
        attempt: Uuid,
        end: AttemptEnd<'_>,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<()>;

    /// Appends events to the audit chain on their own (no other change).
    async fn append_audit(&self, events: &[AuditEvent]) -> Result<()>;

    /// Appends the events whose ids are not in the log yet and returns how
    /// many that was: for at-least-once deliveries (the gateway's denial
    /// stream), where a redelivered event must not be written twice.
    async fn append_audit_once(&self, events: &[AuditEvent]) -> Result<usize>;

    /// Up to `limit` audit rows with `seq > after`, in order, exactly as
    /// stored (nothing parsed: the verifier must see edited rows too).
    async fn stored_audit_records(&self, after: i64, limit: u32) -> Result<Vec<StoredRecord>>;

    /// Up to `limit` chained records with `seq > after`, in order. A row
    /// that is not an event Bouncer writes is an error (`audit verify` names it).
    async fn audit_records(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        parse_records(&self.stored_audit_records(after, limit).await?)
    }

    /// All roles, by name.
    async fn roles(&self) -> Result<Vec<Role>>;

    /// Creates a role (`RoleExists` when taken, by the primary key on both
    /// backends) and records `role.created`.
    async fn create_role(&self, role: &Role, now: OffsetDateTime, ctx: &AuditContext) -> Result<()>;

    /// Deletes a role: `NotFound`, `BuiltinRole`, or `RoleInUse` unless
    /// `force`, which removes it from its holders and revokes their tokens.
    /// Records `role.deleted`. Returns the revocations made.
    async fn delete_role(
        &self,
        name: &str,
        force: bool,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>>;

    /// A page of users.
    async fn list_users(&self, filter: &UserFilter) -> Result<Vec<User>>;

    /// Replaces a user's roles (`NotFound`, `UnknownRole`) and records
    /// `user.roles.changed`; revokes the user's sessions when
    /// [`bouncer_core::role::change_revokes`] says so.
    async fn set_roles(
        &self,
        user_id: Uuid,
        roles: &[String],
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<(User, Vec<Revocation>)>;

    /// Bans a user (`NotFound`, `AlreadyBanned`), revoking every session,
    /// and records `user.banned` with the reason.
    async fn ban_user(
        &self,
        user_id: Uuid,
        reason: &str,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<(User, Vec<Revocation>)>;

    /// Lifts a ban (`NotFound`; idempotent) and records `user.unbanned`.
    async fn unban_user(&self, user_id: Uuid, now: OffsetDateTime, ctx: &AuditContext) -> Result<User>;

    /// Deletes a user and their sessions (`NotFound`); the audit history
    /// stays. Records `user.deleted`. Returns the revocation made.
    async fn delete_user(
        &self,
        user_id: Uuid,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>>;

    /// A page of audit records, newest first.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>>;

    /// Revocations made after `since`, oldest first (a gateway's snapshot).
    async fn revocations_since(&self, since: OffsetDateTime) -> Result<Vec<Revocation>>;

    /// Creates a service client with its first secret (`UnknownRole`) and
    /// records `client.created`.
    async fn create_client(&self, new: NewClient, ctx: &AuditContext) -> Result<Client>;

    /// Every client, by creation.
    async fn clients(&self) -> Result<Vec<Client>>;

    async fn client(&self, id: Uuid) -> Result<Option<Client>>;

    /// The client and the hashes of its secrets valid at `now`.
    async fn client_credential(&self, id: Uuid, now: OffsetDateTime) -> Result<Option<ClientCredential>>;

    /// Adds `secret`; the client's older secrets stay valid until
    /// `overlap_until` (those already ending sooner keep their end).
    /// `NotFound`; records `client.secret.rotated`.
    async fn rotate_client_secret(
        &self,
        id: Uuid,
        secret: TokenHash,
        overlap_until: OffsetDateTime,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Client>;

    /// Deletes a client and its secrets (`NotFound`), revokes its tokens
    /// (a user revocation of its id) and records `client.deleted`.
    async fn delete_client(
        &self,
        id: Uuid,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>>;

    /// Stores a user's API key (`NotFound` for the user, `UnknownRole`) and
    /// records `api_key.created`. The caller has checked the roles are the
    /// owner's.
    async fn create_api_key(&self, new: NewApiKey, ctx: &AuditContext) -> Result<ApiKeyRecord>;

    /// API keys, of one user or of everyone, by creation.
    async fn api_keys(&self, user: Option<Uuid>) -> Result<Vec<ApiKeyRecord>>;

    /// Deletes a key (`NotFound`, also when `owner` is given and is not
    /// its owner) and records `api_key.revoked`. Returns what was deleted.
    async fn revoke_api_key(
        &self,
        id: Uuid,
        owner: Option<Uuid>,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<ApiKeyRecord>;

    /// Keys with what decides their use, of one user or of everyone.
    async fn api_key_grants(&self, user: Option<Uuid>) -> Result<Vec<ApiKeyGrant>>;
}

/// The keys a gateway may accept at `now` (of one user, or all): the store
/// reads, core's rule decides.
pub async fn usable_api_keys(
    store: &dyn Store,
    user: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<Vec<UsableApiKey>> {
    Ok(store
        .api_key_grants(user)
        .await?
        .into_iter()
        .filter_map(|g| {
            let roles =
                credential::key_grants(&g.key.roles, &g.owner_roles, g.owner_banned, g.key.expires_at, now)?;
            Some(UsableApiKey {
                id: g.key.id,
                user_id: g.key.user_id,
                prefix: g.key.prefix,
                hash: g.hash,
                roles,
                expires_at: g.key.expires_at,
            })
        })
        .collect())
}

/// Walks the whole audit chain in pages. `Ok(Ok((count, head_hash)))` when
/// intact; `Ok(Err(break))` names the first record that was edited, deleted,
/// reordered or left unreadable. `Err` only when the database cannot be read.
pub async fn verify_audit_chain(store: &dyn Store) -> Result<Result<(i64, [u8; 32]), audit::ChainBreak>> {
    const PAGE: u32 = 1_000;
    let mut verifier = audit::ChainVerifier::default();
    let mut after = 0;
    loop {
        let page = store.stored_audit_records(after, PAGE).await?;
        for record in &page {
            if let Err(chain_break) = verifier.push(record) {
                return Ok(Err(chain_break));
            }
        }
        // Every row of a full page verified, so its seqs are readable.
        match page.last().and_then(|last| last.seq.as_ref().ok()) {
            Some(&last) if page.len() == PAGE as usize => after = last,
            _ => return Ok(Ok((verifier.count(), verifier.head()))),
        }
    }
}

/// The sessions among `revocations` (what a whole-user revocation audits).
pub(crate) fn revoked_sessions(revocations: &[Revocation]) -> Vec<Uuid> {
    revocations.iter().filter(|r| r.kind == RevocationKind::Session).map(|r| r.id).collect()
}

/// Stored rows as records; the first that does not parse is an error.
pub(crate) fn parse_records(rows: &[StoredRecord]) -> Result<Vec<AuditRecord>> {
    rows.iter()
        .map(|r| {
            r.to_record().map_err(|reason| {
                StoreError::Database(format!(
                    "audit record {} is not readable ({reason}); run `bouncer audit verify`",
                    r.id
                ))
            })
        })
        .collect()
}

/// `LIKE` pattern matching values that start with `prefix` literally, with
/// backslash escapes (PostgreSQL's default; the SQLite query says `ESCAPE`).
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Opens the store a database URL names. Does not migrate.
pub async fn open(url: &str, max_connections: usize) -> Result<Arc<dyn Store>> {
    match DatabaseUrl::parse(url).map_err(StoreError::Database)? {
        DatabaseUrl::Sqlite(path) => Ok(Arc::new(sqlite::SqliteStore::open(&path).await?)),
        DatabaseUrl::Postgres(url) => Ok(Arc::new(postgres::PgStore::connect(&url, max_connections)?)),
    }
}
