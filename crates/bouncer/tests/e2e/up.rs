//! `bouncer up`: admin, gateway and echo in one process, revocations in-process.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::process::Command;

use crate::harness::{BIN, PASSWORD, expect_json, expect_problem, free_port, run_cli, signal};

/// Free ports for one `bouncer up`.
struct Ports {
    admin: u16,
    gateway: u16,
    metrics: u16,
    echo: u16,
}

impl Ports {
    fn new() -> Self {
        Self { admin: free_port(), gateway: free_port(), metrics: free_port(), echo: free_port() }
    }

    /// Writes `routes` and a `bouncer up` configuration on these ports
    /// (SQLite and keys under `dir`); returns the configuration's path.
    fn write_config(&self, dir: &std::path::Path, routes: &str) -> std::path::PathBuf {
        let routes_path = dir.join("routes.yaml");
        std::fs::write(&routes_path, routes).unwrap();
        let config = dir.join("bouncer.yaml");
        let Self { admin, gateway, metrics, .. } = self;
        std::fs::write(
            &config,
            format!(
                "admin:\n  listen: 127.0.0.1:{admin}\n  database: sqlite://{0}/data/b.db\n  keys_dir: {0}/keys\n  issuer: http://127.0.0.1:{admin}\n  key_activation_delay: 0s\ngateway:\n  listen: 127.0.0.1:{gateway}\n  metrics_listen: 127.0.0.1:{metrics}\n  routes: {1}\n  jwks_url: http://127.0.0.1:{admin}/.well-known/jwks.json\n  issuer: http://127.0.0.1:{admin}\n  shutdown_grace: 2s\n",
                dir.display(),
                routes_path.display()
            ),
        )
        .unwrap();
        config
    }
}

/// Starts `bouncer up` on `config`, its stdout dropped and its stderr read
/// to the end in the background (so the pipe never fills): the text comes
/// from the handle once the process has exited.
fn start_up(config: &std::path::Path) -> (tokio::process::Child, tokio::task::JoinHandle<String>) {
    let mut up = Command::new(BIN)
        .args(["up", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut pipe = up.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text).await;
        text
    });
    (up, logs)
}

