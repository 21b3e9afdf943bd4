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
    throttle::{self, ThrottleDecision},
    token::{self, REFRESH_TOKEN_BYTES, RefreshToken},
};
use bouncer_store::{NewSession, NewUser, Rotation, User};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::users::UserView;
use crate::{
    AppState,
    error::ApiError,
    extract::{Authenticated, ClientInfo, JsonBody},
    passwords::Verified,
};

/// `{email, password}`. No `Debug`: it holds a password.
#[derive(Deserialize)]
pub struct Credentials {
    email: String,
    password: String,
}

#[derive(Deserialize)]
pub struct RefreshBody {
    refresh_token: String,
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    refresh_token: String,
}

pub async fn signup(
    State(state): State<AppState>,
    client: ClientInfo,
    JsonBody(body): JsonBody<Credentials>,
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
    let user = state
        .store
        .create_user(NewUser {
            id: Uuid::now_v7(),
            email,
            password_hash,
            roles: vec![SIGNUP_ROLE.into()],
            now,
        })
        .await?;
    state.metrics.signup();
    tracing::info!(user_id = %user.id, ip = %client.ip, "user signed up");
    Ok((StatusCode::CREATED, Json(UserView::from(user))))
}

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
    let email_key = lookup_key(&body.email);
    if email_key.is_empty() || email_key.chars().count() > MAX_EMAIL_LEN {
        return Err(field_error_response("email", format!("must be 1 to {MAX_EMAIL_LEN} characters")));
    }
    let account_key = format!("account:{email_key}");
    let ip_key = format!("ip:{}", client.ip);
    let account_failures = check_throttle(&state, &account_key, &ip_key, now).await?;

    // Unknown emails verify against a dummy hash: same status, body and time.
    let credential = state.store.credential_by_email(&email_key).await?;
    let verified = match &credential {
        Some(c) => state.passwords.verify(body.password.clone(), c.password_hash.clone()).await?,
        None => {
            state.passwords.verify_dummy(body.password.clone()).await?;
            Verified { matches: false, needs_rehash: false }
        }
    };
    state.metrics.password_verified();
    let Some(credential) = credential.filter(|_| verified.matches) else {
        let window = state.config.login_throttle.window.get();
        state.store.record_login_failure(&[account_key, ip_key], now, now - window).await?;
        state.metrics.login("invalid_credentials");
        tracing::info!(ip = %client.ip, "login failed");
        return Err(ApiError::InvalidCredentials);
    };
    let user = credential.user;
    if user.is_banned() {
        state.metrics.login("banned");
        return Err(ApiError::Banned);
    }
    if account_failures > 0 {
        state.store.clear_login_failures(&account_key).await?;
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
    state
        .store
        .create_session(NewSession {
            id: session_id,
            user_id: user.id,
            refresh_token: refresh.hash(),
            now,
            expires_at: now + state.config.refresh_token_ttl.get(),
        })
        .await?;
    let response = token_response(&state, &user, session_id, &refresh, now)?;
    state.metrics.login("succeeded");
    tracing::info!(user_id = %user.id, session_id = %session_id, ip = %client.ip, "login succeeded");
    Ok(response)
}

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
    match state.store.rotate_refresh_token(presented, next.hash(), now).await? {
        Rotation::Rotated { session, user } => {
            let response = token_response(&state, &user, session.id, &next, now)?;
            state.metrics.refresh("rotated");
            Ok(response)
        }
        Rotation::Reused { session_id, user_id } => {
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
pub async fn logout(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    let now = OffsetDateTime::now_utc();
    if let Some(presented) = token::hash_presented(&body.refresh_token)
        && let Some(session_id) = state.store.revoke_session_by_token(presented, now).await?
    {
        state.metrics.logout("session");
        tracing::info!(%session_id, "session logged out");
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn logout_all(State(state): State<AppState>, auth: Authenticated) -> Result<StatusCode, ApiError> {
    let now = OffsetDateTime::now_utc();
    let revoked = state.store.revoke_all_sessions(auth.user.id, now).await?;
    state.metrics.logout("all");
    tracing::info!(user_id = %auth.user.id, sessions = revoked.len(), "all sessions logged out");
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses when the account or the client IP has too many recent failures.
/// Returns the account's failure count, so a successful login clears it
/// only when there is something to clear.
pub(super) async fn check_throttle(
    state: &AppState,
    account_key: &str,
    ip_key: &str,
    now: OffsetDateTime,
) -> Result<u32, ApiError> {
    let limits = &state.config.login_throttle;
    let window = limits.window.get();
    let keys = [account_key.to_owned(), ip_key.to_owned()];
    let seen = state.store.login_failures(&keys, now - window).await?;
    let (account, ip) = match seen[..] {
        [account, ip] => (account, ip),
        _ => return Err(ApiError::Internal("store returned the wrong number of throttle windows".into())),
    };
    let retry_after = [(account, limits.max_failures), (ip, limits.max_failures_per_ip)]
        .into_iter()
        .filter_map(|(seen, max)| match throttle::decide(seen, max, window, now) {
            ThrottleDecision::Deny { retry_after_secs } => Some(retry_after_secs),
            ThrottleDecision::Allow => None,
        })
        .max();
    if let Some(retry_after_secs) = retry_after {
        state.metrics.login("throttled");
        return Err(ApiError::Throttled { retry_after_secs });
    }
    Ok(account.count)
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
    let mut bytes = [0u8; REFRESH_TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(bytes)
}

fn field_error(field: &str, message: String) -> bouncer_core::problem::FieldError {
    bouncer_core::problem::FieldError { field: field.into(), message }
}

fn field_error_response(field: &str, message: String) -> ApiError {
    ApiError::Validation(vec![field_error(field, message)])
}
