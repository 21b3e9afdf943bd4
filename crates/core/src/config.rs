//! `bouncer.yaml`: the service configuration, parsed and validated whole.
//!
//! Parsing rejects unknown keys; [`Config::from_yaml`] then validates every
//! section, so a service never starts on half a configuration. Reading the
//! file and the environment is the caller's job; this module only decides.

use std::{net::SocketAddr, path::PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{ConfigDuration, password::PasswordPolicy};

/// Environment variable that overrides `admin.database`.
pub const ENV_DATABASE_URL: &str = "BOUNCER_DATABASE_URL";
/// Environment variable that overrides `redis`.
pub const ENV_REDIS_URL: &str = "BOUNCER_REDIS_URL";

/// The whole file. Absent sections take their defaults (the embedded shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub admin: AdminConfig,
    pub gateway: GatewayConfig,
    /// Redis URL (single node, Sentinel or Cluster). Absent: in-memory, one instance only.
    pub redis: Option<String>,
    /// Prefix of every Redis key and channel, so deployments (or test runs)
    /// can share one Redis. Default `bouncer:`.
    pub redis_prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin: AdminConfig::default(),
            gateway: GatewayConfig::default(),
            redis: None,
            redis_prefix: "bouncer:".into(),
        }
    }
}

/// The `admin:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin API. Default `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://…`; the scheme picks the store.
    pub database: String,
    /// Directory of Ed25519 signing keys (`KID.pem`, mode 0600).
    pub keys_dir: PathBuf,
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens.
    pub audience: String,
    pub access_token_ttl: ConfigDuration,
    /// Absolute lifetime of a session; refreshing never extends it.
    pub refresh_token_ttl: ConfigDuration,
    pub password: PasswordPolicy,
    pub login_throttle: LoginThrottle,
    /// CIDRs of proxies (e.g. the gateway) whose `X-Forwarded-For` is believed
    /// when deciding the client IP for throttling and audit.
    pub trusted_proxies: Vec<IpNet>,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace: ConfigDuration,
    /// Largest number of concurrent database connections (PostgreSQL).
    pub max_db_connections: usize,
    /// How long a newly added signing key is only published (in the JWKS)
    /// before it signs, so every replica and gateway knows it first.
    pub key_activation_delay: ConfigDuration,
    /// How long a service client's previous secrets keep working after a
    /// rotation, so its deployments can be updated without an outage.
    pub client_secret_overlap: ConfigDuration,
}

/// The default `admin.trusted_proxies`: loopback, where the embedded
/// gateway forwards from. Without it every login through the gateway would
/// share one throttle IP, turning the per-IP limit into a global lockout.
fn loopback() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"].iter().map(|c| c.parse().expect("constant CIDR")).collect()
}

/// `admin.login_throttle`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginThrottle {
    /// Failed logins per account within `window` before 429. Default 5.
    pub max_failures: u32,
    /// Failed logins per client IP within `window` before 429. Higher than the
    /// per-account limit because many users can share one NAT. Default 50.
    pub max_failures_per_ip: u32,
    pub window: ConfigDuration,
}

/// `gateway.on_store_error`: what the limiter does when Redis is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Fall back to per-instance in-memory buckets.
    #[default]
    Local,
    /// Admit without limiting.
    Allow,
    /// Refuse with 503.
    Deny,
}

/// The `gateway:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub routes: PathBuf,
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    pub metrics_listen: SocketAddr,
    pub trusted_proxies: Vec<IpNet>,
    pub on_store_error: OnStoreError,
    pub shutdown_grace: ConfigDuration,
    /// Names of the headers the gateway injects (and always strips).
    pub identity_headers: IdentityHeaders,
    pub access_log: AccessLogConfig,
}

/// `gateway.access_log`: one line per request, written off the request path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Default `true`.
    pub enabled: bool,
    /// `text` or `json`; absent: the process's `--log-format`.
    pub format: Option<AccessLogFormat>,
    /// `stderr` (default) or a file, appended to and reopened when moved away.
    pub path: String,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self { enabled: true, format: None, path: "stderr".into() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    Text,
    Json,
}

