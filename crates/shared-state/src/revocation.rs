//! The revocation bus: how the admin service tells every token verifier
//! what to refuse, the moment the revoking transaction commits.
//!
//! Two backends. [`InProcessBus`] when admin and gateway share a process.
//! [`RedisBus`] across processes: the admin records each revocation in a
//! sorted set (`{prefix}revocations`, scored by time, pruned after the
//! longest token lifetime) and publishes it on a channel of the same name;
//! each gateway subscribes, then loads the sorted set (the snapshot) — at
//! start and again after every reconnect, so nothing published while it
//! was away is missed.
//!
//! The store stays the source of truth: the admin re-records its recent
//! revocations into Redis when it starts, whenever its own connection comes
//! back and after a failed publish, so a Redis that lost its data (or was
//! down during a ban) converges again; what a re-record adds is announced
//! too. Every record also marks the set as recorded, and a gateway counts a
//! snapshot as complete (and itself ready) only with that mark: a Redis
//! that came up empty has no mark until an admin has written the store's
//! revocations into it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bouncer_core::revocation::{Revocation, RevocationKind, RevokeReason};
use fred::{
    interfaces::{EventInterface, SortedSetsInterface},
    types::scripts::Script,
};
use time::OffsetDateTime;
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use crate::redis::{Redis, RedisError};

/// Revocations published by admin replicas, delivered to every subscriber.
///
/// Delivery is best effort: the store's revocation records are the source of
/// truth, and a subscriber that lagged or reconnected reloads a snapshot
/// rather than trusting the stream to be complete.
///
/// An enum, like [`DenialSource`](crate::denials::DenialSource) and the
/// limiter's optional Redis: the crate has exactly two backends and every
/// caller gets both from one constructor each.
#[derive(Debug)]
pub enum RevocationBus {
    /// One process: admin and gateway share it.
    InProcess(InProcessBus),
    /// Across processes, on Redis.
    Redis(Arc<RedisBus>),
}

impl RevocationBus {
    /// The bus of one process.
    pub fn in_process() -> Self {
        RevocationBus::InProcess(InProcessBus::default())
    }

    /// The bus on `redis`; `keep`: how long revocations stay there (at
    /// least the access token lifetime plus leeway).
    pub fn redis(redis: Redis, keep: Duration) -> Self {
        RevocationBus::Redis(Arc::new(RedisBus::new(redis, keep)))
    }

    /// Announces revocations that have been committed. Never blocks.
    pub fn publish(&self, revocations: &[Revocation]) {
        match self {
            RevocationBus::InProcess(bus) => bus.publish(revocations),
            RevocationBus::Redis(bus) => RedisBus::publish(bus, revocations),
        }
    }

    /// Revocations published from now on (and, on a shared bus, every
    /// snapshot loaded). A receiver that falls more than the channel's
    /// capacity behind gets `RecvError::Lagged` and should call
    /// [`Self::resnapshot`].
    pub fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        match self {
            RevocationBus::InProcess(bus) => bus.sender.subscribe(),
            RevocationBus::Redis(bus) => RedisBus::subscribe(bus),
        }
    }

    /// Whether subscribers have been sent a complete snapshot at least once.
    pub fn is_synced(&self) -> bool {
        match self {
            RevocationBus::InProcess(_) => true,
            RevocationBus::Redis(bus) => bus.synced.load(Ordering::SeqCst),
        }
    }

    /// Asks for the current set to be sent to subscribers again.
    pub fn resnapshot(&self) {
        if let RevocationBus::Redis(bus) = self {
            bus.resnapshot.notify_one();
        }
    }

    /// Resolves when the shared record may have missed revocations (first
    /// start, a reconnect, a failed publish): the admin then [`Self::record`]s
    /// the store's recent ones again. In-process: never.
    pub async fn resync_wanted(&self) {
        match self {
            RevocationBus::InProcess(_) => std::future::pending().await,
            RevocationBus::Redis(bus) => bus.resync_wanted().await,
        }
    }

    /// Writes revocations to the shared record and marks it recorded;
    /// announces those it did not hold yet. In-process there is no record
    /// beyond the store.
    pub async fn record(&self, revocations: &[Revocation]) -> Result<(), RedisError> {
        match self {
            RevocationBus::InProcess(_) => Ok(()),
            RevocationBus::Redis(bus) => bus.record_now(revocations).await,
        }
    }
}

/// The in-process bus: one process, any number of subscribers.
#[derive(Debug)]
pub struct InProcessBus {
    sender: broadcast::Sender<Revocation>,
}

/// Messages buffered per subscriber before it lags.
pub const CAPACITY: usize = 4096;

