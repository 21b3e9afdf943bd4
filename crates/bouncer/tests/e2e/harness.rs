//! Starts the real `bouncer` binary against a real database and talks to it
//! over HTTP. Each [`Admin`] owns a temp directory (config, keys, SQLite
//! file) and, on PostgreSQL, a fresh database.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use bouncer_store::testing::TestDatabase;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_bouncer");
pub const PASSWORD: &str = "correct horse battery staple";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running `bouncer admin` process.
pub struct Admin {
    child: Option<Child>,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub db: Option<TestDatabase>,
    pub database_url: String,
    logs: Arc<Mutex<Vec<String>>>,
    pub http: reqwest::Client,
}

impl Admin {
    /// Starts with the default test configuration.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, "").await
    }

    /// Starts with extra YAML lines appended under `admin:` (indented by
    /// the caller with two spaces).
    pub async fn start_with(backend: Backend, extra_admin_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (db, database_url) = match backend {
            Backend::Sqlite => (None, format!("sqlite://{}", dir.path().join("data/bouncer.db").display())),
            Backend::Postgres => {
                let db = TestDatabase::create().await;
                let url = db.url.clone();
                (Some(db), url)
            }
        };
        let mut admin = Self {
            child: None,
            base: String::new(),
            dir,
            db,
            database_url,
            logs: Arc::default(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        };
        admin.write_config(extra_admin_yaml);
        admin.launch().await;
        admin
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("bouncer.yaml")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// (Re)writes the config; takes effect at the next [`Self::restart`].
    pub fn write_config(&self, extra_admin_yaml: &str) {
        let yaml = format!(
            "admin:\n  listen: 127.0.0.1:0\n  database: {}\n  keys_dir: {}\n  issuer: http://bouncer.test\n  audience: bouncer-test\n  shutdown_grace: 5s\n  key_activation_delay: 0s\n{extra_admin_yaml}",
            self.database_url,
            self.keys_dir().display()
        );
        std::fs::write(self.config_path(), yaml).unwrap();
    }

    async fn launch(&mut self) {
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "admin", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info,bouncer_admin=debug")
            .env_remove("BOUNCER_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn bouncer admin");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                self.logs.lock().unwrap().push(line.clone());
                if line.contains("admin listening") {
                    let v: Value = serde_json::from_str(&line).unwrap();
                    return v["addr"].as_str().unwrap().to_owned();
                }
            }
            panic!("bouncer admin exited before listening; logs:\n{}", self.logs.lock().unwrap().join("\n"));
        })
        .await
        .expect("bouncer admin did not start listening within 30 s");
        // Keep draining stderr so the child never blocks on a full pipe.
        let logs = self.logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                logs.lock().unwrap().push(line);
            }
        });
        self.base = format!("http://{addr}");
        self.child = Some(child);
    }

    /// Stops the process with SIGTERM and starts it again on the same data.
    pub async fn restart(&mut self) {
        let status = self.terminate().await;
        assert!(status.success(), "admin exited with {status} on SIGTERM");
        self.launch().await;
    }

    /// Starts the process again after [`Self::terminate`].
    pub async fn restart_stopped(&mut self) {
        assert!(self.child.is_none(), "admin is still running");
        self.launch().await;
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("admin is running");
        signal(&child, "TERM");
        tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("admin did not exit within 15 s of SIGTERM")
            .unwrap()
    }

    pub fn signal(&self, name: &str) {
        signal(self.child.as_ref().expect("admin is running"), name);
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.http.post(self.url(path)).json(&body).send().await.unwrap()
    }

    pub async fn post_bearer(&self, path: &str, token: &str, body: Value) -> Response {
        self.http.post(self.url(path)).bearer_auth(token).json(&body).send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_bearer(&self, path: &str, token: &str) -> Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn signup(&self, email: &str) -> Value {
        expect_json(self.post("/auth/signup", json!({"email": email, "password": PASSWORD})).await, 201).await
    }

    /// Logs in and returns `(access_token, refresh_token)`.
    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let body =
            expect_json(self.post("/auth/login", json!({"email": email, "password": password})).await, 200)
                .await;
        (
            body["access_token"].as_str().unwrap().to_owned(),
            body["refresh_token"].as_str().unwrap().to_owned(),
        )
    }

    /// Runs another `bouncer` subcommand on this instance's config.
    /// Makes `root@example.com` an admin with the CLI and logs in as it;
    /// returns (its user id, its access token).
    pub async fn root(&self) -> (String, String) {
        let add = ["user", "add", "--email", "root@example.com", "--role", "admin", "--password-stdin"];
        let out = self.cli(&add, Some(PASSWORD)).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (access, _) = self.login("root@example.com", PASSWORD).await;
        let me = expect_json(self.get_bearer("/users/me", &access).await, 200).await;
        (me["id"].as_str().unwrap().to_owned(), access)
    }

    pub async fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        run_cli(&self.config_path(), args, stdin).await
    }

    /// The same database the process uses, opened directly.
    pub async fn store(&self) -> std::sync::Arc<dyn bouncer_store::Store> {
        bouncer_store::open(&self.database_url, 2).await.unwrap()
    }

    /// The value of a metric line (name with labels), or 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.get("/metrics").await.text().await.unwrap(), series)
    }
}

/// The value of a metric line (name with labels) in Prometheus text, or 0.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Sends signal `name` (`TERM`, `INT`, `HUP`) to a child process.
pub fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("the process is running").to_string();
    let ok = std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success();
    assert!(ok, "kill -{name} {pid} failed");
}

/// Runs `bouncer ARGS --config CONFIG` (the config flag appended last).
pub async fn run_cli(config: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("BOUNCER_DATABASE_URL")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    child.wait_with_output().await.unwrap()
}

/// Waits until something listens on `port` (10 s at most).
pub async fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("nothing listened on port {port} within 10 s");
}

/// A port nobody listens on right now (bound and released; tests start their
/// servers right after, so another taker in between is very unlikely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Asserts the status and returns the JSON body, showing the body on mismatch.
pub async fn expect_json(response: Response, status: u16) -> Value {
    let got = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(got, StatusCode::from_u16(status).unwrap(), "expected {status}, got {got}; body: {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

/// Asserts a problem+json response of `status` with the given `type` slug.
pub async fn expect_problem(response: Response, status: u16, slug: &str) -> Value {
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let request_id = response.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
    let body = expect_json(response, status).await;
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "problem content type; body {body}"
    );
    assert_eq!(body["type"], format!("urn:bouncer:problem:{slug}"), "problem type; body {body}");
    assert_eq!(body["status"], status, "problem status member; body {body}");
    assert!(body["title"].is_string() && body["detail"].is_string(), "title and detail; body {body}");
    assert_eq!(body["request_id"].as_str(), request_id.as_deref(), "request_id matches the header");
    body
}
