//! The Redis backends against real, private `redis-server` processes (a
//! single node, and a 3-master Cluster), including Redis dying mid-use.

use std::time::Duration;

use bouncer_core::{
    bucket::{self, Limit},
    config::OnStoreError,
    revocation::{Revocation, RevokeReason},
};
use bouncer_shared_state::{
    Redis, RevocationBus,
    denials::{DenialEvent, DenialRecorder, DenialSink, DenialSource, ship},
    limiter::{RateLimiter, Verdict},
    testing::{RedisCluster, RedisServer},
};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use uuid::Uuid;

const FIVE_PER_SECOND_BURST_3: Limit = Limit { burst: 3, interval_us: 200_000 };

async fn connect(url: &str) -> Redis {
    let redis = Redis::connect(url, "test:").expect("valid url");
    assert!(redis.wait_connected(Duration::from_secs(5)).await, "could not connect to {url}");
    redis
}

fn checked(v: Verdict) -> bucket::Decision {
    match v {
        Verdict::Checked(d) => d,
        other => panic!("expected a bucket decision, got {other:?}"),
    }
}

#[tokio::test]
async fn the_bucket_script_matches_the_core_arithmetic() {
    let server = RedisServer::start();
    let limiter = RateLimiter::shared(connect(&server.url()).await, OnStoreError::Deny);
    let l = FIVE_PER_SECOND_BURST_3;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let d = checked(limiter.check("r:user:a", &l).await);
        assert!(d.allowed);
        remaining.push(d.remaining);
    }
    assert_eq!(remaining, [2, 1, 0], "same countdown as bucket::take");
    let refused = checked(limiter.check("r:user:a", &l).await);
    assert!(!refused.allowed, "burst 3 admits exactly 3 at once");
    assert!(
        refused.retry_after_us > 0 && refused.retry_after_us <= 200_000,
        "one token is back within one interval, got {} µs",
        refused.retry_after_us
    );
    assert!(checked(limiter.check("r:user:b", &l).await).allowed, "another key has its own bucket");

    // The key is hash-tagged and expires once the bucket would be full.
    let ttl: i64 = server.cli(&["pttl", "test:rl:{r:user:a}"]).parse().expect("PTTL answers a number");
    assert!((1..=600).contains(&ttl), "TTL {ttl} ms should be about the 600 ms to refill");

    tokio::time::sleep(Duration::from_millis(220)).await;
    assert!(checked(limiter.check("r:user:a", &l).await).allowed, "refilled at 5/s");

    // A Redis that lost its scripts (restart, SCRIPT FLUSH) gets it reloaded.
    assert_eq!(server.cli(&["script", "flush"]), "OK");
    assert!(checked(limiter.check("r:user:c", &l).await).allowed, "NOSCRIPT is handled by reloading");
    assert!(!limiter.stats.degraded());
}

