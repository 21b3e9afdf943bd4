//! The SQLite store (embedded default): one rusqlite connection in WAL mode.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool and
//! never stalls the async runtime. One connection behind a mutex serialises
//! statements in this process; SQLite serialises writers anyway, and
//! `BEGIN IMMEDIATE` plus a busy timeout serialise other processes sharing
//! the file (e.g. `bouncer user add` while `bouncer up` runs).

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bouncer_core::{
    audit::{self, AuditContext, AuditEvent, AuditRecord, Audited, StoredContent, StoredRecord},
    revocation::{Revocation, RevocationKind, RevokeReason},
    role,
    throttle::{self, AttemptEnd, FailureWindow, ThrottleDecision},
    token::{self, Presented, RefreshOutcome, TokenHash},
};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    ApiKeyGrant, ApiKeyRecord, AuditFilter, Client, ClientCredential, Credential, LoginAttempt, Migration,
    MigrationReport, NewApiKey, NewClient, NewSession, NewUser, Result, Role, Rotation, Session, Store,
    StoreError, User, UserFilter, migrate,
};

/// How long a statement waits for another process's write lock before the
/// store reports the database unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its directory. The
    /// file holds password hashes, so it is made readable by its owner only.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
            }
            let conn = Connection::open(&path).map_err(sqlite_err)?;
            conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_err)?;
            conn.pragma_update(None, "foreign_keys", "ON").map_err(sqlite_err)?;
            conn.pragma_update(None, "synchronous", "NORMAL").map_err(sqlite_err)?;
            let _mode: String =
                conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(sqlite_err)?;
            restrict_permissions(&path);
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Database(e.to_string()))??;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic mid-call left no open transaction (rusqlite rolls back
            // on drop), so a poisoned lock still guards a usable connection.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Database(format!("store task failed: {e}")))?
    }

    /// Applies `migrations` (the real list, or a test's) to this database.
    pub async fn migrate_with(&self, migrations: &'static [Migration]) -> Result<MigrationReport> {
        self.with_conn(move |conn| {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version    INTEGER PRIMARY KEY,
                     name       TEXT NOT NULL,
                     checksum   TEXT NOT NULL,
                     applied_at INTEGER NOT NULL)",
            )
            .map_err(sqlite_err)?;
            let mut applied = Vec::new();
            loop {
                // Re-read inside each write transaction: another process may
                // have applied the same migration while we waited for the lock.
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
                let recorded = recorded_migrations(&tx)?;
                let Some(m) = migrate::pending(migrations, &recorded)?.first().copied() else {
                    let current = recorded.iter().map(|(v, _)| *v).max().unwrap_or(0);
                    return Ok(MigrationReport { applied, current });
                };
                let failed = |e: rusqlite::Error| StoreError::MigrationFailed {
                    version: m.version,
                    name: m.name.to_owned(),
                    reason: e.to_string(),
                };
                tx.execute_batch(m.sql).map_err(failed)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
                    params![m.version, m.name, m.checksum(), micros(OffsetDateTime::now_utc())],
                )
                .map_err(failed)?;
                tx.commit().map_err(failed)?;
                tracing::info!(version = m.version, name = m.name, "applied migration");
                applied.push(m.version);
            }
        })
        .await
    }
}

/// Appends `events` to the chain inside the caller's transaction; SQLite's
/// single writer (BEGIN IMMEDIATE) already serialises appends.
fn append(conn: &Connection, events: &[AuditEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let head: Option<(i64, Vec<u8>)> = conn
        .query_row("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(sqlite_err)?;
    let mut prev = match head {
        Some((seq, hash)) => Some((seq, hash32(hash)?)),
        None => None,
    };
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO audit_events (seq, id, at, actor, action, subject, ip, user_agent, request_id, outcome, details, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .map_err(sqlite_err)?;
    for event in events {
        let r = audit::link(prev, event.clone());
        let e = &r.event;
        insert
            .execute(params![
                r.seq,
                e.id.to_string(),
                micros(e.at),
                e.actor,
                e.action.as_str(),
                e.subject,
                e.ip,
                e.user_agent,
                e.request_id,
                e.outcome.as_str(),
                e.details,
                &r.prev_hash[..],
                &r.hash[..]
            ])
            .map_err(sqlite_err)?;
        prev = Some((r.seq, r.hash));
    }
    Ok(())
}

fn hash32(bytes: Vec<u8>) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| StoreError::Database("audit hash is not 32 bytes".into()))
}

/// An audit row as stored, every column read as whatever SQLite holds
/// (its columns keep any type they are given), so that a row someone edited
/// into nonsense is reported by the verifier rather than failing the read.
fn stored_record(row: &Row) -> rusqlite::Result<StoredRecord> {
    use rusqlite::types::Value as V;
    let describe = |v: &V| match v {
        V::Null => "NULL".to_owned(),
        V::Integer(n) => format!("the integer {n}"),
        V::Real(x) => format!("the real {x}"),
        V::Text(t) => format!("the text {t:?}"),
        V::Blob(b) => format!("a {}-byte blob", b.len()),
    };
    let value = |name: &str| row.get::<_, V>(name);
    let text = |name: &str| -> rusqlite::Result<Result<String, String>> {
        Ok(match value(name)? {
            V::Text(t) => Ok(t),
            other => Err(format!("{name} holds {}, not text", describe(&other))),
        })
    };
    let opt_text = |name: &str| -> rusqlite::Result<Result<Option<String>, String>> {
        Ok(match value(name)? {
            V::Null => Ok(None),
            V::Text(t) => Ok(Some(t)),
            other => Err(format!("{name} holds {}, not text", describe(&other))),
        })
    };
    let blob = |name: &str| -> rusqlite::Result<Result<Vec<u8>, String>> {
        Ok(match value(name)? {
            V::Blob(b) => Ok(b),
            other => Err(format!("{name} holds {}, not bytes", describe(&other))),
        })
    };
    let seq = match value("seq")? {
        V::Integer(n) => Ok(n),
        other => Err(format!("seq holds {}, not an integer", describe(&other))),
    };
    let id = match value("id")? {
        V::Text(t) => t,
        other => describe(&other),
    };
    let at_us = match value("at")? {
        V::Integer(n) => Ok(n),
        other => Err(format!("at holds {}, not a time", describe(&other))),
    };
    let content = (|| {
        Ok::<_, String>(StoredContent {
            at_us: at_us?,
            actor: opt_text("actor").map_err(|e| e.to_string())??,
            action: text("action").map_err(|e| e.to_string())??,
            subject: opt_text("subject").map_err(|e| e.to_string())??,
            ip: opt_text("ip").map_err(|e| e.to_string())??,
            user_agent: opt_text("user_agent").map_err(|e| e.to_string())??,
            request_id: opt_text("request_id").map_err(|e| e.to_string())??,
            outcome: text("outcome").map_err(|e| e.to_string())??,
            details: text("details").map_err(|e| e.to_string())??,
            prev_hash: blob("prev_hash").map_err(|e| e.to_string())??,
            hash: blob("hash").map_err(|e| e.to_string())??,
        })
    })();
    Ok(StoredRecord { seq, id, content })
}

fn recorded_migrations(conn: &Connection) -> Result<Vec<(u32, String)>> {
    let mut stmt = conn
        .prepare("SELECT version, checksum FROM schema_migrations ORDER BY version")
        .map_err(sqlite_err)?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sqlite_err)?;
    rows.collect::<Result<_, _>>().map_err(sqlite_err)
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot restrict database file to mode 0600");
    }
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) {}

