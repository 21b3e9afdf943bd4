//! The Redis connection every shared-state backend uses: a fred client
//! (auto-pipelined, so concurrent requests share round trips), reconnecting
//! forever in the background.
//!
//! The connection task starts on the runtime of the first caller, not the
//! creator: the gateway builds its clients before pingora has runtimes, and
//! a connection living on another runtime's thread costs two cross-thread
//! wake-ups per command (measured: ~45 µs per rate-limited request on one
//! core). So each backend gets its own client, started where it is used.
//!
//! Callers on the request path never wait for Redis to come back: each
//! has a local answer (fallback buckets, last known revocations) and its
//! own short timeout. The connection itself never gives up — the first
//! one included ([`keep_connected`]): a process started while Redis is down
//! connects as soon as it answers.

use std::{future::Future, sync::OnceLock, time::Duration};

use fred::{
    clients::{Client, SubscriberClient},
    interfaces::ClientLike,
    types::{
        Builder,
        config::{Config as FredConfig, ReconnectPolicy},
    },
};

/// Why a Redis backend could not be set up, or a call to it failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis URL {url:?} is not valid: {reason}")]
    Url { url: String, reason: String },
    #[error("redis: {0}")]
    Command(#[from] fred::error::Error),
    /// A call the request path waits for took longer than it may.
    #[error("redis gave no answer within {0:?}")]
    NoAnswer(std::time::Duration),
}

/// Where connection tasks run when the caller is not on a runtime (pingora
/// builds its runtimes only once the server runs, after the gateway is
/// built): one small runtime for the life of the process.
fn background() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bouncer-redis")
            .enable_all()
            .build()
            .expect("cannot start the redis runtime")
    })
}

/// Spawns on the current runtime, or on the background one outside any.
pub(crate) fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.spawn(future),
        Err(_) => background().spawn(future),
    }
}

/// Runs `f` inside a runtime context (the current one, or the background).
fn in_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => f(),
        Err(_) => {
            let _guard = background().enter();
            f()
        }
    }
}

/// Drives `client`'s connection for the life of the process. fred's
/// reconnect policy covers a connection that was up once, but a first
/// attempt that fails ends fred's connection task (with its default
/// `fail_fast`), which left a process started during a Redis outage
/// disconnected for good. This starts it again, with pauses growing from
/// 100 ms to 2 s, until it connects. (fred's own `fail_fast: false` would
/// retry too, but sleeps 100 ms before even the first attempt, which every
/// process start would pay.)
pub(crate) fn keep_connected<C: ClientLike + Clone + Send + Sync + 'static>(client: C) {
    spawn(async move {
        let mut pause = Duration::from_millis(100);
        loop {
            match client.connect().await {
                // QUIT, or the client was dropped: nothing to keep.
                Ok(Ok(())) => return,
                Ok(Err(e)) if e.is_canceled() => return,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, retry_in_ms = pause.as_millis() as u64, "redis not reachable yet")
                }
                Err(e) => {
                    tracing::error!(error = %e, "the redis connection task failed");
                    return;
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    });
}

/// A subscription to one channel on its own connection, kept connected and
/// resubscribed after every reconnect: what the revocation bus and the API
/// key feed both follow.
pub(crate) struct Subscription {
    pub messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    pub reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    _client: SubscriberClient,
    _resubscriber: tokio::task::JoinHandle<()>,
}