#[tokio::test]
async fn a_dead_redis_falls_back_per_on_store_error_and_recovers() {
    let mut server = RedisServer::start();
    let url = server.url();
    let local = RateLimiter::shared(connect(&url).await, OnStoreError::Local);
    let allow = RateLimiter::shared(connect(&url).await, OnStoreError::Allow);
    let deny = RateLimiter::shared(connect(&url).await, OnStoreError::Deny);
    let l = Limit { burst: 1, interval_us: 60_000_000 };
    assert!(checked(local.check("k", &l).await).allowed);
    server.stop();

    // Local buckets still limit: this key is fresh locally, then spent.
    assert!(checked(local.check("k", &l).await).allowed);
    assert!(!checked(local.check("k", &l).await).allowed, "local buckets keep limiting");
    assert!(local.stats.degraded(), "the degraded state is visible");
    assert!(local.stats.store_errors.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(allow.check("k", &l).await, Verdict::Unlimited);
    assert_eq!(deny.check("k", &l).await, Verdict::Unavailable);

    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = deny.check("fresh", &l).await;
        if v != Verdict::Unavailable {
            assert!(checked(v).allowed);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the limiter never went back to redis");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!deny.stats.degraded(), "recovered by itself");
}

#[tokio::test]
async fn buckets_work_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let limiter = RateLimiter::shared(connect(&cluster.url()).await, OnStoreError::Deny);
    let l = Limit { burst: 2, interval_us: 60_000_000 };
    // Many keys: they land on every shard, each bucket on one.
    for i in 0..30 {
        let key = format!("route:ip:10.0.0.{i}");
        assert!(checked(limiter.check(&key, &l).await).allowed);
        assert!(checked(limiter.check(&key, &l).await).allowed);
        assert!(!checked(limiter.check(&key, &l).await).allowed, "{key}: third request refused");
    }
    let per_node: Vec<usize> =
        cluster.nodes.iter().map(|n| n.cli(&["dbsize"]).parse::<usize>().unwrap_or(0)).collect();
    assert!(per_node.iter().all(|&n| n > 0), "buckets spread over every master: {per_node:?}");
    assert_eq!(per_node.iter().sum::<usize>(), 30, "one key per bucket and nothing else");
}

async fn next_revocation(rx: &mut broadcast::Receiver<Revocation>) -> Revocation {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a revocation within 5 s")
        .expect("the bus is open")
}

#[tokio::test]
async fn revocations_fan_out_and_late_or_reconnecting_subscribers_load_the_snapshot() {
    let mut server = RedisServer::start();
    let url = server.url();
    let admin = RevocationBus::redis(connect(&url).await, Duration::from_secs(3600));
    let gateway = RevocationBus::redis(connect(&url).await, Duration::from_secs(3600));
    let mut early = gateway.subscribe();
    // An empty Redis is not a complete snapshot until an admin has recorded
    // the store's revocations in it (as every admin does when it starts).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!gateway.is_synced(), "synced before any admin recorded");
    admin.resync_wanted().await; // the start-up resync
    admin.record(&[]).await.expect("record the (empty) set");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !gateway.is_synced() {
        assert!(tokio::time::Instant::now() < deadline, "the recorded empty snapshot never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stores keep microseconds; so does the wire form.
    let now = bouncer_core::audit::truncate_to_micros(OffsetDateTime::now_utc());
    let ban = Revocation::user(Uuid::now_v7(), now, RevokeReason::Banned);
    admin.publish(std::slice::from_ref(&ban));
    assert_eq!(next_revocation(&mut early).await, ban, "published revocations reach subscribers");

    // A gateway started after the ban learns it from the snapshot.
    let late_bus = RevocationBus::redis(connect(&url).await, Duration::from_secs(3600));
    let mut late = late_bus.subscribe();
    assert_eq!(next_revocation(&mut late).await, ban);

    // Redis restarts empty: the admin's resync puts the store's revocations
    // back, and the reconnecting subscriber reloads them.
    let logout = Revocation::session(Uuid::now_v7(), Uuid::now_v7(), now, RevokeReason::Logout);
    server.restart();
    tokio::time::timeout(Duration::from_secs(10), admin.resync_wanted())
        .await
        .expect("a reconnect asks for a resync");
    admin.record(&[ban.clone(), logout.clone()]).await.expect("record after the restart");
    let mut seen = Vec::new();
    while !seen.contains(&logout) {
        seen.push(next_revocation(&mut early).await);
    }
    assert_eq!(server.cli(&["zcard", "test:revocations"]), "3", "two revocations and the mark");
    assert_eq!(server.cli(&["ttl", "test:revocations"]), "-1", "the mark must outlive quiet periods");
    // Members older than the keep time are pruned at the next record.
    let old = Revocation::user(Uuid::now_v7(), now - Duration::from_secs(7200), RevokeReason::Banned);
    admin.record(std::slice::from_ref(&old)).await.unwrap();
    assert_eq!(server.cli(&["zcard", "test:revocations"]), "3", "the two-hour-old ban is pruned at once");
}

fn denial(status: u16, bucket: Option<&str>) -> DenialEvent {
    DenialEvent {
        id: Uuid::now_v7(),
        at: OffsetDateTime::now_utc(),
        status,
        decision: "forbidden".into(),
        route: "orders".into(),
        method: "GET".into(),
        path: "/api/orders".into(),
        user_id: None,
        ip: Some("192.0.2.7".into()),
        request_id: None,
        bucket: bucket.map(str::to_owned),
        count: 1,
    }
}

#[tokio::test]
async fn denials_travel_the_stream_and_unacknowledged_ones_come_back() {
    let server = RedisServer::start();
    let redis = connect(&server.url()).await;
    let (recorder, queue) = DenialRecorder::new();
    let sent: Vec<_> = (0..5).map(|_| denial(403, None)).collect();
    for d in &sent {
        recorder.record(d.clone());
    }
    for _ in 0..50 {
        recorder.record(denial(429, Some("user:x")));
    }
    drop(recorder);
    ship(queue, &DenialSink::redis(&redis), std::future::pending()).await;

    let mut source = DenialSource::redis(&redis, "admin-1").await.expect("join the group");
    let first = source.next().await.unwrap().expect("a batch");
    assert_eq!(&first.events[..5], &sent[..], "plain denials arrive in order");
    assert_eq!(first.events.len(), 6, "fifty 429s of one bucket and minute fold into one event");
    assert_eq!(first.events[5].count, 50);
    // Not acknowledged (the append failed): a new consumer process with the
    // same name gets the same events again.
    drop(source);
    let mut again = DenialSource::redis(&redis, "admin-1").await.unwrap();
    let replay = again.next().await.unwrap().unwrap();
    assert_eq!(replay.events, first.events, "unacknowledged events are redelivered");
    again.ack(replay).await.unwrap();
    let pending = server.cli(&["xpending", "test:denials", "admin"]);
    assert!(pending.starts_with('0'), "all acknowledged, XPENDING says {pending:?}");
}

/// The API key feed: a follower loads nothing until an admin has recorded
/// the keys, then the whole hash, then each user's change as announced —
/// and the hash again after Redis restarts and an admin rewrites it.
#[tokio::test]
async fn api_keys_are_loaded_whole_then_followed_per_user() {
    use bouncer_core::{
        credential::{KeyUpdate, UsableApiKey},
        token::TokenHash,
    };
    use bouncer_shared_state::keys::RedisKeys;
    use std::sync::{Arc, Mutex};

    let mut server = RedisServer::start();
    let url = server.url();
    let admin = RedisKeys::new(connect(&url).await);
    let gateway = Arc::new(RedisKeys::new(connect(&url).await));
    let seen: Arc<Mutex<Vec<KeyUpdate>>> = Arc::default();
    let follower = {
        let (gateway, seen) = (gateway.clone(), seen.clone());
        tokio::spawn(async move { gateway.follow(|u| seen.lock().unwrap().push(u)).await })
    };
    let key = |user: u128, n: u8| UsableApiKey {
        id: Uuid::from_u128(100 + u128::from(n)),
        user_id: Uuid::from_u128(user),
        prefix: format!("{n:08x}"),
        hash: TokenHash([n; 32]),
        roles: vec!["user".into()],
        expires_at: None,
    };
    // Waits for an update matching `want`; a full reload may come more than
    // once (the polling load, then the `*` announcement), so none is counted.
    let until = async |want: &dyn Fn(&KeyUpdate) -> bool, what: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let found = seen.lock().unwrap().drain(..).any(|u| want(&u));
            if found {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let sorted = |u: &KeyUpdate| match u {
        KeyUpdate::All(all) => {
            let mut all = all.clone();
            all.sort_by_key(|k| k.id);
            Some(all)
        }
        KeyUpdate::User { .. } => None,
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(seen.lock().unwrap().is_empty(), "nothing counts as loaded before an admin recorded the keys");

    admin.publish_all(&[key(1, 1), key(2, 2)]).await.expect("record every key");
    until(&|u| sorted(u) == Some(vec![key(1, 1), key(2, 2)]), "the whole set").await;
    admin.publish_user(Uuid::from_u128(2), &[]).await.expect("user 2's keys gone");
    until(&|u| *u == KeyUpdate::User { user: Uuid::from_u128(2), keys: vec![] }, "user 2 emptied").await;
    admin.publish_user(Uuid::from_u128(1), &[key(1, 1), key(1, 3)]).await.unwrap();
    let ones = KeyUpdate::User { user: Uuid::from_u128(1), keys: vec![key(1, 1), key(1, 3)] };
    until(&|u| *u == ones, "user 1's two keys").await;
    assert!(seen.lock().unwrap().iter().all(|u| sorted(u).is_none()), "no full reload without a cause");

    // Redis restarts empty: the follower waits for the admin's rewrite.
    server.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(seen.lock().unwrap().is_empty(), "an empty hash after a restart is not a key set");
    admin.publish_all(&[key(1, 3)]).await.expect("rewrite after the restart");
    until(&|u| sorted(u) == Some(vec![key(1, 3)]), "the rewritten set").await;
    follower.abort();
}
