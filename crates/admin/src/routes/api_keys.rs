//! API keys: long-lived credentials a user makes for a program
//! (`/users/me/api-keys`), and their administration (`/admin/api-keys`).
//!
//! A key reads `bk_<prefix>_<secret>` and is shown in the one response that
//! creates it; the store keeps its prefix (to find it, and to name it in
//! lists) and a SHA-256 of the whole key. Its roles are a subset of the
//! owner's, and a gateway lets it act only with the roles the owner still
//! holds (`core::credential::key_grants`).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use bouncer_core::{
    credential::{ApiKey, PREFIX_BYTES, SECRET_BYTES, within},
    problem::FieldError,
};
use bouncer_store::{ApiKeyRecord, NewApiKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    AppState,
    error::ApiError,
    extract::{AdminCaller, Authenticated, ClientInfo, JsonBody, QueryParams, storable_text},
    openapi::{
        Forbidden, MalformedRequest, NotFound, PayloadTooLarge, Unauthenticated, Unavailable,
        UnsupportedMediaType, ValidationFailed,
    },
};

/// Longest key name, in characters.
const MAX_NAME: usize = 100;
/// Longest lifetime a key may be given: ten years, in seconds.
const MAX_EXPIRES_IN: i64 = 3650 * 86_400;

/// The body of `POST /users/me/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKeyBody {
    /// For people: what the key is for (1 to 100 characters).
    #[schema(min_length = 1, max_length = 100, pattern = r"^[^\x00]*$")]
    name: String,
    /// Roles the key acts with, a subset of the caller's; default: all of them.
    #[schema(inline)]
    roles: Option<Vec<super::admin::RoleName>>,
    /// Seconds until the key expires (1 to 10 years' worth); default: never.
    #[schema(minimum = 1, maximum = 315_360_000)]
    expires_in: Option<i64>,
}

/// A key as listed: never the key itself.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ApiKey)]
pub struct ApiKeyView {
    id: Uuid,
    /// The owner.
    user_id: Uuid,
    name: String,
    /// The public part of the key (`bk_<prefix>_…`), to recognise it.
    prefix: String,
    /// Sorted by name.
    roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// `null`: never.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    expires_at: Option<OffsetDateTime>,
}

impl From<ApiKeyRecord> for ApiKeyView {
    fn from(k: ApiKeyRecord) -> Self {
        Self {
            id: k.id,
            user_id: k.user_id,
            name: k.name,
            prefix: k.prefix,
            roles: k.roles,
            created_at: k.created_at,
            expires_at: k.expires_at,
        }
    }
}

/// A key just made: `key` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedApiKey)]
pub struct CreatedApiKeyView {
    id: Uuid,
    name: String,
    /// `bk_<prefix>_<secret>`: send it as `Authorization: Bearer …` or
    /// `X-API-Key`. Not retrievable later.
    key: String,
    prefix: String,
    roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    expires_at: Option<OffsetDateTime>,
}

/// A list of keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    /// By creation, oldest first.
    items: Vec<ApiKeyView>,
}

/// The `{id}` of a key route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ApiKeyId {
    /// The key's id; anything that is not a UUID names no key (`404`).
    #[param(value_type = Uuid)]
    #[allow(dead_code)]
    id: String,
}

/// The query of `GET /admin/api-keys`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApiKeysQuery {
    /// Only this user's keys.
    #[param(value_type = Option<Uuid>)]
    user: Option<String>,
}

