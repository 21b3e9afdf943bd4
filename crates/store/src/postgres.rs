//! The PostgreSQL store (production): deadpool-postgres over tokio-postgres.

use std::time::Duration;

use async_trait::async_trait;
use bouncer_core::{
    audit::{self, AuditContext, AuditEvent, AuditRecord, Audited, StoredContent, StoredRecord},
    revocation::{Revocation, RevocationKind, RevokeReason},
    role,
    throttle::{self, AttemptEnd, FailureWindow, ThrottleDecision},
    token::{self, Presented, RefreshOutcome, TokenHash},
};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use time::OffsetDateTime;
use tokio_postgres::{NoTls, Row, error::SqlState};
use uuid::Uuid;

use crate::{
    ApiKeyGrant, ApiKeyRecord, AuditFilter, Client, ClientCredential, Credential, LoginAttempt, Migration,
    MigrationReport, NewApiKey, NewClient, NewSession, NewUser, Result, Role, Rotation, Session, Store,
    StoreError, User, UserFilter, migrate,
};

/// How long a request waits for a connection, or to open one, before the
/// store reports the database unavailable (503) instead of hanging.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Key of the advisory lock that serialises concurrent migration runs
/// (several admin replicas starting at once). ASCII "bouncer!".
const MIGRATION_LOCK: i64 = 0x626f_756e_6365_7221;

/// Appends `events` to the chain inside `tx`.
///
/// The one-row `audit_head` table is the chain's lock and its head at once:
/// `UPDATE … RETURNING` waits for any other appender to commit and then
/// returns the head that appender wrote (READ COMMITTED re-reads the locked
/// row), in a single round trip. Taken as the last step of a transaction,
/// after its other row locks, so it is held only for the append itself.
async fn append<C: GenericClient>(tx: &C, events: &[AuditEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let lock = tx
        .prepare_cached("UPDATE audit_head SET seq = seq WHERE only_row RETURNING seq, hash")
        .await
        .map_err(pg_err)?;
    let head = tx.query_one(&lock, &[]).await.map_err(pg_err)?;
    let mut prev = (head.get::<_, i64>(0), hash32(head.get(1))?);
    let insert = tx
        .prepare_cached(
            "WITH e AS (
                 INSERT INTO audit_events (seq, id, at, actor, action, subject, ip, user_agent, request_id, outcome, details, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13))
             UPDATE audit_head SET seq = $1, hash = $13 WHERE only_row",
        )
        .await
        .map_err(pg_err)?;
    for event in events {
        // seq 0 is the empty chain: the first record links to GENESIS.
        let r = audit::link((prev.0 > 0).then_some(prev), event.clone());
        let e = &r.event;
        tx.execute(
            &insert,
            &[
                &r.seq,
                &e.id,
                &e.at,
                &e.actor,
                &e.action.as_str(),
                &e.subject,
                &e.ip,
                &e.user_agent,
                &e.request_id,
                &e.outcome.as_str(),
                &e.details,
                &&r.prev_hash[..],
                &&r.hash[..],
            ],
        )
        .await
        .map_err(pg_err)?;
        prev = (r.seq, r.hash);
    }
    Ok(())
}

/// A row the transaction itself just found is gone: a bug, not a client error.
fn missing(what: &str) -> StoreError {
    StoreError::Database(format!("{what} vanished inside its own transaction"))
}

fn hash32(bytes: Vec<u8>) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| StoreError::Database("audit hash is not 32 bytes".into()))
}

/// An audit row as stored. PostgreSQL enforces every column's type, so
/// only the content can be nonsense, which the verifier judges.
fn stored_record(row: &Row) -> StoredRecord {
    let at: OffsetDateTime = row.get("at");
    StoredRecord {
        seq: Ok(row.get("seq")),
        id: row.get::<_, Uuid>("id").to_string(),
        content: Ok(StoredContent {
            at_us: (at.unix_timestamp_nanos() / 1_000) as i64,
            actor: row.get("actor"),
            action: row.get("action"),
            subject: row.get("subject"),
            ip: row.get("ip"),
            user_agent: row.get("user_agent"),
            request_id: row.get("request_id"),
            outcome: row.get("outcome"),
            details: row.get("details"),
            prev_hash: row.get("prev_hash"),
            hash: row.get("hash"),
        }),
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl PgStore {
    /// Builds the pool; connections open lazily, so this succeeds while the
    /// database is down and the first call reports `Unavailable`.
    pub fn connect(url: &str, max_connections: usize) -> Result<Self> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Database(format!("invalid PostgreSQL URL: {e}")))?;
        config.connect_timeout(POOL_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("bouncer-admin");
        }
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Database(format!("cannot build connection pool: {e}")))?;
        Ok(Self { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Applies `migrations` (the real list, or a test's) to this database.
    pub async fn migrate_with(&self, migrations: &[Migration]) -> Result<MigrationReport> {
        let mut client = self.client().await?;
        // Session-level lock, taken first: a second replica waits here, then
        // finds nothing pending (CREATE TABLE IF NOT EXISTS is not safe to race).
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_err)?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (
                         version    integer PRIMARY KEY,
                         name       text NOT NULL,
                         checksum   text NOT NULL,
                         applied_at timestamptz NOT NULL DEFAULT now())",
                )
                .await
                .map_err(pg_err)?;
            apply_pending(&mut client, migrations).await
        }
        .await;
        let unlock = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
        let report = result?;
        unlock.map_err(pg_err)?;
        Ok(report)
    }
}

