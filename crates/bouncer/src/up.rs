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

use std::{net::SocketAddr, sync::Arc, time::Duration};

use async_trait::async_trait;
use bouncer_admin::{AppState, shared};
use bouncer_core::{claims::LEEWAY, config::Config};
use bouncer_gateway::{SharedState, drain::Finishing, jwks::Jwks, revocations::RevocationSet};
use bouncer_shared_state::{
    InProcessBus, Redis, RevocationBus,
    denials::{DenialSource, InProcessDenials},
    limiter::RateLimiter,
};
use pingora::{
    server::ShutdownWatch,
    services::background::{BackgroundService, background_service},
};
use time::OffsetDateTime;
use tokio::sync::Mutex;

/// Name of the upstream `bouncer up` serves itself with the echo app.
pub const ECHO_UPSTREAM: &str = "echo";

pub fn run(config: Config) -> anyhow::Result<()> {
    let (shared, denial_source) = match &config.redis {
        Some(_) => {
            let shared = SharedState::redis(&config).map_err(anyhow::Error::msg)?;
            (shared, None)
        }
        None => {
            let bus = Arc::new(InProcessBus::default());
            let (to_admin, from_gateway) = tokio::sync::mpsc::channel(64);
            let shared = SharedState {
                limiter: Arc::new(RateLimiter::in_memory()),
                // Subscribed before the admin starts so no revocation slips past.
                early_events: Some(bus.subscribe()),
                bus,
                bus_decides_ready: false,
                denial_sink: Arc::new(InProcessDenials(to_admin)),
            };
            (shared, Some(DenialSource::InProcess(from_gateway)))
        }
    };
    let bus = shared.bus.clone();
    // The admin below hands its key ring over before it listens.
    let (gateway, denials) =
        bouncer_gateway::build(&config.gateway, shared.limiter.clone(), Jwks::in_process())
            .map_err(anyhow::Error::msg)?;
    let echo = gateway
        .table
        .load()
        .table
        .upstreams
        .get(ECHO_UPSTREAM)
        .and_then(|u| u.targets.first())
        .map(|t| t.parse::<SocketAddr>())
        .transpose()
        .map_err(|e| anyhow::anyhow!("upstream {ECHO_UPSTREAM:?} must be an ip:port to serve it: {e}"))?;
    let revocations = gateway.revocations.clone();
    let jwks = gateway.jwks.clone();
    let drain = gateway.drain.clone();
    // In-process denials are written by this admin: the stop waits for it to
    // write the gateway's last flush (the channel closes after it).
    let denial_source = denial_source.map(|source| (source, drain.finishing()));
    let mut server = bouncer_gateway::server(&config.gateway, gateway, denials, shared);
    let admin =
        Admin { config: config.clone(), bus, set: revocations, jwks, denials: Mutex::new(denial_source) };
    server.add_service(background_service("admin", admin));
    if let Some(addr) = echo {
        server.add_service(background_service("echo", Echo(addr)));
    }
    tracing::info!(gateway = %config.gateway.listen, admin = %config.admin.listen, echo = ?echo, "bouncer up");
    bouncer_gateway::run(server, drain, config.gateway.shutdown_grace.get())
}

struct Admin {
    config: Config,
    bus: Arc<dyn RevocationBus>,
    set: Arc<RevocationSet>,
    /// The gateway's key set, filled from this admin's key ring.
    jwks: Arc<Jwks>,
    /// In-process denials from the gateway; `None` when they go via Redis.
    denials: Mutex<Option<(DenialSource, Finishing)>>,
}

#[async_trait]
impl BackgroundService for Admin {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let admin = self.config.admin.clone();
        let started = async {
            let store = bouncer_store::open(&admin.database, admin.max_db_connections).await?;
            store.migrate().await?;
            // The gateway refuses what was revoked before this start, too.
            let horizon = OffsetDateTime::now_utc() - admin.access_token_ttl.get() - LEEWAY - Duration::from_secs(60);
            for r in store.revocations_since(horizon).await? {
                self.set.apply(&r);
            }
            let (denials, finishing) = match self.denials.lock().await.take() {
                Some((source, finishing)) => (Some(source), Some(finishing)),
                // Shared state on Redis: this admin consumes the stream like
                // any admin replica, and keeps the revocation record current.
                None => {
                    let redis = Redis::connect(self.config.redis.as_deref().unwrap_or_default(), &self.config.redis_prefix)?;
                    let keep = shared::revocation_keep(&admin);
                    tokio::spawn(shared::keep_revocations_recorded(self.bus.clone(), store.clone(), keep));
                    let consumer = crate::cli::consumer_name(admin.listen);
                    tokio::spawn(shared::record_denials_from_redis(redis, consumer, store.clone()));
                    (None, None)
                }
            };
            if let Some(denials) = denials {
                let recording = shared::record_denials(denials, store.clone());
                tokio::spawn(async move {
                    recording.await;
                    drop(finishing);
                });
            }
            if self.config.redis.is_none() {
                // In-process, the set is complete now; on Redis the
                // gateway's own snapshot decides.
                self.set.mark_ready();
            }
            let users = store.list_users(&bouncer_store::UserFilter { limit: 200, ..Default::default() }).await?;
            if !users.iter().any(|u| u.roles.iter().any(|r| r == "admin")) {
                // Never a default password: tell the operator how to make the first admin.
                eprintln!(
                    "No admin user yet. Create one with:\n  bouncer user add --config <config> --email you@example.com --role admin"
                );
            }
            let state = AppState::new(admin.clone(), store, self.bus.clone())?;
            // Before the admin listens: once it answers, so does the gateway.
            let ring = state.clone();
            self.jwks
                .install(Box::new(move || ring.keys.jwks(OffsetDateTime::now_utc())))
                .map_err(anyhow::Error::msg)?;
            let listener = tokio::net::TcpListener::bind(admin.listen).await?;
            anyhow::Ok((listener, state))
        }
        .await;
        let (listener, state) = match started {
            Ok(ready) => ready,
            Err(e) => {
                // A gateway without its admin cannot issue or revoke: stop.
                tracing::error!(error = %format!("{e:#}"), "admin service failed to start");
                std::process::exit(1);
            }
        };
        tracing::info!(addr = %admin.listen, "admin listening");
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = bouncer_admin::serve(listener, state, stop, admin.shutdown_grace.get()).await {
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
