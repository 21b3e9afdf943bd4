//! [`SetupError`]: why the gateway could not be set up — the route file,
//! its upstreams, the identity header names, the shared state, the
//! in-process key ring. Requests
//! never see it: what a request is refused with is a
//! [`Denial`](crate::problem::Denial).

use std::path::PathBuf;

use bouncer_core::routes::RoutesError;
use bouncer_shared_state::RedisError;

/// Why the gateway (or a route table it was asked to load) cannot be used.
///
/// Each message is whole on its own: it names the file, upstream or setting
/// and quotes the cause. So no variant also hands that cause out as
/// `source()`: `bouncer` prints errors with anyhow's `{:#}`, which would
/// repeat it.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The route file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    ReadRoutes { path: PathBuf, error: std::io::Error },
    /// The route file does not validate (file:line: reason).
    #[error(transparent)]
    Routes(#[from] RoutesError),
    /// A target of an upstream does not resolve.
    #[error("upstreams.{upstream}: cannot resolve {target}: {error}")]
    Resolve { upstream: String, target: String, error: std::io::Error },
    /// A target of an upstream resolves to no address at all.
    #[error("upstreams.{upstream}: {target} resolves to nothing")]
    ResolvesToNothing { upstream: String, target: String },
    /// A configured identity header name is not a header name.
    #[error("gateway.identity_headers: {name:?}: {error}")]
    IdentityHeader { name: String, error: http::header::InvalidHeaderName },
    /// A standalone gateway was configured without Redis.
    #[error(
        "a standalone gateway needs `redis` (or BOUNCER_REDIS_URL) to learn revocations and share \
         rate limits; for a single process with the admin use `bouncer up`"
    )]
    NoRedis,
    /// Redis could not be set up (a bad URL, a client that would not start).
    #[error("{0}")]
    Redis(RedisError),
    /// An in-process key ring was handed to a gateway that fetches its
    /// keys over HTTP ([`Jwks::install`](crate::jwks::Jwks::install)).
    #[error("this gateway fetches its keys over HTTP")]
    KeysOverHttp,
    /// A second key ring was handed over.
    #[error("keys were installed already")]
    KeysInstalledAlready,
    /// The access log's file cannot be opened (or its writer started).
    #[error("gateway.access_log.path: cannot open {path}: {error}")]
    AccessLog { path: String, error: std::io::Error },
    /// The in-process admin's key ring does not read as a JWKS.
    #[error("the admin's key ring is not a JWKS: {0}")]
    KeyRing(serde_json::Error),
}