/// Polls `check` until it returns true or `limit` passes; returns how long it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_whole_pipeline_and_revocations_reach_the_gateway_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (admin_port, gateway_port) = (ports.admin, ports.gateway);
    let config = ports.write_config(
        dir.path(),
        &format!(
            "upstreams:\n  admin: {{ targets: [127.0.0.1:{admin_port}] }}\n  echo: {{ targets: [127.0.0.1:{echo}] }}\nroutes:\n  - {{ name: auth, path: /auth/**, upstream: admin, auth: none }}\n  - {{ name: api, path: /api/**, upstream: echo, roles: [user] }}\n  - {{ name: limited, path: /limited/**, upstream: echo, auth: none, rate_limit: {{ key: ip, burst: 2, per_minute: 1 }} }}\n",
            echo = ports.echo
        ),
    );
    let (mut up, logs) = start_up(&config);
    let gw = format!("http://127.0.0.1:{gateway_port}");
    let http = reqwest::Client::new();
    let ready = within(Duration::from_secs(30), async || {
        let r = http.get(format!("{gw}/api/x")).bearer_auth("x").send().await;
        r.is_ok_and(|r| r.status() == 401)
    })
    .await;
    assert!(ready.is_some(), "bouncer up did not become ready (JWKS loaded) within 30 s");

    // The whole pipeline in one process: signup and login through the gateway, then the API.
    let body = json!({"email": "up@example.com", "password": PASSWORD});
    let user =
        expect_json(http.post(format!("{gw}/auth/signup")).json(&body).send().await.unwrap(), 201).await;
    let login = |http: reqwest::Client| {
        let (gw, body) = (gw.clone(), body.clone());
        async move {
            expect_json(http.post(format!("{gw}/auth/login")).json(&body).send().await.unwrap(), 200).await
        }
    };
    let tokens = login(http.clone()).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let seen =
        expect_json(http.get(format!("{gw}/api/orders")).bearer_auth(&access).send().await.unwrap(), 200)
            .await;
    assert_eq!(
        seen["headers"]["x-user-id"], user["id"],
        "the built-in echo saw the gateway's identity headers"
    );

    // In-memory buckets: burst 2, then 429 with Retry-After and RateLimit-*.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = http.get(format!("{gw}/limited/x")).send().await.unwrap();
        let h = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        seen.push((r.status().as_u16(), h("ratelimit-remaining"), h("retry-after")));
    }
    assert_eq!(
        seen,
        [
            (200, Some("1".into()), None),
            (200, Some("0".into()), None),
            (429, Some("0".into()), Some("60".into()))
        ],
        "one token per minute after a burst of two"
    );

    // Logout: the session's access token is refused by the gateway at once.
    let logout = json!({"refresh_token": tokens["refresh_token"]});
    expect_json(http.post(format!("{gw}/auth/logout")).json(&logout).send().await.unwrap(), 204).await;
    let refused = within(Duration::from_secs(1), async || {
        http.get(format!("{gw}/api/orders")).bearer_auth(&access).send().await.unwrap().status() == 401
    })
    .await;
    assert!(refused.is_some(), "logout must be refused by the gateway within 1 s");

    // Ban (by an admin made with the CLI on the same database): refused too.
    let fresh = login(http.clone()).await["access_token"].as_str().unwrap().to_owned();
    expect_json(http.get(format!("{gw}/api/orders")).bearer_auth(&fresh).send().await.unwrap(), 200).await;
    let out = run_cli(
        &config,
        &["user", "add", "--email", "root@example.com", "--role", "admin", "--password-stdin"],
        Some(PASSWORD),
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let admin_base = format!("http://127.0.0.1:{admin_port}");
    let root = json!({"email": "root@example.com", "password": PASSWORD});
    let root =
        expect_json(http.post(format!("{admin_base}/auth/login")).json(&root).send().await.unwrap(), 200)
            .await;
    let root_token = root["access_token"].as_str().unwrap().to_owned();
    let ban = http
        .post(format!("{admin_base}/admin/users/{}/ban", user["id"].as_str().unwrap()))
        .bearer_auth(root["access_token"].as_str().unwrap())
        .json(&json!({"reason": "test"}))
        .send()
        .await
        .unwrap();
    expect_json(ban, 200).await;
    let banned = within(Duration::from_secs(1), async || {
        http.get(format!("{gw}/api/orders")).bearer_auth(&fresh).send().await.unwrap().status() == 401
    })
    .await;
    assert!(banned.is_some(), "a ban must be refused by the gateway within 1 s");
    let problem = http.get(format!("{gw}/api/orders")).bearer_auth(&fresh).send().await.unwrap();
    expect_problem(problem, 401, "invalid-token").await;

    // One more 429 just before the stop: folded 429s are shipped once per
    // minute, so this one reaches the audit log only if the stop waits for
    // the gateway's last flush and the admin's write of it.
    let r = http.get(format!("{gw}/limited/x")).send().await.unwrap();
    assert_eq!(r.status(), 429, "the bucket is still empty");

    // SIGTERM: a clean exit.
    let pid = up.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status =
        tokio::time::timeout(Duration::from_secs(15), up.wait()).await.expect("exits within 15 s").unwrap();
    assert!(status.success(), "exit status {status}");
    let logs = logs.await.unwrap();
    assert!(logs.contains("No admin user yet"), "first start explains how to create an admin");
    let access_lines: Vec<&str> = logs.lines().filter(|l| l.contains(" bouncer::access: ")).collect();
    let user_field = format!("user_id={}", user["id"].as_str().unwrap());
    assert!(
        access_lines
            .iter()
            .any(|l| l.contains("route=api status=200 decision=forwarded") && l.contains(&user_field)),
        "an access line for the forwarded /api request, with the user: {access_lines:#?}"
    );
    assert!(!logs.contains(&access_token_fragment(&access)), "no token in the logs");
    let last = access_lines.last().copied().unwrap_or_default();
    assert!(
        last.contains("route=limited status=429 decision=rate_limited"),
        "the stop writes out the last request's line, got {last:?}"
    );

    // A restart on the same SQLite file keeps users, keys and the audit chain.
    let jwks_before = std::fs::read_dir(dir.path().join("keys")).unwrap().count();
    let (mut again, _logs) = start_up(&config);
    let restarted = within(Duration::from_secs(30), async || {
        // 403: the token from before the restart verifies (same keys) and
        // only the role check refuses it (root is an admin, /api wants user).
        let r = http.get(format!("{gw}/api/x")).bearer_auth(&root_token).send().await;
        r.is_ok_and(|r| r.status() == 403)
    })
    .await;
    assert!(restarted.is_some(), "bouncer up came back with the same keys");
    expect_json(
        http.get(format!("{admin_base}/users/me")).bearer_auth(&root_token).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(std::fs::read_dir(dir.path().join("keys")).unwrap().count(), jwks_before, "no new key");
    let audit = expect_json(
        http.get(format!("{admin_base}/admin/audit?action=gateway.denied&limit=100"))
            .bearer_auth(&root_token)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let rate_limited: u64 = audit["items"]
        .as_array()
        .expect("an items array")
        .iter()
        .filter(|e| e["details"]["status"] == json!(429))
        .map(|e| e["details"]["count"].as_u64().expect("a count"))
        .sum();
    assert_eq!(rate_limited, 2, "both 429s before the stop are in the audit log: {audit}");
    let relogin = json!({"email": "root@example.com", "password": PASSWORD});
    expect_json(http.post(format!("{gw}/auth/login")).json(&relogin).send().await.unwrap(), 200).await;
    // Ctrl-C stops as gracefully as SIGTERM (pingora alone would exit at once).
    signal(&again, "INT");
    let status = tokio::time::timeout(Duration::from_secs(15), again.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "exit status {status}");
    let verify = run_cli(&config, &["audit", "verify"], None).await;
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "audit verify after restart: {out} {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(out.contains("audit chain intact"), "{out}");
}

/// A service client's token through the embedded gateway: accepted on a
/// `service` route with the client's id and no email; deleting the client
/// refuses it within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_passes_the_gateway_until_the_client_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (admin_port, gateway_port) = (ports.admin, ports.gateway);
    let config = ports.write_config(
        dir.path(),
        &format!(
            "upstreams:\n  admin: {{ targets: [127.0.0.1:{admin_port}] }}\n  echo: {{ targets: [127.0.0.1:{}] }}\nroutes:\n  - {{ name: token, path: /oauth/token, upstream: admin, auth: none }}\n  - {{ name: jobs, path: /jobs/**, upstream: echo, roles: [service] }}\n",
            ports.echo
        ),
    );
    let add = ["user", "add", "--email", "root@example.com", "--role", "admin", "--password-stdin"];
    let out = run_cli(&config, &add, Some(PASSWORD)).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (mut up, _logs) = start_up(&config);
    let (gw, admin) = (format!("http://127.0.0.1:{gateway_port}"), format!("http://127.0.0.1:{admin_port}"));
    let http = reqwest::Client::new();
    let ready = within(Duration::from_secs(30), async || {
        let r = http.get(format!("{gw}/jobs/x")).bearer_auth("x").send().await;
        r.is_ok_and(|r| r.status() == 401)
    })
    .await;
    assert!(ready.is_some(), "bouncer up did not become ready");
    let root = json!({"email": "root@example.com", "password": PASSWORD});
    let root =
        expect_json(http.post(format!("{admin}/auth/login")).json(&root).send().await.unwrap(), 200).await;
    let root = root["access_token"].as_str().unwrap().to_owned();
    let created = http
        .post(format!("{admin}/admin/clients"))
        .bearer_auth(&root)
        .json(&json!({"name": "jobs runner", "roles": ["service"]}))
        .send()
        .await
        .unwrap();
    let created = expect_json(created, 201).await;
    let (id, secret) = (created["client_id"].as_str().unwrap(), created["client_secret"].as_str().unwrap());
    // The token endpoint through the gateway, as clients would call it.
    let token = http
        .post(format!("{gw}/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let token = expect_json(token, 200).await["access_token"].as_str().unwrap().to_owned();
    let seen =
        expect_json(http.get(format!("{gw}/jobs/run")).bearer_auth(&token).send().await.unwrap(), 200).await;
    assert_eq!(
        (&seen["headers"]["x-user-id"], &seen["headers"]["x-user-roles"]),
        (&json!(id), &json!("service")),
        "the upstream sees the client: {seen}"
    );
    assert!(seen["headers"].get("x-user-email").is_none(), "a client has no email: {seen}");

    let deleted = http.delete(format!("{admin}/admin/clients/{id}")).bearer_auth(&root).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let refused = within(Duration::from_secs(1), async || {
        http.get(format!("{gw}/jobs/run")).bearer_auth(&token).send().await.unwrap().status() == 401
    })
    .await;
    assert!(refused.is_some(), "a deleted client's token must be refused by the gateway within 1 s");
    signal(&up, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), up.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "exit status {status}");
}

/// API keys at the embedded gateway: accepted (Bearer or X-API-Key) on a
/// route whose credentials list them, as the owner with the key's roles;
/// never forwarded; refused within a second of a deletion or a ban — and
/// at once when the admin has answered the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_pass_the_gateway_until_deleted_or_their_owner_is_banned() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (admin_port, gateway_port) = (ports.admin, ports.gateway);
    let config = ports.write_config(
        dir.path(),
        &format!(
            "upstreams:\n  echo: {{ targets: [127.0.0.1:{}] }}\nroutes:\n  - {{ name: sync, path: /sync/**, upstream: echo, roles: [user], credentials: [jwt, api_key] }}\n  - {{ name: api, path: /api/**, upstream: echo, roles: [user] }}\n",
            ports.echo
        ),
    );
    let add = ["user", "add", "--email", "root@example.com", "--role", "admin", "--password-stdin"];
    let out = run_cli(&config, &add, Some(PASSWORD)).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (mut up, _logs) = start_up(&config);
    let (gw, admin) = (format!("http://127.0.0.1:{gateway_port}"), format!("http://127.0.0.1:{admin_port}"));
    let http = reqwest::Client::new();
    let ready = within(Duration::from_secs(30), async || {
        let r = http.get(format!("{gw}/api/x")).bearer_auth("x").send().await;
        r.is_ok_and(|r| r.status() == 401)
    })
    .await;
    assert!(ready.is_some(), "bouncer up did not become ready");
    let login = async |email: &str| {
        let body = json!({"email": email, "password": PASSWORD});
        let r = http.post(format!("{admin}/auth/login")).json(&body).send().await.unwrap();
        expect_json(r, 200).await["access_token"].as_str().unwrap().to_owned()
    };
    let root = login("root@example.com").await;
    let body = json!({"email": "sync@example.com", "password": PASSWORD});
    let user =
        expect_json(http.post(format!("{admin}/auth/signup")).json(&body).send().await.unwrap(), 201).await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let token = login("sync@example.com").await;
    let make_key = async || {
        let r = http
            .post(format!("{admin}/users/me/api-keys"))
            .bearer_auth(&token)
            .json(&json!({"name": "sync job"}))
            .send()
            .await
            .unwrap();
        let made = expect_json(r, 201).await;
        (made["id"].as_str().unwrap().to_owned(), made["key"].as_str().unwrap().to_owned())
    };
    let (key_id, key) = make_key().await;

    // Both ways of sending it; the upstream sees the owner, not the key.
    for request in [
        http.get(format!("{gw}/sync/pull")).bearer_auth(&key),
        http.get(format!("{gw}/sync/pull")).header("x-api-key", &key),
    ] {
        let seen = expect_json(request.send().await.unwrap(), 200).await;
        let h = &seen["headers"];
        assert_eq!((&h["x-user-id"], &h["x-user-roles"]), (&json!(user_id), &json!("user")), "{seen}");
        assert_eq!(h["x-credential"], json!(format!("api_key:{key_id}")), "{seen}");
        assert!(
            h.get("x-api-key").is_none() && h.get("authorization").is_none(),
            "the key is never forwarded: {seen}"
        );
        assert!(!seen.to_string().contains(&key), "{seen}");
    }
    // The same user's JWT there says so; a key where only JWTs go is refused.
    let seen =
        expect_json(http.get(format!("{gw}/sync/pull")).bearer_auth(&token).send().await.unwrap(), 200).await;
    assert_eq!(seen["headers"]["x-credential"], "jwt");
    let spoofed = http.get(format!("{gw}/sync/pull")).bearer_auth(&token).header("x-credential", "api_key:x");
    let seen = expect_json(spoofed.send().await.unwrap(), 200).await;
    assert_eq!(seen["headers"]["x-credential"], "jwt", "a client's X-Credential never reaches the upstream");
    let wrong_route = http.get(format!("{gw}/api/x")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(wrong_route.status(), 401, "api takes JWTs only");

    // Deleted: refused as soon as the admin has answered.
    let deleted =
        http.delete(format!("{admin}/users/me/api-keys/{key_id}")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let after = http.get(format!("{gw}/sync/pull")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(after.status(), 401, "a deleted key is refused once the deletion is answered");

    // A new key, then the owner banned: refused too; unbanned: back.
    let (_, key) = make_key().await;
    let works = http.get(format!("{gw}/sync/pull")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(works.status(), 200, "a new key works at once");
    let ban = http
        .post(format!("{admin}/admin/users/{user_id}/ban"))
        .bearer_auth(&root)
        .json(&json!({"reason": "test"}))
        .send()
        .await
        .unwrap();
    expect_json(ban, 200).await;
    let refused = within(Duration::from_secs(1), async || {
        http.get(format!("{gw}/sync/pull")).bearer_auth(&key).send().await.unwrap().status() == 401
    })
    .await;
    assert!(refused.is_some(), "a banned owner's key must be refused within 1 s");
    let unban =
        http.post(format!("{admin}/admin/users/{user_id}/unban")).bearer_auth(&root).send().await.unwrap();
    expect_json(unban, 200).await;
    let back = http.get(format!("{gw}/sync/pull")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(back.status(), 200, "unbanned: the key works again");

    signal(&up, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), up.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "exit status {status}");
}

/// The signature part of a JWT: what would make a leaked log line usable.
fn access_token_fragment(token: &str) -> String {
    token.rsplit('.').next().unwrap_or(token).to_owned()
}

/// `gateway.access_log` to a file in JSON: one line per request with the
/// documented fields; a file moved away (logrotate) is reopened by name;
/// nothing was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_goes_to_its_file_and_follows_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (gateway_port, metrics_port) = (ports.gateway, ports.metrics);
    let config = ports.write_config(
        dir.path(),
        &format!(
            "upstreams:\n  echo: {{ targets: [127.0.0.1:{}] }}\nroutes:\n  - {{ name: open, path: /open/**, upstream: echo, auth: none }}\n  - {{ name: api, path: /api/**, upstream: echo, roles: [user] }}\n",
            ports.echo
        ),
    );
    let log_path = dir.path().join("access.log");
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str(&format!("  access_log:\n    format: json\n    path: {}\n", log_path.display()));
    std::fs::write(&config, yaml).unwrap();
    let (mut up, stderr) = start_up(&config);
    let gw = format!("http://127.0.0.1:{gateway_port}");
    let http = reqwest::Client::new();
    // Ready once the keys are in: a bad token is then a 401, not a 503.
    let ready = within(Duration::from_secs(30), async || {
        let r = http.get(format!("{gw}/api/x")).bearer_auth("not.a.token").header("x-request-id", "req-42");
        r.send().await.is_ok_and(|r| r.status() == 401)
    })
    .await;
    assert!(ready.is_some(), "bouncer up did not start");

    let lines = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
            .collect()
    };
    let logged = within(Duration::from_secs(5), async || {
        lines(&log_path).iter().any(|l| l["request_id"] == "req-42" && l["status"] == 401)
    })
    .await;
    assert!(logged.is_some(), "the 401 was not logged within 5 s: {:?}", lines(&log_path));
    let line = lines(&log_path).into_iter().rev().find(|l| l["request_id"] == "req-42").unwrap();
    assert_eq!(
        (&line["method"], &line["route"], &line["status"], &line["decision"], &line["target"]),
        (&json!("GET"), &json!("api"), &json!(401), &json!("invalid_token"), &json!("bouncer::access")),
        "{line}"
    );
    assert!(line["micros"].is_u64() && line["timestamp"].is_string(), "{line}");
    assert!(!std::fs::read_to_string(&log_path).unwrap().contains("not.a.token"), "no token in the log");

    // logrotate moves the file away: the next lines go to a new file by the same name.
    std::fs::rename(&log_path, dir.path().join("access.log.1")).unwrap();
    let reopened = within(Duration::from_secs(10), async || {
        let _ = http.get(format!("{gw}/open/after-rotation")).send().await;
        lines(&log_path).iter().any(|l| l["route"] == "open")
    })
    .await;
    assert!(reopened.is_some(), "no new access.log within 10 s of the rotation");

    let metrics = http.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l == "bouncer_gateway_access_log_dropped_total 0"),
        "the dropped-lines counter is exported, at 0: {metrics}"
    );
    signal(&up, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), up.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "exit status {status}");
    let stderr = stderr.await.unwrap();
    assert!(!stderr.contains("bouncer::access"), "access lines went to the file only: {stderr}");
}

