//! The admin application announces every committed revocation on its bus:
//! driven in-process with `oneshot`, on a real SQLite store.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode, header},
};
use bouncer_admin::{AppState, router};
use bouncer_core::{
    config::AdminConfig,
    password::HashParams,
    revocation::{Revocation, RevocationKind},
};
use bouncer_shared_state::RevocationBus;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut request =
        Request::builder().method(method).uri(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let mut request = request.body(Body::from(body.to_string())).unwrap();
    request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn logout_and_logout_all_are_announced_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = bouncer_store::open(&format!("sqlite://{}/b.db", dir.path().display()), 1).await.unwrap();
    store.migrate().await.unwrap();
    let mut config = AdminConfig { keys_dir: dir.path().join("keys"), ..AdminConfig::default() };
    config.password.hash = HashParams { memory_kib: 64, iterations: 1, parallelism: 1 };
    let bus = Arc::new(RevocationBus::in_process());
    let mut revocations = bus.subscribe();
    let app = router(AppState::new(config, store, bus.clone()).unwrap());

    let credentials = json!({"email": "bus@example.com", "password": "correct horse battery"});
    assert_eq!(call(&app, "POST", "/auth/signup", None, credentials.clone()).await.0, StatusCode::CREATED);
    let (_, first) = call(&app, "POST", "/auth/login", None, credentials.clone()).await;
    let (_, second) = call(&app, "POST", "/auth/login", None, credentials).await;
    assert!(revocations.try_recv().is_err(), "logins revoke nothing");

    let logout = json!({"refresh_token": first["refresh_token"]});
    assert_eq!(call(&app, "POST", "/auth/logout", None, logout).await.0, StatusCode::NO_CONTENT);
    let r: Revocation = revocations.try_recv().expect("logout announced");
    assert_eq!((r.kind, r.reason.as_str()), (RevocationKind::Session, "logout"));

    let token = second["access_token"].as_str().unwrap();
    assert_eq!(
        call(&app, "POST", "/auth/logout-all", Some(token), json!({})).await.0,
        StatusCode::NO_CONTENT
    );
    let user = revocations.try_recv().expect("logout-all announced");
    assert_eq!((user.kind, user.reason.as_str()), (RevocationKind::User, "logout_all"));
    let session = revocations.try_recv().expect("the remaining session too");
    assert_eq!(session.kind, RevocationKind::Session);
    assert!(revocations.try_recv().is_err(), "nothing more");
}
