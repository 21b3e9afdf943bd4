//! The gateway: a pingora reverse proxy in front of existing HTTP APIs. It
//! matches each request against the route table, verifies the access token
//! against the admin's JWKS, checks revocations and roles, strips any
//! identity headers the client sent, and forwards with its own.
//!
//! The per-request path ([`proxy`]) never touches a database and never
//! blocks: keys, routes and revocations are in memory, refreshed by
//! background tasks.
#![forbid(unsafe_code)]

pub mod identity;
pub mod jwks;
pub mod metrics;
pub mod problem;
pub mod proxy;
pub mod reload;
pub mod revocations;
pub mod token_cache;
pub mod upstream;

use std::{path::Path, sync::Arc};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bouncer_core::{claims::Expectations, config::GatewayConfig, routes::RouteTable};
use pingora::{
    server::{Server, ShutdownWatch, configuration::ServerConf},
    services::background::{BackgroundService, background_service},
};

use crate::{
    jwks::Jwks,
    proxy::{Gateway, LoadedTable},
    revocations::RevocationSet,
};

/// Loads and resolves a route file, or says why not (file:line: reason).
pub fn load_routes(path: &Path) -> Result<LoadedTable, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table = RouteTable::from_yaml(&text, &path.display().to_string()).map_err(|e| e.to_string())?;
    LoadedTable::resolve(table)
}

/// Builds the gateway's state from its configuration.
pub fn build(config: &GatewayConfig) -> Result<Gateway, String> {
    let table = load_routes(&config.routes)?;
    Ok(Gateway {
        table: Arc::new(ArcSwap::from_pointee(table)),
        jwks: Arc::new(Jwks::new(&config.jwks_url)),
        revocations: Arc::new(RevocationSet::default()),
        expectations: Expectations { issuer: config.issuer.clone(), audience: config.audience.clone() },
        trusted_proxies: config.trusted_proxies.clone(),
        verified: token_cache::VerifiedTokens::default(),
        identity_names: identity::IdentityNames::new(&config.identity_headers)?,
        metrics: Arc::new(metrics::GatewayMetrics::new(Arc::new(reload::ReloadStats::default()))),
    })
}

struct KeepKeysFresh(Arc<Jwks>);

#[async_trait]
impl BackgroundService for KeepKeysFresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            () = self.0.keep_fresh() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// A pingora server running the gateway (and anything the caller adds)
/// with our shutdown grace instead of pingora's 300 s.
pub fn server(config: &GatewayConfig, gateway: Gateway) -> Server {
    let grace = config.shutdown_grace.get().as_secs().max(1);
    let conf = ServerConf {
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(grace),
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(background_service("jwks", KeepKeysFresh(gateway.jwks.clone())));
    let reloader = reload::RouteReloader {
        path: config.routes.clone(),
        table: gateway.table.clone(),
        stats: gateway.metrics.reload_stats(),
    };
    server.add_service(background_service("routes", reloader));
    let metrics = metrics::MetricsService { listen: config.metrics_listen, metrics: gateway.metrics.clone() };
    server.add_service(background_service("metrics", metrics));
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, gateway);
    proxy.add_tcp(&config.listen.to_string());
    server.add_service(proxy);
    server
}