async fn apply_pending(
    client: &mut deadpool_postgres::Object,
    migrations: &[Migration],
) -> Result<MigrationReport> {
    let recorded: Vec<(u32, String)> = client
        .query("SELECT version, checksum FROM schema_migrations ORDER BY version", &[])
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
        .collect();
    let mut current = recorded.iter().map(|(v, _)| *v).max().unwrap_or(0);
    let mut applied = Vec::new();
    for m in migrate::pending(migrations, &recorded)? {
        let failed = |e: tokio_postgres::Error| StoreError::MigrationFailed {
            version: m.version,
            name: m.name.to_owned(),
            reason: describe(&e),
        };
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.batch_execute(m.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&(m.version as i32), &m.name, &m.checksum()],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        applied.push(m.version);
        current = current.max(m.version);
    }
    Ok(MigrationReport { applied, current })
}

/// Maps a driver error: lost connections are `Unavailable` (503), unique
/// and foreign-key violations become domain errors, the rest `Database`.
fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION && db.constraint() == Some("users_email_key_unique") {
            return StoreError::EmailTaken;
        }
        if *code == SqlState::UNIQUE_VIOLATION && db.constraint() == Some("roles_pkey") {
            return StoreError::RoleExists;
        }
        // Connection trouble, failover (a read-only standby, a crash
        // shutdown) and transient conflicts: retrying later can succeed.
        let unavailable = code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::READ_ONLY_SQL_TRANSACTION,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::QUERY_CANCELED,
            ]
            .contains(code);
        if unavailable {
            return StoreError::Unavailable(describe(&e));
        }
        return StoreError::Database(describe(&e));
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        StoreError::Unavailable(describe(&e))
    } else {
        StoreError::Database(describe(&e))
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}

