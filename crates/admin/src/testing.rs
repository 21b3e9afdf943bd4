//! Test helpers: the whole application on a fresh SQLite store, driven
//! in-process with `oneshot` (no socket).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{HeaderMap, Request, StatusCode, header},
};
use bouncer_core::{config::AdminConfig, password::HashParams};
use serde_json::Value;
use tower::ServiceExt;

use crate::{AppState, router};

/// The router on a migrated SQLite store in a temp dir (kept alive by the
/// returned guard), with a cheap hash and `adjust` applied to the config.
pub async fn app_with(adjust: impl FnOnce(&mut AdminConfig)) -> (Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = bouncer_store::open(&format!("sqlite://{}/b.db", dir.path().display()), 1).await.unwrap();
    store.migrate().await.unwrap();
    let mut config = AdminConfig { keys_dir: dir.path().join("keys"), ..AdminConfig::default() };
    config.password.hash = HashParams { memory_kib: 64, iterations: 1, parallelism: 1 };
    adjust(&mut config);
    let bus = Arc::new(bouncer_shared_state::RevocationBus::in_process());
    (router(AppState::new(config, store, bus).unwrap()), dir)
}

/// One request from 127.0.0.1; a `body` is sent as JSON.
pub async fn call(
    app: &Router,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(path);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let body = body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty);
    let mut request = request.body(body).unwrap();
    request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, axum::body::to_bytes(body, 1 << 22).await.unwrap().to_vec())
}
