//! The HTTP routes, one module per area.
//!
//! Every route is registered with `routes!`, which reads the handler's
//! `#[utoipa::path]`: the method and path the router serves are the ones the
//! OpenAPI document states, and a handler cannot be routed without being
//! described. Do not add routes with a plain `.route(...)`.

mod admin;
mod api_keys;
mod auth;
mod clients;
mod oauth;
mod ops;
mod users;

pub use ops::OpenApiJson;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{AppState, error::ApiError, openapi::ApiDoc};

/// Every route, with the OpenAPI description gathered from its handler.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::signup))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::logout_all))
        .routes(routes!(users::me))
        .routes(routes!(users::change_password))
        .routes(routes!(api_keys::list_own_keys, api_keys::create_key))
        .routes(routes!(api_keys::delete_own_key))
        .routes(routes!(api_keys::list_keys))
        .routes(routes!(api_keys::delete_key))
        .routes(routes!(admin::list_users))
        .routes(routes!(admin::get_user, admin::delete_user))
        .routes(routes!(admin::set_roles))
        .routes(routes!(admin::ban))
        .routes(routes!(admin::unban))
        .routes(routes!(admin::list_roles, admin::create_role))
        .routes(routes!(admin::delete_role))
        .routes(routes!(admin::list_audit))
        .routes(routes!(clients::list_clients, clients::create_client))
        .routes(routes!(clients::get_client, clients::delete_client))
        .routes(routes!(clients::rotate_secret))
        .routes(routes!(oauth::token))
        .routes(routes!(ops::jwks))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi_json))
}

/// `N` bytes from the operating system's generator, for secrets.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(bytes)
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
