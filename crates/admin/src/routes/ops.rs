//! Operational endpoints: JWKS, liveness, readiness, metrics and the
//! OpenAPI document.

use std::time::Duration;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::{AppState, error::ApiError, keys::Jwks, openapi::Unavailable};

/// Readiness waits at most this long for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Media type of `GET /metrics`.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The public keys that verify access tokens. Cacheable briefly: gateways
/// also refetch when they meet an unknown `kid`.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "ops",
    responses(
        (status = 200, description = "The keys: not yet signing, signing, and retired ones whose tokens may still be alive.", body = Jwks, headers(
            ("Cache-Control" = String, description = "`public, max-age=60`"),
        )),
    ),
)]
pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.keys.jwks(OffsetDateTime::now_utc())).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    response
}

/// `{"status":"ok"}`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(value_type = String, pattern = "^ok$")]
    status: &'static str,
}

/// Liveness: the process answers. Never touches the database, so a
/// database outage does not make an orchestrator restart healthy replicas.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "The process answers.", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `{"status":"ready","database":…}`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    #[schema(value_type = String, pattern = "^ready$")]
    status: &'static str,
    /// `postgres` or `sqlite`.
    #[schema(value_type = String, pattern = "^(postgres|sqlite)$")]
    database: &'static str,
}

/// Readiness: the database answers within two seconds.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "The database answered.", body = Ready),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(Ready { status: "ready", database: state.store.backend() })),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::Unavailable("database ping timed out".into())),
    }
}

/// Prometheus counters of this process (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses(
        (status = 200, description = "The `bouncer_admin_*` series.", body = String, content_type = "application/openmetrics-text"),
    ),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(state.passwords.queued());
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    response
}

/// The finished OpenAPI document, serialized once when the router is built.
#[derive(Clone, Debug)]
pub struct OpenApiJson(pub Bytes);

/// This document: OpenAPI 3.1, generated from the handlers.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object),
    ),
)]
pub async fn openapi_json(Extension(OpenApiJson(document)): Extension<OpenApiJson>) -> Response {
    let mut response = document.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
