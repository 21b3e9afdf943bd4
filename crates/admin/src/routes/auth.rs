//! `/auth/*`: signup, login, refresh (rotation), logout and logout-all.

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bouncer_core::{
    claims::{AccessClaims, NewAccessToken},
    email::{Email, MAX_EMAIL_LEN, lookup_key},
    role::SIGNUP_ROLE,
    throttle::{AttemptEnd, ThrottleDecision},
    token::{self, REFRESH_TOKEN_BYTES, RefreshToken},
};
use bouncer_store::{LoginAttempt, NewSession, NewUser, Rotation, SettledAttempt, User, UserOrigin};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::users::UserView;
use crate::{
    AppState,
    error::ApiError,
    extract::{Authenticated, ClientInfo, JsonBody, storable_text},
    openapi::{
        MalformedRequest, PROBLEM_JSON, PayloadTooLarge, ProblemSchema as Problem, TooManyRequests,
        Unauthenticated, Unavailable, UnsupportedMediaType, ValidationFailed,
    },
    passwords::Verified,
};

// No `Debug` on the bodies below: they hold passwords.

/// A new account. `password` must fit `admin.password` (length only).
#[derive(Deserialize, ToSchema)]
pub struct Signup {
    /// `local@domain.tld`: neither part has whitespace, control characters
    /// or `@`; the domain is two or more dot-separated labels. Surrounding
    /// whitespace is trimmed; at most 254 characters. Kept as typed,
    /// compared case-insensitively.
    //
    // The pattern is `bouncer_core::email::Email::parse` (a test holds
    // them together); the whitespace is `str::trim`'s (Unicode White_Space).
    #[schema(
        max_length = 254,
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@]+@[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.]+(\.[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.]+)+[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$",
        example = "alice@example.com"
    )]
    email: String,
    #[schema(min_length = 12, max_length = 128, example = "correct horse battery")]
    password: String,
}

/// An email and a password to check.
#[derive(Deserialize, ToSchema)]
pub struct Credentials {
    /// Trimmed and compared case-insensitively; an unknown email answers
    /// exactly like a wrong password.
    // The pattern: at least one character `str::trim` keeps, and no NUL
    // (`extract::storable_text`).
    #[schema(
        max_length = 254,
        pattern = r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$",
        example = "alice@example.com"
    )]
    email: String,
    /// Longer than `admin.password.max_length` is refused before hashing.
    #[schema(max_length = 128, example = "correct horse battery")]
    password: String,
}

/// A refresh token from a token response.
#[derive(Deserialize, ToSchema)]
pub struct RefreshBody {
    refresh_token: String,
}

/// The answer of a login or a refresh (RFC 6749 §5.1).
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// An EdDSA-signed `at+jwt`; verify with `/.well-known/jwks.json`.
    access_token: String,
    #[schema(value_type = String, pattern = "^Bearer$")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    #[schema(minimum = 0)]
    expires_in: i64,
    /// Opaque; single use: `POST /auth/refresh` answers with a new one.
    refresh_token: String,
}

