//! The gateway's own HTTP port (`gateway.metrics_listen`): `/healthz`
//! (alive), `/readyz` (keys and revocations loaded) and Prometheus
//! `/metrics`. Never served on the proxied port, where `/metrics`
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

use bouncer_shared_state::{denials::DenialRecorder, limiter::RateLimiter};
use prometheus_client::metrics::gauge::Gauge;

use crate::{access_log::AccessLog, jwks::Jwks, reload::ReloadStats, revocations::RevocationSet};

/// Where the counters kept elsewhere live; mirrored at scrape time.
pub struct Sources {
    pub reloads: Arc<ReloadStats>,
    pub jwks: Arc<Jwks>,
    pub limiter: Arc<RateLimiter>,
    pub denials: Arc<DenialRecorder>,
    pub revocations: Arc<RevocationSet>,
    pub access_log: Arc<AccessLog>,
}

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
    jwks_fetches: Family<Outcome, Counter>,
    store_errors: Counter,
    fallbacks: Counter,
    degraded: Gauge,
    denials_dropped: Counter,
    access_log_dropped: Counter,
    revocations_ready: Gauge,
    sources: Sources,
}

impl GatewayMetrics {
    pub fn new(sources: Sources) -> Self {
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
        let jwks_fetches = Family::<Outcome, Counter>::default();
        registry.register("jwks_fetches", "JWKS fetches by outcome (ok, failed)", jwks_fetches.clone());
        let store_errors = Counter::default();
        registry.register(
            "rate_limit_store_errors",
            "Rate-limit calls to Redis that failed or timed out",
            store_errors.clone(),
        );
        let fallbacks = Counter::default();
        registry.register(
            "rate_limit_fallbacks",
            "Rate-limit decisions taken by on_store_error instead of Redis",
            fallbacks.clone(),
        );
        let degraded = Gauge::default();
        registry.register(
            "rate_limit_degraded",
            "1 while Redis is bypassed for rate limits (on_store_error applies)",
            degraded.clone(),
        );
        let denials_dropped = Counter::default();
        registry.register(
            "audit_denials_dropped",
            "Denials not sent to the audit stream because its queue was full",
            denials_dropped.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access-log lines not written because the writer's queue was full",
            access_log_dropped.clone(),
        );
        let revocations_ready = Gauge::default();
        registry.register(
            "revocations_ready",
            "1 once a complete revocation snapshot is loaded",
            revocations_ready.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            reloads,
            jwks_fetches,
            store_errors,
            fallbacks,
            degraded,
            denials_dropped,
            access_log_dropped,
            revocations_ready,
            sources,
        }
    }

    /// Records one finished request.
    pub fn observe(&self, route: &str, status: u16, decision: &'static str, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { route: route.to_owned(), status, decision }).inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    pub fn reload_stats(&self) -> Arc<ReloadStats> {
        self.sources.reloads.clone()
    }

    fn render(&self) -> String {
        // These are counted where they happen; mirror them here.
        let s = &self.sources;
        for (outcome, n) in [
            ("applied", s.reloads.applied.load(Ordering::Relaxed)),
            ("rejected", s.reloads.rejected.load(Ordering::Relaxed)),
        ] {
            catch_up(&self.reloads.get_or_create(&Outcome { outcome }), n);
        }
        for (outcome, n) in [
            ("ok", s.jwks.refreshed.load(Ordering::Relaxed)),
            ("failed", s.jwks.failed.load(Ordering::Relaxed)),
        ] {
            catch_up(&self.jwks_fetches.get_or_create(&Outcome { outcome }), n);
        }
        catch_up(&self.store_errors, s.limiter.stats.store_errors.load(Ordering::Relaxed));
        catch_up(&self.fallbacks, s.limiter.stats.fallbacks.load(Ordering::Relaxed));
        catch_up(&self.denials_dropped, s.denials.dropped.load(Ordering::Relaxed));
        catch_up(&self.access_log_dropped, s.access_log.dropped.load(Ordering::Relaxed));
        self.degraded.set(i64::from(s.limiter.stats.degraded()));
        self.revocations_ready.set(i64::from(s.revocations.is_ready()));
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Raises a mirrored counter to `n` (counters only grow).
fn catch_up(counter: &Counter, n: u64) {
    let seen = counter.get();
    if n > seen {
        counter.inc_by(n - seen);
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
        let readiness = self.metrics.clone();
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            // Ready once it can decide: keys and revocations loaded. Load
            // balancers and Kubernetes send traffic only then.
            .route(
                "/readyz",
                get(move || {
                    let m = readiness.clone();
                    async move {
                        if m.sources.jwks.current().is_some() && m.sources.revocations.is_ready() {
                            (axum::http::StatusCode::OK, "ready\n")
                        } else {
                            (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                "not ready: keys or revocations not loaded\n",
                            )
                        }
                    }
                }),
            )
            .route(
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