/// As soon as the admin answers `/healthz` and the gateway's port accepts,
/// an authenticated request is served: the gateway holds the admin's keys
/// in-process, with no window of `503 keys not loaded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_authenticated_requests_as_soon_as_the_admin_answers() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (admin_port, gateway_port, metrics_port) = (ports.admin, ports.gateway, ports.metrics);
    let config = ports.write_config(
        dir.path(),
        &format!(
            "upstreams:\n  echo: {{ targets: [127.0.0.1:{}] }}\nroutes:\n  - {{ name: api, path: /api/**, upstream: echo, roles: [user] }}\n",
            ports.echo
        ),
    );
    // The key exists before the start, so the test can sign a token the
    // admin will verify (it never issued it: the gateway only checks keys).
    let rotate = run_cli(&config, &["keys", "rotate"], None).await;
    assert!(rotate.status.success(), "{}", String::from_utf8_lossy(&rotate.stderr));
    let key = std::fs::read_dir(dir.path().join("keys")).unwrap().next().unwrap().unwrap().path();
    let kid = key.file_stem().unwrap().to_str().unwrap().to_owned();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({
        "iss": format!("http://127.0.0.1:{admin_port}"), "aud": "bouncer",
        "sub": uuid::Uuid::new_v4(), "sid": uuid::Uuid::new_v4(), "jti": uuid::Uuid::new_v4(),
        "email": "early@example.com", "roles": ["user"], "iat": now, "nbf": now, "exp": now + 600,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid);
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(&key).unwrap()).unwrap(),
    )
    .unwrap();

    let (mut up, _logs) = start_up(&config);
    let http = reqwest::Client::new();
    let admin_up = within(Duration::from_secs(30), async || {
        let healthy = http.get(format!("http://127.0.0.1:{admin_port}/healthz")).send().await;
        healthy.is_ok_and(|r| r.status() == 200)
            && tokio::net::TcpStream::connect(("127.0.0.1", gateway_port)).await.is_ok()
    })
    .await;
    assert!(admin_up.is_some(), "the admin never answered /healthz");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = http.get(format!("http://127.0.0.1:{gateway_port}/api/x")).bearer_auth(&token).send().await;
        statuses.push(r.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200; 5], "authenticated requests right after the admin answered");
    let ready = http.get(format!("http://127.0.0.1:{metrics_port}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the gateway says ready too");
    signal(&up, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), up.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "exit status {status}");
}
