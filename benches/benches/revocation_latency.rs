//! Revocation propagation: how long after a ban (or a logout, or an API
//! key's deletion) is sent to the admin until every one of three gateway
//! replicas refuses the token (or key) — over a private Redis, with the
//! release binary. Prints p50/p99/max; asserts nothing. Target (SPEC):
//! every replica within 1 s.
//!
//! `cargo build --release -p bouncer && cargo bench -p bouncer-benches
//! --bench revocation_latency -- [EVENTS]` (default 100).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use bouncer_benches::{Latency, ms};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const PASSWORD: &str = "benchmark passphrase 1";
const REPLICAS: usize = 3;

fn main() {
    let events: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(events));
}

fn binary() -> PathBuf {
    let path = std::env::var("BOUNCER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/bouncer"));
    assert!(path.exists(), "{} not found: run `cargo build --release -p bouncer`", path.display());
    path
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_for(url: &str, http: &reqwest::Client, ok: impl Fn(u16, &str) -> bool) {
    for _ in 0..300 {
        if let Ok(r) = http.get(url).bearer_auth("x").send().await {
            let status = r.status().as_u16();
            if ok(status, &r.text().await.unwrap_or_default()) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never became ready");
}

/// POSTs a JSON body and returns the JSON answer.
async fn post_json(http: &reqwest::Client, url: &str, body: Value) -> Value {
    http.post(url).json(&body).send().await.unwrap().json().await.unwrap()
}

fn spawn(args: &[&str], config: &Path) -> Child {
    Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn run(events: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (redis_port, admin_port, echo_port) = (port(), port(), port());
    let _redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server must be installed");
    let admin_base = format!("http://127.0.0.1:{admin_port}");
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!("upstreams:\n  echo: {{ targets: [127.0.0.1:{echo_port}] }}\nroutes:\n  - {{ name: api, path: /api/**, upstream: echo }}\n  - {{ name: keys, path: /keys/**, upstream: echo, credentials: [api_key] }}\n"),
    )
    .unwrap();
    let common = format!(
        "redis: redis://127.0.0.1:{redis_port}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n  database: sqlite://{0}/b.db\n  keys_dir: {0}/keys\n  issuer: {admin_base}\n  key_activation_delay: 0s\n  login_throttle: {{ max_failures: 1000000, max_failures_per_ip: 1000000, window: 1m }}\n",
        dir.path().display()
    );
    let admin_config = dir.path().join("admin.yaml");
    std::fs::write(&admin_config, &common).unwrap();
    let _echo = Command::new(binary())
        .args(["echo", "--listen", &format!("127.0.0.1:{echo_port}")])
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // redis up
    let _admin = spawn(&["admin"], &admin_config);
    let http = reqwest::Client::new();
    wait_for(&format!("{admin_base}/healthz"), &http, |s, _| s == 200).await;

    let mut gateways = Vec::new();
    let mut _children = Vec::new();
    for i in 0..REPLICAS {
        let (listen, metrics) = (port(), port());
        let config = dir.path().join(format!("gateway-{i}.yaml"));
        std::fs::write(
            &config,
            format!(
                "{common}gateway:\n  listen: 127.0.0.1:{listen}\n  metrics_listen: 127.0.0.1:{metrics}\n  routes: {}\n  jwks_url: {admin_base}/.well-known/jwks.json\n  issuer: {admin_base}\n",
                dir.path().join("routes.yaml").display()
            ),
        )
        .unwrap();
        _children.push(spawn(&["gateway"], &config));
        wait_for(&format!("http://127.0.0.1:{metrics}/metrics"), &http, |s, body| {
            // The series line, not its HELP line ("…_ready 1 once…").
            s == 200 && body.lines().any(|l| l == "bouncer_gateway_revocations_ready 1")
        })
        .await;
        gateways.push(format!("http://127.0.0.1:{listen}/api/x"));
    }
    let out = std::process::Command::new(binary())
        .args([
            "user",
            "add",
            "--email",
            "root@example.com",
            "--role",
            "admin",
            "--password-stdin",
            "--config",
        ])
        .arg(&admin_config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(PASSWORD.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let login = |email: String| {
        let (http, base) = (http.clone(), admin_base.clone());
        async move {
            let r = post_json(
                &http,
                &format!("{base}/auth/login"),
                json!({"email": email, "password": PASSWORD}),
            )
            .await;
            (r["access_token"].as_str().unwrap().to_owned(), r["refresh_token"].as_str().unwrap().to_owned())
        }
    };
    let (root, _) = login("root@example.com".into()).await;

    let mut bans = Vec::new();
    let mut logouts = Vec::new();
    let mut key_deletions = Vec::new();
    let keyed: Vec<String> = gateways.iter().map(|g| g.replace("/api/x", "/keys/x")).collect();
    for n in 0..events {
        let email = format!("user{n}@example.com");
        let body = json!({"email": email, "password": PASSWORD});
        let user = post_json(&http, &format!("{admin_base}/auth/signup"), body).await;
        let (access, refresh) = login(email).await;
        for g in &gateways {
            assert_eq!(http.get(g).bearer_auth(&access).send().await.unwrap().status(), 200);
        }
        // An API key of the user, accepted everywhere, then deleted.
        let key = http
            .post(format!("{admin_base}/users/me/api-keys"))
            .bearer_auth(&access)
            .json(&json!({"name": "bench"}))
            .send()
            .await
            .unwrap();
        let key: Value = key.json().await.unwrap();
        let (key_id, key) = (key["id"].as_str().unwrap().to_owned(), key["key"].as_str().unwrap().to_owned());
        for g in &keyed {
            let deadline = Instant::now() + Duration::from_secs(5);
            while http.get(g).bearer_auth(&key).send().await.unwrap().status() != 200 {
                assert!(Instant::now() < deadline, "the new key never reached {g}");
            }
        }
        let started = Instant::now();
        let delete = http.delete(format!("{admin_base}/users/me/api-keys/{key_id}")).bearer_auth(&access);
        assert_eq!(delete.send().await.unwrap().status(), 204);
        key_deletions.push(slowest_refusal(&http, &keyed, &key, started).await);

        let started = Instant::now();
        let revoke = if n % 2 == 0 {
            http.post(format!("{admin_base}/admin/users/{}/ban", user["id"].as_str().unwrap()))
                .bearer_auth(&root)
                .json(&json!({"reason": "bench"}))
        } else {
            http.post(format!("{admin_base}/auth/logout")).json(&json!({"refresh_token": refresh}))
        };
        assert!(revoke.send().await.unwrap().status().is_success());
        let slowest = slowest_refusal(&http, &gateways, &access, started).await;
        if n % 2 == 0 { bans.push(slowest) } else { logouts.push(slowest) }
    }
    println!(
        "# revocation propagation: request sent to the admin -> refused by all {REPLICAS} replicas (one Redis)"
    );
    println!();
    println!("| event | count | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, samples) in
        [("ban", &mut bans), ("logout", &mut logouts), ("api key deleted", &mut key_deletions)]
    {
        if let Some(l) = Latency::of(samples) {
            println!("| {name} | {} | {} | {} | {} |", l.count, ms(l.p50), ms(l.p99), ms(l.max));
        }
    }
}

/// Polls every replica concurrently with `credential` until each refuses
/// it; the event counts when the last one does (capped at 10 s).
async fn slowest_refusal(
    http: &reqwest::Client,
    urls: &[String],
    credential: &str,
    started: Instant,
) -> Duration {
    let polls = urls.iter().map(|g| {
        let (http, g, credential) = (http.clone(), g.clone(), credential.to_owned());
        tokio::spawn(async move {
            loop {
                if http.get(&g).bearer_auth(&credential).send().await.unwrap().status() == 401 {
                    return started.elapsed();
                }
                if started.elapsed() > Duration::from_secs(10) {
                    return Duration::from_secs(10);
                }
            }
        })
    });
    let mut slowest = Duration::ZERO;
    for p in polls {
        slowest = slowest.max(p.await.unwrap());
    }
    slowest
}
