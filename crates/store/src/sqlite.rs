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
use bouncer_core::{throttle::FailureWindow, token::TokenHash};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    Credential, Migration, MigrationReport, NewSession, NewUser, Result, Role, Rotation, Session, Store,
    StoreError, User, migrate,
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
        if code.code == ErrorCode::ConstraintViolation
            && msg.as_deref().is_some_and(|m| m.contains("users.email_key"))
        {
            return StoreError::EmailTaken;
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

const USER_COLUMNS: &str = "u.id, u.email, u.created_at, u.revoked_before, u.banned_at, u.password_hash,
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

    async fn create_user(&self, new: NewUser) -> Result<User> {
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            for role in &new.roles {
                let known: bool = tx
                    .query_row("SELECT EXISTS (SELECT 1 FROM roles WHERE name = ?1)", [role], |r| r.get(0))
                    .map_err(sqlite_err)?;
                if !known {
                    return Err(StoreError::UnknownRole(role.clone()));
                }
            }
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
    ) -> Result<Vec<Uuid>> {
        let hash = hash.to_owned();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            tx.execute("UPDATE users SET password_hash = ?2 WHERE id = ?1", params![id.to_string(), hash])
                .map_err(sqlite_err)?;
            let revoked = revoke_where(
                &tx,
                "user_id = ?1 AND revoked_at IS NULL AND id IS NOT ?2",
                params![id.to_string(), keep_session.map(|s| s.to_string()), micros(now), "password_changed"],
            )?;
            tx.commit().map_err(sqlite_err)?;
            Ok(revoked)
        })
        .await
    }

    async fn create_session(&self, new: NewSession) -> Result<()> {
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
    ) -> Result<Rotation> {
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
            let Some(session_id) = spent else {
                let seen: Option<String> = tx
                    .query_row(
                        "SELECT session_id FROM refresh_tokens WHERE hash = ?1",
                        [&presented.0[..]],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sqlite_err)?;
                let Some(session_id) = seen else { return Ok(Rotation::Invalid) };
                let user_id: String = tx
                    .query_row(
                        "UPDATE sessions SET revoked_at = COALESCE(revoked_at, ?2),
                                revoke_reason = COALESCE(revoke_reason, 'reuse_detected')
                          WHERE id = ?1 RETURNING user_id",
                        params![session_id, micros(now)],
                        |r| r.get(0),
                    )
                    .map_err(sqlite_err)?;
                tx.commit().map_err(sqlite_err)?;
                let parse = |s: &str| Uuid::parse_str(s).map_err(|e| StoreError::Database(e.to_string()));
                return Ok(Rotation::Reused { session_id: parse(&session_id)?, user_id: parse(&user_id)? });
            };
            let id = Uuid::parse_str(&session_id).map_err(|e| StoreError::Database(e.to_string()))?;
            let Some((session, user)) = session_with_user(&tx, id)? else { return Ok(Rotation::Invalid) };
            if !session.is_live(now) || user.is_banned() {
                return Ok(Rotation::Invalid);
            }
            insert_refresh_token(&tx, next, &session_id, now)?;
            tx.commit().map_err(sqlite_err)?;
            Ok(Rotation::Rotated { session, user })
        })
        .await
    }

    async fn revoke_session_by_token(
        &self,
        presented: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Uuid>> {
        self.with_conn(move |conn| {
            let id: Option<String> = conn
                .query_row(
                    "UPDATE sessions SET revoked_at = COALESCE(revoked_at, ?2),
                            revoke_reason = COALESCE(revoke_reason, 'logout')
                      WHERE id = (SELECT session_id FROM refresh_tokens WHERE hash = ?1) RETURNING id",
                    params![&presented.0[..], micros(now)],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sqlite_err)?;
            id.map(|s| Uuid::parse_str(&s).map_err(|e| StoreError::Database(e.to_string()))).transpose()
        })
        .await
    }

    async fn revoke_all_sessions(&self, user_id: Uuid, now: OffsetDateTime) -> Result<Vec<Uuid>> {
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            tx.execute(
                "UPDATE users SET revoked_before = ?2 WHERE id = ?1",
                params![user_id.to_string(), micros(now)],
            )
            .map_err(sqlite_err)?;
            let revoked = revoke_where(
                &tx,
                "user_id = ?1 AND revoked_at IS NULL AND ?2 IS NULL",
                params![user_id.to_string(), None::<String>, micros(now), "logout_all"],
            )?;
            tx.commit().map_err(sqlite_err)?;
            Ok(revoked)
        })
        .await
    }

    async fn record_login_failure(
        &self,
        keys: &[String],
        now: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> Result<()> {
        let keys = keys.to_vec();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sqlite_err)?;
            for key in &keys {
                tx.execute("INSERT INTO login_failures (key, at) VALUES (?1, ?2)", params![key, micros(now)])
                    .map_err(sqlite_err)?;
            }
            tx.execute("DELETE FROM login_failures WHERE at < ?1", [micros(forget_before)])
                .map_err(sqlite_err)?;
            tx.commit().map_err(sqlite_err)
        })
        .await
    }

    async fn login_failures(&self, keys: &[String], since: OffsetDateTime) -> Result<Vec<FailureWindow>> {
        let keys = keys.to_vec();
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT count(*), min(at) FROM login_failures WHERE key = ?1 AND at >= ?2")
                .map_err(sqlite_err)?;
            keys.iter()
                .map(|key| {
                    stmt.query_row(params![key, micros(since)], |r| {
                        Ok(FailureWindow {
                            count: r.get::<_, i64>(0)? as u32,
                            oldest: opt_instant(r.get(1)?),
                        })
                    })
                    .map_err(sqlite_err)
                })
                .collect()
        })
        .await
    }

    async fn clear_login_failures(&self, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.with_conn(move |c| {
            c.execute("DELETE FROM login_failures WHERE key = ?1", [key]).map(drop).map_err(sqlite_err)
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
