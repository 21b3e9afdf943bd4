//! Verification keys from the admin service's JWKS.
//!
//! A gateway of its own fetches the JWKS over HTTP at start (retried every
//! second until the first success), then every [`REFRESH_INTERVAL`]; a token
//! with an unknown `kid` forces a refresh at most once per
//! [`FORCED_REFRESH_MIN`], coalesced across concurrent requests. A failed
//! fetch keeps the last good keys. Until keys were loaded once,
//! authenticated routes answer 503: the gateway never accepts a token it
//! could not check.
//!
//! Under `bouncer up` the admin is in the same process: it hands its key
//! ring over ([`Jwks::install`]) before it starts listening, and the same
//! refreshes then read the ring instead of the network — so the gateway is
//! ready the moment the admin is, and follows rotations without HTTP.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use jsonwebtoken::{DecodingKey, jwk::JwkSet};

use crate::error::SetupError;

pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
pub const FORCED_REFRESH_MIN: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The JWKS document of an admin in this process, as it would serve it.
pub type LocalJwks = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The in-process admin's key ring as a key set.
fn parse_ring(local: &LocalJwks) -> Result<JwkSet, SetupError> {
    serde_json::from_value(local()).map_err(SetupError::KeyRing)
}

/// Why a refresh kept the last keys. Logged, never shown to a client: a
/// request meets [`Denial`](crate::problem::Denial)'s 503 instead.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("cannot fetch {url}: {error}")]
    Fetch { url: String, error: reqwest::Error },
    #[error("{url} is not a JWKS: {error}")]
    NotJwks { url: String, error: reqwest::Error },
    #[error("the admin in this process has not loaded its keys yet")]
    NotInstalled,
    #[error(transparent)]
    KeyRing(#[from] SetupError),
}

/// Where the key set comes from.
enum Source {
    Http {
        url: String,
        http: reqwest::Client,
    },
    /// Empty until the in-process admin has loaded its keys.
    InProcess(std::sync::OnceLock<LocalJwks>),
}

/// The current key set; `None` until the first successful fetch.
pub struct Jwks {
    source: Source,
    keys: ArcSwap<Option<HashMap<String, DecodingKey>>>,
    /// Bumped on every stored key set; verified-token cache entries carry it.
    generation: std::sync::atomic::AtomicU64,
    /// When a refresh was last forced; the lock also coalesces callers.
    forced: tokio::sync::Mutex<Option<Instant>>,
    /// One fetch at a time: a slow periodic fetch begun before a rotation
    /// must not land after (and overwrite) a forced one.
    fetching: tokio::sync::Mutex<()>,
    /// Fetches that stored a key set / that failed (metrics).
    pub refreshed: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

impl Jwks {
    /// Keys from the admin's JWKS at `url`.
    pub fn new(url: &str) -> Self {
        let http = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build().unwrap_or_default();
        Self::with_source(Source::Http { url: url.to_owned(), http })
    }

    /// Keys from an admin in this process, once it [`Self::install`]s them.
    pub fn in_process() -> Self {
        Self::with_source(Source::InProcess(std::sync::OnceLock::new()))
    }

