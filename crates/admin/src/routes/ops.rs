//! Operational endpoints: JWKS, liveness, readiness and metrics.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use time::OffsetDateTime;

use crate::{AppState, error::ApiError};

/// Readiness waits at most this long for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The public keys that verify access tokens. Cacheable briefly: gateways
/// also refetch when they meet an unknown `kid`.
pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.keys.jwks(OffsetDateTime::now_utc())).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    response
}

/// Liveness: the process answers. Never touches the database, so a
/// database outage does not make an orchestrator restart healthy replicas.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers within two seconds.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({ "status": "ready", "database": state.store.backend() }))),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::Unavailable("database ping timed out".into())),
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(state.passwords.queued());
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
