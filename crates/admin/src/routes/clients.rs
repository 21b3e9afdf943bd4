//! `/admin/clients`: service clients, the programs that get access tokens
//! with `POST /oauth/token` instead of a user's password. Admin role only,
//! like the rest of `/admin/*`; every change is audited by the store in
//! its own transaction.
//!
//! A secret is 256 random bits, shown in the one response that creates it
//! and kept only as a SHA-256 hash (`core::credential` says why no slow
//! hash). Rotating adds a secret and lets the previous ones work for
//! `admin.client_secret_overlap`, so a deployment can roll out the new one
//! first; deleting a client revokes its tokens at every gateway.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use bouncer_core::{credential::ClientSecret, problem::FieldError, role::is_valid_role_name};
use bouncer_store::Client;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::admin::path_id;
use crate::{
    AppState,
    error::ApiError,
    extract::{AdminCaller, ClientInfo, JsonBody, storable_text},
    openapi::{
        Forbidden, MalformedRequest, NotFound, PayloadTooLarge, Unauthenticated, Unavailable,
        UnsupportedMediaType, ValidationFailed,
    },
};

/// Longest client name, in characters.
const MAX_NAME: usize = 100;

/// The body of `POST /admin/clients`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClientBody {
    /// For people: what the client is (1 to 100 characters).
    #[schema(min_length = 1, max_length = 100, pattern = r"^[^\x00]*$")]
    name: String,
    /// Roles its tokens may carry at most (existing role names, `GET
    /// /admin/roles`); `scope` narrows them per token.
    #[schema(inline)]
    roles: Vec<super::admin::RoleName>,
}

/// A client as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Client)]
pub struct ClientView {
    /// Also its tokens' `sub` and `client_id`, and its HTTP Basic user name.
    client_id: Uuid,
    name: String,
    /// Sorted by name.
    roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

impl From<Client> for ClientView {
    fn from(c: Client) -> Self {
        Self { client_id: c.id, name: c.name, roles: c.roles, created_at: c.created_at }
    }
}

/// A client just created, with its secret: shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedClient)]
pub struct CreatedClientView {
    client_id: Uuid,
    /// The secret, for `POST /oauth/token`. Not retrievable later.
    client_secret: String,
    name: String,
    roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

/// Every client.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientList {
    /// By creation, oldest first.
    items: Vec<ClientView>,
}

/// A new secret: shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    client_secret: String,
    /// Until when the secrets the client had before keep working.
    #[serde(with = "time::serde::rfc3339")]
    previous_secrets_valid_until: OffsetDateTime,
}

/// Creates a service client.
#[utoipa::path(
    post,
    path = "/admin/clients",
    tag = "clients",
    security(("bearer" = [])),
    request_body = NewClientBody,
    responses(
        (status = 201, description = "Created; `client_secret` is shown this once.", body = CreatedClientView),
        (status = 400, response = MalformedRequest),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn create_client(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    JsonBody(body): JsonBody<NewClientBody>,
) -> Result<(StatusCode, Json<CreatedClientView>), ApiError> {
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
    let roles: Vec<String> = body.roles.into_iter().map(|r| r.0).collect();
    if let Some(bad) = roles.iter().find(|r| !is_valid_role_name(r)) {
        errors.push(FieldError { field: "roles".into(), message: format!("unknown role {bad:?}") });
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let secret = ClientSecret::from_random(super::random()?);
    let new = bouncer_store::NewClient {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        roles,
        secret: secret.hash(),
        now: OffsetDateTime::now_utc(),
    };
    let ctx = client.audit(Some(admin.user.id.to_string()));
    let created = state.store.create_client(new, &ctx).await?;
    state.metrics.audited();
    tracing::info!(client_id = %created.id, admin = %admin.user.id, "client created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedClientView {
            client_id: created.id,
            client_secret: secret.expose().to_owned(),
            name: created.name,
            roles: created.roles,
            created_at: created.created_at,
        }),
    ))
}

/// Lists every client (no secrets).
#[utoipa::path(
    get,
    path = "/admin/clients",
    tag = "clients",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every client, oldest first.", body = ClientList),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list_clients(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<ClientList>, ApiError> {
    let items = state.store.clients().await?.into_iter().map(ClientView::from).collect();
    Ok(Json(ClientList { items }))
}

/// One client (no secret).
#[utoipa::path(
    get,
    path = "/admin/clients/{id}",
    tag = "clients",
    security(("bearer" = [])),
    params(ClientId),
    responses(
        (status = 200, description = "The client.", body = ClientView),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn get_client(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<ClientView>, ApiError> {
    let id = path_id(&id)?;
    let found = state.store.client(id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(found.into()))
}

/// Gives a client a new secret; the previous ones keep working for
/// `admin.client_secret_overlap`.
#[utoipa::path(
    post,
    path = "/admin/clients/{id}/secret",
    tag = "clients",
    security(("bearer" = [])),
    params(ClientId),
    responses(
        (status = 200, description = "The new secret, shown this once.", body = RotatedSecret),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<String>,
) -> Result<Json<RotatedSecret>, ApiError> {
    let id = path_id(&id)?;
    let secret = ClientSecret::from_random(super::random()?);
    let now = OffsetDateTime::now_utc();
    let until = now + state.config.client_secret_overlap.get();
    let ctx = client.audit(Some(admin.user.id.to_string()));
    state.store.rotate_client_secret(id, secret.hash(), until, now, &ctx).await?;
    state.metrics.audited();
    tracing::info!(client_id = %id, admin = %admin.user.id, "client secret rotated");
    Ok(Json(RotatedSecret { client_secret: secret.expose().to_owned(), previous_secrets_valid_until: until }))
}

/// Deletes a client; its tokens are refused by every gateway within a
/// second.
#[utoipa::path(
    delete,
    path = "/admin/clients/{id}",
    tag = "clients",
    security(("bearer" = [])),
    params(ClientId),
    responses(
        (status = 204, description = "Deleted; its tokens are revoked."),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn delete_client(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    client: ClientInfo,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(&id)?;
    let ctx = client.audit(Some(admin.user.id.to_string()));
    let revoked = state.store.delete_client(id, OffsetDateTime::now_utc(), &ctx).await?;
    state.announce(&revoked);
    state.metrics.audited();
    tracing::info!(client_id = %id, admin = %admin.user.id, "client deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The `{id}` of a client route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ClientId {
    /// The client's id; anything that is not a UUID names no client (`404`).
    #[param(value_type = Uuid)]
    #[allow(dead_code)]
    id: String,
}
