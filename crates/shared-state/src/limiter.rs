//! Rate limiting: one token bucket per route and key value, in Redis when
//! configured (shared by every replica) and in memory otherwise.
//!
//! The Redis bucket is one atomic script that reads Redis's own clock, so
//! replicas with skewed clocks still share one timeline; it is loaded once
//! and called by `EVALSHA` (reloaded on `NOSCRIPT`). Keys carry a hash tag,
//! so a bucket lives on one Cluster shard, and a TTL, so idle buckets vanish.
//!
//! When Redis fails or is slow, `on_store_error` decides: `local` buckets,
//! `allow`, or `deny`. After a failure Redis is left alone for a second
//! (so a dead Redis costs one timeout per second, not one per request),
//! then tried again; the first success ends the degraded state.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Instant,
};

use bouncer_core::{
    bucket::{Decision, Limit},
    config::OnStoreError,
};
use fred::{interfaces::LuaInterface, types::scripts::Script};

use crate::{
    memory::MemoryBuckets,
    redis::{COMMAND_TIMEOUT, Redis, RedisError},
};

/// The Redis side of [`bouncer_core::bucket::take`], line for line. Numbers
/// are doubles in Lua: microseconds since 1970 fit exactly (below 2^53).
///
/// A file of its own so that the nginx + Lua benchmark peer
/// (benches/load/peers/nginx-lua) runs this very script.
pub const BUCKET_SCRIPT: &str = include_str!("bucket.lua");

/// What the limiter says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Checked against a bucket (shared, or local while degraded).
    Checked(Decision),
    /// Redis is unavailable and `on_store_error: allow`.
    Unlimited,
    /// Redis is unavailable and `on_store_error: deny`.
    Unavailable,
}

/// Counters for metrics and logs.
#[derive(Debug, Default)]
pub struct LimiterStats {
    /// Calls to Redis that failed or timed out.
    pub store_errors: AtomicU64,
    /// Decisions taken by `on_store_error` instead of Redis.
    pub fallbacks: AtomicU64,
    degraded: AtomicBool,
}

impl LimiterStats {
    /// Whether Redis is currently being bypassed.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }
}

struct Shared {
    redis: Redis,
    /// Set once the first call has waited for the connection: the client
    /// connects lazily on the proxy's runtime, and fails fast while not yet
    /// connected, which must not read as "Redis is down".
    first_connect: tokio::sync::OnceCell<()>,
    script: Script,
    /// Monotonic ms before which Redis is not tried again.
    retry_at_ms: AtomicU64,
}

/// Token buckets for the gateway.
pub struct RateLimiter {
    local: MemoryBuckets,
    shared: Option<Shared>,
    on_error: OnStoreError,
    origin: Instant,
    pub stats: LimiterStats,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("shared", &self.shared.is_some())
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

/// Local buckets kept at most (about 100 bytes each).
pub const LOCAL_CAPACITY: usize = 100_000;

/// How long the very first rate-limited request waits for the connection.
const FIRST_CONNECT: std::time::Duration = std::time::Duration::from_secs(2);

/// Pause after a Redis failure before trying it again.
const RETRY_AFTER_FAILURE_MS: u64 = 1_000;

impl RateLimiter {
    /// Buckets of this process only (the embedded shape).
    pub fn in_memory() -> Self {
        Self {
            local: MemoryBuckets::new(LOCAL_CAPACITY),
            shared: None,
            on_error: OnStoreError::Local,
            origin: Instant::now(),
            stats: LimiterStats::default(),
        }
    }

    /// Buckets in Redis, shared by every replica using the same prefix.
    pub fn shared(redis: Redis, on_error: OnStoreError) -> Self {
        let shared = Shared {
            redis,
            first_connect: tokio::sync::OnceCell::new(),
            script: Script::from_lua(BUCKET_SCRIPT),
            retry_at_ms: AtomicU64::new(0),
        };
        Self { shared: Some(shared), on_error, ..Self::in_memory() }
    }

    /// Takes one token from bucket `key` (route name + key value).
    pub async fn check(&self, key: &str, limit: &Limit) -> Verdict {
        let Some(shared) = &self.shared else {
            return Verdict::Checked(self.local.take(key, limit));
        };
        shared
            .first_connect
            .get_or_init(|| async {
                if !shared.redis.wait_connected(FIRST_CONNECT).await {
                    tracing::warn!(
                        "redis not reachable at start; rate limits use on_store_error until it is"
                    );
                }
            })
            .await;
        let now_ms = self.origin.elapsed().as_millis() as u64;
        if now_ms >= shared.retry_at_ms.load(Ordering::Relaxed) {
            match self.take_shared(shared, key, limit).await {
                Ok(decision) => {
                    if self.stats.degraded.swap(false, Ordering::Relaxed) {
                        tracing::info!("redis is back: rate limits are shared again");
                    }
                    return Verdict::Checked(decision);
                }
                Err(reason) => {
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    shared.retry_at_ms.store(now_ms + RETRY_AFTER_FAILURE_MS, Ordering::Relaxed);
                    if !self.stats.degraded.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%reason, on_store_error = ?self.on_error, "redis unavailable for rate limits");
                    }
                }
            }
        }
        self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        match self.on_error {
            OnStoreError::Local => Verdict::Checked(self.local.take(key, limit)),
            OnStoreError::Allow => Verdict::Unlimited,
            OnStoreError::Deny => Verdict::Unavailable,
        }
    }

    async fn take_shared(&self, shared: &Shared, key: &str, limit: &Limit) -> Result<Decision, RedisError> {
        // The braces are the hash tag: the whole bucket id picks the shard.
        let prefix = &shared.redis.prefix;
        let mut redis_key = String::with_capacity(prefix.len() + key.len() + 5);
        redis_key.push_str(prefix);
        redis_key.push_str("rl:{");
        redis_key.push_str(key);
        redis_key.push('}');
        let call = async {
            // EVALSHA directly (fred's reload helper clones every argument
            // up front); the script is loaded only after a NOSCRIPT.
            let client = shared.redis.client();
            let args = |l: &Limit| vec![l.interval_us as i64, l.capacity_us() as i64];
            match client
                .evalsha::<(i64, i64), _, _, _>(shared.script.sha1().clone(), redis_key.as_str(), args(limit))
                .await
            {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    shared.script.load(client).await?;
                    client.evalsha(shared.script.sha1().clone(), redis_key.as_str(), args(limit)).await
                }
                result => result,
            }
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
            Ok(Ok((allowed, ahead))) => Ok(Decision::from_parts(limit, allowed == 1, ahead.max(0) as u64)),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(RedisError::NoAnswer(COMMAND_TIMEOUT)),
        }
    }
}