/// `gateway.identity_headers`: what upstreams read the identity from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeaders {
    pub user_id: String,
    pub email: String,
    pub roles: String,
    pub request_id: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            user_id: "X-User-Id".into(),
            email: "X-User-Email".into(),
            roles: "X-User-Roles".into(),
            request_id: "X-Request-Id".into(),
        }
    }
}

impl IdentityHeaders {
    /// Header names an operator may not take over: HTTP framing, routing and
    /// the credentials themselves.
    const RESERVED: [&'static str; 9] = [
        "authorization",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "x-forwarded-for",
        "cookie",
    ];

    fn validate(&self) -> Result<(), String> {
        let names = [
            ("user_id", &self.user_id),
            ("email", &self.email),
            ("roles", &self.roles),
            ("request_id", &self.request_id),
        ];
        let mut seen: Vec<String> = Vec::new();
        for (field, name) in names {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Err(format!(
                    "gateway.identity_headers.{field}: {name:?} is not a header name (letters, digits, '-')"
                ));
            }
            let lower = name.to_ascii_lowercase();
            if Self::RESERVED.contains(&lower.as_str()) {
                return Err(format!("gateway.identity_headers.{field}: {name:?} is reserved"));
            }
            if seen.contains(&lower) {
                return Err(format!("gateway.identity_headers.{field}: {name:?} is used twice"));
            }
            seen.push(lower);
        }
        Ok(())
    }
}

const DEFAULT_ISSUER: &str = "http://127.0.0.1:8081";
const DEFAULT_AUDIENCE: &str = "bouncer";

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database: "sqlite://data/bouncer.db".into(),
            keys_dir: "data/keys".into(),
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            access_token_ttl: ConfigDuration::from_secs(15 * 60),
            refresh_token_ttl: ConfigDuration::from_secs(30 * 86_400),
            password: PasswordPolicy::default(),
            login_throttle: LoginThrottle::default(),
            trusted_proxies: loopback(),
            shutdown_grace: ConfigDuration::from_secs(10),
            max_db_connections: 16,
            key_activation_delay: ConfigDuration::from_secs(90),
            client_secret_overlap: ConfigDuration::from_secs(3600),
        }
    }
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self { max_failures: 5, max_failures_per_ip: 50, window: ConfigDuration::from_secs(15 * 60) }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            routes: "config/routes.yaml".into(),
            jwks_url: format!("{DEFAULT_ISSUER}/.well-known/jwks.json"),
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            trusted_proxies: Vec::new(),
            on_store_error: OnStoreError::Local,
            shutdown_grace: ConfigDuration::from_secs(10),
            identity_headers: IdentityHeaders::default(),
            access_log: AccessLogConfig::default(),
        }
    }
}

/// A configuration that cannot be used, naming where and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{source_name}{}: {message}", location(*.line, *.column))]
pub struct ConfigError {
    pub source_name: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// Which store a database URL selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A file path (relative to the working directory) or `:memory:`.
    Sqlite(PathBuf),
    /// Passed to tokio-postgres unchanged.
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// URL needs a file path, e.g. sqlite://data/bouncer.db".into());
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err("database URL must start with sqlite:// or postgres://".into())
        }
    }
}

