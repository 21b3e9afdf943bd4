//! The gateway's audit stream: 401/403/429 decisions travel to the admin
//! service, which appends them to the audit log as `gateway.denied`.
//!
//! Gateway side: [`DenialRecorder::record`] never blocks a request (a full
//! queue drops the event and counts it); [`ship`] batches the queue in the
//! background and folds 429s into one event per bucket and minute, so a
//! flood cannot flood the log. Transport: an in-process channel (embedded)
//! or a capped Redis stream.
//!
//! Admin side: [`DenialSource`] delivers batches; the admin acknowledges a
//! batch only after its audit transaction committed. Redis redelivers what
//! was not acknowledged (this consumer's own pending entries, and those a
//! crashed consumer left idle), and events carry their audit id, so a
//! redelivered event is recognised rather than written twice.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bouncer_core::audit::{AuditContext, AuditEvent, Audited, GatewayDenial};
use fred::{
    clients::Client,
    interfaces::{ClientLike, StreamsInterface},
    types::config::Options,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::redis::{Redis, RedisError};

/// One denial (or, for 429, `count` denials of one bucket in one minute).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialEvent {
    /// The audit event id, fixed at the gateway so redelivery is idempotent.
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub status: u16,
    /// The gateway's decision (`invalid_token`, `forbidden`, `rate_limited`…).
    pub decision: String,
    /// Route name; `-` when none matched.
    pub route: String,
    pub method: String,
    /// The normalized path (never the query, which may hold secrets).
    pub path: String,
    pub user_id: Option<String>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    /// The rate-limit bucket (429 only).
    pub bucket: Option<String>,
    /// Denials folded into this event (1 unless aggregated).
    pub count: u32,
}

impl DenialEvent {
    /// The audit log's form of this event (core's `Audited::GatewayDenied`),
    /// keeping the id fixed at the gateway.
    pub fn to_audit(&self) -> AuditEvent {
        let ctx = AuditContext {
            actor: None,
            ip: self.ip.clone(),
            user_agent: None,
            request_id: self.request_id.clone(),
        };
        let denial = GatewayDenial {
            status: self.status,
            decision: self.decision.clone(),
            route: self.route.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            user_id: self.user_id.clone(),
            bucket: self.bucket.clone(),
            count: self.count,
        };
        let mut event = Audited::GatewayDenied(&denial).event(&ctx, self.at);
        event.id = self.id;
        event
    }
}

/// The gateway's end: cheap to call on the request path.
pub struct DenialRecorder {
    queue: mpsc::Sender<DenialEvent>,
    pub dropped: AtomicU64,
}

impl std::fmt::Debug for DenialRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenialRecorder").finish_non_exhaustive()
    }
}

/// Denials queued between the request path and the shipper.
pub const QUEUE: usize = 16_384;

impl DenialRecorder {
    pub fn new() -> (Self, mpsc::Receiver<DenialEvent>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        (Self { queue, dropped: AtomicU64::new(0) }, rx)
    }

    /// Queues one denial; never waits.
    pub fn record(&self, event: DenialEvent) {
        if self.queue.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where shipped batches go: the gateway's end of [`DenialSource`].
pub enum DenialSink {
    /// The admin in this process (the embedded shape).
    InProcess(mpsc::Sender<Vec<DenialEvent>>),
    /// A capped Redis stream (`{prefix}denials`).
    Redis { redis: Redis, key: String },
}

impl std::fmt::Debug for DenialSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DenialSink::InProcess(_) => "DenialSink::InProcess",
            DenialSink::Redis { .. } => "DenialSink::Redis",
        })
    }
}

/// Why a batch did not reach the admin side.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the admin side is gone")]
    AdminGone,
    #[error("cannot encode a denial: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// Entries the Redis stream keeps at most (approximately).
pub const STREAM_MAX_LEN: i64 = 100_000;
const GROUP: &str = "admin";
const FIELD: &str = "event";

impl DenialSink {
    /// The stream on `redis` that [`DenialSource::redis`] reads.
    pub fn redis(redis: &Redis) -> Self {
        DenialSink::Redis { redis: redis.clone(), key: redis.key("denials") }
    }

    pub async fn send(&self, batch: &[DenialEvent]) -> Result<(), SendError> {
        match self {
            DenialSink::InProcess(admin) => {
                admin.send(batch.to_vec()).await.map_err(|_| SendError::AdminGone)
            }
            DenialSink::Redis { redis, key } => {
                let pipeline = redis.client().pipeline();
                for e in batch {
                    let json = serde_json::to_string(e)?;
                    let () = pipeline
                        .xadd(key.as_str(), false, ("MAXLEN", "~", STREAM_MAX_LEN), "*", vec![(FIELD, json)])
                        .await
                        .map_err(RedisError::from)?;
                }
                let _: Vec<fred::types::Value> = pipeline.all().await.map_err(RedisError::from)?;
                Ok(())
            }
        }
    }
}

