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
use bouncer_core::{config::DatabaseUrl, throttle::FailureWindow, token::TokenHash};
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

    /// Creates a user with `roles`. `EmailTaken` when the case-folded email
    /// exists; `UnknownRole` when a role does not.
    async fn create_user(&self, new: NewUser) -> Result<User>;

    async fn user(&self, id: Uuid) -> Result<Option<User>>;

    /// The user and password hash for a login, by case-folded email.
    async fn credential_by_email(&self, email_key: &str) -> Result<Option<Credential>>;

    async fn credential(&self, id: Uuid) -> Result<Option<Credential>>;

    /// Replaces the stored hash `old` by `new` without touching sessions
    /// (rehash on login). Conditional, so a password changed meanwhile is
    /// never overwritten with a rehash of the old one; `false` when it was.
    async fn replace_password_hash(&self, id: Uuid, old: &str, new: &str) -> Result<bool>;

    /// Stores a new password hash and revokes every live session of the user
    /// except `keep_session`. Returns the ids of the sessions revoked.
    async fn change_password(
        &self,
        id: Uuid,
        hash: &str,
        keep_session: Option<Uuid>,
        now: OffsetDateTime,
    ) -> Result<Vec<Uuid>>;

    /// Stores a session and its first refresh token together.
    async fn create_session(&self, new: NewSession) -> Result<()>;

    /// The session and its user, for checking a bearer token's `sid`.
    async fn session(&self, id: Uuid) -> Result<Option<(Session, User)>>;

    /// Exchanges `presented` for `next` in one atomic conditional update:
    /// of two concurrent calls with the same token exactly one can rotate.
    /// A token that was already rotated revokes its whole session.
    async fn rotate_refresh_token(
        &self,
        presented: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Rotation>;

    /// Revokes the session `presented` belongs to (logout). Returns its id,
    /// or `None` when the token is unknown. Idempotent.
    async fn revoke_session_by_token(
        &self,
        presented: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Uuid>>;

    /// Revokes every live session of the user and sets its revoked-before
    /// time to `now` (logout-all). Returns the session ids revoked.
    async fn revoke_all_sessions(&self, user_id: Uuid, now: OffsetDateTime) -> Result<Vec<Uuid>>;

    /// Records one failed login under each key and forgets failures older
    /// than `forget_before` (for every key, bounding the table).
    async fn record_login_failure(
        &self,
        keys: &[String],
        now: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> Result<()>;

    /// Failures of each of `keys` at or after `since`, in the order given
    /// (one round trip for the account and IP keys of a login).
    async fn login_failures(&self, keys: &[String], since: OffsetDateTime) -> Result<Vec<FailureWindow>>;

    /// Forgets the failures of `key` (after a successful login).
    async fn clear_login_failures(&self, key: &str) -> Result<()>;

    /// All roles, by name.
    async fn roles(&self) -> Result<Vec<Role>>;
}

/// Opens the store a database URL names. Does not migrate.
pub async fn open(url: &str, max_connections: usize) -> Result<Arc<dyn Store>> {
    match DatabaseUrl::parse(url).map_err(StoreError::Database)? {
        DatabaseUrl::Sqlite(path) => Ok(Arc::new(sqlite::SqliteStore::open(&path).await?)),
        DatabaseUrl::Postgres(url) => Ok(Arc::new(postgres::PgStore::connect(&url, max_connections)?)),
    }
}
