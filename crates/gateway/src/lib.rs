//! The gateway: a pingora reverse proxy in front of existing HTTP APIs. It
//! matches each request against the route table, verifies the access token
//! against the admin's JWKS, checks revocations and roles, strips any
//! identity headers the client sent, and forwards with its own.
//!
//! The per-request path ([`proxy`], deciding with [`decision`]) never
//! touches a database and never blocks: keys, routes and revocations are
//! in memory, refreshed by background tasks.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod api_keys;
pub mod decision;
pub mod drain;
pub mod error;
pub mod identity;
pub mod jwks;
pub mod metrics;
pub mod problem;
pub mod proxy;
pub mod reload;
pub mod revocations;
pub mod table;
pub mod token_cache;
pub mod upstream;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bouncer_core::{
    claims::Expectations,
    config::{AccessLogFormat, Config, GatewayConfig},
    revocation::Revocation,
};
use bouncer_shared_state::{
    Redis, RevocationBus,
    denials::{DenialEvent, DenialRecorder, DenialSink},
    keys::RedisKeys,
    limiter::RateLimiter,
};
use pingora::{
    listeners::{L4BufferSettings, ListenerConfig},
    server::{RunArgs, Server, ShutdownWatch, configuration::ServerConf},
    services::background::{BackgroundService, background_service},
};
use tokio::sync::{Mutex, broadcast, mpsc};

use crate::{
    access_log::AccessLog, api_keys::ApiKeySet, jwks::Jwks, proxy::Gateway, revocations::RevocationSet,
};
pub use crate::{error::SetupError, table::load_routes};

/// What the gateway shares: with the other replicas through Redis, or
/// (embedded) with the admin service in its own process.
pub struct SharedState {
    pub limiter: Arc<RateLimiter>,
    pub bus: Arc<RevocationBus>,
    /// A subscription taken before any publisher started (in-process), or
    /// `None` to subscribe when the gateway starts (Redis: the subscriber
    /// loads a snapshot, so nothing is missed).
    pub early_events: Option<broadcast::Receiver<Revocation>>,
    /// Redis: the bus's first snapshot makes the revocation set ready.
    /// In-process: whoever loads the store's revocations does.
    pub bus_decides_ready: bool,
    pub denial_sink: Arc<DenialSink>,
    /// Where API keys come from on Redis; `None` when the admin in this
    /// process hands them over itself.
    pub key_feed: Option<Arc<RedisKeys>>,
}

impl SharedState {
    /// The shared state of a standalone gateway replica: everything on Redis.
    /// A standalone gateway without Redis would never hear of a logout or a
    /// ban, so it refuses to start.
    pub fn redis(config: &Config) -> Result<Self, SetupError> {
        let url = config.redis.as_deref().ok_or(SetupError::NoRedis)?;
        // One client each: every connection starts on the runtime that uses
        // it (the limiter's on the proxy's own).
        let redis = Redis::connect(url, &config.redis_prefix).map_err(SetupError::Redis)?;
        let another = || redis.another().map_err(SetupError::Redis);
        Ok(Self {
            limiter: Arc::new(RateLimiter::shared(another()?, config.gateway.on_store_error)),
            bus: Arc::new(RevocationBus::redis(another()?, revocations::max_token_age())),
            early_events: None,
            bus_decides_ready: true,
            denial_sink: Arc::new(DenialSink::redis(&redis)),
            key_feed: Some(Arc::new(RedisKeys::new(another()?))),
        })
    }
}

/// Builds the gateway's state from its configuration, with verification
/// keys from `jwks` ([`Jwks::new`] on `gateway.jwks_url` for a gateway of
/// its own, [`Jwks::in_process`] beside the admin). Also returns the queue
/// of denials for [`server`] to ship.
pub fn build(
    config: &GatewayConfig,
    limiter: Arc<RateLimiter>,
    jwks: Jwks,
    log_format: AccessLogFormat,
    api_keys: Arc<ApiKeySet>,
) -> Result<(Gateway, mpsc::Receiver<DenialEvent>), SetupError> {
    let table = load_routes(&config.routes)?;
    let access_log = AccessLog::start(&config.access_log, log_format)
        .map(Arc::new)
        .map_err(|error| SetupError::AccessLog { path: config.access_log.path.clone(), error })?;
    let (recorder, denial_queue) = DenialRecorder::new();
    let denials = Arc::new(recorder);
    let jwks = Arc::new(jwks);
    let revocations = Arc::new(RevocationSet::default());
    let metrics = metrics::GatewayMetrics::new(metrics::Sources {
        reloads: Arc::new(reload::ReloadStats::default()),
        jwks: jwks.clone(),
        limiter: limiter.clone(),
        denials: denials.clone(),
        revocations: revocations.clone(),
        access_log: access_log.clone(),
    });
    let pipeline = decision::Pipeline {
        table: Arc::new(ArcSwap::from_pointee(table)),
        jwks,
        revocations,
        expectations: Expectations { issuer: config.issuer.clone(), audience: config.audience.clone() },
        verified: token_cache::VerifiedTokens::default(),
        identity_names: identity::IdentityNames::new(&config.identity_headers)?,
        limiter,
        api_keys,
    };
    let gateway = Gateway {
        pipeline,
        trusted_proxies: config.trusted_proxies.clone(),
        metrics: Arc::new(metrics),
        denials,
        access_log,
        drain: Arc::default(),
    };
    Ok((gateway, denial_queue))
}

