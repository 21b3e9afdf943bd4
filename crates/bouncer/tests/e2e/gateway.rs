//! The gateway end to end: real `bouncer admin`, `bouncer gateway` and
//! `bouncer echo` processes, a client, and what the upstream really saw.

use std::{process::Stdio, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use bouncer_shared_state::testing::RedisServer;

use crate::harness::{
    Admin, BIN, Backend, PASSWORD, expect_json, expect_problem, free_port, metric_value, signal,
    wait_for_port,
};

struct Stack {
    /// Private Redis: the gateway learns revocations through it.
    _redis: RedisServer,
    admin: Admin,
    _echo: Child,
    gateway: Child,
    routes_path: std::path::PathBuf,
    metrics_base: String,
    base: String,
    http: reqwest::Client,
}

const ROUTES: &str = r#"
upstreams:
  admin: { targets: [ADMIN] }
  app:   { targets: [ECHO] }
  dead:  { targets: [DEAD] }
  mixed: { targets: [DEAD, ECHO] }
  slow:  { targets: [SLOW], read_timeout: 500ms }
routes:
  - { name: auth, path: /auth/**, upstream: admin, auth: none }
  - { name: orders, path: /api/orders/**, methods: [GET, HEAD], upstream: app, roles: [user, admin] }
  - { name: orders-admin, path: /api/orders/**, methods: [POST, DELETE], upstream: app, roles: [admin] }
  - { name: profile, path: "/api/users/{id}/**", upstream: app, roles: [admin], owner: id }
  - { name: catalogue, path: /api/catalogue/**, upstream: app, auth: optional }
  - { name: reports, path: /api/reports/**, upstream: app, auth: optional, roles: [admin] }
  - { name: public, path: /public/**, upstream: app, auth: none }
  - { name: broken, path: /broken/**, upstream: dead, auth: none }
  - { name: mixed, path: /mixed/**, upstream: mixed, auth: none }
  - { name: slow, path: /slow/**, upstream: slow, auth: none }
"#;

impl Stack {
    async fn start() -> Self {
        Self::start_with("").await
    }

    /// Starts with extra lines appended to the `gateway:` section.
    async fn start_with(extra_gateway_yaml: &str) -> Self {
        let redis = RedisServer::start();
        let admin = Admin::start_with(Backend::Sqlite, &format!("redis: {}\n", redis.url())).await;
        let (echo_port, gateway_port, metrics_port, dead_port) =
            (free_port(), free_port(), free_port(), free_port());
        // An upstream that accepts connections and never answers.
        let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let slow_port = slow.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = slow.accept().await {
                held.push(socket);
            }
        });
        let echo = Command::new(BIN)
            .args(["echo", "--listen", &format!("127.0.0.1:{echo_port}")])
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let admin_addr = admin.base.trim_start_matches("http://").to_owned();
        let routes = ROUTES
            .replace("ADMIN", &admin_addr)
            .replace("ECHO", &format!("127.0.0.1:{echo_port}"))
            .replace("DEAD", &format!("127.0.0.1:{dead_port}"))
            .replace("SLOW", &format!("127.0.0.1:{slow_port}"));
        let routes_path = admin.dir.path().join("routes.yaml");
        std::fs::write(&routes_path, routes).unwrap();
        let config = admin.dir.path().join("gateway.yaml");
        std::fs::write(
            &config,
            format!(
                "redis: {}\ngateway:\n  listen: 127.0.0.1:{gateway_port}\n  metrics_listen: 127.0.0.1:{metrics_port}\n  routes: {}\n  jwks_url: {}/.well-known/jwks.json\n  issuer: http://bouncer.test\n  audience: bouncer-test\n  shutdown_grace: 2s\n{extra_gateway_yaml}",
                redis.url(),
                routes_path.display(),
                admin.base
            ),
        )
        .unwrap();
        let gateway = Command::new(BIN)
            .args(["gateway", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_for_port(echo_port).await;
        wait_for_port(gateway_port).await;
        wait_for_port(metrics_port).await;
        let stack = Self {
            _redis: redis,
            admin,
            _echo: echo,
            gateway,
            routes_path: routes_path.clone(),
            metrics_base: format!("http://127.0.0.1:{metrics_port}"),
            base: format!("http://127.0.0.1:{gateway_port}"),
            http: reqwest::Client::new(),
        };
        // The gateway answers 503 on authenticated routes until its first
        // JWKS fetch and its first revocation snapshot.
        for _ in 0..100 {
            let r = stack.http.get(stack.url("/api/orders/x")).bearer_auth("x").send().await.unwrap();
            let metrics = stack.http.get(format!("{}/metrics", stack.metrics_base)).send().await.unwrap();
            let metrics = metrics.text().await.unwrap();
            // The series itself: its HELP line also says "…_ready 1 once…".
            if r.status() != 503 && metric_value(&metrics, "bouncer_gateway_revocations_ready") == 1.0 {
                return stack;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway never loaded the JWKS and the revocations");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signs up through the gateway and logs in; returns (user id, access token).
    async fn user(&self, email: &str) -> (String, String) {
        let body = json!({"email": email, "password": PASSWORD});
        let user =
            expect_json(self.http.post(self.url("/auth/signup")).json(&body).send().await.unwrap(), 201)
                .await;
        let tokens =
            expect_json(self.http.post(self.url("/auth/login")).json(&body).send().await.unwrap(), 200).await;
        (user["id"].as_str().unwrap().to_owned(), tokens["access_token"].as_str().unwrap().to_owned())
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut r = self.http.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    /// A token signed with the admin's real key, with claims tweaked by `edit`.
    fn forge(&self, valid: &str, edit: impl FnOnce(&mut Value, &mut Header)) -> String {
        let keys = std::fs::read_dir(self.admin.keys_dir()).unwrap().next().unwrap().unwrap().path();
        let pem = std::fs::read(&keys).unwrap();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(valid.split('.').nth(1).unwrap()).unwrap())
                .unwrap();
        let mut header = jsonwebtoken::decode_header(valid).unwrap();
        edit(&mut claims, &mut header);
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_pem(&pem).unwrap()).unwrap()
    }
}

/// Sends `GET path` byte for byte (an HTTP client library would normalize
/// the path itself) and returns the status and the body.
async fn raw_get(base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    raw_request(base, "GET", path, headers).await
}

/// Sends `METHOD target` byte for byte.
async fn raw_request(base: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // Tolerate a chunked body: take the JSON object inside.
    let json =
        body.find('{').and_then(|start| body.rfind('}').map(|end| &body[start..=end])).unwrap_or("null");
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_deny_authentication_roles_and_identity_headers() {
    let s = Stack::start().await;
    let (id, token) = s.user("gw@example.com").await;

    expect_problem(s.get("/nothing/here", None).await, 404, "not-found").await;
    let anonymous = s.get("/api/orders/1", None).await;
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer realm=\"bouncer\"");
    expect_problem(anonymous, 401, "unauthenticated").await;
    let not_allowed = s.http.put(s.url("/api/orders/1")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(not_allowed.headers()["allow"], "GET, HEAD, POST, DELETE");
    expect_problem(not_allowed, 405, "method-not-allowed").await;
    let forbidden = s.http.post(s.url("/api/orders/1")).bearer_auth(&token).send().await.unwrap();
    expect_problem(forbidden, 403, "forbidden").await;

    let bearer = format!("Bearer {token}");
    let (status, seen) = raw_get(
        &s.base,
        "//api/./orders/x/%2e%2e/%31?page=2&sort=desc",
        &[
            ("Authorization", &bearer),
            ("X-User-Id", "spoofed"),
            ("x_user_roles", "admin"),
            ("X.User.Email", "evil@example.com"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Original-URL", "/admin"),
            ("X-Request-Id", "trace-me-1"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["path"], "/api/orders/1", "the normalized path is forwarded");
    assert_eq!(seen["query"], "page=2&sort=desc", "the query passes through untouched");
    let h = &seen["headers"];
    assert_eq!(h["x-user-id"], json!(id));
    assert_eq!(h["x-user-email"], "gw@example.com");
    assert_eq!(h["x-user-roles"], "user");
    assert_eq!(h["x-request-id"], "trace-me-1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "an untrusted client's X-Forwarded-For is dropped");
    for spoof in ["x_user_roles", "x.user.email", "x-original-url"] {
        assert!(h.get(spoof).is_none(), "{spoof} reached the upstream: {h}");
    }

    // Metrics and health live on their own port only.
    for probe in ["healthz", "readyz"] {
        let r = s.http.get(format!("{}/{probe}", s.metrics_base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "/{probe} once keys and revocations are loaded");
    }
    let metrics =
        s.http.get(format!("{}/metrics", s.metrics_base)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            "bouncer_gateway_requests_total{route=\"orders-admin\",status=\"403\",decision=\"forbidden\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("bouncer_gateway_request_duration_seconds_bucket"), "{metrics}");
    expect_problem(s.get("/metrics", None).await, 404, "not-found").await;
    expect_problem(s.get("/healthz", None).await, 404, "not-found").await;
    expect_problem(s.get("/readyz", None).await, 404, "not-found").await;

    // Identity headers are stripped on auth: none routes too, including Connection-named ones.
    let public = s
        .http
        .get(s.url("/public/x"))
        .header("X-User-Id", "spoofed")
        .header("Connection", "X-User-Roles")
        .header("X-User-Roles", "admin")
        .send()
        .await
        .unwrap();
    let seen = expect_json(public, 200).await;
    assert!(
        seen["headers"].get("x-user-id").is_none() && seen["headers"].get("x-user-roles").is_none(),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_rule_optional_auth_and_upstream_failures() {
    let s = Stack::start().await;
    let (id, token) = s.user("owner@example.com").await;
    let (other, _) = s.user("other@example.com").await;
    expect_json(s.get(&format!("/api/users/{id}/settings"), Some(&token)).await, 200).await;
    expect_problem(s.get(&format!("/api/users/{other}/settings"), Some(&token)).await, 403, "forbidden")
        .await;

    let anonymous = expect_json(s.get("/api/catalogue/1", None).await, 200).await;
    assert!(anonymous["headers"].get("x-user-id").is_none(), "anonymous on an optional route");
    let known = expect_json(s.get("/api/catalogue/1", Some(&token)).await, 200).await;
    assert_eq!(known["headers"]["x-user-id"], json!(id));
    expect_problem(s.get("/api/catalogue/1", Some("not-a-token")).await, 401, "invalid-token").await;

    // Optional authentication never skips a role check.
    expect_problem(s.get("/api/reports/1", None).await, 401, "unauthenticated").await;
    expect_problem(s.get("/api/reports/1", Some(&token)).await, 403, "forbidden").await;

    // Request forms an upstream could read differently than the gateway did.
    for (method, target, status) in [
        ("GET", "foo:/api/users/x", 400),
        ("GET", "x/../public/x", 400),
        ("delete", "/public/x", 400),
        ("POST", "/public/x?_method=DELETE", 400),
        ("POST", "/public/x?%5Fmethod=DELETE", 400),
    ] {
        let (got, body) = raw_request(&s.base, method, target, &[("Content-Length", "0")]).await;
        assert_eq!(got, status, "{method} {target}: {body}");
    }
    let bearer = format!("Bearer {token}");
    let (status, seen) = raw_request(
        &s.base,
        "GET",
        "/api/catalogue/1",
        &[("Authorization", &bearer), ("X-HTTP-Method", "DELETE"), ("X-Method-Override", "DELETE")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        seen["headers"].get("x-http-method").is_none() && seen["headers"].get("x-method-override").is_none(),
        "{seen}"
    );

    expect_problem(s.get("/broken/x", None).await, 502, "bad-gateway").await;
    // A dead target next to a live one: connect failures retry on the other
    // target, and the dead one is ejected after three in a row.
    for i in 0..8 {
        let r = s.get(&format!("/mixed/{i}"), None).await;
        assert_eq!(r.status(), 200, "request {i} must reach the live target");
    }
    expect_problem(s.get("/slow/x", None).await, 504, "gateway-timeout").await;
    for bad in [
        "/public/%2e%2e/%2e%2e/etc",
        "/public/../../etc",
        "/public/a%2Fb",
        "/public/a;x=1",
        "/public/%ff",
        "/public/a\\b",
        "/public/%c0%ae%c0%ae/x",
    ] {
        let (status, body) = raw_get(&s.base, bad, &[]).await;
        assert_eq!((status, body["type"].as_str()), (400, Some("urn:bouncer:problem:invalid-path")), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_of_bad_token_is_refused() {
    let s = Stack::start().await;
    let (_, token) = s.user("jwt@example.com").await;
    // The control: re-signing the real claims with the real key is accepted.
    expect_json(s.get("/api/orders/1", Some(&s.forge(&token, |_, _| {}))).await, 200).await;

    let cases: Vec<(&str, String)> = vec![
        ("expired", s.forge(&token, |c, _| c["exp"] = json!(now() - 1))),
        ("not yet valid", s.forge(&token, |c, _| c["nbf"] = json!(now() + 120))),
        ("issued in the future", s.forge(&token, |c, _| c["iat"] = json!(now() + 120))),
        ("wrong issuer", s.forge(&token, |c, _| c["iss"] = json!("http://evil"))),
        ("wrong audience", s.forge(&token, |c, _| c["aud"] = json!("other"))),
        (
            "no exp",
            s.forge(&token, |c, _| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        ("typ missing", s.forge(&token, |_, h| h.typ = None)),
        ("typ JWT", s.forge(&token, |_, h| h.typ = Some("JWT".into()))),
        ("unknown kid", s.forge(&token, |_, h| h.kid = Some("20200101T000000.000Z-00000000".into()))),
        ("jku header", s.forge(&token, |_, h| h.jku = Some("http://evil/jwks".into()))),
        ("crit header", s.forge(&token, |_, h| h.crit = Some(vec!["exp".into()]))),
        ("tampered payload", {
            let parts: Vec<&str> = token.split('.').collect();
            let mut claims: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
            claims["roles"] = json!(["admin"]);
            format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2])
        }),
        ("alg none", {
            let parts: Vec<&str> = token.split('.').collect();
            format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"at+jwt"}"#), parts[1])
        }),
        ("HS256 with the public key", {
            let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", s.admin.base))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
            let mut h = Header::new(Algorithm::HS256);
            h.typ = Some("at+jwt".into());
            h.kid = jsonwebtoken::decode_header(&token).unwrap().kid;
            let claims: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap())
                    .unwrap();
            jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(x.as_bytes())).unwrap()
        }),
        ("oversized", format!("{token}{}", "A".repeat(9 * 1024))),
        ("garbage", "not.a.token".into()),
    ];
    for (what, bad) in cases {
        let response = s.get("/api/orders/1", Some(&bad)).await;
        assert_eq!(response.status(), 401, "{what} must be refused");
        assert!(response.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"), "{what}");
    }

    let two = s
        .http
        .get(s.url("/api/orders/1"))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    expect_problem(two, 400, "ambiguous-credentials").await;
    expect_problem(
        s.get(&format!("/api/orders/1?access_token={token}"), Some(&token)).await,
        400,
        "ambiguous-credentials",
    )
    .await;
    // Unsafe claim values never become headers.
    let crlf = s.forge(&token, |c, _| c["email"] = json!("a@example.com\r\nX-User-Roles: admin"));
    expect_problem(s.get("/api/orders/1", Some(&crlf)).await, 401, "invalid-token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reload_on_change_and_on_sighup_and_a_bad_file_changes_nothing() {
    let s = Stack::start().await;
    let original = std::fs::read_to_string(&s.routes_path).unwrap();
    expect_problem(s.get("/fresh/x", None).await, 404, "not-found").await;
    let echo_target = original.lines().find(|l| l.contains("app:")).unwrap().to_owned();
    let added = format!("{original}  - {{ name: fresh, path: /fresh/**, upstream: app, auth: none }}\n");
    std::fs::write(&s.routes_path, &added).unwrap();
    let mut reloaded = false;
    for _ in 0..60 {
        if s.get("/fresh/x", None).await.status() == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "a changed file is picked up ({echo_target})");

    // An invalid file is rejected whole: the previous table keeps serving.
    std::fs::write(&s.routes_path, format!("{added}  - {{ name: fresh, path: /dup, upstream: app }}\n"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    expect_json(s.get("/fresh/x", None).await, 200).await;
    expect_json(s.get("/public/x", None).await, 200).await;

    // SIGHUP reloads (and does not kill the process).
    std::fs::write(&s.routes_path, &original).unwrap();
    let pid = s.gateway.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let mut removed = false;
    for _ in 0..60 {
        if s.get("/fresh/x", None).await.status() == 404 {
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(removed, "SIGHUP (or the change) reloads the table");
    expect_json(s.get("/public/x", None).await, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_header_names_are_configurable() {
    let s = Stack::start_with(
        "  identity_headers: { user_id: X-Auth-Subject, email: X-Auth-Email, roles: X-Auth-Roles, request_id: X-Trace-Id }\n",
    )
    .await;
    let (id, token) = s.user("names@example.com").await;
    let bearer = format!("Bearer {token}");
    let (status, seen) = raw_get(
        &s.base,
        "/api/orders/1",
        &[
            ("Authorization", &bearer),
            ("X-Auth-Subject", "spoofed"),
            ("X-User-Id", "spoofed"),
            ("X-Trace-Id", "t-1"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{seen}");
    let h = &seen["headers"];
    assert_eq!(h["x-auth-subject"], json!(id));
    assert_eq!(h["x-auth-email"], "names@example.com");
    assert_eq!(h["x-auth-roles"], "user");
    assert_eq!(h["x-trace-id"], "t-1");
    assert!(h.get("x-user-id").is_none(), "the default names stay stripped: {h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_lets_in_flight_requests_finish() {
    let mut s = Stack::start().await;
    // /slow answers 504 after its 500 ms read timeout: in flight across the signal.
    let http = s.http.clone();
    let url = s.url("/slow/x");
    let in_flight = tokio::spawn(async move { http.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    signal(&s.gateway, "INT");
    let answer = in_flight.await.unwrap().expect("the in-flight request gets its answer, not a reset");
    assert_eq!(answer.status(), 504);
    let status =
        tokio::time::timeout(Duration::from_secs(10), s.gateway.wait()).await.expect("stops").unwrap();
    assert!(status.success(), "a graceful stop exits 0, got {status}");
}
