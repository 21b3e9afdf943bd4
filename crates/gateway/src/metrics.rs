//! The gateway's own HTTP port (`gateway.metrics_listen`): `/healthz` and
//! Prometheus `/metrics`. Never served on the proxied port, where `/metrics`
//! is just another path subject to the route table.

use std::{net::SocketAddr, sync::Arc, sync::atomic::Ordering, time::Duration};

use async_trait::async_trait;
use axum::{Router, http::header, response::IntoResponse, routing::get};
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::reload::ReloadStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// Counters of the proxied traffic.
pub struct GatewayMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Histogram,
    reloads: Family<Outcome, Counter>,
    reload_stats: Arc<ReloadStats>,
}

impl GatewayMetrics {
    pub fn new(reload_stats: Arc<ReloadStats>) -> Self {
        let mut registry = Registry::with_prefix("bouncer_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency =
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        let reloads = Family::<Outcome, Counter>::default();
        registry.register("requests", "Requests by route, status and decision", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request to logged response",
            latency.clone(),
        );
        registry.register(
            "route_reloads",
            "Route-table reloads by outcome (applied, rejected)",
            reloads.clone(),
        );
        Self { registry, requests, latency, reloads, reload_stats }
    }

    /// Records one finished request.
    pub fn observe(&self, route: &str, status: u16, decision: &'static str, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { route: route.to_owned(), status, decision }).inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    pub fn reload_stats(&self) -> Arc<ReloadStats> {
        self.reload_stats.clone()
    }

    fn render(&self) -> String {
        // Reload outcomes are counted where they happen; mirror them here.
        for (outcome, n) in [
            ("applied", self.reload_stats.applied.load(Ordering::Relaxed)),
            ("rejected", self.reload_stats.rejected.load(Ordering::Relaxed)),
        ] {
            let counter = self.reloads.get_or_create(&Outcome { outcome });
            let seen = counter.get();
            if n > seen {
                counter.inc_by(n - seen);
            }
        }
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/healthz` and `/metrics` on the metrics port.
pub struct MetricsService {
    pub listen: SocketAddr,
    pub metrics: Arc<GatewayMetrics>,
}

#[async_trait]
impl BackgroundService for MetricsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let metrics = self.metrics.clone();
        let app = Router::new().route("/healthz", get(|| async { "ok\n" })).route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                        .into_response()
                }
            }),
        );
        let listener = match tokio::net::TcpListener::bind(self.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %self.listen, error = %e, "cannot listen for metrics");
                return;
            }
        };
        tracing::info!(addr = %self.listen, "gateway metrics listening");
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    }
}