/// Ships recorded denials to the audit stream until the requests are over,
/// then flushes while the stop waits for it.
struct ShipDenials(Mutex<Option<Shipping>>);

struct Shipping {
    queue: mpsc::Receiver<DenialEvent>,
    /// Dropped after the last flush, which tells an in-process receiver
    /// that nothing more is coming.
    sink: Arc<DenialSink>,
    /// Dropped last: the stop waits for it.
    finishing: drain::Finishing,
}

#[async_trait]
impl BackgroundService for ShipDenials {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(Shipping { queue, sink, finishing }) = self.0.lock().await.take() else { return };
        let stop = async {
            // pingora's own watch covers a graceful upgrade (SIGQUIT),
            // which does not go through the drain.
            tokio::select! {
                () = finishing.requests_over() => {}
                _ = shutdown.changed() => {}
            }
        };
        bouncer_shared_state::denials::ship(queue, &sink, stop).await;
        drop(sink);
        drop(finishing);
    }
}

/// Writes out the access log's queued lines once the last request has
/// logged, before the stop (which waits for it) lets the process exit.
struct FlushAccessLog(Mutex<Option<(Arc<AccessLog>, drain::Finishing)>>);

/// How long the stop waits for the access log's last lines.
const ACCESS_LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

#[async_trait]
impl BackgroundService for FlushAccessLog {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some((log, finishing)) = self.0.lock().await.take() else { return };
        tokio::select! {
            () = finishing.requests_over() => {}
            _ = shutdown.changed() => {}
        }
        // A blocking wait, on a thread of the blocking pool.
        let _ = tokio::task::spawn_blocking(move || log.flush(ACCESS_LOG_FLUSH)).await;
        drop(finishing);
    }
}

/// Fills the API key set from Redis for as long as the gateway runs.
struct FollowApiKeys {
    feed: Arc<RedisKeys>,
    set: Arc<ApiKeySet>,
}

#[async_trait]
impl BackgroundService for FollowApiKeys {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            () = self.feed.follow(|update| self.set.apply(&update)) => {}
            _ = shutdown.changed() => {}
        }
    }
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
pub fn server(
    config: &GatewayConfig,
    gateway: Gateway,
    denial_queue: mpsc::Receiver<DenialEvent>,
    shared: SharedState,
) -> Server {
    let conf = server_conf(config.shutdown_grace.get().as_secs().max(1));
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(background_service("jwks", KeepKeysFresh(gateway.pipeline.jwks.clone())));
    let feed = revocations::Feed {
        bus: shared.bus,
        set: gateway.pipeline.revocations.clone(),
        events: Mutex::new(shared.early_events),
        ready_from_bus: shared.bus_decides_ready,
    };
    server.add_service(background_service("revocations", feed));
    if let Some(feed) = shared.key_feed {
        let set = gateway.pipeline.api_keys.clone();
        server.add_service(background_service("api-keys", FollowApiKeys { feed, set }));
    }
    let finishing = gateway.drain.finishing();
    let shipper =
        ShipDenials(Mutex::new(Some(Shipping { queue: denial_queue, sink: shared.denial_sink, finishing })));
    server.add_service(background_service("denials", shipper));
    let flush = FlushAccessLog(Mutex::new(Some((gateway.access_log.clone(), gateway.drain.finishing()))));
    server.add_service(background_service("access-log", flush));
    let reloader = reload::RouteReloader {
        path: config.routes.clone(),
        table: gateway.pipeline.table.clone(),
        stats: gateway.metrics.reload_stats(),
    };
    server.add_service(background_service("routes", reloader));
    let metrics = metrics::MetricsService { listen: config.metrics_listen, metrics: gateway.metrics.clone() };
    server.add_service(background_service("metrics", metrics));
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, gateway);
    proxy.add_listener(client_listener(&config.listen.to_string()));
    server.add_service(proxy);
    server
}

/// pingora's settings for the gateway, public so that the benchmarks'
/// `pingora_floor` is set up the same way by construction.
pub fn server_conf(graceful_shutdown_secs: u64) -> ServerConf {
    ServerConf {
        // The drain has already waited for the requests when pingora stops.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(graceful_shutdown_secs),
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        // One single-threaded runtime per thread: a request never moves
        // between threads, and the scheduler's cross-thread bookkeeping was
        // ~10 % of a request's CPU in the profile (benches/README.md).
        work_stealing: false,
        ..ServerConf::default()
    }
}

/// The clients' listener on `addr`. pingora gives every client connection a
/// 64 KiB read buffer in front of the HTTP parser's own: 88 KiB per idle
/// keep-alive client in all, and a copy of every request. Unbuffered, the
/// parser reads the socket itself.
pub fn client_listener(addr: &str) -> ListenerConfig {
    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().read(0))
}

/// Runs a server built by [`server`] until SIGTERM or SIGINT, drains
/// in-flight requests (up to `gateway.shutdown_grace`), then exits.
pub fn run(server: Server, drain: Arc<drain::Drain>, grace: std::time::Duration) -> ! {
    server.run(RunArgs { shutdown_signal: Box::new(drain::Signals { drain, grace }) });
    std::process::exit(0)
}
