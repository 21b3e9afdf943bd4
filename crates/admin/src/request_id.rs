//! Request ids and the per-request access log.
//!
//! Every request gets an id: the `X-Request-Id` the gateway (or client) sent
//! when it is sane, otherwise a fresh UUID. It is echoed in the response,
//! put in every problem document, and available to handlers through a
//! task-local, so error mapping needs no plumbing.

use std::time::Instant;

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use uuid::Uuid;

use crate::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served, if called inside one.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Accepts a client-provided id only when it is short and plain, so it is
/// safe to log and to echo back.
fn sane(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_owned())
}

/// Middleware: assigns the id, counts the response, logs one line at debug.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let id = request.headers().get(REQUEST_ID).and_then(sane).unwrap_or_else(|| Uuid::new_v4().to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let mut response = CURRENT.scope(id.clone(), next.run(request)).await;
    let status = response.status().as_u16();
    state.metrics.record_response(status);
    tracing::debug!(request_id = %id, %method, %path, status, micros = started.elapsed().as_micros() as u64, "request");
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_are_kept() {
        assert_eq!(sane(&HeaderValue::from_static("abc-123_x.y:z")), Some("abc-123_x.y:z".into()));
        for bad in ["", "has space", "semi;colon", "quote\""] {
            assert_eq!(sane(&HeaderValue::from_str(bad).unwrap()), None, "{bad:?}");
        }
        assert_eq!(sane(&HeaderValue::from_str(&"a".repeat(129)).unwrap()), None);
    }
}
