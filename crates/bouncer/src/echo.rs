//! `bouncer echo`: a tiny upstream that answers every request with a JSON
//! echo of its method, path, query and headers — what the gateway actually
//! forwarded — for the quickstart, tests and benchmarks.

use std::net::SocketAddr;

use anyhow::Context;
use axum::{Json, Router, extract::Request};
use serde_json::{Map, Value, json};

async fn echo(request: Request) -> Json<Value> {
    let mut headers = Map::new();
    for (name, value) in request.headers() {
        let value = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.clone(), value]),
            None => {
                headers.insert(name.as_str().to_owned(), value);
            }
        }
    }
    Json(json!({
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "query": request.uri().query(),
        "headers": headers,
    }))
}

pub fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(listen, crate::signal::shutdown()))
}

/// Serves the echo app on `listen` until `stop` resolves.
pub async fn serve(
    listen: SocketAddr,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(addr = %listener.local_addr()?, "echo listening");
    axum::serve(listener, Router::new().fallback(echo)).with_graceful_shutdown(stop).await?;
    Ok(())
}