fn sqlite_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(code, msg) = &e {
        let violates = |what: &str| {
            code.code == ErrorCode::ConstraintViolation && msg.as_deref().is_some_and(|m| m.contains(what))
        };
        if violates("users.email_key") {
            return StoreError::EmailTaken;
        }
        if violates("roles.name") {
            return StoreError::RoleExists;
        }
        if matches!(
            code.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::ReadOnly
        ) {
            return StoreError::Unavailable(e.to_string());
        }
    }
    StoreError::Database(e.to_string())
}

/// A row the transaction itself just found is gone: a bug, not a client error.
fn missing(what: &str) -> StoreError {
    StoreError::Database(format!("{what} vanished inside its own transaction"))
}

/// Instants are stored as microseconds since the Unix epoch.
fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

fn instant(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn opt_instant(us: Option<i64>) -> Option<OffsetDateTime> {
    us.map(instant)
}

fn uuid_col(row: &Row, col: &str) -> rusqlite::Result<Uuid> {
    let text: String = row.get(col)?;
    Uuid::parse_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into()))
}

const USER_COLUMNS: &str = "u.id, u.email, u.created_at, u.revoked_before, u.banned_at, u.ban_reason, u.password_hash,
    (SELECT group_concat(role, ',') FROM (SELECT role FROM user_roles r WHERE r.user_id = u.id ORDER BY role)) AS roles";

fn user_from(row: &Row) -> rusqlite::Result<User> {
    let roles: Option<String> = row.get("roles")?;
    Ok(User {
        id: uuid_col(row, "id")?,
        email: row.get("email")?,
        roles: roles.map(|r| r.split(',').map(str::to_owned).collect()).unwrap_or_default(),
        created_at: instant(row.get("created_at")?),
        revoked_before: opt_instant(row.get("revoked_before")?),
        banned_at: opt_instant(row.get("banned_at")?),
        ban_reason: row.get("ban_reason")?,
    })
}

fn credential_from(row: &Row) -> rusqlite::Result<Credential> {
    Ok(Credential { user: user_from(row)?, password_hash: row.get("password_hash")? })
}

fn credential_where(conn: &Connection, condition: &str, value: &str) -> Result<Option<Credential>> {
    conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users u WHERE {condition}"))
        .and_then(|mut s| s.query_row([value], credential_from).optional())
        .map_err(sqlite_err)
}