impl Default for InProcessBus {
    fn default() -> Self {
        Self { sender: broadcast::channel(CAPACITY).0 }
    }
}

impl InProcessBus {
    fn publish(&self, revocations: &[Revocation]) {
        for revocation in revocations {
            // No subscriber yet is fine: the records are in the store.
            let _ = self.sender.send(revocation.clone());
        }
    }
}

/// Member of the sorted set saying that an admin has recorded the store's
/// revocations in this Redis (since it started, or lost its data): a
/// snapshot without it is not complete, whatever else it holds.
const RECORDED: &str = "recorded";

/// Adds revocations to the sorted set and announces each one it did not
/// hold yet on the channel (so a resync after an outage reaches gateways
/// that are already subscribed), marks the set as recorded, and prunes
/// what no live token can match any more (by Redis's clock), atomically.
/// The key does not expire: the mark must outlive quiet periods, and the
/// pruning keeps it small.
const RECORD_SCRIPT: &str = r#"
local now = tonumber(redis.call('TIME')[1])
local keep = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  if redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('PUBLISH', KEYS[1], ARGV[i + 1])
  end
end
redis.call('ZADD', KEYS[1], '+inf', 'recorded')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - keep))
return redis.call('ZCARD', KEYS[1])
"#;

/// The bus across processes, on Redis.
pub struct RedisBus {
    redis: Redis,
    /// How long a revocation is kept: at least the access-token lifetime.
    keep: Duration,
    key: String,
    record_script: Script,
    sender: broadcast::Sender<Revocation>,
    subscriber_started: AtomicBool,
    synced: Arc<AtomicBool>,
    resnapshot: Arc<Notify>,
    resync: Arc<Notify>,
    resync_watch_started: AtomicBool,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").field("key", &self.key).field("keep", &self.keep).finish_non_exhaustive()
    }
}

impl RedisBus {
    /// `keep`: how long revocations stay in Redis; use at least the access
    /// token lifetime plus leeway.
    pub fn new(redis: Redis, keep: Duration) -> Self {
        let resync = Arc::new(Notify::new());
        // The first `resync_wanted` returns at once: record on start.
        resync.notify_one();
        Self {
            key: redis.key("revocations"),
            redis,
            keep,
            record_script: Script::from_lua(RECORD_SCRIPT),
            sender: broadcast::channel(CAPACITY).0,
            subscriber_started: AtomicBool::new(false),
            synced: Arc::new(AtomicBool::new(false)),
            resnapshot: Arc::new(Notify::new()),
            resync,
            resync_watch_started: AtomicBool::new(false),
        }
    }

    async fn record_now(&self, revocations: &[Revocation]) -> Result<(), RedisError> {
        let mut args = Vec::with_capacity(1 + 2 * revocations.len());
        args.push(self.keep.as_secs().max(1).to_string());
        for r in revocations {
            args.push(r.at.unix_timestamp().to_string());
            args.push(encode(r));
        }
        let _: i64 =
            self.record_script.evalsha_with_reload(self.redis.client(), self.key.as_str(), args).await?;
        Ok(())
    }
}

impl RedisBus {
    fn publish(self: &Arc<Self>, revocations: &[Revocation]) {
        if revocations.is_empty() {
            return;
        }
        let bus = self.clone();
        let revocations = revocations.to_vec();
        crate::redis::spawn(async move {
            // The script announces what it adds.
            if let Err(e) = bus.record_now(&revocations).await {
                // Gateways keep their last set; the store still has it all,
                // and the resync puts it back into Redis when it answers.
                tracing::error!(error = %e, "could not publish revocations to redis; will resync");
                bus.resync.notify_one();
            }
        });
    }

    fn subscribe(self: &Arc<Self>) -> broadcast::Receiver<Revocation> {
        let receiver = self.sender.subscribe();
        if !self.subscriber_started.swap(true, Ordering::SeqCst) {
            crate::redis::spawn(run_subscriber(self.clone()));
        }
        receiver
    }

    async fn resync_wanted(&self) {
        if !self.resync_watch_started.swap(true, Ordering::SeqCst) {
            // The command connection coming back means Redis may have
            // restarted empty, or missed publishes while away.
            let mut reconnects = self.redis.client().reconnect_rx();
            let resync = self.resync.clone();
            crate::redis::spawn(async move {
                while reconnects.recv().await.is_ok() {
                    resync.notify_one();
                }
            });
        }
        self.resync.notified().await
    }
}

