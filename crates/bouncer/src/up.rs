//! `bouncer up`: the admin service, the gateway and (when the routes name an
//! upstream `echo`) the echo upstream in one process, on the embedded
//! default — SQLite, in-memory buckets, revocations and denials in-process —
//! so the whole pipeline runs with nothing else installed. With `redis`
//! configured, the shared state lives there instead (as for replicas).
//!
//! pingora owns the process: the gateway is its proxy service, and the
//! admin, the revocation feed and echo run as its background services (each
//! on a runtime pingora creates, which is where their clients must be
//! created too).

use std::{net::SocketAddr, sync::Arc};

use async_trait::async_trait;
use bouncer_admin::service::{self, GatewayHooks, LocalGateway, Migrations, Topology};
use bouncer_core::{
    config::{AccessLogFormat, Config},
    credential::KeyUpdate,
    revocation::Revocation,
};
use bouncer_gateway::{
    SharedState,
    api_keys::ApiKeySet,
    jwks::{Jwks, LocalJwks},
    revocations::RevocationSet,
};
use bouncer_shared_state::{
    RevocationBus,
    denials::{DenialSink, DenialSource},
    limiter::RateLimiter,
};
use pingora::{
    server::ShutdownWatch,
    services::background::{BackgroundService, background_service},
};
use tokio::sync::Mutex;

/// Name of the upstream `bouncer up` serves itself with the echo app.
pub const ECHO_UPSTREAM: &str = "echo";

pub fn run(config: Config, log_format: AccessLogFormat) -> anyhow::Result<()> {
    let (shared, denial_source) = match &config.redis {
        Some(_) => {
            // The admin beside it hands the keys over (and writes them to
            // Redis for the other replicas): no need to read them back.
            let shared = SharedState { key_feed: None, ..SharedState::redis(&config)? };
            (shared, None)
        }
        None => {
            let bus = Arc::new(RevocationBus::in_process());
            let (to_admin, from_gateway) = tokio::sync::mpsc::channel(64);
            let shared = SharedState {
                limiter: Arc::new(RateLimiter::in_memory()),
                // Subscribed before the admin starts so no revocation slips past.
                early_events: Some(bus.subscribe()),
                bus,
                bus_decides_ready: false,
                denial_sink: Arc::new(DenialSink::InProcess(to_admin)),
                key_feed: None,
            };
            (shared, Some(DenialSource::InProcess(from_gateway)))
        }
    };
    let bus = shared.bus.clone();
    // The admin below hands its key ring over before it listens.
    // And its API keys, then every change to them.
    let api_keys = Arc::new(ApiKeySet::default());
    let (gateway, denials) = bouncer_gateway::build(
        &config.gateway,
        shared.limiter.clone(),
        Jwks::in_process(),
        log_format,
        api_keys.clone(),
    )?;
    let echo = gateway
        .pipeline
        .table
        .load()
        .table
        .upstreams
        .get(ECHO_UPSTREAM)
        .and_then(|u| u.targets.first())
        .map(|t| t.parse::<SocketAddr>())
        .transpose()
        .map_err(|e| anyhow::anyhow!("upstream {ECHO_UPSTREAM:?} must be an ip:port to serve it: {e}"))?;
    let revocations = gateway.pipeline.revocations.clone();
    let jwks = gateway.pipeline.jwks.clone();
    let drain = gateway.drain.clone();
    // In-process denials are written by this admin: the stop waits for it to
    // write the gateway's last flush (the channel closes after it).
    let denials_in_process =
        denial_source.map(|source| (source, Box::new(drain.finishing()) as Box<dyn Send>));
    let mut server = bouncer_gateway::server(&config.gateway, gateway, denials, shared);
    let hooks = Arc::new(Hooks { set: revocations, jwks, api_keys });
    let local = LocalGateway { bus, denials: denials_in_process, hooks };
    let admin = Admin { config: config.clone(), local: Mutex::new(Some(local)) };
    server.add_service(background_service("admin", admin));
    if let Some(addr) = echo {
        server.add_service(background_service("echo", Echo(addr)));
    }
    tracing::info!(gateway = %config.gateway.listen, admin = %config.admin.listen, echo = ?echo, "bouncer up");
    bouncer_gateway::run(server, drain, config.gateway.shutdown_grace.get())
}

struct Admin {
    config: Config,
    /// What the admin shares with the gateway; taken once at start.
    local: Mutex<Option<LocalGateway>>,
}

/// Hands the in-process gateway its keys and revocations.
struct Hooks {
    set: Arc<RevocationSet>,
    jwks: Arc<Jwks>,
    api_keys: Arc<ApiKeySet>,
}

impl GatewayHooks for Hooks {
    fn revocations(&self, recent: &[Revocation], complete: bool) {
        for r in recent {
            self.set.apply(r);
        }
        if complete {
            self.set.mark_ready();
        }
    }

    fn keys(&self, jwks: LocalJwks) -> Result<(), String> {
        self.jwks.install(jwks).map(drop).map_err(|e| e.to_string())
    }

    fn api_keys(&self, update: &KeyUpdate) {
        self.api_keys.apply(update);
    }
}

#[async_trait]
impl BackgroundService for Admin {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(local) = self.local.lock().await.take() else { return };
        let admin = match service::start(&self.config, Topology::WithGateway(local), Migrations::Apply).await
        {
            Ok(admin) => admin,
            Err(e) => {
                // A gateway without its admin cannot issue or revoke: stop.
                tracing::error!(error = %format!("{e:#}"), "admin service failed to start");
                std::process::exit(1);
            }
        };
        tracing::info!(addr = %admin.addr, "admin listening");
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        let grace = self.config.admin.shutdown_grace.get();
        if let Err(e) = bouncer_admin::serve(admin.listener, admin.state, stop, grace).await {
            tracing::error!(error = %e, "admin service stopped with an error");
        }
    }
}

struct Echo(SocketAddr);

#[async_trait]
impl BackgroundService for Echo {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = crate::echo::serve(self.0, stop).await {
            tracing::error!(error = %format!("{e:#}"), "echo upstream failed");
        }
    }
}