/// Makes an API key for the caller.
#[utoipa::path(
    post,
    path = "/users/me/api-keys",
    tag = "users",
    security(("bearer" = [])),
    request_body = NewApiKeyBody,
    responses(
        (status = 201, description = "Created; `key` is shown this once.", body = CreatedApiKeyView),
        (status = 400, response = MalformedRequest),
        (status = 401, response = Unauthenticated),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn create_key(
    State(state): State<AppState>,
    auth: Authenticated,
    client: ClientInfo,
    JsonBody(body): JsonBody<NewApiKeyBody>,
) -> Result<(StatusCode, Json<CreatedApiKeyView>), ApiError> {
    let mut errors = Vec::new();
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        errors.push(FieldError {
            field: "name".into(),
            message: format!("must be 1 to {MAX_NAME} characters"),
        });
    } else if let Err(e) = storable_text("name", name) {
        errors.push(e);
    }
    // The roles the caller holds now (the store's, not the token's).
    let held = &auth.user.roles;
    let mut roles = body.roles.map_or_else(|| held.clone(), |r| r.into_iter().map(|r| r.0).collect());
    roles.sort();
    roles.dedup();
    if let Err(role) = within(&roles, held) {
        errors.push(FieldError {
            field: "roles".into(),
            message: format!("{role:?} is not one of your roles"),
        });
    }
    if body.expires_in.is_some_and(|s| !(1..=MAX_EXPIRES_IN).contains(&s)) {
        errors.push(FieldError {
            field: "expires_in".into(),
            message: format!("must be 1 to {MAX_EXPIRES_IN} seconds"),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let now = OffsetDateTime::now_utc();
    let key = ApiKey::from_random(super::random::<PREFIX_BYTES>()?, super::random::<SECRET_BYTES>()?);
    let new = NewApiKey {
        id: Uuid::now_v7(),
        user_id: auth.user.id,
        name: name.to_owned(),
        prefix: key.prefix().to_owned(),
        hash: key.hash(),
        roles,
        now,
        expires_at: body.expires_in.map(|s| now + time::Duration::seconds(s)),
    };
    let ctx = client.audit(Some(auth.user.id.to_string()));
    let created = state.store.create_api_key(new, &ctx).await?;
    state.metrics.audited();
    state.keys_changed([auth.user.id]).await;
    tracing::info!(key_id = %created.id, prefix = %created.prefix, user_id = %auth.user.id, "api key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKeyView {
            id: created.id,
            name: created.name,
            key: key.expose().to_owned(),
            prefix: created.prefix,
            roles: created.roles,
            expires_at: created.expires_at,
        }),
    ))
}

/// The caller's API keys (never the keys themselves).
#[utoipa::path(
    get,
    path = "/users/me/api-keys",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's keys, oldest first.", body = ApiKeyList),
        (status = 401, response = Unauthenticated),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list_own_keys(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<ApiKeyList>, ApiError> {
    list(&state, Some(auth.user.id)).await
}

/// Deletes one of the caller's keys; gateways refuse it within a second.
#[utoipa::path(
    delete,
    path = "/users/me/api-keys/{id}",
    tag = "users",
    security(("bearer" = [])),
    params(ApiKeyId),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthenticated),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn delete_own_key(
    State(state): State<AppState>,
    auth: Authenticated,
    client: ClientInfo,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let ctx = client.audit(Some(auth.user.id.to_string()));
    revoke(&state, &id, Some(auth.user.id), &ctx).await
}

/// Every user's API keys, or one user's.
#[utoipa::path(
    get,
    path = "/admin/api-keys",
    tag = "admin",
    security(("bearer" = [])),
    params(ApiKeysQuery),
    responses(
        (status = 200, description = "The keys, oldest first.", body = ApiKeyList),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list_keys(
    State(state): State<AppState>,
    _admin: AdminCaller,
    QueryParams(q): QueryParams<ApiKeysQuery>,
) -> Result<Json<ApiKeyList>, ApiError> {
    let user = q
        .user
        .as_deref()
        .map(|u| super::admin::path_id(u).map_err(|_| ApiError::field("user", "not a user id")))
        .transpose()?;
    list(&state, user).await
}

/// Deletes anyone's API key.
#[utoipa::path(
    delete,
    path = "/admin/api-keys/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(ApiKeyId),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn delete_key(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let ctx = client.audit(Some(admin.user.id.to_string()));
    revoke(&state, &id, None, &ctx).await
}

async fn list(state: &AppState, user: Option<Uuid>) -> Result<Json<ApiKeyList>, ApiError> {
    let items = state.store.api_keys(user).await?.into_iter().map(ApiKeyView::from).collect();
    Ok(Json(ApiKeyList { items }))
}

/// Deletes key `id` (of `owner` only, when given).
async fn revoke(
    state: &AppState,
    id: &str,
    owner: Option<Uuid>,
    ctx: &bouncer_core::audit::AuditContext,
) -> Result<StatusCode, ApiError> {
    let id = super::admin::path_id(id)?;
    let key = state.store.revoke_api_key(id, owner, OffsetDateTime::now_utc(), ctx).await?;
    state.metrics.audited();
    state.keys_changed([key.user_id]).await;
    tracing::info!(key_id = %key.id, prefix = %key.prefix, user_id = %key.user_id, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}
