//! Domain types the store reads and writes. Rows never leave the backends.

use bouncer_core::{audit::Audited, email::Email, revocation::Revocation, token::TokenHash};
use time::OffsetDateTime;
use uuid::Uuid;

/// An account as the services see it. Never carries the password hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    /// Sorted by name.
    pub roles: Vec<String>,
    pub created_at: OffsetDateTime,
    /// Access tokens issued (`iat`) before this are dead.
    pub revoked_before: Option<OffsetDateTime>,
    pub banned_at: Option<OffsetDateTime>,
    pub ban_reason: Option<String>,
}

impl User {
    pub fn is_banned(&self) -> bool {
        self.banned_at.is_some()
    }

    /// Whether an access token issued at `iat` (Unix seconds) was revoked by
    /// the user's revoked-before time. Compared in whole seconds, like `iat`:
    /// a token minted in the very second of a revocation survives it, which
    /// is why revoking also marks every session (whose `sid` the token names).
    pub fn token_revoked(&self, iat: i64) -> bool {
        self.revoked_before.is_some_and(|t| iat < t.unix_timestamp())
    }
}

/// A user with the stored password hash, for password checks only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub user: User,
    pub password_hash: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("user", &self.user).finish_non_exhaustive()
    }
}

/// Input of [`crate::Store::create_user`].
#[derive(Clone)]
pub struct NewUser {
    pub id: Uuid,
    pub email: Email,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub now: OffsetDateTime,
    pub origin: UserOrigin,
}

/// How a user came to be, which the audit record tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserOrigin {
    /// `POST /auth/signup`.
    Signup,
    /// An operator (`bouncer user add`).
    Operator,
}

impl NewUser {
    pub(crate) fn audited(&self) -> Audited<'_> {
        let (user, email, roles) = (self.id, self.email.as_str(), self.roles.as_slice());
        match self.origin {
            UserOrigin::Signup => Audited::UserSignup { user, email, roles },
            UserOrigin::Operator => Audited::UserCreated { user, email, roles },
        }
    }
}

/// One login's family of refresh tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

impl Session {
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// Input of [`crate::Store::create_session`].
#[derive(Clone, Debug)]
pub struct NewSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub refresh_token: TokenHash,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// The login attempt this session settles: its reserved failure rows are
    /// deleted and the account key's failures cleared.
    pub attempt: Option<SettledAttempt>,
}

/// A successful login attempt, see [`NewSession::attempt`].
#[derive(Clone, Debug)]
pub struct SettledAttempt {
    pub id: Uuid,
    pub account_key: String,
}

/// Input of [`crate::Store::begin_login_attempt`].
#[derive(Clone, Debug)]
pub struct LoginAttempt {
    pub id: Uuid,
    /// Throttle keys (`account:…`, `ip:…`) with their failure limits.
    pub keys: Vec<(String, u32)>,
    pub window: std::time::Duration,
    pub now: OffsetDateTime,
}

/// Outcome of presenting a refresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live; it is now spent and the next one is stored.
    Rotated { session: Session, user: User },
    /// The token had already been rotated: someone replayed it. The session
    /// is now revoked (`RevokeReason::ReuseDetected`).
    Reused { session_id: Uuid, user_id: Uuid, revocation: Revocation },
    /// Unknown token, expired or revoked session, or banned user.
    Invalid,
}

/// A role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub builtin: bool,
}

/// A page of users for `GET /admin/users`, in id (= creation) order.
#[derive(Clone, Debug, Default)]
pub struct UserFilter {
    /// Case-folded email prefix.
    pub email_prefix: Option<String>,
    /// Only users with an id greater than this (the cursor).
    pub after: Option<Uuid>,
    pub limit: u32,
}

/// A page of audit records for `GET /admin/audit`, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub subject: Option<String>,
    pub action: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Only records with a seq lower than this (the cursor).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// An OAuth2 service client. Never carries a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// Also its tokens' `sub` and `client_id`.
    pub id: Uuid,
    pub name: String,
    /// Sorted by name.
    pub roles: Vec<String>,
    pub created_at: OffsetDateTime,
}

/// Input of [`crate::Store::create_client`].
#[derive(Clone, Debug)]
pub struct NewClient {
    pub id: Uuid,
    pub name: String,
    pub roles: Vec<String>,
    pub secret: TokenHash,
    pub now: OffsetDateTime,
}

/// A client with the hashes of the secrets valid at some time, for the
/// token endpoint's check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCredential {
    pub client: Client,
    pub secrets: Vec<TokenHash>,
}

/// A user's API key as listed. Never carries the key or its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub prefix: String,
    /// Sorted by name: what the key may do at most.
    pub roles: Vec<String>,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

/// Input of [`crate::Store::create_api_key`].
#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub hash: TokenHash,
    pub roles: Vec<String>,
    pub now: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

/// A key with what decides whether a gateway may accept it
/// ([`bouncer_core::credential::key_grants`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyGrant {
    pub key: ApiKeyRecord,
    pub hash: TokenHash,
    pub owner_roles: Vec<String>,
    pub owner_banned: bool,
}

/// A key a gateway may accept now (core's type: gateways hold it too).
pub use bouncer_core::credential::UsableApiKey;