/// Subscribes to `channel`, retrying each second until Redis answers (a
/// process may start before it); `what` names the feed in the logs.
pub(crate) async fn subscribe(redis: &Redis, channel: &str, what: &str) -> Result<Subscription, RedisError> {
    use fred::interfaces::{EventInterface, PubsubInterface};
    let client = redis.subscriber()?;
    let messages = client.message_rx();
    let reconnects = client.reconnect_rx();
    keep_connected(client.clone());
    let resubscriber = client.manage_subscriptions();
    loop {
        let subscribed = async {
            client.wait_for_connect().await?;
            client.subscribe(channel).await
        };
        match subscribed.await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, feed = what, "subscription failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Ok(Subscription { messages, reconnects, _client: client, _resubscriber: resubscriber })
}

/// Timeout of one command on the request path (bucket checks).
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(100);

/// A configured (not necessarily connected) Redis and the key prefix that
/// keeps this deployment's keys apart from anyone else's on it.
#[derive(Clone)]
pub struct Redis {
    client: Client,
    started: std::sync::Arc<std::sync::Once>,
    config: FredConfig,
    pub(crate) prefix: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("Redis").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn builder(config: &FredConfig) -> Builder {
    let mut builder = Builder::from_config(config.clone());
    builder
        .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT * 10)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.max_command_attempts = 1;
        })
        // Forever, from 100 ms up to 2 s between attempts.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    builder
}

impl Redis {
    /// Parses `url` (`redis://`, `rediss://`, `redis-cluster://`,
    /// `redis-sentinel://`, as fred reads them) and starts connecting in the
    /// background. Must be called on the runtime that will use the client.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, RedisError> {
        let config = FredConfig::from_url(url)
            .map_err(|e| RedisError::Url { url: redact(url), reason: e.details().to_owned() })?;
        let client = builder(&config).build()?;
        Ok(Self {
            client,
            started: std::sync::Arc::new(std::sync::Once::new()),
            config,
            prefix: prefix.to_owned(),
        })
    }

    /// The client, its connection task started on the caller's runtime the
    /// first time (on the background runtime outside any).
    pub(crate) fn client(&self) -> &Client {
        self.started.call_once(|| in_runtime(|| keep_connected(self.client.clone())));
        &self.client
    }

    /// Another client to the same Redis (own connection, started on first use).
    pub fn another(&self) -> Result<Self, RedisError> {
        let client = builder(&self.config).build()?;
        Ok(Self {
            client,
            started: std::sync::Arc::new(std::sync::Once::new()),
            config: self.config.clone(),
            prefix: self.prefix.clone(),
        })
    }

    /// Waits up to `within` for the first connection.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        matches!(tokio::time::timeout(within, self.client().wait_for_connect()).await, Ok(Ok(())))
    }

    pub fn is_connected(&self) -> bool {
        self.client().is_connected()
    }

    /// A separate connection for SUBSCRIBE (a subscribed connection can run
    /// nothing else).
    pub(crate) fn subscriber(&self) -> Result<SubscriberClient, RedisError> {
        Ok(builder(&self.config).build_subscriber_client()?)
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Closes the connection (tests, shutdown).
    pub async fn quit(&self) {
        let _ = self.client().quit().await;
    }
}

/// `url` with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_sentinel_and_cluster_urls_are_understood() {
        use fred::types::config::ServerConfig;
        let single = FredConfig::from_url("redis://:pw@10.0.0.1:6380/2").unwrap();
        assert!(matches!(single.server, ServerConfig::Centralized { .. }), "{:?}", single.server);
        assert_eq!(single.database, Some(2));
        let cluster =
            FredConfig::from_url("redis-cluster://10.0.0.1:7000?node=10.0.0.2:7000&node=10.0.0.3:7000")
                .unwrap();
        match cluster.server {
            ServerConfig::Clustered { hosts, .. } => assert_eq!(hosts.len(), 3),
            other => panic!("expected a cluster, got {other:?}"),
        }
        let sentinel = FredConfig::from_url(
            "redis-sentinel://10.0.0.1:26379/0?sentinelServiceName=mymaster&node=10.0.0.2:26379",
        )
        .unwrap();
        match sentinel.server {
            ServerConfig::Sentinel { hosts, service_name, .. } => {
                assert_eq!((hosts.len(), service_name.as_str()), (2, "mymaster"));
            }
            other => panic!("expected sentinels, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn urls_are_redacted_in_errors() {
        assert_eq!(redact("redis://:hunter2@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        let err = Redis::connect("redis://:secret@x:notaport", "p:").map(|_| ()).unwrap_err().to_string();
        assert!(!err.contains("secret"), "the password leaked into {err:?}");
    }
}