/// Most events per shipped batch.
const BATCH: usize = 256;
/// Longest an event waits in the shipper before it is sent.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Moves recorded denials to `sink` until the queue closes (every recorder
/// dropped) or `stop` resolves; then flushes what it holds.
pub async fn ship(mut queue: mpsc::Receiver<DenialEvent>, sink: &DenialSink, stop: impl Future<Output = ()>) {
    let mut batch = Vec::new();
    let mut folded = RateLimitFolder::default();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            event = queue.recv() => match event {
                Some(e) if e.status == 429 => folded.add(e),
                Some(e) => {
                    batch.push(e);
                    if batch.len() >= BATCH {
                        send(sink, &mut batch).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                batch.extend(folded.finished_minutes(OffsetDateTime::now_utc()));
                send(sink, &mut batch).await;
            }
            () = &mut stop => break,
        }
    }
    while let Ok(e) = queue.try_recv() {
        if e.status == 429 { folded.add(e) } else { batch.push(e) }
    }
    batch.extend(folded.drain());
    send(sink, &mut batch).await;
}

async fn send(sink: &DenialSink, batch: &mut Vec<DenialEvent>) {
    if batch.is_empty() {
        return;
    }
    // One retry covers a reconnect; beyond that the events are dropped
    // (and logged): requests must never wait for the audit stream.
    for attempt in 1..=2 {
        match sink.send(batch).await {
            Ok(()) => break,
            Err(e) if attempt == 2 => {
                tracing::error!(error = %e, lost = batch.len(), "could not ship gateway denials")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    batch.clear();
}

/// 429s folded per bucket and wall-clock minute.
#[derive(Default)]
struct RateLimitFolder {
    open: HashMap<(i64, String, String), DenialEvent>,
}

impl RateLimitFolder {
    fn add(&mut self, e: DenialEvent) {
        let minute = e.at.unix_timestamp().div_euclid(60);
        let key = (minute, e.route.clone(), e.bucket.clone().unwrap_or_default());
        self.open.entry(key).and_modify(|first| first.count += e.count).or_insert(e);
    }

    /// Events of minutes that have ended before `now`.
    fn finished_minutes(&mut self, now: OffsetDateTime) -> Vec<DenialEvent> {
        let current = now.unix_timestamp().div_euclid(60);
        let done: Vec<_> = self.open.keys().filter(|k| k.0 < current).cloned().collect();
        done.into_iter().filter_map(|k| self.open.remove(&k)).collect()
    }

    fn drain(&mut self) -> Vec<DenialEvent> {
        self.open.drain().map(|(_, e)| e).collect()
    }
}

/// A batch for the admin to append, then acknowledge.
#[derive(Debug, Default)]
pub struct Delivery {
    pub events: Vec<DenialEvent>,
    stream_ids: Vec<String>,
}

/// The admin's end of the stream.
pub enum DenialSource {
    InProcess(mpsc::Receiver<Vec<DenialEvent>>),
    Redis(RedisGroup),
}

impl std::fmt::Debug for DenialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DenialSource::InProcess(_) => "DenialSource::InProcess",
            DenialSource::Redis(_) => "DenialSource::Redis",
        })
    }
}

/// Consumer `name` of the `admin` group on the denial stream.
pub struct RedisGroup {
    /// Own connection: XREADGROUP blocks it.
    client: Client,
    key: String,
    name: String,
    /// Re-read our pending entries (after a start or a failed append) before
    /// taking new ones.
    replay: bool,
}

/// How long a consumer's unacknowledged entry waits before another admin
/// replica takes it over.
const CLAIM_IDLE_MS: u64 = 60_000;

/// How long one read of new entries waits for some to arrive.
const BLOCK: Duration = Duration::from_secs(1);
/// When a blocking read that Redis has not answered counts as failed.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(BLOCK.as_secs() + 5);

impl DenialSource {
    /// Joins (creating if needed) the consumer group as `consumer`.
    pub async fn redis(redis: &Redis, consumer: &str) -> Result<Self, RedisError> {
        let client = redis.client().clone_new();
        client.init().await?;
        let key = redis.key("denials");
        if let Err(e) = client.xgroup_create::<(), _, _, _>(key.as_str(), GROUP, "0", true).await
            && !e.details().starts_with("BUSYGROUP")
        {
            return Err(e.into());
        }
        Ok(DenialSource::Redis(RedisGroup { client, key, name: consumer.to_owned(), replay: true }))
    }

    /// The next non-empty batch; `Ok(None)` when the source has closed.
    pub async fn next(&mut self) -> Result<Option<Delivery>, RedisError> {
        match self {
            DenialSource::InProcess(rx) => {
                Ok(rx.recv().await.map(|events| Delivery { events, stream_ids: Vec::new() }))
            }
            DenialSource::Redis(group) => loop {
                if let Some(d) = group.read().await? {
                    return Ok(Some(d));
                }
            },
        }
    }