impl Config {
    /// Parses and validates a whole file. `source_name` (usually the path)
    /// prefixes every error.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| {
            let loc = e.location();
            ConfigError {
                source_name: source_name.to_owned(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                message: e.to_string(),
            }
        })?;
        config.validate().map_err(|message| ConfigError {
            source_name: source_name.to_owned(),
            line: None,
            column: None,
            message,
        })?;
        Ok(config)
    }

    /// Applies `BOUNCER_DATABASE_URL` and `BOUNCER_REDIS_URL`, which win over
    /// the file so secrets need not be written into it. `lookup` is usually
    /// `std::env::var(..).ok()`.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(url) = lookup(ENV_DATABASE_URL).filter(|v| !v.is_empty()) {
            DatabaseUrl::parse(&url).map_err(|e| format!("{ENV_DATABASE_URL}: {e}"))?;
            self.admin.database = url;
        }
        if let Some(url) = lookup(ENV_REDIS_URL).filter(|v| !v.is_empty()) {
            self.redis = Some(url);
        }
        Ok(())
    }

    /// Checks relations between values that the types cannot express.
    /// Returns the first problem as `field: reason`.
    pub fn validate(&self) -> Result<(), String> {
        let a = &self.admin;
        DatabaseUrl::parse(&a.database).map_err(|e| format!("admin.database: {e}"))?;
        let access = a.access_token_ttl.get();
        if access.as_secs() < 1 || access > crate::revocation::MAX_ACCESS_TOKEN_TTL {
            return Err("admin.access_token_ttl: must be between 1s and 24h".into());
        }
        if a.refresh_token_ttl.get() <= access {
            return Err("admin.refresh_token_ttl: must be longer than access_token_ttl".into());
        }
        // Bounded so instant arithmetic (now + ttl) can never overflow.
        if a.refresh_token_ttl.get().as_secs() > 3650 * 86_400 {
            return Err("admin.refresh_token_ttl: must be at most 3650d".into());
        }
        if self.redis_prefix.len() > 64
            || self.redis_prefix.bytes().any(|b| !b.is_ascii_graphic() || b"{}".contains(&b))
        {
            // Braces would break the hash tags that keep a bucket on one shard.
            return Err("redis_prefix: at most 64 printable characters, no spaces or braces".into());
        }
        if a.key_activation_delay.get().as_secs() > 86_400 {
            return Err("admin.key_activation_delay: must be at most 1d".into());
        }
        if a.client_secret_overlap.get().as_secs() > 30 * 86_400 {
            return Err("admin.client_secret_overlap: must be at most 30d".into());
        }
        if a.issuer.trim().is_empty() {
            return Err("admin.issuer: must not be empty".into());
        }
        if a.audience.trim().is_empty() {
            return Err("admin.audience: must not be empty".into());
        }
        let p = &a.password;
        if p.min_length < 8 {
            return Err("admin.password.min_length: must be at least 8".into());
        }
        if p.max_length < p.min_length || p.max_length > 1024 {
            return Err("admin.password.max_length: must be between min_length and 1024".into());
        }
        let h = p.hash;
        if h.parallelism < 1
            || h.iterations < 1
            || h.memory_kib < 8 * h.parallelism
            || h.memory_kib > 4 * 1024 * 1024
        {
            return Err("admin.password.hash: need parallelism >= 1, iterations >= 1, 8*parallelism <= memory_kib <= 4194304".into());
        }
        let t = &a.login_throttle;
        if t.max_failures < 1 || t.max_failures_per_ip < 1 {
            return Err(
                "admin.login_throttle: max_failures and max_failures_per_ip must be at least 1".into()
            );
        }
        if t.window.get().as_secs() < 1 || t.window.get().as_secs() > 30 * 86_400 {
            return Err("admin.login_throttle.window: must be between 1s and 30d".into());
        }
        if a.max_db_connections < 1 {
            return Err("admin.max_db_connections: must be at least 1".into());
        }
        self.gateway.identity_headers.validate()?;
        if self.gateway.access_log.path.trim().is_empty() {
            return Err("gateway.access_log.path: must be `stderr` or a file path".into());
        }
        if self.gateway.listen == self.gateway.metrics_listen {
            return Err("gateway.metrics_listen: must differ from gateway.listen".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"
admin:
  listen: 127.0.0.1:8081
  database: sqlite://data/bouncer.db
  keys_dir: data/keys
  issuer: http://127.0.0.1:8081
  audience: bouncer
  access_token_ttl: 15m
  refresh_token_ttl: 30d
  password: { min_length: 12, max_length: 128 }
  login_throttle: { max_failures: 5, window: 15m }
gateway:
  listen: 127.0.0.1:8080
  routes: config/routes.yaml
  jwks_url: http://127.0.0.1:8081/.well-known/jwks.json
  issuer: http://127.0.0.1:8081
  audience: bouncer
  metrics_listen: 127.0.0.1:9091
  trusted_proxies: []
  on_store_error: local
redis: redis://127.0.0.1:6379
"#;

    #[test]
    fn the_spec_example_parses_to_the_defaults() {
        let c = Config::from_yaml(SPEC_EXAMPLE, "bouncer.yaml").unwrap();
        let mut expected = Config { redis: Some("redis://127.0.0.1:6379".into()), ..Config::default() };
        expected.gateway.routes = "config/routes.yaml".into();
        assert_eq!(c, expected);
        assert_eq!(Config::from_yaml("{}", "empty.yaml").unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let err = Config::from_yaml("admin:\n  listen: 127.0.0.1:1\n  colour: blue\n", "f.yaml").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.to_string().starts_with("f.yaml:3:"), "{err}");
        assert!(err.message.contains("colour"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        for (yaml, needle) in [
            ("admin: { access_token_ttl: 15 }", "invalid duration"),
            ("admin: { database: mysql://x }", "admin.database"),
            ("admin: { access_token_ttl: 2h, refresh_token_ttl: 1h }", "admin.refresh_token_ttl"),
            ("admin: { password: { min_length: 4 } }", "admin.password.min_length"),
            ("admin: { password: { min_length: 20, max_length: 10 } }", "admin.password.max_length"),
            ("admin: { login_throttle: { max_failures: 0 } }", "admin.login_throttle"),
            ("gateway: { on_store_error: maybe }", "unknown variant"),
            ("redis_prefix: \"a{b}\"", "redis_prefix"),
            ("admin: { trusted_proxies: [not-a-cidr] }", "trusted_proxies"),
            ("gateway: { identity_headers: { user_id: \"X User\" } }", "identity_headers.user_id"),
            ("gateway: { identity_headers: { roles: Authorization } }", "reserved"),
            ("gateway: { identity_headers: { email: X-User-Id } }", "used twice"),
            ("gateway: { access_log: { path: \"\" } }", "gateway.access_log.path"),
            ("gateway: { access_log: { format: xml } }", "unknown variant"),
            ("admin: { refresh_token_ttl: 99999999d }", "at most 3650d"),
            ("admin: { login_throttle: { window: 365d } }", "admin.login_throttle.window"),
        ] {
            let err = Config::from_yaml(yaml, "f.yaml").unwrap_err().to_string();
            assert!(err.contains(needle), "{yaml}: expected {needle:?} in {err:?}");
        }
    }

    #[test]
    fn environment_wins_over_the_file() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            ENV_DATABASE_URL => Some("postgres://db/x".into()),
            ENV_REDIS_URL => Some("redis://r:6379".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.admin.database, "postgres://db/x");
        assert_eq!(c.redis.as_deref(), Some("redis://r:6379"));
        assert!(c.apply_env(|_| Some("ftp://nope".into())).is_err());
    }

    #[test]
    fn database_url_scheme_picks_the_backend() {
        assert_eq!(DatabaseUrl::parse("sqlite://data/x.db"), Ok(DatabaseUrl::Sqlite("data/x.db".into())));
        assert_eq!(DatabaseUrl::parse("sqlite:///abs/x.db"), Ok(DatabaseUrl::Sqlite("/abs/x.db".into())));
        assert!(matches!(DatabaseUrl::parse("postgresql://h/db"), Ok(DatabaseUrl::Postgres(_))));
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }
}

#[cfg(test)]
mod shipped_files {
    use super::*;

    /// Every configuration file shipped in config/ parses and validates.
    #[test]
    fn shipped_configs_are_valid() {
        for name in ["bouncer.yaml", "production.yaml"] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/").to_owned() + name;
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = Config::from_yaml(&text, name) {
                panic!("config/{name} is invalid: {e}");
            }
        }
        let embedded = Config::from_yaml(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/bouncer.yaml"))
                .unwrap(),
            "bouncer.yaml",
        )
        .unwrap();
        assert_eq!(embedded, Config::default(), "config/bouncer.yaml documents the defaults");
    }
}
