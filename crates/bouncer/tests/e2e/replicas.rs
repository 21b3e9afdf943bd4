//! Several `bouncer gateway` replicas sharing one Redis (single node or a
//! 3-master Cluster) and one admin: shared rate limits, revocations that
//! reach every replica within a second, denials in the audit log, and
//! Redis dying under load.

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bouncer_shared_state::testing::{RedisCluster, RedisServer};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::harness::{
    Admin, BIN, Backend, PASSWORD, expect_json, free_port, metric_value, signal, wait_for_port,
};

const ROUTES: &str = r#"
upstreams:
  app: { targets: [ECHO] }
routes:
  - name: limited
    path: /limited/**
    upstream: app
    auth: none
    rate_limit: { key: route, burst: 20, per_second: 100 }
  - { name: api, path: /api/**, upstream: app, roles: [user] }
  - { name: staff, path: /staff/**, upstream: app, roles: [admin] }
  - { name: sync, path: /sync/**, upstream: app, roles: [user], credentials: [jwt, api_key] }
"#;

struct Gateway {
    child: Child,
    base: String,
    metrics: String,
}

struct Replicas {
    admin: Admin,
    _echo: Child,
    gateways: Vec<Gateway>,
    redis_url: String,
    routes: std::path::PathBuf,
    http: reqwest::Client,
}

impl Replicas {
    async fn start(redis_url: &str, gateways: usize, on_store_error: &str) -> Self {
        let admin = Admin::start_with(Backend::Sqlite, &format!("redis: {redis_url}\n")).await;
        let echo_port = free_port();
        let echo = Command::new(BIN)
            .args(["echo", "--listen", &format!("127.0.0.1:{echo_port}")])
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_for_port(echo_port).await;
        let routes = admin.dir.path().join("routes.yaml");
        std::fs::write(&routes, ROUTES.replace("ECHO", &format!("127.0.0.1:{echo_port}"))).unwrap();
        let mut replicas = Self {
            admin,
            _echo: echo,
            gateways: Vec::new(),
            redis_url: redis_url.to_owned(),
            routes,
            http: reqwest::Client::new(),
        };
        for _ in 0..gateways {
            replicas.add_gateway(on_store_error).await;
        }
        replicas
    }

    /// Starts one more replica and waits until it has keys and revocations.
    async fn add_gateway(&mut self, on_store_error: &str) {
        let gateway = Self::start_gateway_process(self, on_store_error).await;
        for _ in 0..200 {
            let r = self.http.get(format!("{}/api/x", gateway.base)).bearer_auth("x").send().await.unwrap();
            let ready = self.http.get(format!("{}/readyz", gateway.metrics)).send().await.unwrap();
            if r.status() != 503 && ready.status() == 200 {
                self.gateways.push(gateway);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway {} never loaded keys and revocations", gateway.base);
    }

    /// Starts a replica process and waits for its ports (not for readiness).
    async fn start_gateway_process(&self, on_store_error: &str) -> Gateway {
        let (port, metrics_port) = (free_port(), free_port());
        let config = self.admin.dir.path().join(format!("gateway-{port}.yaml"));
        std::fs::write(
            &config,
            format!(
                "redis: {}\ngateway:\n  listen: 127.0.0.1:{port}\n  metrics_listen: 127.0.0.1:{metrics_port}\n  routes: {}\n  jwks_url: {}/.well-known/jwks.json\n  issuer: http://bouncer.test\n  audience: bouncer-test\n  shutdown_grace: 2s\n  on_store_error: {on_store_error}\n",
                self.redis_url,
                self.routes.display(),
                self.admin.base
            ),
        )
        .unwrap();
        let child = Command::new(BIN)
            .args(["gateway", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_for_port(port).await;
        wait_for_port(metrics_port).await;
        Gateway {
            child,
            base: format!("http://127.0.0.1:{port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}"),
        }
    }

    async fn metric(&self, gateway: &Gateway, series: &str) -> f64 {
        let text =
            self.http.get(format!("{}/metrics", gateway.metrics)).send().await.unwrap().text().await.unwrap();
        metric_value(&text, series)
    }

    /// Status of GET `path` with `token` on every replica.
    async fn statuses(&self, path: &str, token: &str) -> Vec<u16> {
        let mut out = Vec::new();
        for g in &self.gateways {
            let r = self.http.get(format!("{}{path}", g.base)).bearer_auth(token).send().await.unwrap();
            out.push(r.status().as_u16());
        }
        out
    }

    /// Waits until every replica answers `want`; returns the time it took.
    async fn until_all(&self, path: &str, token: &str, want: u16, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let got = self.statuses(path, token).await;
            if got.iter().all(|&s| s == want) {
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "replicas answered {got:?}, not all {want}, after {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The newest `gateway.denied` audit events, read with an admin token.
    async fn denials(&self, admin_token: &str) -> Vec<Value> {
        let path = "/admin/audit?action=gateway.denied&limit=100";
        let page = expect_json(self.admin.get_bearer(path, admin_token).await, 200).await;
        page["items"].as_array().expect("an items array").clone()
    }

    /// An admin (made with the CLI) and their access token.
    async fn admin_token(&self) -> String {
        self.admin.root().await.1
    }

    /// Hammers `/limited/` round robin over the replicas with `workers`
    /// concurrent clients for `span`. Returns (admitted, refused, elapsed),
    /// where elapsed estimates the span Redis saw: the mean of the longest
    /// (first send to last answer) and the shortest (first answer to last
    /// send) spans the requests could have covered there.
    async fn hammer(&self, workers: usize, span: Duration) -> (u64, u64, Duration) {
        let admitted = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let bases: Arc<Vec<String>> = Arc::new(self.gateways.iter().map(|g| g.base.clone()).collect());
        let started = Instant::now();
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                let (admitted, refused, bases, http) =
                    (admitted.clone(), refused.clone(), bases.clone(), self.http.clone());
                tokio::spawn(async move {
                    let mut i = w;
                    let (mut first_answer, mut last_send, mut last_answer) =
                        (None, Duration::ZERO, Duration::ZERO);
                    while started.elapsed() < span {
                        last_send = started.elapsed();
                        let r =
                            http.get(format!("{}/limited/{i}", bases[i % bases.len()])).send().await.unwrap();
                        last_answer = started.elapsed();
                        first_answer.get_or_insert(last_answer);
                        let headers = r.headers();
                        assert!(
                            headers.contains_key("ratelimit-limit"),
                            "RateLimit headers on every limited response"
                        );
                        match r.status().as_u16() {
                            200 => admitted.fetch_add(1, Ordering::Relaxed),
                            429 => {
                                assert!(headers.contains_key("retry-after"), "429 carries Retry-After");
                                refused.fetch_add(1, Ordering::Relaxed)
                            }
                            other => panic!("only 200 or 429 expected, got {other}"),
                        };
                        i += workers;
                    }
                    (first_answer.unwrap_or(span), last_send, last_answer)
                })
            })
            .collect();
        let (mut first_answer, mut last_send, mut last_answer) = (span, Duration::ZERO, Duration::ZERO);
        for t in tasks {
            let (f, s, a) = t.await.unwrap();
            (first_answer, last_send, last_answer) =
                (first_answer.min(f), last_send.max(s), last_answer.max(a));
        }
        let elapsed = (last_answer + last_send.saturating_sub(first_answer)) / 2;
        (admitted.load(Ordering::Relaxed), refused.load(Ordering::Relaxed), elapsed)
    }
}

/// Admission of all replicas together: burst + rate × elapsed, within 1 %.
async fn three_replicas_admit_as_one(redis_url: &str) {
    let replicas = Replicas::start(redis_url, 3, "deny").await;
    let (admitted, refused, elapsed) = replicas.hammer(12, Duration::from_secs(4)).await;
    let expected = 20.0 + 100.0 * elapsed.as_secs_f64();
    let error = (admitted as f64 - expected).abs() / expected;
    assert!(
        error <= 0.01,
        "three replicas admitted {admitted} in {elapsed:?}; one bucket admits {expected:.1} (off by {:.2} %)",
        error * 100.0
    );
    eprintln!("admitted {admitted} of {} in {elapsed:?}; expected {expected:.1}", admitted + refused);
    assert!(refused > admitted, "the load must exceed the limit to test it ({refused} refused)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_bucket_on_one_redis() {
    let redis = RedisServer::start();
    three_replicas_admit_as_one(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_bucket_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    three_replicas_admit_as_one(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_and_logouts_reach_every_replica_within_a_second_and_denials_are_audited() {
    let redis = RedisServer::start();
    let mut replicas = Replicas::start(&redis.url(), 3, "local").await;
    let root = replicas.admin_token().await;
    let user = replicas.admin.signup("ann@example.com").await;
    let (banned_token, _) = replicas.admin.login("ann@example.com", PASSWORD).await;
    replicas.admin.signup("bob@example.com").await;
    let (bob_token, bob_refresh) = replicas.admin.login("bob@example.com", PASSWORD).await;
    assert_eq!(replicas.statuses("/api/x", &banned_token).await, [200, 200, 200]);
    assert_eq!(replicas.statuses("/api/x", &bob_token).await, [200, 200, 200]);
    assert_eq!(
        replicas.statuses("/staff/x", &bob_token).await,
        [403, 403, 403],
        "role check on every replica"
    );

    let id = user["id"].as_str().unwrap();
    expect_json(
        replicas
            .admin
            .post_bearer(&format!("/admin/users/{id}/ban"), &root, json!({"reason": "abuse"}))
            .await,
        200,
    )
    .await;
    let took = replicas.until_all("/api/x", &banned_token, 401, Duration::from_secs(1)).await;
    eprintln!("ban refused by all three replicas after {took:?}");
    expect_json(replicas.admin.post("/auth/logout", json!({"refresh_token": bob_refresh})).await, 204).await;
    let took = replicas.until_all("/api/x", &bob_token, 401, Duration::from_secs(1)).await;
    eprintln!("logout refused by all three replicas after {took:?}");

    // A replica started after the ban learns it from the snapshot.
    replicas.add_gateway("local").await;
    let late = replicas.gateways.last().unwrap();
    let r =
        replicas.http.get(format!("{}/api/x", late.base)).bearer_auth(&banned_token).send().await.unwrap();
    assert_eq!(r.status(), 401, "a gateway started after the ban refuses the banned user");

    // The 401s and 403s above reach the audit log as gateway.denied.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let items = replicas.denials(&root).await;
        let statuses: Vec<u64> = items.iter().filter_map(|e| e["details"]["status"].as_u64()).collect();
        let forbidden = statuses.iter().filter(|&&s| s == 403).count();
        let unauthorized = statuses.iter().filter(|&&s| s == 401).count();
        if forbidden >= 3 && unauthorized >= 3 {
            let denied = items.iter().find(|e| e["details"]["status"] == json!(403)).unwrap();
            assert_eq!(denied["outcome"], json!("denied"));
            assert_eq!(denied["details"]["route"], json!("staff"), "{denied}");
            break;
        }
        assert!(Instant::now() < deadline, "gateway denials missing from the audit log: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_denials_are_folded_per_minute_and_flushed_on_shutdown() {
    let redis = RedisServer::start();
    let mut replicas = Replicas::start(&redis.url(), 1, "deny").await;
    let root = replicas.admin_token().await;
    let (_, refused, _) = replicas.hammer(4, Duration::from_millis(500)).await;
    assert!(refused > 10, "some requests must be refused ({refused})");
    // A graceful stop ships what the replica was still folding.
    let gateway = &mut replicas.gateways[0];
    signal(&gateway.child, "TERM");
    tokio::time::timeout(Duration::from_secs(10), gateway.child.wait())
        .await
        .expect("stops in time")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let items = replicas.denials(&root).await;
        let folded: Vec<&Value> = items.iter().filter(|e| e["details"]["status"] == json!(429)).collect();
        let total: u64 = folded.iter().map(|e| e["details"]["count"].as_u64().unwrap()).sum();
        if total == refused {
            assert!(folded.len() <= 2, "one event per bucket and minute, got {}", folded.len());
            assert_eq!(folded[0]["details"]["bucket"], json!("limited:route"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "429s in the audit log add up to {total}, the client saw {refused}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_degrades_to_local_buckets_and_recovers_with_a_fresh_snapshot() {
    let mut redis = RedisServer::start();
    let replicas = Replicas::start(&redis.url(), 2, "local").await;
    let root = replicas.admin_token().await;
    let user = replicas.admin.signup("eve@example.com").await;
    let (token, _) = replicas.admin.login("eve@example.com", PASSWORD).await;
    replicas.admin.signup("fay@example.com").await;
    let (fay, _) = replicas.admin.login("fay@example.com", PASSWORD).await;

    // Redis dies in the middle of the load: local buckets take over, never a
    // 5xx (hammer panics on anything but 200 or 429).
    let ((admitted, _, _), ()) = tokio::join!(replicas.hammer(4, Duration::from_millis(1500)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.stop();
    });
    assert!(admitted > 0);
    for g in &replicas.gateways {
        assert_eq!(
            replicas.metric(g, "bouncer_gateway_rate_limit_degraded").await,
            1.0,
            "degraded is visible"
        );
    }
    assert_eq!(replicas.statuses("/api/x", &token).await, [200, 200], "authentication does not need Redis");
    // A replica started while Redis is down never saw a snapshot: it must
    // not accept tokens (503 and not ready) until it has one.
    let late = Replicas::start_gateway_process(&replicas, "local").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while replicas.metric(&late, "bouncer_gateway_jwks_fetches_total{outcome=\"ok\"}").await < 1.0 {
        assert!(Instant::now() < deadline, "the late replica never loaded its keys");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = replicas.http.get(format!("{}/api/x", late.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 503, "no revocation snapshot, no acceptance");
    let ready = replicas.http.get(format!("{}/readyz", late.metrics)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "and /readyz says so");

    // Banned while Redis is down: the admin cannot publish, and resyncs
    // from the store when Redis is back; the gateways reload the snapshot.
    let id = user["id"].as_str().unwrap();
    expect_json(
        replicas.admin.post_bearer(&format!("/admin/users/{id}/ban"), &root, json!({"reason": "x"})).await,
        200,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    let back = Instant::now();
    replicas.until_all("/api/x", &token, 401, Duration::from_secs(10)).await;

    // The replica that started during the outage keeps retrying and comes
    // up on its own, and the ban made while Redis was away is in what it
    // loaded: refused from its very first request after ready.
    loop {
        let ready = replicas.http.get(format!("{}/readyz", late.metrics)).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the late replica was not ready 10 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("late replica ready {:?} after Redis came back", back.elapsed());
    let banned = replicas.http.get(format!("{}/api/x", late.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(banned.status(), 401, "the ban made during the outage holds at the late replica");
    let other = replicas.http.get(format!("{}/api/x", late.base)).bearer_auth(&fay).send().await.unwrap();
    assert_eq!(other.status(), 200, "and it serves everyone else");

    // Shared limiting resumes by itself, on the late replica too.
    let deadline = Instant::now() + Duration::from_secs(10);
    for g in replicas.gateways.iter().chain([&late]) {
        loop {
            replicas.http.get(format!("{}/limited/x", g.base)).send().await.unwrap();
            if replicas.metric(g, "bouncer_gateway_rate_limit_degraded").await == 0.0 {
                break;
            }
            assert!(Instant::now() < deadline, "{} never went back to Redis", g.base);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The restarted Redis (fresh statistics) has been running the bucket script.
    let stats = redis.cli(&["info", "commandstats"]);
    assert!(stats.contains("cmdstat_evalsha:calls="), "buckets are in Redis again: {stats}");
}

/// An idle admin on Redis is quiet: its blocking read of the denial stream
/// returns nothing every second, which is not a failure to log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_admin_on_redis_logs_no_warnings() {
    let redis = RedisServer::start();
    let admin = Admin::start_with(Backend::Sqlite, &format!("redis: {}\n", redis.url())).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let logs = admin.logs();
    let loud: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(loud.is_empty(), "an idle admin logged:\n{}", loud.join("\n"));
    assert!(logs.contains("revocations recorded in redis"), "it did talk to Redis: {logs}");
}

/// API keys travel to every replica through Redis: a new key is accepted
/// everywhere within a second, a deleted one or one whose owner is banned
/// refused everywhere within a second, and a replica started later loads
/// the keys from the hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_reach_every_replica_and_so_do_deletions_and_bans() {
    let redis = RedisServer::start();
    let mut replicas = Replicas::start(&redis.url(), 3, "local").await;
    let root = replicas.admin_token().await;
    let user = replicas.admin.signup("kim@example.com").await;
    let (token, _) = replicas.admin.login("kim@example.com", PASSWORD).await;
    let make_key = async || {
        let made = replicas.admin.post_bearer("/users/me/api-keys", &token, json!({"name": "job"})).await;
        let made = expect_json(made, 201).await;
        (made["id"].as_str().unwrap().to_owned(), made["key"].as_str().unwrap().to_owned())
    };
    let (first_id, first) = make_key().await;
    let took = replicas.until_all("/sync/x", &first, 200, Duration::from_secs(1)).await;
    eprintln!("a new key accepted by all three replicas after {took:?}");
    assert_eq!(replicas.statuses("/api/x", &first).await, [401, 401, 401], "api takes JWTs only");

    let deleted = replicas.admin.http.delete(replicas.admin.url(&format!("/users/me/api-keys/{first_id}")));
    assert_eq!(deleted.bearer_auth(&token).send().await.unwrap().status(), 204);
    let took = replicas.until_all("/sync/x", &first, 401, Duration::from_secs(1)).await;
    eprintln!("a deleted key refused by all three replicas after {took:?}");

    // A replica started now loads the keys from the hash.
    let (_, second) = make_key().await;
    replicas.add_gateway("local").await;
    let took = replicas.until_all("/sync/x", &second, 200, Duration::from_secs(5)).await;
    eprintln!("four replicas (one new) accept the second key after {took:?}");
    let late = replicas.gateways.last().unwrap();
    let r = replicas.http.get(format!("{}/sync/x", late.base)).bearer_auth(&first).send().await.unwrap();
    assert_eq!(r.status(), 401, "the new replica never learned the deleted key");

    let ban_path = format!("/admin/users/{}/ban", user["id"].as_str().unwrap());
    expect_json(replicas.admin.post_bearer(&ban_path, &root, json!({"reason": "abuse"})).await, 200).await;
    let took = replicas.until_all("/sync/x", &second, 401, Duration::from_secs(1)).await;
    eprintln!("a banned owner's key refused by all four replicas after {took:?}");
}