    /// Marks a batch as durably appended.
    pub async fn ack(&mut self, delivery: Delivery) -> Result<(), RedisError> {
        if let DenialSource::Redis(group) = self
            && !delivery.stream_ids.is_empty()
        {
            let _: i64 = group.client.xack(group.key.as_str(), GROUP, delivery.stream_ids).await?;
        }
        Ok(())
    }
}

/// Stream entries as read: (id, fields).
type Entries = Vec<(String, HashMap<String, String>)>;

impl RedisGroup {
    async fn read(&mut self) -> Result<Option<Delivery>, RedisError> {
        let entries: Entries = if self.replay {
            // Take over what a crashed replica left idle, then re-read our own.
            let _ = self
                .client
                .xautoclaim_values::<String, String, String, _, _, _, _>(
                    self.key.as_str(),
                    GROUP,
                    self.name.as_str(),
                    CLAIM_IDLE_MS,
                    "0-0",
                    Some(BATCH as u64),
                    false,
                )
                .await?;
            let pending = self.read_from("0").await?;
            if pending.is_empty() {
                self.replay = false;
            }
            pending
        } else {
            self.read_from(">").await?
        };
        if entries.is_empty() {
            return Ok(None);
        }
        let mut delivery = Delivery::default();
        for (id, fields) in entries {
            match fields.get(FIELD).and_then(|json| serde_json::from_str(json).ok()) {
                Some(event) => delivery.events.push(event),
                // Unreadable: acknowledged with the batch so it cannot wedge the group.
                None => tracing::warn!(id, "skipping a malformed gateway denial"),
            }
            delivery.stream_ids.push(id);
        }
        Ok(Some(delivery))
    }

    async fn read_from(&self, id: &str) -> Result<Entries, RedisError> {
        let block = (id == ">").then_some(BLOCK);
        // A blocking read that finds nothing is an answer (nil), not a
        // failure: it must outlive the client's default command timeout,
        // or an idle admin logs a timeout at every read.
        let options = Options { timeout: Some(BLOCK_TIMEOUT), ..Options::default() };
        let reply: fred::types::Value = self
            .client
            .with_options(&options)
            .xreadgroup(
                GROUP,
                self.name.as_str(),
                Some(BATCH as u64),
                block.map(|b| b.as_millis() as u64),
                false,
                self.key.as_str(),
                id,
            )
            .await?;
        // Nil: the block ended with nothing new.
        if reply.is_null() {
            return Ok(Entries::new());
        }
        let mut response: HashMap<String, Entries> = reply.into_xread_response()?;
        Ok(response.remove(&self.key).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bouncer_core::audit::Action;
    use time::macros::datetime;

    fn denial(status: u16, at: OffsetDateTime, bucket: &str) -> DenialEvent {
        DenialEvent {
            id: Uuid::now_v7(),
            at,
            status,
            decision: if status == 429 { "rate_limited" } else { "forbidden" }.into(),
            route: "orders".into(),
            method: "GET".into(),
            path: "/api/orders".into(),
            user_id: Some("u1".into()),
            ip: Some("192.0.2.1".into()),
            request_id: Some("r1".into()),
            bucket: Some(bucket.into()),
            count: 1,
        }
    }

    #[test]
    fn rate_limit_denials_fold_per_bucket_and_minute() {
        let mut f = RateLimitFolder::default();
        let t = datetime!(2026-01-01 10:00:05 UTC);
        for _ in 0..1000 {
            f.add(denial(429, t, "user:a"));
        }
        f.add(denial(429, t + Duration::from_secs(30), "user:b"));
        f.add(denial(429, t + Duration::from_secs(60), "user:a"));
        assert!(f.finished_minutes(t).is_empty(), "10:00 has not ended at 10:00:05");
        let mut done = f.finished_minutes(t + Duration::from_secs(56));
        done.sort_by(|a, b| a.bucket.cmp(&b.bucket));
        let counts: Vec<_> = done.iter().map(|e| (e.bucket.as_deref().unwrap(), e.count)).collect();
        assert_eq!(counts, [("user:a", 1000), ("user:b", 1)]);
        assert_eq!(f.drain().len(), 1, "10:01's event is still open");
    }

    #[test]
    fn the_audit_form_keeps_the_gateway_id_and_no_query() {
        let d = denial(403, datetime!(2026-01-01 10:00:05 UTC), "x");
        let a = d.to_audit();
        assert_eq!(a.id, d.id, "redelivery must map to the same audit id");
        assert_eq!(a.action, Action::GatewayDenied);
        assert_eq!(a.actor.as_deref(), Some("u1"));
        assert!(a.details.contains("\"path\":\"/api/orders\""), "{}", a.details);
    }
}