const USER_COLUMNS: &str = "u.id, u.email, u.created_at, u.revoked_before, u.banned_at, u.ban_reason, u.password_hash,
    COALESCE((SELECT array_agg(r.role ORDER BY r.role COLLATE \"C\") FROM user_roles r WHERE r.user_id = u.id), '{}') AS roles";

fn user_from(row: &Row) -> User {
    User {
        id: row.get("id"),
        email: row.get("email"),
        roles: row.get("roles"),
        created_at: row.get("created_at"),
        revoked_before: row.get("revoked_before"),
        banned_at: row.get("banned_at"),
        ban_reason: row.get("ban_reason"),
    }
}

/// Stores revocation records inside the caller's transaction.
async fn record_revocations<C: GenericClient>(tx: &C, revocations: &[Revocation]) -> Result<()> {
    if revocations.is_empty() {
        return Ok(());
    }
    let insert = tx
        .prepare_cached("INSERT INTO revocations (kind, id, user_id, at, reason) VALUES ($1, $2, $3, $4, $5)")
        .await
        .map_err(pg_err)?;
    for r in revocations {
        tx.execute(&insert, &[&r.kind.as_str(), &r.id, &r.user_id, &r.at, &r.reason.as_str()])
            .await
            .map_err(pg_err)?;
    }
    Ok(())
}

/// Revokes every live session of `user_id` and its older tokens, for
/// `reason`; records and returns the revocations.
async fn revoke_user<C: GenericClient>(
    tx: &C,
    user_id: Uuid,
    now: OffsetDateTime,
    reason: RevokeReason,
) -> Result<Vec<Revocation>> {
    tx.execute("UPDATE users SET revoked_before = $2 WHERE id = $1", &[&user_id, &now])
        .await
        .map_err(pg_err)?;
    let sessions: Vec<Uuid> = tx
        .query(
            "UPDATE sessions SET revoked_at = $2, revoke_reason = $3
              WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 RETURNING id",
            &[&user_id, &now, &reason.as_str()],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let revocations = Revocation::of_user(user_id, &sessions, now, reason);
    record_revocations(tx, &revocations).await?;
    Ok(revocations)
}

/// The user row locked for update, or `NotFound`.
async fn lock_user<C: GenericClient>(tx: &C, user_id: Uuid) -> Result<User> {
    let row = tx
        .query_opt(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1 FOR UPDATE"), &[&user_id])
        .await
        .map_err(pg_err)?;
    row.as_ref().map(user_from).ok_or(StoreError::NotFound)
}

async fn reload_user<C: GenericClient>(tx: &C, user_id: Uuid) -> Result<User> {
    let row = tx
        .query_one(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"), &[&user_id])
        .await
        .map_err(pg_err)?;
    Ok(user_from(&row))
}

fn credential_from(row: &Row) -> Credential {
    Credential { user: user_from(row), password_hash: row.get("password_hash") }
}

fn session_from(row: &Row) -> Session {
    Session {
        id: row.get("session_id"),
        user_id: row.get("id"),
        created_at: row.get("session_created_at"),
        expires_at: row.get("expires_at"),
        revoked_at: row.get("revoked_at"),
    }
}

async fn session_with_user<C: GenericClient>(client: &C, id: Uuid) -> Result<Option<(Session, User)>> {
    let sql = format!(
        "SELECT {USER_COLUMNS}, s.id AS session_id, s.created_at AS session_created_at, s.expires_at, s.revoked_at
           FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1"
    );
    let stmt = client.prepare_cached(&sql).await.map_err(pg_err)?;
    let row = client.query_opt(&stmt, &[&id]).await.map_err(pg_err)?;
    Ok(row.map(|r| (session_from(&r), user_from(&r))))
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<MigrationReport> {
        self.migrate_with(migrate::POSTGRES).await
    }

    async fn pending_migrations(&self) -> Result<Vec<u32>> {
        let client = self.client().await?;
        let exists: bool = client
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await
            .map_err(pg_err)?
            .get(0);
        let recorded: Vec<(u32, String)> = if exists {
            client
                .query("SELECT version, checksum FROM schema_migrations ORDER BY version", &[])
                .await
                .map_err(pg_err)?
                .iter()
                .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(migrate::pending(migrate::POSTGRES, &recorded)?.iter().map(|m| m.version).collect())
    }

    async fn ping(&self) -> Result<()> {
        self.client().await?.simple_query("SELECT 1").await.map_err(pg_err)?;
        Ok(())
    }

    async fn create_user(&self, new: NewUser, ctx: &AuditContext) -> Result<User> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        check_roles(&tx, &new.roles).await?;
        tx.execute(
            "INSERT INTO users (id, email, email_key, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&new.id, &new.email.as_str(), &new.email.key(), &new.password_hash, &new.now],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO user_roles (user_id, role) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            &[&new.id, &new.roles],
        )
        .await
        .map_err(pg_err)?;
        let row = tx
            .query_one(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"), &[&new.id])
            .await
            .map_err(pg_err)?;
        append(&tx, &[new.audited().event(ctx, new.now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(user_from(&row))
    }

    async fn user(&self, id: Uuid) -> Result<Option<User>> {
        Ok(self.credential(id).await?.map(|c| c.user))
    }

    async fn credential_by_email(&self, email_key: &str) -> Result<Option<Credential>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.email_key = $1"))
            .await
            .map_err(pg_err)?;
        Ok(client.query_opt(&stmt, &[&email_key]).await.map_err(pg_err)?.as_ref().map(credential_from))
    }

    async fn credential(&self, id: Uuid) -> Result<Option<Credential>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"))
            .await
            .map_err(pg_err)?;
        Ok(client.query_opt(&stmt, &[&id]).await.map_err(pg_err)?.as_ref().map(credential_from))
    }

    async fn replace_password_hash(&self, id: Uuid, old: &str, new: &str) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                &[&id, &old, &new],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    async fn change_password(
        &self,
        id: Uuid,
        hash: &str,
        keep_session: Option<Uuid>,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("UPDATE users SET password_hash = $2 WHERE id = $1", &[&id, &hash])
            .await
            .map_err(pg_err)?;
        let reason = RevokeReason::PasswordChanged;
        let sessions: Vec<Uuid> = tx
            .query(
                "UPDATE sessions SET revoked_at = $3, revoke_reason = $4
                  WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2 RETURNING id",
                &[&id, &keep_session, &now, &reason.as_str()],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let revoked: Vec<Revocation> =
            sessions.iter().map(|&s| Revocation::session(s, id, now, reason)).collect();
        record_revocations(&tx, &revoked).await?;
        let audited = Audited::PasswordChanged { user: id, revoked_sessions: &sessions };
        append(&tx, &[audited.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(revoked)
    }

    async fn create_session(&self, new: NewSession, ctx: &AuditContext) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let stmt = tx
            .prepare_cached(
                "WITH s AS (INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4))
                 INSERT INTO refresh_tokens (hash, session_id, issued_at) VALUES ($5, $1, $3)",
            )
            .await
            .map_err(pg_err)?;
        tx.execute(&stmt, &[&new.id, &new.user_id, &new.now, &new.expires_at, &&new.refresh_token.0[..]])
            .await
            .map_err(pg_err)?;
        if let Some(attempt) = &new.attempt {
            // The right password: the reserved rows were no failure, and the
            // account starts afresh. (The IP's other failures stay.)
            let settle = tx
                .prepare_cached("DELETE FROM login_failures WHERE attempt = $1 OR key = $2")
                .await
                .map_err(pg_err)?;
            tx.execute(&settle, &[&attempt.id, &attempt.account_key]).await.map_err(pg_err)?;
        }
        let audited = Audited::LoginSucceeded { user: new.user_id, session: new.id };
        append(&tx, &[audited.event(ctx, new.now)]).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn session(&self, id: Uuid) -> Result<Option<(Session, User)>> {
        session_with_user(&self.client().await?, id).await
    }

    async fn rotate_refresh_token(
        &self,
        presented: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Rotation> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // The conditional update is the race arbiter: the row lock makes a
        // concurrent second caller wait, then see rotated_at set and match nothing.
        let spend = tx
            .prepare_cached(
                "UPDATE refresh_tokens SET rotated_at = $2 WHERE hash = $1 AND rotated_at IS NULL RETURNING session_id",
            )
            .await
            .map_err(pg_err)?;
        let spent = tx.query_opt(&spend, &[&&presented.0[..], &now]).await.map_err(pg_err)?;
        let (mut found, mut replayed) = (None, None);
        let presented_now = match spent {
            Some(row) => {
                found = session_with_user(&tx, row.get(0)).await?;
                let (session_live, user_banned) =
                    found.as_ref().map_or((false, false), |(s, u)| (s.is_live(now), u.is_banned()));
                Presented::Spent { session_live, user_banned }
            }
            None => {
                let seen = tx
                    .query_opt("SELECT session_id FROM refresh_tokens WHERE hash = $1", &[&&presented.0[..]])
                    .await
                    .map_err(pg_err)?;
                replayed = seen.map(|row| row.get::<_, Uuid>(0));
                if replayed.is_some() { Presented::AlreadyRotated } else { Presented::Unknown }
            }
        };
        match token::refresh_outcome(presented_now) {
            // Dropping the transaction rolls a spend back: nothing changes.
            RefreshOutcome::Invalid => Ok(Rotation::Invalid),
            RefreshOutcome::RevokeSession => {
                let session_id = replayed.ok_or_else(|| missing("the replayed token's session"))?;
                let reason = RevokeReason::ReuseDetected;
                let user_id: Uuid = tx
                    .query_one(
                        "UPDATE sessions SET revoked_at = COALESCE(revoked_at, $2),
                                revoke_reason = COALESCE(revoke_reason, $3)
                          WHERE id = $1 RETURNING user_id",
                        &[&session_id, &now, &reason.as_str()],
                    )
                    .await
                    .map_err(pg_err)?
                    .get(0);
                let revocation = Revocation::session(session_id, user_id, now, reason);
                record_revocations(&tx, std::slice::from_ref(&revocation)).await?;
                let audited = Audited::RefreshReuseDetected { user: user_id, session: session_id };
                append(&tx, &[audited.event(ctx, now)]).await?;
                tx.commit().await.map_err(pg_err)?;
                Ok(Rotation::Reused { session_id, user_id, revocation })
            }
            RefreshOutcome::Rotate => {
                let (session, user) = found.ok_or_else(|| missing("the spent token's session"))?;
                let insert = tx
                    .prepare_cached(
                        "INSERT INTO refresh_tokens (hash, session_id, issued_at) VALUES ($1, $2, $3)",
                    )
                    .await
                    .map_err(pg_err)?;
                tx.execute(&insert, &[&&next.0[..], &session.id, &now]).await.map_err(pg_err)?;
                let audited = Audited::Refreshed { user: user.id, session: session.id };
                append(&tx, &[audited.event(ctx, now)]).await?;
                tx.commit().await.map_err(pg_err)?;
                Ok(Rotation::Rotated { session, user })
            }
        }
    }

    async fn revoke_session_by_token(
        &self,
        presented: TokenHash,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Option<Revocation>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let row = tx
            .query_opt(
                "UPDATE sessions s SET revoked_at = COALESCE(s.revoked_at, $2),
                        revoke_reason = COALESCE(s.revoke_reason, $3)
                   FROM refresh_tokens t WHERE t.hash = $1 AND s.id = t.session_id RETURNING s.id, s.user_id",
                &[&&presented.0[..], &now, &RevokeReason::Logout.as_str()],
            )
            .await
            .map_err(pg_err)?;
        let Some(row) = row else { return Ok(None) };
        let (session_id, user_id): (Uuid, Uuid) = (row.get(0), row.get(1));
        let revocation = Revocation::session(session_id, user_id, now, RevokeReason::Logout);
        record_revocations(&tx, std::slice::from_ref(&revocation)).await?;
        let audited = Audited::LoggedOut { user: user_id, session: session_id };
        append(&tx, &[audited.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Some(revocation))
    }

    async fn revoke_all_sessions(
        &self,
        user_id: Uuid,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let revocations = revoke_user(&tx, user_id, now, RevokeReason::LogoutAll).await?;
        let sessions = crate::revoked_sessions(&revocations);
        let audited = Audited::LoggedOutEverywhere { user: user_id, revoked_sessions: &sessions };
        append(&tx, &[audited.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(revocations)
    }

    async fn begin_login_attempt(&self, attempt: &LoginAttempt) -> Result<ThrottleDecision> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let since = attempt.now - attempt.window;
        let mut keys: Vec<&str> = attempt.keys.iter().map(|(k, _)| k.as_str()).collect();
        // Locks in a fixed order so two attempts sharing keys cannot deadlock.
        keys.sort_unstable();
        for key in &keys {
            tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[key])
                .await
                .map_err(pg_err)?;
        }
        let times = tx
            .prepare_cached("SELECT at FROM login_failures WHERE key = $1 AND at > $2 ORDER BY at")
            .await
            .map_err(pg_err)?;
        let mut seen = Vec::with_capacity(attempt.keys.len());
        for (key, max) in &attempt.keys {
            let at: Vec<OffsetDateTime> =
                tx.query(&times, &[key, &since]).await.map_err(pg_err)?.iter().map(|r| r.get(0)).collect();
            seen.push((FailureWindow::of(&at, *max), *max));
        }
        let decision = throttle::decide_all(seen, attempt.window, attempt.now);
        if decision == ThrottleDecision::Allow {
            let keys: Vec<&str> = attempt.keys.iter().map(|(k, _)| k.as_str()).collect();
            tx.execute(
                "INSERT INTO login_failures (key, at, attempt) SELECT unnest($1::text[]), $2, $3",
                &[&keys, &attempt.now, &attempt.id],
            )
            .await
            .map_err(pg_err)?;
            tx.execute("DELETE FROM login_failures WHERE at < $1", &[&since]).await.map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(decision)
    }

    async fn finish_login_attempt(
        &self,
        attempt: Uuid,
        end: AttemptEnd<'_>,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        if end.forgiven() {
            tx.execute("DELETE FROM login_failures WHERE attempt = $1", &[&attempt]).await.map_err(pg_err)?;
        }
        let event = end.audited().map(|a| a.event(ctx, now));
        append(&tx, event.as_slice()).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        append(&tx, events).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn append_audit_once(&self, events: &[AuditEvent]) -> Result<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Under the head lock, so two replicas cannot both decide "new".
        tx.execute("SELECT 1 FROM audit_head WHERE only_row FOR UPDATE", &[]).await.map_err(pg_err)?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let present: std::collections::HashSet<Uuid> = tx
            .query("SELECT id FROM audit_events WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let fresh: Vec<AuditEvent> = events.iter().filter(|e| !present.contains(&e.id)).cloned().collect();
        append(&tx, &fresh).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(fresh.len())
    }

    async fn stored_audit_records(&self, after: i64, limit: u32) -> Result<Vec<StoredRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, id, at, actor, action, subject, ip, user_agent, request_id, outcome, details, prev_hash, hash
                   FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &i64::from(limit)],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(stored_record).collect())
    }

    async fn create_role(&self, role: &Role, now: OffsetDateTime, ctx: &AuditContext) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO roles (name, description, builtin) VALUES ($1, $2, false)",
            &[&role.name, &role.description],
        )
        .await
        .map_err(pg_err)?;
        let audited = Audited::RoleCreated { name: &role.name, description: &role.description };
        append(&tx, &[audited.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn delete_role(
        &self,
        name: &str,
        force: bool,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let role = tx
            .query_opt("SELECT builtin FROM roles WHERE name = $1 FOR UPDATE", &[&name])
            .await
            .map_err(pg_err)?
            .ok_or(StoreError::NotFound)?;
        if role.get::<_, bool>(0) {
            return Err(StoreError::BuiltinRole);
        }
        let holders: Vec<Uuid> = tx
            .query(
                "SELECT user_id FROM user_roles WHERE role = $1
                 UNION SELECT client_id FROM client_roles WHERE role = $1 ORDER BY 1",
                &[&name],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !holders.is_empty() && !force {
            return Err(StoreError::RoleInUse(holders.len() as u64));
        }
        let mut revocations = Vec::new();
        for user_id in &holders {
            revocations.extend(revoke_user(&tx, *user_id, now, RevokeReason::RoleDeleted).await?);
        }
        // ON DELETE CASCADE removes the role from its holders.
        tx.execute("DELETE FROM roles WHERE name = $1", &[&name]).await.map_err(pg_err)?;
        let audited = Audited::RoleDeleted { name, force, holders: &holders };
        append(&tx, &[audited.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(revocations)
    }

    async fn list_users(&self, filter: &UserFilter) -> Result<Vec<User>> {
        let client = self.client().await?;
        let pattern = filter.email_prefix.as_deref().map(crate::like_prefix);
        let rows = client
            .query(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users u
                      WHERE ($1::text IS NULL OR u.email_key LIKE $1)
                        AND ($2::uuid IS NULL OR u.id > $2)
                      ORDER BY u.id LIMIT $3"
                ),
                &[&pattern, &filter.after, &i64::from(filter.limit)],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(user_from).collect())
    }

    async fn set_roles(
        &self,
        user_id: Uuid,
        roles: &[String],
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<(User, Vec<Revocation>)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let before = lock_user(&tx, user_id).await?;
        check_roles(&tx, roles).await?;
        tx.execute("DELETE FROM user_roles WHERE user_id = $1", &[&user_id]).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO user_roles (user_id, role) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            &[&user_id, &roles],
        )
        .await
        .map_err(pg_err)?;
        let after = reload_user(&tx, user_id).await?;
        let revocations = if role::change_revokes(&before.roles, &after.roles) {
            revoke_user(&tx, user_id, now, RevokeReason::RolesRemoved).await?
        } else {
            Vec::new()
        };
        let audited = Audited::RolesChanged { user: user_id, before: &before.roles, after: &after.roles };
        append(&tx, &[audited.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok((after, revocations))
    }

    async fn ban_user(
        &self,
        user_id: Uuid,
        reason: &str,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<(User, Vec<Revocation>)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        if lock_user(&tx, user_id).await?.is_banned() {
            return Err(StoreError::AlreadyBanned);
        }
        tx.execute(
            "UPDATE users SET banned_at = $2, ban_reason = $3 WHERE id = $1",
            &[&user_id, &now, &reason],
        )
        .await
        .map_err(pg_err)?;
        let revocations = revoke_user(&tx, user_id, now, RevokeReason::Banned).await?;
        let user = reload_user(&tx, user_id).await?;
        append(&tx, &[Audited::UserBanned { user: user_id, reason }.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok((user, revocations))
    }

    async fn unban_user(&self, user_id: Uuid, now: OffsetDateTime, ctx: &AuditContext) -> Result<User> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let was_banned = lock_user(&tx, user_id).await?.is_banned();
        tx.execute("UPDATE users SET banned_at = NULL, ban_reason = NULL WHERE id = $1", &[&user_id])
            .await
            .map_err(pg_err)?;
        let user = reload_user(&tx, user_id).await?;
        append(&tx, &[Audited::UserUnbanned { user: user_id, was_banned }.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(user)
    }

    async fn delete_user(
        &self,
        user_id: Uuid,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let user = lock_user(&tx, user_id).await?;
        let revocations = revoke_user(&tx, user_id, now, RevokeReason::Deleted).await?;
        tx.execute("DELETE FROM users WHERE id = $1", &[&user_id]).await.map_err(pg_err)?;
        let audited = Audited::UserDeleted { user: user_id, email: &user.email, roles: &user.roles };
        append(&tx, &[audited.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(revocations)
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, id, at, actor, action, subject, ip, user_agent, request_id, outcome, details, prev_hash, hash
                   FROM audit_events
                  WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR subject = $2)
                    AND ($3::text IS NULL OR action = $3) AND ($4::timestamptz IS NULL OR at >= $4)
                    AND ($5::timestamptz IS NULL OR at < $5) AND ($6::bigint IS NULL OR seq < $6)
                  ORDER BY seq DESC LIMIT $7",
                &[
                    &filter.actor,
                    &filter.subject,
                    &filter.action,
                    &filter.since,
                    &filter.until,
                    &filter.before_seq,
                    &i64::from(filter.limit),
                ],
            )
            .await
            .map_err(pg_err)?;
        crate::parse_records(&rows.iter().map(stored_record).collect::<Vec<_>>())
    }

    async fn revocations_since(&self, since: OffsetDateTime) -> Result<Vec<Revocation>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT kind, id, user_id, at, reason FROM revocations WHERE at > $1 ORDER BY at",
                &[&since],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                let kind: String = r.get(0);
                Ok(Revocation {
                    kind: RevocationKind::parse(&kind)
                        .ok_or_else(|| StoreError::Database(format!("unknown revocation kind {kind:?}")))?,
                    id: r.get(1),
                    user_id: r.get(2),
                    at: r.get(3),
                    reason: RevokeReason::parse(r.get(4)),
                })
            })
            .collect()
    }

    async fn roles(&self) -> Result<Vec<Role>> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT name, description, builtin FROM roles ORDER BY name", &[])
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(|r| Role { name: r.get(0), description: r.get(1), builtin: r.get(2) }).collect())
    }

    async fn create_client(&self, new: NewClient, ctx: &AuditContext) -> Result<Client> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        check_roles(&tx, &new.roles).await?;
        tx.execute(
            "INSERT INTO clients (id, name, created_at) VALUES ($1, $2, $3)",
            &[&new.id, &new.name, &new.now],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO client_roles (client_id, role) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            &[&new.id, &new.roles],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO client_secrets (hash, client_id, created_at) VALUES ($1, $2, $3)",
            &[&&new.secret.0[..], &new.id, &new.now],
        )
        .await
        .map_err(pg_err)?;
        let created = load_client(&tx, new.id).await?.ok_or_else(|| missing("the new client"))?;
        let audited = Audited::ClientCreated { client: new.id, name: &created.name, roles: &created.roles };
        append(&tx, &[audited.event(ctx, new.now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(created)
    }

    async fn clients(&self) -> Result<Vec<Client>> {
        let client = self.client().await?;
        let rows = client
            .query(&format!("SELECT {CLIENT_COLUMNS} FROM clients c ORDER BY c.created_at, c.id"), &[])
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(client_from).collect())
    }

    async fn client(&self, id: Uuid) -> Result<Option<Client>> {
        load_client(&self.client().await?, id).await
    }

    async fn client_credential(&self, id: Uuid, now: OffsetDateTime) -> Result<Option<ClientCredential>> {
        let db = self.client().await?;
        let Some(client) = load_client(&db, id).await? else { return Ok(None) };
        let secrets = db
            .query(
                "SELECT hash FROM client_secrets WHERE client_id = $1 AND (expires_at IS NULL OR expires_at > $2)",
                &[&id, &now],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| hash32(r.get(0)).map(TokenHash))
            .collect::<Result<_>>()?;
        Ok(Some(ClientCredential { client, secrets }))
    }

    async fn rotate_client_secret(
        &self,
        id: Uuid,
        secret: TokenHash,
        overlap_until: OffsetDateTime,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Client> {
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(pg_err)?;
        let found =
            tx.query_opt("SELECT id FROM clients WHERE id = $1 FOR UPDATE", &[&id]).await.map_err(pg_err)?;
        if found.is_none() {
            return Err(StoreError::NotFound);
        }
        tx.execute(
            "UPDATE client_secrets SET expires_at = LEAST(COALESCE(expires_at, $2), $2) WHERE client_id = $1",
            &[&id, &overlap_until],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO client_secrets (hash, client_id, created_at) VALUES ($1, $2, $3)",
            &[&&secret.0[..], &id, &now],
        )
        .await
        .map_err(pg_err)?;
        let client = load_client(&tx, id).await?.ok_or_else(|| missing("the client"))?;
        append(&tx, &[Audited::ClientSecretRotated { client: id, overlap_until }.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(client)
    }

    async fn delete_client(
        &self,
        id: Uuid,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>> {
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(pg_err)?;
        let name: String = tx
            .query_opt("DELETE FROM clients WHERE id = $1 RETURNING name", &[&id])
            .await
            .map_err(pg_err)?
            .ok_or(StoreError::NotFound)?
            .get(0);
        let revocations = vec![Revocation::of_client(id, now, RevokeReason::ClientDeleted)];
        record_revocations(&tx, &revocations).await?;
        append(&tx, &[Audited::ClientDeleted { client: id, name: &name }.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(revocations)
    }

    async fn create_api_key(&self, new: NewApiKey, ctx: &AuditContext) -> Result<ApiKeyRecord> {
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(pg_err)?;
        lock_user(&tx, new.user_id).await?;
        check_roles(&tx, &new.roles).await?;
        tx.execute(
            "INSERT INTO api_keys (id, user_id, name, prefix, hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&new.id, &new.user_id, &new.name, &new.prefix, &&new.hash.0[..], &new.now, &new.expires_at],
        )
        .await
        .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO api_key_roles (key_id, role) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            &[&new.id, &new.roles],
        )
        .await
        .map_err(pg_err)?;
        let key =
            load_api_keys(&tx, "k.id = $1", &new.id).await?.pop().ok_or_else(|| missing("the new key"))?;
        let audited = Audited::ApiKeyCreated {
            key: key.id,
            owner: key.user_id,
            name: &key.name,
            prefix: &key.prefix,
            roles: &key.roles,
            expires_at: key.expires_at,
        };
        append(&tx, &[audited.event(ctx, new.now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(key)
    }

    async fn api_keys(&self, user: Option<Uuid>) -> Result<Vec<ApiKeyRecord>> {
        let db = self.client().await?;
        load_api_keys(&db, "($1::uuid IS NULL OR k.user_id = $1)", &user).await
    }

    async fn revoke_api_key(
        &self,
        id: Uuid,
        owner: Option<Uuid>,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<ApiKeyRecord> {
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(pg_err)?;
        let key = load_api_keys(&tx, "k.id = $1", &id).await?.pop().ok_or(StoreError::NotFound)?;
        if owner.is_some_and(|o| o != key.user_id) {
            return Err(StoreError::NotFound);
        }
        tx.execute("DELETE FROM api_keys WHERE id = $1", &[&id]).await.map_err(pg_err)?;
        let audited = Audited::ApiKeyRevoked { key: key.id, owner: key.user_id, prefix: &key.prefix };
        append(&tx, &[audited.event(ctx, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(key)
    }

    async fn api_key_grants(&self, user: Option<Uuid>) -> Result<Vec<ApiKeyGrant>> {
        let db = self.client().await?;
        let rows = db
            .query(
                &format!(
                    "SELECT {API_KEY_COLUMNS}, k.hash, u.banned_at IS NOT NULL AS owner_banned,
                            COALESCE((SELECT array_agg(r.role ORDER BY r.role COLLATE \"C\") FROM user_roles r WHERE r.user_id = k.user_id), '{{}}') AS owner_roles
                       FROM api_keys k JOIN users u ON u.id = k.user_id
                      WHERE ($1::uuid IS NULL OR k.user_id = $1) ORDER BY k.created_at, k.id"
                ),
                &[&user],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(ApiKeyGrant {
                    key: api_key_from(r),
                    hash: TokenHash(hash32(r.get("hash"))?),
                    owner_roles: r.get("owner_roles"),
                    owner_banned: r.get("owner_banned"),
                })
            })
            .collect()
    }
}

const CLIENT_COLUMNS: &str = "c.id, c.name, c.created_at,
    COALESCE((SELECT array_agg(r.role ORDER BY r.role COLLATE \"C\") FROM client_roles r WHERE r.client_id = c.id), '{}') AS roles";

fn client_from(row: &Row) -> Client {
    Client {
        id: row.get("id"),
        name: row.get("name"),
        roles: row.get("roles"),
        created_at: row.get("created_at"),
    }
}

async fn load_client<C: GenericClient>(db: &C, id: Uuid) -> Result<Option<Client>> {
    let row = db
        .query_opt(&format!("SELECT {CLIENT_COLUMNS} FROM clients c WHERE c.id = $1"), &[&id])
        .await
        .map_err(pg_err)?;
    Ok(row.as_ref().map(client_from))
}

const API_KEY_COLUMNS: &str = "k.id, k.user_id, k.name, k.prefix, k.created_at, k.expires_at,
    COALESCE((SELECT array_agg(r.role ORDER BY r.role COLLATE \"C\") FROM api_key_roles r WHERE r.key_id = k.id), '{}') AS roles";

fn api_key_from(row: &Row) -> ApiKeyRecord {
    ApiKeyRecord {
        id: row.get("id"),
        user_id: row.get("user_id"),
        name: row.get("name"),
        prefix: row.get("prefix"),
        roles: row.get("roles"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
    }
}

async fn load_api_keys<C: GenericClient>(
    db: &C,
    condition: &str,
    value: &(dyn tokio_postgres::types::ToSql + Sync),
) -> Result<Vec<ApiKeyRecord>> {
    let rows = db
        .query(
            &format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys k WHERE {condition} ORDER BY k.created_at, k.id"
            ),
            &[value],
        )
        .await
        .map_err(pg_err)?;
    Ok(rows.iter().map(api_key_from).collect())
}

/// `UnknownRole` naming the first of `roles` that does not exist.
async fn check_roles<C: GenericClient>(tx: &C, roles: &[String]) -> Result<()> {
    let known: Vec<String> = tx
        .query("SELECT name FROM roles WHERE name = ANY($1)", &[&roles])
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    match roles.iter().find(|r| !known.contains(r)) {
        Some(missing) => Err(StoreError::UnknownRole(missing.clone())),
        None => Ok(()),
    }
}