/// Creates an account with the role `user`.
#[utoipa::path(
    post,
    path = "/auth/signup",
    tag = "auth",
    request_body = Signup,
    responses(
        (status = 201, description = "Created.", body = UserView),
        (status = 400, response = MalformedRequest),
        (status = 409, description = "`email-taken`: an account with this email exists.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn signup(
    State(state): State<AppState>,
    client: ClientInfo,
    JsonBody(body): JsonBody<Signup>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut errors = Vec::new();
    let email = Email::parse(&body.email).map_err(|e| errors.push(field_error("email", e.to_string()))).ok();
    if let Err(e) = state.config.password.check(&body.password) {
        errors.push(field_error("password", e.to_string()));
    }
    let Some(email) = email.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    // Refuse a known email before spending a hash on it; the insert below
    // still maps a concurrent duplicate to the same 409.
    if state.store.credential_by_email(email.key()).await?.is_some() {
        return Err(ApiError::EmailTaken);
    }
    let password_hash = state.passwords.hash(body.password).await?;
    let id = Uuid::now_v7();
    let roles = vec![SIGNUP_ROLE.into()];
    let new = NewUser { id, email, password_hash, roles, now, origin: UserOrigin::Signup };
    let user = state.store.create_user(new, &client.audit(None)).await?;
    state.metrics.audited();
    state.metrics.signup();
    tracing::info!(user_id = %user.id, ip = %client.ip, "user signed up");
    Ok((StatusCode::CREATED, Json(UserView::from(user))))
}

/// Checks a password and opens a session: an access token and a refresh
/// token. Failed checks count towards the login throttle.
#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Logged in.", body = TokenResponse, headers(
            ("Cache-Control" = String, description = "`no-store`"),
            ("Pragma" = String, description = "`no-cache`"),
        )),
        (status = 400, response = MalformedRequest),
        (status = 401, description = "`invalid-credentials`: the same answer for an unknown email and a wrong password.", body = Problem, content_type = PROBLEM_JSON, headers(
            ("WWW-Authenticate" = String, description = "`Bearer realm=\"bouncer\"`"),
        )),
        (status = 403, description = "`account-banned`: the password is right, the account is banned.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    let now = OffsetDateTime::now_utc();
    let policy = &state.config.password;
    // Over-long input cannot be a valid password: refuse before any hashing.
    if policy.exceeds_max(&body.password) {
        return Err(field_error_response(
            "password",
            format!("must be at most {} characters", policy.max_length),
        ));
    }
    // Measured as typed (trimmed), like signup: lower-casing can lengthen
    // an address, and one that signed up must be able to log in.
    let typed = body.email.trim();
    if typed.is_empty() || typed.chars().count() > MAX_EMAIL_LEN {
        return Err(field_error_response("email", format!("must be 1 to {MAX_EMAIL_LEN} characters")));
    }
    // It names the throttle key and the lookup: both are stored text.
    storable_text("email", typed)?;
    let email_key = lookup_key(typed);
    let account_key = format!("account:{email_key}");
    let attempt = begin_attempt(&state, &account_key, &client, now, |m| m.login("throttled")).await?;

    // Unknown emails verify against a dummy hash: same status, body, work
    // and store round trips as a wrong password.
    let credential = state.store.credential_by_email(&email_key).await?;
    let verified = match &credential {
        Some(c) => state.passwords.verify(body.password.clone(), c.password_hash.clone()).await?,
        None => {
            state.passwords.verify_dummy(body.password.clone()).await?;
            Verified { matches: false, needs_rehash: false }
        }
    };
    state.metrics.password_verified();
    let known = credential.as_ref().map(|c| c.user.id);
    let Some(credential) = credential.filter(|_| verified.matches) else {
        let end = match known {
            Some(user) => AttemptEnd::WrongPassword { user, email_key: &email_key },
            None => AttemptEnd::UnknownEmail { email_key: &email_key },
        };
        state.store.finish_login_attempt(attempt, end, now, &client.audit(None)).await?;
        state.metrics.audited();
        state.metrics.login("invalid_credentials");
        tracing::info!(ip = %client.ip, "login failed");
        return Err(ApiError::InvalidCredentials);
    };
    let user = credential.user;
    if user.is_banned() {
        // The right password: not a guess, so the attempt is forgiven.
        let end = AttemptEnd::Banned { user: user.id, email_key: &email_key };
        state.store.finish_login_attempt(attempt, end, now, &client.audit(None)).await?;
        state.metrics.audited();
        state.metrics.login("banned");
        return Err(ApiError::Banned);
    }
    if verified.needs_rehash {
        match state.passwords.hash(body.password).await {
            Ok(hash) => {
                if !state.store.replace_password_hash(user.id, &credential.password_hash, &hash).await? {
                    tracing::info!(user_id = %user.id, "password changed during login; rehash skipped");
                }
            }
            Err(e) => {
                tracing::warn!(user_id = %user.id, error = %e, "rehash on login failed; keeping the old hash")
            }
        }
    }

    let refresh = RefreshToken::from_random(random_bytes()?);
    let session_id = Uuid::now_v7();
    let new = NewSession {
        id: session_id,
        user_id: user.id,
        refresh_token: refresh.hash(),
        now,
        expires_at: now + state.config.refresh_token_ttl.get(),
        attempt: Some(SettledAttempt { id: attempt, account_key }),
    };
    state.store.create_session(new, &client.audit(None)).await?;
    state.metrics.audited();
    let response = token_response(&state, &user, session_id, &refresh, now)?;
    state.metrics.login("succeeded");
    tracing::info!(user_id = %user.id, session_id = %session_id, ip = %client.ip, "login succeeded");
    Ok(response)
}

