//! `/users/me`: the caller's own account.

use axum::{Json, extract::State, http::StatusCode};
use bouncer_core::throttle::AttemptEnd;
use bouncer_store::User;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    AppState,
    error::ApiError,
    extract::{Authenticated, ClientInfo, JsonBody},
};

/// A user as the API shows it.
#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self { id: u.id, email: u.email, roles: u.roles, created_at: u.created_at }
    }
}

/// `{current_password, new_password}`. No `Debug`: it holds passwords.
#[derive(Deserialize)]
pub struct PasswordChange {
    current_password: String,
    new_password: String,
}

pub async fn me(auth: Authenticated) -> Json<UserView> {
    Json(UserView::from(auth.user))
}

/// Changes the caller's password and revokes every other session; the
/// session of the token used here stays logged in.
pub async fn change_password(
    State(state): State<AppState>,
    client: ClientInfo,
    auth: Authenticated,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let now = OffsetDateTime::now_utc();
    if let Err(e) = state.config.password.check(&body.new_password) {
        return Err(ApiError::field("new_password", e.to_string()));
    }
    if state.config.password.exceeds_max(&body.current_password) {
        return Err(ApiError::InvalidCredentials);
    }
    // A stolen access token must not become an oracle for the password.
    let user_id = auth.user.id.to_string();
    let account_key = format!("account:{}", bouncer_core::email::lookup_key(&auth.user.email));
    let attempt = super::auth::begin_attempt(&state, &account_key, &client, now).await?;
    let credential =
        state.store.credential(auth.user.id).await?.ok_or(ApiError::InvalidToken("user deleted"))?;
    let verified = state.passwords.verify(body.current_password, credential.password_hash).await?;
    state.metrics.password_verified();
    let ctx = client.audit(Some(user_id));
    if !verified.matches {
        let end = AttemptEnd::WrongCurrentPassword { user: auth.user.id };
        state.store.finish_login_attempt(attempt, end, now, &ctx).await?;
        state.metrics.audited();
        return Err(ApiError::InvalidCredentials);
    }
    state.store.finish_login_attempt(attempt, AttemptEnd::RightCurrentPassword, now, &ctx).await?;
    let hash = state.passwords.hash(body.new_password).await?;
    let revoked = state.store.change_password(auth.user.id, &hash, Some(auth.claims.sid), now, &ctx).await?;
    state.announce(&revoked);
    state.metrics.audited();
    state.metrics.password_changed();
    tracing::info!(user_id = %auth.user.id, revoked_sessions = revoked.len(), "password changed");
    Ok(StatusCode::NO_CONTENT)
}
