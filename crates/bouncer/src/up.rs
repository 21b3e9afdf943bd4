//! `bouncer up`: the admin service, the gateway and (when the routes name an
//! upstream `echo`) the echo upstream in one process, on the embedded
//! default — SQLite, in-process revocation bus — so the whole pipeline runs
//! with nothing else installed.
//!
//! pingora owns the process: the gateway is its proxy service, and the
//! admin, the revocation feed and echo run as its background services (each
//! on a runtime pingora creates, which is where their clients must be
//! created too).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use async_trait::async_trait;
use bouncer_admin::AppState;
use bouncer_core::{claims::LEEWAY, config::Config, revocation::Revocation};
use bouncer_gateway::revocations::RevocationSet;
use bouncer_shared_state::{InProcessBus, RevocationBus};
use pingora::{
    server::ShutdownWatch,
    services::background::{BackgroundService, background_service},
};
use time::OffsetDateTime;
use tokio::sync::{Mutex, broadcast};

/// Name of the upstream `bouncer up` serves itself with the echo app.
pub const ECHO_UPSTREAM: &str = "echo";

pub fn run(config: Config) -> anyhow::Result<()> {
    let bus = Arc::new(InProcessBus::default());
    let gateway = bouncer_gateway::build(&config.gateway).map_err(anyhow::Error::msg)?;
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
    let mut server = bouncer_gateway::server(&config.gateway, gateway);
    // Subscribe before the admin starts so no revocation can slip past.
    let feed = RevocationFeed { events: Mutex::new(Some(bus.subscribe())), set: revocations.clone() };
    server.add_service(background_service("revocations", feed));
    server.add_service(background_service("admin", Admin { config: config.clone(), bus, set: revocations }));
    if let Some(addr) = echo {
        server.add_service(background_service("echo", Echo(addr)));
    }
    tracing::info!(gateway = %config.gateway.listen, admin = %config.admin.listen, echo = ?echo, "bouncer up");
    server.run_forever()
}

struct Admin {
    config: Config,
    bus: Arc<InProcessBus>,
    set: Arc<RevocationSet>,
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
            let users = store.list_users(&bouncer_store::UserFilter { limit: 200, ..Default::default() }).await?;
            if !users.iter().any(|u| u.roles.iter().any(|r| r == "admin")) {
                // Never a default password: tell the operator how to make the first admin.
                eprintln!(
                    "No admin user yet. Create one with:\n  bouncer user add --config <config> --email you@example.com --role admin"
                );
            }
            let listener = tokio::net::TcpListener::bind(admin.listen).await?;
            let bus: Arc<dyn RevocationBus> = self.bus.clone();
            let state = AppState::new(admin.clone(), store, bus)?;
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

/// Applies every published revocation to the gateway's set.
struct RevocationFeed {
    events: Mutex<Option<broadcast::Receiver<Revocation>>>,
    set: Arc<RevocationSet>,
}

#[async_trait]
impl BackgroundService for RevocationFeed {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut events) = self.events.lock().await.take() else { return };
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(r) => self.set.apply(&r),
                    // In-process with a large buffer this means a stall of
                    // thousands of revocations; say so loudly.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::error!(missed = n, "revocation feed lagged; some revocations were not applied");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.changed() => return,
            }
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