/// Rotates a refresh token: answers a new access token and a new refresh
/// token; the presented one stops working. Presenting an already-rotated
/// token revokes its whole session (reuse detection).
#[utoipa::path(
    post,
    path = "/auth/refresh",
    tag = "auth",
    request_body = RefreshBody,
    responses(
        (status = 200, description = "Rotated.", body = TokenResponse, headers(
            ("Cache-Control" = String, description = "`no-store`"),
            ("Pragma" = String, description = "`no-cache`"),
        )),
        (status = 400, response = MalformedRequest),
        (status = 401, description = "`invalid-token`: the refresh token is unknown, expired, revoked or reused.", body = Problem, content_type = PROBLEM_JSON, headers(
            ("WWW-Authenticate" = String, description = "`Bearer realm=\"bouncer\"`"),
        )),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn refresh(
    State(state): State<AppState>,
    client: ClientInfo,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<Response, ApiError> {
    let now = OffsetDateTime::now_utc();
    let Some(presented) = token::hash_presented(&body.refresh_token) else {
        state.metrics.refresh("invalid");
        return Err(ApiError::InvalidRefreshToken);
    };
    let next = RefreshToken::from_random(random_bytes()?);
    // The rotation is committed before an access token is minted.
    match state.store.rotate_refresh_token(presented, next.hash(), now, &client.audit(None)).await? {
        Rotation::Rotated { session, user } => {
            state.metrics.audited();
            let response = token_response(&state, &user, session.id, &next, now)?;
            state.metrics.refresh("rotated");
            Ok(response)
        }
        Rotation::Reused { session_id, user_id, revocation } => {
            state.announce(&[revocation]);
            state.metrics.audited();
            state.metrics.refresh("reuse_detected");
            tracing::warn!(%user_id, %session_id, ip = %client.ip, "refresh token reuse detected; session revoked");
            Err(ApiError::InvalidRefreshToken)
        }
        Rotation::Invalid => {
            state.metrics.refresh("invalid");
            Err(ApiError::InvalidRefreshToken)
        }
    }
}

/// Always 204: logging out an unknown or already-revoked token is not an
/// error (as with RFC 7009 revocation), and answering differently would
/// tell a prober which tokens exist.
#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "auth",
    request_body = RefreshBody,
    responses(
        (status = 204, description = "The session of this refresh token (if any) is revoked."),
        (status = 400, response = MalformedRequest),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn logout(
    State(state): State<AppState>,
    client: ClientInfo,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    let now = OffsetDateTime::now_utc();
    if let Some(presented) = token::hash_presented(&body.refresh_token)
        && let Some(revocation) =
            state.store.revoke_session_by_token(presented, now, &client.audit(None)).await?
    {
        state.announce(std::slice::from_ref(&revocation));
        state.metrics.audited();
        state.metrics.logout("session");
        tracing::info!(session_id = %revocation.id, "session logged out");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes every session of the caller, this one included.
#[utoipa::path(
    post,
    path = "/auth/logout-all",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Every session revoked."),
        (status = 401, response = Unauthenticated),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn logout_all(
    State(state): State<AppState>,
    client: ClientInfo,
    auth: Authenticated,
) -> Result<StatusCode, ApiError> {
    let now = OffsetDateTime::now_utc();
    let ctx = client.audit(Some(auth.user.id.to_string()));
    let revoked = state.store.revoke_all_sessions(auth.user.id, now, &ctx).await?;
    state.announce(&revoked);
    state.metrics.audited();
    state.metrics.logout("all");
    tracing::info!(user_id = %auth.user.id, sessions = revoked.len(), "all sessions logged out");
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a password check under the login throttle: refuses with 429 when
/// the account or the client IP has too many recent failures; otherwise
/// the attempt is counted (as a failure until settled) and its id returned.
/// Reserves a throttled attempt on `account_key` and the client's IP;
/// `throttled` counts a refusal in the caller's metric.
pub(super) async fn begin_attempt(
    state: &AppState,
    account_key: &str,
    client: &ClientInfo,
    now: OffsetDateTime,
    throttled: fn(&crate::metrics::Metrics),
) -> Result<Uuid, ApiError> {
    let limits = &state.config.login_throttle;
    let attempt = LoginAttempt {
        id: Uuid::now_v7(),
        keys: vec![
            (account_key.to_owned(), limits.max_failures),
            (format!("ip:{}", client.ip), limits.max_failures_per_ip),
        ],
        window: limits.window.get(),
        now,
    };
    match state.store.begin_login_attempt(&attempt).await? {
        ThrottleDecision::Allow => Ok(attempt.id),
        ThrottleDecision::Deny { retry_after_secs } => {
            throttled(&state.metrics);
            Err(ApiError::Throttled { retry_after_secs })
        }
    }
}

fn token_response(
    state: &AppState,
    user: &User,
    session_id: Uuid,
    refresh: &RefreshToken,
    now: OffsetDateTime,
) -> Result<Response, ApiError> {
    let claims = AccessClaims::issue(
        NewAccessToken {
            issuer: &state.config.issuer,
            audience: &state.config.audience,
            user_id: user.id,
            session_id,
            email: &user.email,
            roles: &user.roles,
            ttl: state.config.access_token_ttl.get(),
            jti: Uuid::new_v4(),
        },
        now,
    );
    let access_token = state.keys.sign(&claims, now).map_err(|e| ApiError::Internal(e.to_string()))?;
    let body = TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: claims.expires_in(now),
        refresh_token: refresh.expose().to_owned(),
    };
    let mut response = Json(body).into_response();
    // RFC 6749 §5.1: token responses must not be cached.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn random_bytes() -> Result<[u8; REFRESH_TOKEN_BYTES], ApiError> {
    super::random()
}

fn field_error(field: &str, message: String) -> bouncer_core::problem::FieldError {
    bouncer_core::problem::FieldError { field: field.into(), message }
}

fn field_error_response(field: &str, message: String) -> ApiError {
    ApiError::Validation(vec![field_error(field, message)])
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::json;

    use crate::testing::{app_with, call};

    /// Lower-casing lengthens `İ` (one character) into `i̇` (two): an
    /// address of 254 characters as typed must still log in.
    #[tokio::test]
    async fn an_address_that_signed_up_can_log_in_whatever_its_lower_case() {
        let (app, _dir) = app_with(|_| {}).await;
        let email = format!("{}@example.com", "İ".repeat(242));
        assert_eq!(email.chars().count(), 254);
        let credentials = json!({"email": email, "password": "correct horse battery"});
        assert_eq!(
            call(&app, "POST", "/auth/signup", Some(credentials.clone())).await.0,
            StatusCode::CREATED
        );
        assert_eq!(call(&app, "POST", "/auth/login", Some(credentials)).await.0, StatusCode::OK);
    }

    /// PostgreSQL cannot store U+0000: a NUL in the login email (the
    /// throttle key and the lookup) is refused before the store sees it,
    /// on every backend; in the password it is just a character.
    #[tokio::test]
    async fn a_nul_in_stored_text_is_a_validation_error() {
        let (app, _dir) = app_with(|_| {}).await;
        let (status, _, body) =
            call(&app, "POST", "/auth/login", Some(json!({"email": "a\u{0}@b.co", "password": "x"}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["errors"][0]["field"], "email");
        let nul_password = json!({"email": "nul@example.com", "password": "correct horse\u{0}battery"});
        assert_eq!(
            call(&app, "POST", "/auth/signup", Some(nul_password.clone())).await.0,
            StatusCode::CREATED
        );
        assert_eq!(call(&app, "POST", "/auth/login", Some(nul_password)).await.0, StatusCode::OK);
    }
}