fn session_with_user(conn: &Connection, id: Uuid) -> Result<Option<(Session, User)>> {
    let sql = format!(
        "SELECT {USER_COLUMNS}, s.id AS session_id, s.created_at AS session_created_at, s.expires_at, s.revoked_at
           FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?1"
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([id.to_string()], |r| {
                let session = Session {
                    id: uuid_col(r, "session_id")?,
                    user_id: uuid_col(r, "id")?,
                    created_at: instant(r.get("session_created_at")?),
                    expires_at: instant(r.get("expires_at")?),
                    revoked_at: opt_instant(r.get("revoked_at")?),
                };
                Ok((session, user_from(r)?))
            })
            .optional()
        })
        .map_err(sqlite_err)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<MigrationReport> {
        self.migrate_with(migrate::SQLITE).await
    }

    async fn pending_migrations(&self) -> Result<Vec<u32>> {
        self.with_conn(|conn| {
            let exists: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations')",
                    [],
                    |r| r.get(0),
                )
                .map_err(sqlite_err)?;
            let recorded = if exists { recorded_migrations(conn)? } else { Vec::new() };
            Ok(migrate::pending(migrate::SQLITE, &recorded)?.iter().map(|m| m.version).collect())
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.with_conn(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(sqlite_err)).await
    }

    async fn create_user(&self, new: NewUser, ctx: &AuditContext) -> Result<User> {
        let audit = new.audited().event(ctx, new.now);
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            check_roles(&tx, &new.roles)?;
            let id = new.id.to_string();
            tx.execute(
                "INSERT INTO users (id, email, email_key, password_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, new.email.as_str(), new.email.key(), new.password_hash, micros(new.now)],
            )
            .map_err(sqlite_err)?;
            for role in &new.roles {
                tx.execute("INSERT OR IGNORE INTO user_roles (user_id, role) VALUES (?1, ?2)", params![id, role])
                    .map_err(sqlite_err)?;
            }
            let user = credential_where(&tx, "u.id = ?1", &id)?
                .map(|c| c.user)
                .ok_or_else(|| StoreError::Database("user vanished inside its own transaction".into()))?;
            append(&tx, &[audit])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(user)
        })
        .await
    }

    async fn user(&self, id: Uuid) -> Result<Option<User>> {
        Ok(self.credential(id).await?.map(|c| c.user))
    }

    async fn credential_by_email(&self, email_key: &str) -> Result<Option<Credential>> {
        let key = email_key.to_owned();
        self.with_conn(move |c| credential_where(c, "u.email_key = ?1", &key)).await
    }

    async fn credential(&self, id: Uuid) -> Result<Option<Credential>> {
        self.with_conn(move |c| credential_where(c, "u.id = ?1", &id.to_string())).await
    }

    async fn replace_password_hash(&self, id: Uuid, old: &str, new: &str) -> Result<bool> {
        let (old, new) = (old.to_owned(), new.to_owned());
        self.with_conn(move |c| {
            c.execute(
                "UPDATE users SET password_hash = ?3 WHERE id = ?1 AND password_hash = ?2",
                params![id.to_string(), old, new],
            )
            .map(|n| n == 1)
            .map_err(sqlite_err)
        })
        .await
    }

    async fn change_password(
        &self,
        id: Uuid,
        hash: &str,
        keep_session: Option<Uuid>,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>> {
        let (hash, ctx) = (hash.to_owned(), ctx.clone());
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            tx.execute("UPDATE users SET password_hash = ?2 WHERE id = ?1", params![id.to_string(), hash])
                .map_err(sqlite_err)?;
            let reason = RevokeReason::PasswordChanged;
            let sessions = revoke_where(
                &tx,
                "user_id = ?1 AND revoked_at IS NULL AND id IS NOT ?2",
                params![id.to_string(), keep_session.map(|s| s.to_string()), micros(now), reason.as_str()],
            )?;
            let revoked: Vec<Revocation> =
                sessions.iter().map(|&s| Revocation::session(s, id, now, reason)).collect();
            record_revocations(&tx, &revoked)?;
            let audited = Audited::PasswordChanged { user: id, revoked_sessions: &sessions };
            append(&tx, &[audited.event(&ctx, now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(revoked)
        })
        .await
    }

    async fn create_session(&self, new: NewSession, ctx: &AuditContext) -> Result<()> {
        let audit = Audited::LoginSucceeded { user: new.user_id, session: new.id }.event(ctx, new.now);
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let id = new.id.to_string();
            tx.prepare_cached(
                "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![id, new.user_id.to_string(), micros(new.now), micros(new.expires_at)])
            })
            .map_err(sqlite_err)?;
            insert_refresh_token(&tx, new.refresh_token, &id, new.now)?;
            if let Some(attempt) = &new.attempt {
                tx.prepare_cached("DELETE FROM login_failures WHERE attempt = ?1 OR key = ?2")
                    .and_then(|mut s| s.execute(params![attempt.id.to_string(), attempt.account_key]))
                    .map_err(sqlite_err)?;
            }
            append(&tx, &[audit])?;
            tx.commit().map_err(sqlite_err)
        })
        .await
    }

    async fn session(&self, id: Uuid) -> Result<Option<(Session, User)>> {
        self.with_conn(move |c| session_with_user(c, id)).await
    }

    async fn rotate_refresh_token(
        &self,
        presented: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Rotation> {
        let ctx = ctx.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let spent: Option<String> = tx
                .prepare_cached(
                    "UPDATE refresh_tokens SET rotated_at = ?2 WHERE hash = ?1 AND rotated_at IS NULL
                     RETURNING session_id",
                )
                .and_then(|mut s| {
                    s.query_row(params![&presented.0[..], micros(now)], |r| r.get(0)).optional()
                })
                .map_err(sqlite_err)?;
            let (mut found, mut replayed) = (None, None);
            let presented_now = match spent {
                Some(session_id) => {
                    found = session_with_user(&tx, parse_uuid(&session_id)?)?;
                    let (session_live, user_banned) =
                        found.as_ref().map_or((false, false), |(s, u)| (s.is_live(now), u.is_banned()));
                    Presented::Spent { session_live, user_banned }
                }
                None => {
                    let seen: Option<String> = tx
                        .query_row(
                            "SELECT session_id FROM refresh_tokens WHERE hash = ?1",
                            [&presented.0[..]],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(sqlite_err)?;
                    replayed = seen;
                    if replayed.is_some() { Presented::AlreadyRotated } else { Presented::Unknown }
                }
            };
            match token::refresh_outcome(presented_now) {
                // Dropping the transaction rolls a spend back: nothing changes.
                RefreshOutcome::Invalid => Ok(Rotation::Invalid),
                RefreshOutcome::RevokeSession => {
                    let session_id = replayed.ok_or_else(|| missing("the replayed token's session"))?;
                    let reason = RevokeReason::ReuseDetected;
                    let user_id: String = tx
                        .query_row(
                            "UPDATE sessions SET revoked_at = COALESCE(revoked_at, ?2),
                                    revoke_reason = COALESCE(revoke_reason, ?3)
                              WHERE id = ?1 RETURNING user_id",
                            params![session_id, micros(now), reason.as_str()],
                            |r| r.get(0),
                        )
                        .map_err(sqlite_err)?;
                    let (session_id, user_id) = (parse_uuid(&session_id)?, parse_uuid(&user_id)?);
                    let revocation = Revocation::session(session_id, user_id, now, reason);
                    record_revocations(&tx, std::slice::from_ref(&revocation))?;
                    let audited = Audited::RefreshReuseDetected { user: user_id, session: session_id };
                    append(&tx, &[audited.event(&ctx, now)])?;
                    tx.commit().map_err(sqlite_err)?;
                    Ok(Rotation::Reused { session_id, user_id, revocation })
                }
                RefreshOutcome::Rotate => {
                    let (session, user) = found.ok_or_else(|| missing("the spent token's session"))?;
                    insert_refresh_token(&tx, next, &session.id.to_string(), now)?;
                    let audited = Audited::Refreshed { user: user.id, session: session.id };
                    append(&tx, &[audited.event(&ctx, now)])?;
                    tx.commit().map_err(sqlite_err)?;
                    Ok(Rotation::Rotated { session, user })
                }
            }
        })
        .await
    }

    async fn revoke_session_by_token(
        &self,
        presented: TokenHash,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Option<Revocation>> {
        let ctx = ctx.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let ids: Option<(String, String)> = tx
                .query_row(
                    "UPDATE sessions SET revoked_at = COALESCE(revoked_at, ?2),
                            revoke_reason = COALESCE(revoke_reason, ?3)
                      WHERE id = (SELECT session_id FROM refresh_tokens WHERE hash = ?1) RETURNING id, user_id",
                    params![&presented.0[..], micros(now), RevokeReason::Logout.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sqlite_err)?;
            let Some((session_id, user_id)) = ids else { return Ok(None) };
            let (session_id, user_id) = (parse_uuid(&session_id)?, parse_uuid(&user_id)?);
            let revocation = Revocation::session(session_id, user_id, now, RevokeReason::Logout);
            record_revocations(&tx, std::slice::from_ref(&revocation))?;
            let audited = Audited::LoggedOut { user: user_id, session: session_id };
            append(&tx, &[audited.event(&ctx, now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(Some(revocation))
        })
        .await
    }

    async fn revoke_all_sessions(
        &self,
        user_id: Uuid,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>> {
        let ctx = ctx.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let revocations = revoke_user(&tx, user_id, now, RevokeReason::LogoutAll)?;
            let sessions = crate::revoked_sessions(&revocations);
            let audited = Audited::LoggedOutEverywhere { user: user_id, revoked_sessions: &sessions };
            append(&tx, &[audited.event(&ctx, now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(revocations)
        })
        .await
    }

    async fn begin_login_attempt(&self, attempt: &LoginAttempt) -> Result<ThrottleDecision> {
        let attempt = attempt.clone();
        self.with_conn(move |conn| {
            // IMMEDIATE takes the write lock first: count and insert are one step.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let since = micros(attempt.now - attempt.window);
            let mut seen = Vec::with_capacity(attempt.keys.len());
            {
                let mut times = tx
                    .prepare_cached("SELECT at FROM login_failures WHERE key = ?1 AND at > ?2 ORDER BY at")
                    .map_err(sqlite_err)?;
                for (key, max) in &attempt.keys {
                    let at = times
                        .query_map(params![key, since], |r| r.get::<_, i64>(0).map(instant))
                        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                        .map_err(sqlite_err)?;
                    seen.push((FailureWindow::of(&at, *max), *max));
                }
            }
            let decision = throttle::decide_all(seen, attempt.window, attempt.now);
            if decision == ThrottleDecision::Allow {
                for (key, _) in &attempt.keys {
                    tx.execute(
                        "INSERT INTO login_failures (key, at, attempt) VALUES (?1, ?2, ?3)",
                        params![key, micros(attempt.now), attempt.id.to_string()],
                    )
                    .map_err(sqlite_err)?;
                }
                tx.execute("DELETE FROM login_failures WHERE at < ?1", [since]).map_err(sqlite_err)?;
            }
            tx.commit().map_err(sqlite_err)?;
            Ok(decision)
        })
        .await
    }

    async fn finish_login_attempt(
        &self,
        attempt: Uuid,
        end: AttemptEnd<'_>,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<()> {
        let forgive = end.forgiven();
        let audit = end.audited().map(|a| a.event(ctx, now));
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            if forgive {
                tx.execute("DELETE FROM login_failures WHERE attempt = ?1", [attempt.to_string()])
                    .map_err(sqlite_err)?;
            }
            append(&tx, audit.as_slice())?;
            tx.commit().map_err(sqlite_err)
        })
        .await
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> Result<()> {
        let events = events.to_vec();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            append(&tx, &events)?;
            tx.commit().map_err(sqlite_err)
        })
        .await
    }

    async fn append_audit_once(&self, events: &[AuditEvent]) -> Result<usize> {
        let events = events.to_vec();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let fresh: Vec<AuditEvent> = {
                let mut exists =
                    tx.prepare_cached("SELECT 1 FROM audit_events WHERE id = ?1").map_err(sqlite_err)?;
                let mut fresh = Vec::with_capacity(events.len());
                for e in events {
                    if !exists.exists(params![e.id.to_string()]).map_err(sqlite_err)? {
                        fresh.push(e);
                    }
                }
                fresh
            };
            append(&tx, &fresh)?;
            tx.commit().map_err(sqlite_err)?;
            Ok(fresh.len())
        })
        .await
    }

    async fn stored_audit_records(&self, after: i64, limit: u32) -> Result<Vec<StoredRecord>> {
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, id, at, actor, action, subject, ip, user_agent, request_id, outcome, details, prev_hash, hash
                       FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(sqlite_err)?;
            let rows = stmt
                .query_map(params![after, limit], stored_record)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sqlite_err)?;
            Ok(rows)
        })
        .await
    }

    async fn create_role(&self, role: &Role, now: OffsetDateTime, ctx: &AuditContext) -> Result<()> {
        let audit = Audited::RoleCreated { name: &role.name, description: &role.description }.event(ctx, now);
        let role = role.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            // A taken name fails on the primary key (RoleExists), as on PostgreSQL.
            tx.execute(
                "INSERT INTO roles (name, description, builtin) VALUES (?1, ?2, 0)",
                params![role.name, role.description],
            )
            .map_err(sqlite_err)?;
            append(&tx, &[audit])?;
            tx.commit().map_err(sqlite_err)
        })
        .await
    }

    async fn delete_role(
        &self,
        name: &str,
        force: bool,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>> {
        let (name, ctx) = (name.to_owned(), ctx.clone());
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let builtin: bool = tx
                .query_row("SELECT builtin FROM roles WHERE name = ?1", [&name], |r| r.get(0))
                .optional()
                .map_err(sqlite_err)?
                .ok_or(StoreError::NotFound)?;
            if builtin {
                return Err(StoreError::BuiltinRole);
            }
            let holders: Vec<Uuid> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT user_id FROM user_roles WHERE role = ?1
                         UNION SELECT client_id FROM client_roles WHERE role = ?1 ORDER BY 1",
                    )
                    .map_err(sqlite_err)?;
                let ids = stmt
                    .query_map([&name], |r| r.get::<_, String>(0))
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(sqlite_err)?;
                ids.iter().map(|s| parse_uuid(s)).collect::<Result<_>>()?
            };
            if !holders.is_empty() && !force {
                return Err(StoreError::RoleInUse(holders.len() as u64));
            }
            let mut revocations = Vec::new();
            for user_id in &holders {
                revocations.extend(revoke_user(&tx, *user_id, now, RevokeReason::RoleDeleted)?);
            }
            tx.execute("DELETE FROM roles WHERE name = ?1", [&name]).map_err(sqlite_err)?;
            let audited = Audited::RoleDeleted { name: &name, force, holders: &holders };
            append(&tx, &[audited.event(&ctx, now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(revocations)
        })
        .await
    }

    async fn list_users(&self, filter: &UserFilter) -> Result<Vec<User>> {
        let filter = filter.clone();
        self.with_conn(move |conn| {
            let pattern = filter.email_prefix.as_deref().map(crate::like_prefix);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {USER_COLUMNS} FROM users u
                      WHERE (?1 IS NULL OR u.email_key LIKE ?1 ESCAPE '\\')
                        AND (?2 IS NULL OR u.id > ?2)
                      ORDER BY u.id LIMIT ?3"
                ))
                .map_err(sqlite_err)?;
            stmt.query_map(params![pattern, filter.after.map(|a| a.to_string()), filter.limit], user_from)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sqlite_err)
        })
        .await
    }

    async fn set_roles(
        &self,
        user_id: Uuid,
        roles: &[String],
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<(User, Vec<Revocation>)> {
        let (roles, ctx) = (roles.to_vec(), ctx.clone());
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let before = load_user(&tx, user_id)?;
            check_roles(&tx, &roles)?;
            let id = user_id.to_string();
            tx.execute("DELETE FROM user_roles WHERE user_id = ?1", [&id]).map_err(sqlite_err)?;
            for role in &roles {
                tx.execute(
                    "INSERT OR IGNORE INTO user_roles (user_id, role) VALUES (?1, ?2)",
                    params![id, role],
                )
                .map_err(sqlite_err)?;
            }
            let after = load_user(&tx, user_id)?;
            let revocations = if role::change_revokes(&before.roles, &after.roles) {
                revoke_user(&tx, user_id, now, RevokeReason::RolesRemoved)?
            } else {
                Vec::new()
            };
            let audited = Audited::RolesChanged { user: user_id, before: &before.roles, after: &after.roles };
            append(&tx, &[audited.event(&ctx, now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok((after, revocations))
        })
        .await
    }

    async fn ban_user(
        &self,
        user_id: Uuid,
        reason: &str,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<(User, Vec<Revocation>)> {
        let (reason, ctx) = (reason.to_owned(), ctx.clone());
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            if load_user(&tx, user_id)?.is_banned() {
                return Err(StoreError::AlreadyBanned);
            }
            tx.execute(
                "UPDATE users SET banned_at = ?2, ban_reason = ?3 WHERE id = ?1",
                params![user_id.to_string(), micros(now), reason],
            )
            .map_err(sqlite_err)?;
            let revocations = revoke_user(&tx, user_id, now, RevokeReason::Banned)?;
            let user = load_user(&tx, user_id)?;
            append(&tx, &[Audited::UserBanned { user: user_id, reason: &reason }.event(&ctx, now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok((user, revocations))
        })
        .await
    }

    async fn unban_user(&self, user_id: Uuid, now: OffsetDateTime, ctx: &AuditContext) -> Result<User> {
        let ctx = ctx.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let was_banned = load_user(&tx, user_id)?.is_banned();
            tx.execute(
                "UPDATE users SET banned_at = NULL, ban_reason = NULL WHERE id = ?1",
                [user_id.to_string()],
            )
            .map_err(sqlite_err)?;
            let user = load_user(&tx, user_id)?;
            append(&tx, &[Audited::UserUnbanned { user: user_id, was_banned }.event(&ctx, now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(user)
        })
        .await
    }

    async fn delete_user(
        &self,
        user_id: Uuid,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>> {
        let ctx = ctx.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let user = load_user(&tx, user_id)?;
            let revocations = revoke_user(&tx, user_id, now, RevokeReason::Deleted)?;
            tx.execute("DELETE FROM users WHERE id = ?1", [user_id.to_string()]).map_err(sqlite_err)?;
            let audited = Audited::UserDeleted { user: user_id, email: &user.email, roles: &user.roles };
            append(&tx, &[audited.event(&ctx, now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(revocations)
        })
        .await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let f = filter.clone();
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, id, at, actor, action, subject, ip, user_agent, request_id, outcome, details, prev_hash, hash
                       FROM audit_events
                      WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR subject = ?2)
                        AND (?3 IS NULL OR action = ?3) AND (?4 IS NULL OR at >= ?4)
                        AND (?5 IS NULL OR at < ?5) AND (?6 IS NULL OR seq < ?6)
                      ORDER BY seq DESC LIMIT ?7",
                )
                .map_err(sqlite_err)?;
            let rows = stmt
                .query_map(
                    params![f.actor, f.subject, f.action, f.since.map(micros), f.until.map(micros), f.before_seq, f.limit],
                    stored_record,
                )
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sqlite_err)?;
            crate::parse_records(&rows)
        })
        .await
    }

    async fn revocations_since(&self, since: OffsetDateTime) -> Result<Vec<Revocation>> {
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT kind, id, user_id, at, reason FROM revocations WHERE at > ?1 ORDER BY at",
                )
                .map_err(sqlite_err)?;
            let rows = stmt
                .query_map([micros(since)], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get(3)?,
                        r.get(4)?,
                    ))
                })
                .and_then(|rows| {
                    rows.collect::<rusqlite::Result<Vec<(String, String, String, i64, String)>>>()
                })
                .map_err(sqlite_err)?;
            rows.into_iter()
                .map(|(kind, id, user_id, at, reason)| {
                    Ok(Revocation {
                        kind: RevocationKind::parse(&kind).ok_or_else(|| {
                            StoreError::Database(format!("unknown revocation kind {kind:?}"))
                        })?,
                        id: parse_uuid(&id)?,
                        user_id: parse_uuid(&user_id)?,
                        at: instant(at),
                        reason: RevokeReason::parse(&reason),
                    })
                })
                .collect()
        })
        .await
    }

    async fn roles(&self) -> Result<Vec<Role>> {
        self.with_conn(|conn| {
            let mut stmt = conn
                .prepare("SELECT name, description, builtin FROM roles ORDER BY name")
                .map_err(sqlite_err)?;
            let rows = stmt
                .query_map([], |r| Ok(Role { name: r.get(0)?, description: r.get(1)?, builtin: r.get(2)? }))
                .map_err(sqlite_err)?;
            rows.collect::<Result<_, _>>().map_err(sqlite_err)
        })
        .await
    }

    async fn create_client(&self, new: NewClient, ctx: &AuditContext) -> Result<Client> {
        let ctx = ctx.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            check_roles(&tx, &new.roles)?;
            let id = new.id.to_string();
            tx.execute(
                "INSERT INTO clients (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![id, new.name, micros(new.now)],
            )
            .map_err(sqlite_err)?;
            for role in &new.roles {
                tx.execute(
                    "INSERT OR IGNORE INTO client_roles (client_id, role) VALUES (?1, ?2)",
                    params![id, role],
                )
                .map_err(sqlite_err)?;
            }
            tx.execute(
                "INSERT INTO client_secrets (hash, client_id, created_at) VALUES (?1, ?2, ?3)",
                params![&new.secret.0[..], id, micros(new.now)],
            )
            .map_err(sqlite_err)?;
            let created =
                load_clients(&tx, "c.id = ?1", &id)?.pop().ok_or_else(|| missing("the new client"))?;
            let audited =
                Audited::ClientCreated { client: new.id, name: &created.name, roles: &created.roles };
            append(&tx, &[audited.event(&ctx, new.now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(created)
        })
        .await
    }

    async fn clients(&self) -> Result<Vec<Client>> {
        self.with_conn(|conn| load_clients(conn, "?1 IS NULL", &Option::<String>::None)).await
    }

    async fn client(&self, id: Uuid) -> Result<Option<Client>> {
        self.with_conn(move |conn| Ok(load_clients(conn, "c.id = ?1", &id.to_string())?.pop())).await
    }

    async fn client_credential(&self, id: Uuid, now: OffsetDateTime) -> Result<Option<ClientCredential>> {
        self.with_conn(move |conn| {
            let Some(client) = load_clients(conn, "c.id = ?1", &id.to_string())?.pop() else { return Ok(None) };
            let mut stmt = conn
                .prepare_cached(
                    "SELECT hash FROM client_secrets WHERE client_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                )
                .map_err(sqlite_err)?;
            let hashes = stmt
                .query_map(params![id.to_string(), micros(now)], |r| r.get::<_, Vec<u8>>(0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sqlite_err)?;
            let secrets = hashes.into_iter().map(|h| hash32(h).map(TokenHash)).collect::<Result<_>>()?;
            Ok(Some(ClientCredential { client, secrets }))
        })
        .await
    }

    async fn rotate_client_secret(
        &self,
        id: Uuid,
        secret: TokenHash,
        overlap_until: OffsetDateTime,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Client> {
        let ctx = ctx.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let key = id.to_string();
            if load_clients(&tx, "c.id = ?1", &key)?.is_empty() {
                return Err(StoreError::NotFound);
            }
            tx.execute(
                "UPDATE client_secrets SET expires_at = MIN(COALESCE(expires_at, ?2), ?2) WHERE client_id = ?1",
                params![key, micros(overlap_until)],
            )
            .map_err(sqlite_err)?;
            tx.execute(
                "INSERT INTO client_secrets (hash, client_id, created_at) VALUES (?1, ?2, ?3)",
                params![&secret.0[..], key, micros(now)],
            )
            .map_err(sqlite_err)?;
            let client = load_clients(&tx, "c.id = ?1", &key)?.pop().ok_or_else(|| missing("the client"))?;
            append(&tx, &[Audited::ClientSecretRotated { client: id, overlap_until }.event(&ctx, now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(client)
        })
        .await
    }

    async fn delete_client(
        &self,
        id: Uuid,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<Vec<Revocation>> {
        let ctx = ctx.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let name: String = tx
                .query_row("DELETE FROM clients WHERE id = ?1 RETURNING name", [id.to_string()], |r| r.get(0))
                .optional()
                .map_err(sqlite_err)?
                .ok_or(StoreError::NotFound)?;
            let revocations = vec![Revocation::of_client(id, now, RevokeReason::ClientDeleted)];
            record_revocations(&tx, &revocations)?;
            append(&tx, &[Audited::ClientDeleted { client: id, name: &name }.event(&ctx, now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(revocations)
        })
        .await
    }

    async fn create_api_key(&self, new: NewApiKey, ctx: &AuditContext) -> Result<ApiKeyRecord> {
        let ctx = ctx.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            load_user(&tx, new.user_id)?;
            check_roles(&tx, &new.roles)?;
            let id = new.id.to_string();
            tx.execute(
                "INSERT INTO api_keys (id, user_id, name, prefix, hash, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    new.user_id.to_string(),
                    new.name,
                    new.prefix,
                    &new.hash.0[..],
                    micros(new.now),
                    new.expires_at.map(micros)
                ],
            )
            .map_err(sqlite_err)?;
            for role in &new.roles {
                tx.execute(
                    "INSERT OR IGNORE INTO api_key_roles (key_id, role) VALUES (?1, ?2)",
                    params![id, role],
                )
                .map_err(sqlite_err)?;
            }
            let key = load_api_keys(&tx, "k.id = ?1", &id)?.pop().ok_or_else(|| missing("the new key"))?.key;
            let audited = Audited::ApiKeyCreated {
                key: key.id,
                owner: key.user_id,
                name: &key.name,
                prefix: &key.prefix,
                roles: &key.roles,
                expires_at: key.expires_at,
            };
            append(&tx, &[audited.event(&ctx, new.now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(key)
        })
        .await
    }

    async fn api_keys(&self, user: Option<Uuid>) -> Result<Vec<ApiKeyRecord>> {
        self.api_key_grants(user).await.map(|grants| grants.into_iter().map(|g| g.key).collect())
    }

    async fn revoke_api_key(
        &self,
        id: Uuid,
        owner: Option<Uuid>,
        now: OffsetDateTime,
        ctx: &AuditContext,
    ) -> Result<ApiKeyRecord> {
        let ctx = ctx.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            let key =
                load_api_keys(&tx, "k.id = ?1", &id.to_string())?.pop().ok_or(StoreError::NotFound)?.key;
            if owner.is_some_and(|o| o != key.user_id) {
                return Err(StoreError::NotFound);
            }
            tx.execute("DELETE FROM api_keys WHERE id = ?1", [id.to_string()]).map_err(sqlite_err)?;
            let audited = Audited::ApiKeyRevoked { key: key.id, owner: key.user_id, prefix: &key.prefix };
            append(&tx, &[audited.event(&ctx, now)])?;
            tx.commit().map_err(sqlite_err)?;
            Ok(key)
        })
        .await
    }

    async fn api_key_grants(&self, user: Option<Uuid>) -> Result<Vec<ApiKeyGrant>> {
        self.with_conn(move |conn| {
            load_api_keys(conn, "?1 IS NULL OR k.user_id = ?1", &user.map(|u| u.to_string()))
        })
        .await
    }
}

/// `UnknownRole` naming the first of `roles` that does not exist.
fn check_roles(conn: &Connection, roles: &[String]) -> Result<()> {
    for role in roles {
        let known: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM roles WHERE name = ?1)", [role], |r| r.get(0))
            .map_err(sqlite_err)?;
        if !known {
            return Err(StoreError::UnknownRole(role.clone()));
        }
    }
    Ok(())
}

fn split_roles(roles: Option<String>) -> Vec<String> {
    roles.map(|r| r.split(',').map(str::to_owned).collect()).unwrap_or_default()
}

fn load_clients(conn: &Connection, condition: &str, value: &dyn rusqlite::ToSql) -> Result<Vec<Client>> {
    let sql = format!(
        "SELECT c.id, c.name, c.created_at,
                (SELECT group_concat(role, ',') FROM (SELECT role FROM client_roles r WHERE r.client_id = c.id ORDER BY role)) AS roles
           FROM clients c WHERE {condition} ORDER BY c.created_at, c.id"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(sqlite_err)?;
    stmt.query_map([value], |r| {
        Ok(Client {
            id: uuid_col(r, "id")?,
            name: r.get("name")?,
            roles: split_roles(r.get("roles")?),
            created_at: instant(r.get("created_at")?),
        })
    })
    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
    .map_err(sqlite_err)
}

fn load_api_keys(
    conn: &Connection,
    condition: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Vec<ApiKeyGrant>> {
    let sql = format!(
        "SELECT k.id, k.user_id, k.name, k.prefix, k.hash, k.created_at, k.expires_at, u.banned_at IS NOT NULL AS owner_banned,
                (SELECT group_concat(role, ',') FROM (SELECT role FROM api_key_roles r WHERE r.key_id = k.id ORDER BY role)) AS roles,
                (SELECT group_concat(role, ',') FROM (SELECT role FROM user_roles r WHERE r.user_id = k.user_id ORDER BY role)) AS owner_roles
           FROM api_keys k JOIN users u ON u.id = k.user_id WHERE {condition} ORDER BY k.created_at, k.id"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(sqlite_err)?;
    let rows = stmt
        .query_map([value], |r| {
            let key = ApiKeyRecord {
                id: uuid_col(r, "id")?,
                user_id: uuid_col(r, "user_id")?,
                name: r.get("name")?,
                prefix: r.get("prefix")?,
                roles: split_roles(r.get("roles")?),
                created_at: instant(r.get("created_at")?),
                expires_at: opt_instant(r.get("expires_at")?),
            };
            Ok((
                key,
                r.get::<_, Vec<u8>>("hash")?,
                split_roles(r.get("owner_roles")?),
                r.get("owner_banned")?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sqlite_err)?;
    rows.into_iter()
        .map(|(key, hash, owner_roles, owner_banned)| {
            Ok(ApiKeyGrant { key, hash: TokenHash(hash32(hash)?), owner_roles, owner_banned })
        })
        .collect()
}

fn insert_refresh_token(
    conn: &Connection,
    hash: TokenHash,
    session_id: &str,
    now: OffsetDateTime,
) -> Result<()> {
    conn.prepare_cached("INSERT INTO refresh_tokens (hash, session_id, issued_at) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![&hash.0[..], session_id, micros(now)]))
        .map(drop)
        .map_err(sqlite_err)
}

/// Revokes the sessions matching `condition` (over ?1, ?2) with ?3 = now and
/// ?4 = reason; returns their ids.
fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Database(format!("bad uuid {s:?}: {e}")))
}

/// The user, or `NotFound` (the caller holds the write lock).
fn load_user(conn: &Connection, user_id: Uuid) -> Result<User> {
    credential_where(conn, "u.id = ?1", &user_id.to_string())?.map(|c| c.user).ok_or(StoreError::NotFound)
}

/// Stores revocation records inside the caller's transaction.
fn record_revocations(conn: &Connection, revocations: &[Revocation]) -> Result<()> {
    let mut insert = conn
        .prepare_cached("INSERT INTO revocations (kind, id, user_id, at, reason) VALUES (?1, ?2, ?3, ?4, ?5)")
        .map_err(sqlite_err)?;
    for r in revocations {
        insert
            .execute(params![
                r.kind.as_str(),
                r.id.to_string(),
                r.user_id.to_string(),
                micros(r.at),
                r.reason.as_str()
            ])
            .map_err(sqlite_err)?;
    }
    Ok(())
}

/// Revokes every live session of `user_id` and its older tokens, for
/// `reason`; records and returns the revocations.
fn revoke_user(
    conn: &Connection,
    user_id: Uuid,
    now: OffsetDateTime,
    reason: RevokeReason,
) -> Result<Vec<Revocation>> {
    conn.execute(
        "UPDATE users SET revoked_before = ?2 WHERE id = ?1",
        params![user_id.to_string(), micros(now)],
    )
    .map_err(sqlite_err)?;
    let sessions = revoke_where(
        conn,
        "user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2",
        params![user_id.to_string(), micros(now), micros(now), reason.as_str()],
    )?;
    let revocations = Revocation::of_user(user_id, &sessions, now, reason);
    record_revocations(conn, &revocations)?;
    Ok(revocations)
}

fn revoke_where(conn: &Connection, condition: &str, params: impl rusqlite::Params) -> Result<Vec<Uuid>> {
    let sql =
        format!("UPDATE sessions SET revoked_at = ?3, revoke_reason = ?4 WHERE {condition} RETURNING id");
    let mut stmt = conn.prepare(&sql).map_err(sqlite_err)?;
    let ids = stmt
        .query_map(params, |r| r.get::<_, String>(0))
        .map_err(sqlite_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sqlite_err)?;
    ids.iter().map(|s| Uuid::parse_str(s).map_err(|e| StoreError::Database(e.to_string()))).collect()
}
