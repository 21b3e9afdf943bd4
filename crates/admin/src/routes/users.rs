//! `/users/me`: the caller's own account.

use axum::{Json, extract::State, http::StatusCode};
use bouncer_core::throttle::AttemptEnd;
use bouncer_store::User;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState,
    error::ApiError,
    extract::{Authenticated, ClientInfo, JsonBody},
    openapi::{
        MalformedRequest, PROBLEM_JSON, PayloadTooLarge, ProblemSchema as Problem, TooManyRequests,
        Unauthenticated, Unavailable, UnsupportedMediaType, ValidationFailed,
    },
};

/// A user as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = User)]
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

// No `Debug`: it holds passwords.
/// A password change: `new_password` must fit `admin.password`;
/// `current_password` longer than any password is refused unchecked.
#[derive(Deserialize, ToSchema)]
pub struct PasswordChange {
    #[schema(max_length = 128)]
    current_password: String,
    #[schema(min_length = 12, max_length = 128)]
    new_password: String,
}

/// The caller's account.
#[utoipa::path(
    get,
    path = "/users/me",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller.", body = UserView),
        (status = 401, response = Unauthenticated),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn me(auth: Authenticated) -> Json<UserView> {
    Json(UserView::from(auth.user))
}

/// Changes the caller's password and revokes every other session; the
/// session of the token used here stays logged in.
#[utoipa::path(
    post,
    path = "/users/me/password",
    tag = "users",
    security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed; every other session revoked."),
        (status = 400, response = MalformedRequest),
        (status = 401, description = "`unauthenticated` or `invalid-token` (see the bearer token); `invalid-credentials`: the current password is wrong.", body = Problem, content_type = PROBLEM_JSON, headers(
            ("WWW-Authenticate" = String, description = "`Bearer realm=\"bouncer\"`, with `error=\"invalid_token\"` for a bad token"),
        )),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
)]
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
    let attempt =
        super::auth::begin_attempt(&state, &account_key, &client, now, |m| m.login("throttled")).await?;
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
    let revoked = state.store.change_password(auth.user.id, &hash, Some(auth.session_id), now, &ctx).await?;
    state.announce(&revoked);
    state.metrics.audited();
    state.metrics.password_changed();
    tracing::info!(user_id = %auth.user.id, revoked_sessions = revoked.len(), "password changed");
    Ok(StatusCode::NO_CONTENT)
}
