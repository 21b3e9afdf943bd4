//! The admin service: accounts, passwords, sessions and signing keys over HTTP.
//!
//! [`router`] builds the whole axum application from an [`AppState`]; tests
//! drive it directly and the `bouncer` binary serves it with [`serve`].
//! Handlers live in [`routes`], one module per area; every failure is an
//! [`error::ApiError`] rendered once as problem+json.
#![forbid(unsafe_code)]

pub mod error;
pub mod extract;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub mod passwords;
pub mod request_id;
pub mod routes;
pub mod service;
pub mod shared;
#[cfg(test)]
mod testing;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Extension, Router, middleware};
use bouncer_core::revocation::Revocation;
use bouncer_core::{claims::Expectations, config::AdminConfig, credential::KeyUpdate};
use bouncer_shared_state::RevocationBus;
use bouncer_store::Store;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::{keys::KeyStore, metrics::Metrics, passwords::Passwords};

/// Shared state of every request; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: AdminConfig,
    pub store: Arc<dyn Store>,
    /// Where committed revocations are announced to token verifiers.
    pub bus: Arc<RevocationBus>,
    pub keys: KeyStore,
    pub passwords: Passwords,
    pub metrics: Metrics,
    pub expectations: Expectations,
    /// The gateway in this process (`bouncer up`), told which API keys it
    /// may accept; `None` for an admin of its own.
    pub local_gateway: Option<Arc<dyn service::GatewayHooks>>,
    /// Where gateways of their own read API keys (with `redis:`).
    pub redis_keys: Option<Arc<bouncer_shared_state::keys::RedisKeys>>,
}

impl Inner {
    /// Announces committed revocations on the bus (after the transaction
    /// that recorded them, never before).
    pub fn announce(&self, revocations: &[Revocation]) {
        if !revocations.is_empty() {
            self.bus.publish(revocations);
            self.metrics.revoked(revocations.len());
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Loads (or creates) the signing keys and prepares the hasher. The
    /// store must already be migrated.
    pub fn new(config: AdminConfig, store: Arc<dyn Store>, bus: Arc<RevocationBus>) -> anyhow::Result<Self> {
        let keys = KeyStore::open(
            &config.keys_dir,
            config.access_token_ttl.get(),
            config.key_activation_delay.get(),
            OffsetDateTime::now_utc(),
        )?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let passwords = Passwords::new(config.password.hash, cores)?;
        let expectations = Expectations { issuer: config.issuer.clone(), audience: config.audience.clone() };
        Ok(Self(Arc::new(Inner {
            config,
            store,
            bus,
            keys,
            passwords,
            metrics: Metrics::default(),
            expectations,
            local_gateway: None,
            redis_keys: None,
        })))
    }

    /// Where API key changes go from now on: the gateway in this process,
    /// and Redis for gateways of their own.
    fn with_key_feeds(
        mut self,
        gateway: Option<Arc<dyn service::GatewayHooks>>,
        redis: Option<Arc<bouncer_shared_state::keys::RedisKeys>>,
    ) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.local_gateway = gateway;
            inner.redis_keys = redis;
        }
        self
    }

    /// Sends every usable API key (at start, and periodically: the safety
    /// net for an update a gateway missed, or a Redis that lost its data).
    pub async fn send_all_keys(&self) -> anyhow::Result<()> {
        if self.local_gateway.is_none() && self.redis_keys.is_none() {
            return Ok(());
        }
        let keys = bouncer_store::usable_api_keys(&*self.store, None, OffsetDateTime::now_utc()).await?;
        if let Some(redis) = &self.redis_keys {
            redis.publish_all(&keys).await?;
        }
        if let Some(gateway) = &self.local_gateway {
            gateway.api_keys(&KeyUpdate::All(keys));
        }
        Ok(())
    }

    /// Sends these users' usable API keys, after a change that affects
    /// them has committed and before the change is answered: once a
    /// deletion or ban is answered, the gateway in this process refuses
    /// the key, and Redis already holds what other gateways load.
    pub async fn keys_changed(&self, users: impl IntoIterator<Item = Uuid>) {
        if self.local_gateway.is_none() && self.redis_keys.is_none() {
            return;
        }
        let now = OffsetDateTime::now_utc();
        for user in users {
            // Refuse them all rather than keep what may be revoked.
            let keys = bouncer_store::usable_api_keys(&*self.store, Some(user), now).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, user_id = %user, "cannot load api keys; gateways drop the user's");
                Vec::new()
            });
            if let Some(redis) = &self.redis_keys
                && let Err(e) = redis.publish_user(user, &keys).await
            {
                tracing::warn!(error = %e, user_id = %user, "cannot publish api keys to redis; the next full write fixes it");
            }
            if let Some(gateway) = &self.local_gateway {
                gateway.api_keys(&KeyUpdate::User { user, keys });
            }
        }
    }

    /// [`Self::keys_changed`] for the users a set of revocations names.
    pub async fn keys_changed_for(&self, revocations: &[Revocation]) {
        let mut users: Vec<Uuid> = revocations
            .iter()
            .filter(|r| r.kind == bouncer_core::revocation::RevocationKind::User)
            .map(|r| r.user_id)
            .collect();
        users.sort();
        users.dedup();
        self.keys_changed(users).await;
    }
}

/// The whole HTTP API, `GET /openapi.json` describing it included.
pub fn router(state: AppState) -> Router {
    let (routes, generated) = routes::api().split_for_parts();
    let document = openapi::document(generated, &state.config);
    let document = routes::OpenApiJson(serde_json::to_vec(&document).unwrap_or_default().into());
    routes
        .layer(Extension(document))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), request_id::track))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish for at most `grace`. Also reloads signing keys
/// in the background so `bouncer keys rotate` takes effect without restart.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let reload = tokio::spawn(reload_keys(state.clone()));
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stopping = stop_rx.clone();
    let deadline = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        r = server => r,
        () = deadline => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown grace elapsed; dropping in-flight requests");
            Ok(())
        }
    };
    reload.abort();
    result
}

/// Re-reads `keys_dir` every [`keys::RELOAD_INTERVAL`], and at once on SIGHUP.
async fn reload_keys(state: AppState) {
    let mut tick = tokio::time::interval(keys::RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; keys reload on the timer only"))
        .ok();
    loop {
        #[cfg(unix)]
        match hangup.as_mut() {
            Some(hup) => tokio::select! {
                _ = tick.tick() => {}
                _ = hup.recv() => tracing::info!("SIGHUP: reloading signing keys"),
            },
            None => {
                tick.tick().await;
            }
        }
        #[cfg(not(unix))]
        tick.tick().await;
        match state.keys.reload() {
            Ok(true) => {
                tracing::info!(kid = %state.keys.signing_kid(OffsetDateTime::now_utc()), "signing keys reloaded")
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot reload signing keys; keeping the current ones"),
        }
    }
}