/// Keeps the subscription and the snapshot: subscribe, load the set, apply
/// messages; after every reconnect load the set again.
async fn run_subscriber(bus: Arc<RedisBus>) {
    let mut subscription = match crate::redis::subscribe(&bus.redis, &bus.key, "revocations").await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the revocation subscriber");
            return;
        }
    };
    let (messages, reconnects) = (&mut subscription.messages, &mut subscription.reconnects);
    snapshot_until_loaded(&bus).await;
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(m) => match m.value.as_str().as_deref().and_then(decode) {
                    Some(r) => { let _ = bus.sender.send(r); }
                    None => tracing::warn!("ignoring a malformed revocation message"),
                },
                Err(broadcast::error::RecvError::Lagged(_)) => snapshot_until_loaded(&bus).await,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            reconnect = reconnects.recv() => match reconnect {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    tracing::info!("revocation subscriber reconnected; reloading the snapshot");
                    // Once now, and once after the resubscription surely
                    // finished, so a publish in between is not missed.
                    snapshot_until_loaded(&bus).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    snapshot_until_loaded(&bus).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = bus.resnapshot.notified() => snapshot_until_loaded(&bus).await,
        }
    }
}

/// Loads the sorted set and hands every revocation to the subscribers;
/// retries until the set carries the admins' [`RECORDED`] mark (Redis
/// started empty, or lost its data, and no admin has written the store's
/// revocations back yet), which makes the bus synced.
async fn snapshot_until_loaded(bus: &RedisBus) {
    let mut waiting_said = false;
    loop {
        match bus
            .redis
            .client()
            .zrange::<Vec<String>, _, _, _>(bus.key.as_str(), 0, -1, None, false, None, false)
            .await
        {
            Ok(members) => {
                let count = members.len();
                for r in members.iter().filter_map(|m| decode(m)) {
                    let _ = bus.sender.send(r);
                }
                if members.iter().any(|m| m == RECORDED) {
                    bus.synced.store(true, Ordering::SeqCst);
                    tracing::debug!(count, "revocation snapshot loaded");
                    return;
                }
                if !std::mem::replace(&mut waiting_said, true) {
                    tracing::info!("waiting for an admin to record the revocations in redis");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot load the revocation snapshot; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `kind id user_id at_unix_micros reason`: compact, and equal revocations
/// encode equally (the sorted set deduplicates them).
fn encode(r: &Revocation) -> String {
    let micros = r.at.unix_timestamp_nanos() / 1000;
    format!("{} {} {} {micros} {}", r.kind.as_str(), r.id, r.user_id, r.reason)
}

fn decode(s: &str) -> Option<Revocation> {
    let mut parts = s.splitn(5, ' ');
    let kind = RevocationKind::parse(parts.next()?)?;
    let id = Uuid::parse_str(parts.next()?).ok()?;
    let user_id = Uuid::parse_str(parts.next()?).ok()?;
    let micros: i128 = parts.next()?.parse().ok()?;
    let at = OffsetDateTime::from_unix_timestamp_nanos(micros * 1000).ok()?;
    // Whatever the label, the revocation is enforced.
    let reason = RevokeReason::parse(parts.next()?);
    Some(Revocation { kind, id, user_id, at, reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[tokio::test]
    async fn every_subscriber_sees_what_is_published_after_it_subscribed() {
        let bus = RevocationBus::in_process();
        let at = datetime!(2026-01-01 00:00 UTC);
        bus.publish(&[Revocation::user(Uuid::from_u128(9), at, RevokeReason::Banned)]);
        let (mut a, mut b) = (bus.subscribe(), bus.subscribe());
        let r = Revocation::session(Uuid::from_u128(1), Uuid::from_u128(2), at, RevokeReason::Logout);
        bus.publish(std::slice::from_ref(&r));
        assert_eq!(a.recv().await.unwrap(), r);
        assert_eq!(b.recv().await.unwrap(), r);
        assert!(a.try_recv().is_err(), "nothing else was queued");
    }

    #[test]
    fn the_wire_form_round_trips_and_refuses_garbage() {
        let at = datetime!(2026-03-04 05:06:07.123456 UTC);
        for r in [
            Revocation::user(Uuid::from_u128(7), at, RevokeReason::Banned),
            Revocation::session(Uuid::from_u128(1), Uuid::from_u128(2), at, RevokeReason::Logout),
        ] {
            assert_eq!(decode(&encode(&r)), Some(r));
        }
        for bad in
            ["", "user", "group 1 2 3 x", "user not-a-uuid", "session 00000000-0000-0000-0000-000000000001"]
        {
            assert_eq!(decode(bad), None, "{bad:?} decoded");
        }
    }
}