    fn with_source(source: Source) -> Self {
        Self {
            source,
            keys: ArcSwap::from_pointee(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            forced: tokio::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            refreshed: std::sync::atomic::AtomicU64::new(0),
            failed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Changes whenever a key set is stored.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The loaded keys, or `None` when none were ever loaded.
    pub fn current(&self) -> Arc<Option<HashMap<String, DecodingKey>>> {
        self.keys.load_full()
    }

    /// Fetches and swaps in the key set. Keys are pinned to EdDSA: JWKs of
    /// any other type or algorithm are ignored, never trusted.
    pub async fn refresh(&self) -> Result<usize, RefreshError> {
        let result = self.fetch().await;
        let counter = if result.is_ok() { &self.refreshed } else { &self.failed };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// Takes the in-process admin's key ring (see the module docs) and loads
    /// it at once. Only for a gateway made with [`Self::in_process`], once.
    pub fn install(&self, local: LocalJwks) -> Result<usize, SetupError> {
        let Source::InProcess(slot) = &self.source else {
            return Err(SetupError::KeysOverHttp);
        };
        slot.set(local).map_err(|_| SetupError::KeysInstalledAlready)?;
        let set = parse_ring(slot.get().ok_or(SetupError::KeysInstalledAlready)?)?;
        let result = Ok(self.store(&set));
        self.refreshed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        result
    }

    fn describe(&self) -> &str {
        match &self.source {
            Source::Http { url, .. } => url,
            Source::InProcess(_) => "the admin in this process",
        }
    }

    async fn fetch(&self) -> Result<usize, RefreshError> {
        let _one_at_a_time = self.fetching.lock().await;
        let set = match &self.source {
            Source::Http { url, http } => http
                .get(url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|error| RefreshError::Fetch { url: url.clone(), error })?
                .json()
                .await
                .map_err(|error| RefreshError::NotJwks { url: url.clone(), error })?,
            Source::InProcess(slot) => parse_ring(slot.get().ok_or(RefreshError::NotInstalled)?)?,
        };
        Ok(self.store(&set))
    }

    /// Swaps in the EdDSA keys of `set`; returns how many.
    fn store(&self, set: &JwkSet) -> usize {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let eddsa = matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_))
                && jwk.common.key_algorithm.is_none_or(|a| a == jsonwebtoken::jwk::KeyAlgorithm::EdDSA);
            let (Some(kid), true) = (jwk.common.key_id.clone(), eddsa) else { continue };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, key);
            }
        }
        let n = keys.len();
        self.keys.store(Arc::new(Some(keys)));
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        n
    }

    /// Refreshes because a token named an unknown kid — unless a forced
    /// refresh happened within [`FORCED_REFRESH_MIN`]. Concurrent callers
    /// wait for the one refresh in flight instead of each fetching.
    pub async fn refresh_for_unknown_kid(&self) {
        let mut last = self.forced.lock().await;
        if last.is_some_and(|t| t.elapsed() < FORCED_REFRESH_MIN) {
            return;
        }
        *last = Some(Instant::now());
        match self.refresh().await {
            Ok(n) => tracing::info!(keys = n, "JWKS refreshed for an unknown kid"),
            Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the last keys"),
        }
    }

    /// Runs forever: first load (retrying each second), then periodic refresh.
    pub async fn keep_fresh(&self) {
        // In-process, the first load is the admin's install.
        if matches!(self.source, Source::Http { .. }) {
            loop {
                match self.refresh().await {
                    Ok(n) => {
                        tracing::info!(keys = n, source = self.describe(), "JWKS loaded");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "JWKS not loaded yet; authenticated routes answer 503")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        loop {
            tokio::time::sleep(REFRESH_INTERVAL).await;
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "JWKS refresh failed; keeping the last keys");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_ring_is_installed_once_and_only_in_process() {
        let over_http = Jwks::new("http://127.0.0.1:1/jwks");
        let err = over_http.install(Box::new(|| serde_json::json!({ "keys": [] }))).unwrap_err();
        assert!(matches!(err, SetupError::KeysOverHttp), "{err:?}");

        let local = Jwks::in_process();
        assert_eq!(local.install(Box::new(|| serde_json::json!({ "keys": [] }))).unwrap(), 0);
        assert!(local.current().is_some(), "an empty ring is still a loaded key set");
        let err = local.install(Box::new(|| serde_json::json!({ "keys": [] }))).unwrap_err();
        assert!(matches!(err, SetupError::KeysInstalledAlready), "{err:?}");

        let err = Jwks::in_process().install(Box::new(|| serde_json::json!("no"))).unwrap_err();
        assert!(matches!(err, SetupError::KeyRing(_)), "{err:?}");
        assert!(err.to_string().starts_with("the admin's key ring is not a JWKS: "), "{err}");
    }
}
