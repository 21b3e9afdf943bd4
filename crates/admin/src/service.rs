//! The admin service's one composition root: store, migrations, the
//! revocation bus, the revocation record in Redis, the denial consumer,
//! keys and the listener, assembled the same way for `bouncer admin` and
//! for `bouncer up` — which differ only in their [`Topology`].

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use bouncer_core::{config::Config, revocation::Revocation};
use bouncer_shared_state::{Redis, RevocationBus, denials::DenialSource, keys::RedisKeys};
use bouncer_store::Store;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::{AppState, shared};

/// Where this admin's revocations and denials go and come from.
pub enum Topology {
    /// A process of its own (`bouncer admin`): revocations reach gateway
    /// replicas through Redis when `redis` is set (and their denials come
    /// back through it); without Redis nothing outside the process listens.
    Standalone,
    /// Beside a gateway in this process (`bouncer up`).
    WithGateway(LocalGateway),
}

/// What an in-process gateway shares with its admin.
pub struct LocalGateway {
    /// The bus the gateway listens on: in-process, or its Redis bus.
    pub bus: Arc<RevocationBus>,
    /// Denials handed over in-process, and a guard held until the last of
    /// them is written (the gateway's stop waits for it). `None` when they
    /// travel through Redis.
    pub denials: Option<(DenialSource, Box<dyn Send>)>,
    /// Told what the gateway needs before the admin listens.
    pub hooks: Arc<dyn GatewayHooks>,
}

/// How the admin hands an in-process gateway what it would otherwise
/// fetch: its key ring and the revocations that can still matter.
pub trait GatewayHooks: Send + Sync {
    /// The store's revocations within the token-age horizon. `complete`:
    /// nothing else will fill the gateway's set (the bus is in-process), so
    /// it is ready now; on Redis the gateway's own snapshot decides.
    fn revocations(&self, recent: &[Revocation], complete: bool);
    /// A view of the admin's JWKS, read whenever the gateway refreshes.
    fn keys(&self, jwks: Box<dyn Fn() -> Value + Send + Sync>) -> Result<(), String>;
    /// The API keys the gateway may accept: all of them, or one user's.
    fn api_keys(&self, update: &bouncer_core::credential::KeyUpdate);
}

/// Whether [`start`] applies pending migrations or refuses an old schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migrations {
    Apply,
    /// `--no-migrate`: refuse to serve when any is pending.
    Require,
}

/// An assembled admin, ready for [`crate::serve`].
pub struct Assembled {
    pub state: AppState,
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

/// Opens and migrates the store, wires the revocation bus and the denial
/// consumer for `topology`, loads the keys, and binds the listener last —
/// so whatever answers on it is complete.
pub async fn start(config: &Config, topology: Topology, migrations: Migrations) -> anyhow::Result<Assembled> {
    let admin = &config.admin;
    let store = bouncer_store::open(&admin.database, admin.max_db_connections)
        .await
        .context("cannot open the database")?;
    match migrations {
        Migrations::Apply => {
            let report = store.migrate().await?;
            tracing::info!(
                applied = report.applied.len(),
                version = report.current,
                "database schema up to date"
            );
        }
        Migrations::Require => {
            // Serving on an old schema would turn every request into a 500:
            // refuse to start and say what to run instead.
            let pending = store.pending_migrations().await?;
            if !pending.is_empty() {
                anyhow::bail!(
                    "the database lacks migration(s) {pending:?}; run `bouncer migrate` (or start without --no-migrate)"
                );
            }
        }
    }
    let keep = shared::revocation_keep(admin);
    let redis = config.redis.as_deref().map(|url| Redis::connect(url, &config.redis_prefix)).transpose()?;
    // Gateways of their own read API keys from Redis (one client for the writes).
    let redis_keys = redis.as_ref().map(|r| r.another().map(|r| Arc::new(RedisKeys::new(r)))).transpose()?;
    let (bus, hooks) = match topology {
        Topology::Standalone => {
            let bus: Arc<RevocationBus> = match &redis {
                Some(redis) => Arc::new(RevocationBus::redis(redis.clone(), keep)),
                None => Arc::new(RevocationBus::in_process()),
            };
            (bus, None)
        }
        Topology::WithGateway(local) => {
            if let Some((source, guard)) = local.denials {
                let store = store.clone();
                tokio::spawn(async move {
                    shared::record_denials(source, store).await;
                    drop(guard);
                });
            }
            (local.bus, Some(local.hooks))
        }
    };
    if let Some(redis) = redis {
        // Gateway replicas learn revocations from Redis; their denials come
        // back through it for the audit log.
        tokio::spawn(shared::keep_revocations_recorded(bus.clone(), store.clone(), keep));
        tokio::spawn(shared::record_denials_from_redis(redis, consumer_name(admin.listen), store.clone()));
    }
    if let Some(hooks) = &hooks {
        let horizon = OffsetDateTime::now_utc() - keep;
        hooks.revocations(&store.revocations_since(horizon).await?, config.redis.is_none());
    }
    hint_first_admin(&*store).await?;
    let feeds = hooks.is_some() || redis_keys.is_some();
    let state = AppState::new(admin.clone(), store, bus)?.with_key_feeds(hooks.clone(), redis_keys);
    if feeds {
        // Keys before listening, like the key ring (a Redis that is down
        // now gets them at the next round); then every minute, in case an
        // update was missed.
        if let Err(e) = state.send_all_keys().await {
            tracing::warn!(error = %e, "cannot send the api keys yet; retrying every minute");
        }
        let periodic = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEYS_RESENT_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = periodic.send_all_keys().await {
                    tracing::warn!(error = %e, "cannot reload api keys for the gateway");
                }
            }
        });
    }
    if let Some(hooks) = &hooks {
        // Before listening: once the admin answers, so does the gateway.
        let ring = state.clone();
        hooks
            .keys(Box::new(move || {
                serde_json::to_value(ring.keys.jwks(OffsetDateTime::now_utc())).unwrap_or_default()
            }))
            .map_err(anyhow::Error::msg)?;
    }
    let listener = TcpListener::bind(admin.listen)
        .await
        .with_context(|| format!("cannot listen on {}", admin.listen))?;
    let addr = listener.local_addr()?;
    Ok(Assembled { state, listener, addr })
}

/// How often the in-process gateway gets every key again.
const KEYS_RESENT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Never a default password: says how to make the first admin.
async fn hint_first_admin(store: &dyn Store) -> anyhow::Result<()> {
    let users = store.list_users(&bouncer_store::UserFilter { limit: 200, ..Default::default() }).await?;
    if !users.iter().any(|u| u.roles.iter().any(|r| r == "admin")) {
        eprintln!(
            "No admin user yet. Create one with:\n  bouncer user add --config <config> --email you@example.com --role admin"
        );
    }
    Ok(())
}

/// This admin's name in the denial stream's consumer group: stable across
/// restarts of the same instance, so it picks up its own pending entries.
fn consumer_name(listen: SocketAddr) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "admin".into());
    format!("{host}:{}", listen.port())
}
