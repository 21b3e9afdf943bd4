//! The gateway's request pipeline: one [`ProxyHttp`] implementation whose
//! `request_filter` reads top to bottom — normalize, match, strip,
//! authenticate, revocation, authorize, rate limit — and whose later phases
//! forward with identity headers.
//!
//! pingora phases used, in the order they run:
//! - `request_filter`: every decision; a denial is written here and
//!   `Ok(true)` ends the request. `Ok(false)` forwards.
//! - `upstream_peer`: the target chosen in `request_filter`.
//! - `upstream_request_filter`: rewrite the path to its normalized form,
//!   inject `X-User-*`, `X-Request-Id`, `X-Forwarded-For`.
//! - `response_filter`: echo `X-Request-Id`, add `RateLimit-*` headers.
//! - `fail_to_proxy`: 502/504 as problem+json.
//! - `logging`: one access-log line.
//!
//! 401/403/429 denials are also handed to the audit stream (a queue, never
//! waited on) on their way to the admin's audit log.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bouncer_core::{
    bucket::{Decision, Limit},
    claims::{AccessClaims, Expectations},
    jwt::{self, TokenError},
    path::normalize_path,
    problem::ProblemKind,
    routes::{Access, AuthMode, LimitKey, RouteMatch, RouteTable},
};
use bouncer_shared_state::{
    denials::{DenialEvent, DenialRecorder},
    limiter::{RateLimiter, Verdict},
};
use ipnet::IpNet;
use pingora::{
    ErrorSource, ErrorType,
    http::{RequestHeader, ResponseHeader},
    modules::http::HttpModules,
    prelude::HttpPeer,
    proxy::{FailToProxy, ProxyHttp, Session},
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    identity::{self, IdentityNames, X_FORWARDED_FOR},
    jwks::Jwks,
    problem::Denial,
    revocations::RevocationSet,
    upstream::{self, Pool},
};

/// A route table with its upstreams resolved, swapped whole on reload.
pub struct LoadedTable {
    pub table: RouteTable,
    /// Targets of each upstream, resolved at load time (no DNS per request).
    upstreams: std::collections::HashMap<String, Arc<Pool>>,
}

impl LoadedTable {
    /// Resolves every upstream target; a name that does not resolve makes
    /// the whole table invalid.
    pub fn resolve(table: RouteTable) -> Result<Self, String> {
        let mut upstreams = std::collections::HashMap::new();
        for (name, spec) in &table.upstreams {
            let mut addrs = Vec::new();
            for target in &spec.targets {
                let resolved = std::net::ToSocketAddrs::to_socket_addrs(target.as_str())
                    .map_err(|e| format!("upstreams.{name}: cannot resolve {target}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("upstreams.{name}: {target} resolves to nothing"))?;
                addrs.push(resolved);
            }
            let connect = spec.connect_timeout.map_or(upstream::DEFAULT_CONNECT_TIMEOUT, |d| d.get());
            let read = spec.read_timeout.map_or(upstream::DEFAULT_READ_TIMEOUT, |d| d.get());
            upstreams.insert(name.clone(), Arc::new(Pool::new(addrs, connect, read)));
        }
        Ok(Self { table, upstreams })
    }

    fn pool(&self, upstream: &str) -> Option<Arc<Pool>> {
        self.upstreams.get(upstream).cloned()
    }
}

/// Milliseconds on a monotonic clock, for upstream health.
fn monotonic_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Everything the pipeline reads; shared by all requests.
pub struct Gateway {
    pub table: Arc<ArcSwap<LoadedTable>>,
    pub jwks: Arc<Jwks>,
    pub revocations: Arc<RevocationSet>,
    pub expectations: Expectations,
    pub trusted_proxies: Vec<IpNet>,
    pub metrics: Arc<crate::metrics::GatewayMetrics>,
    pub verified: crate::token_cache::VerifiedTokens,
    pub identity_names: IdentityNames,
    pub limiter: Arc<RateLimiter>,
    pub denials: Arc<DenialRecorder>,
    /// In-flight requests, for a graceful stop.
    pub drain: Arc<crate::drain::Drain>,
}

/// Per-request state carried between phases.
#[derive(Default)]
pub struct RequestCtx {
    request_id: String,
    started: Option<Instant>,
    route: Option<String>,
    /// The normalized path: what was matched, and what is forwarded.
    forward_path: String,
    target: Option<SocketAddr>,
    /// The route's upstream pool, kept for retries against other targets.
    pool: Option<Arc<Pool>>,
    /// Targets already tried for this request (a retry goes elsewhere).
    tried: Vec<SocketAddr>,
    identity: Option<Arc<AccessClaims>>,
    /// The TCP peer.
    peer_ip: Option<IpAddr>,
    /// The client as far as trusted proxies vouch for it (rate keys, audit).
    client_ip: Option<IpAddr>,
    decision: &'static str,
    /// The route's limit and what the bucket said, for `RateLimit-*`.
    rate: Option<(Limit, Decision)>,
    bucket: Option<String>,
    /// Counts this request as in flight until the context is dropped.
    _in_flight: Option<crate::drain::InFlight>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    // No downstream modules: pingora's default is a compression module that
    // is disabled yet still set up and consulted on every request, and the
    // gateway never compresses (the upstream's encoding passes through).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Some(Instant::now()),
            decision: "forwarded",
            _in_flight: Some(self.drain.enter()),
            ..RequestCtx::default()
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        if self.drain.is_draining() {
            // Stopping: answer, but on a connection that then closes.
            session.set_keepalive(None);
        }
        ctx.request_id = request_id(session.req_header(), &self.identity_names.request_id);
        ctx.peer_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        ctx.client_ip = ctx.peer_ip.map(|peer| client_ip(session.req_header(), peer, &self.trusted_proxies));
        match self.decide(session, ctx).await {
            Ok(()) => Ok(false),
            Err(denial) => {
                ctx.decision = denial.decision;
                if matches!(denial.kind.status, 401 | 403 | 429) {
                    self.denials.record(denial_event(session.req_header(), ctx, denial.kind.status));
                }
                denial.write(session, &ctx.request_id).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let pool = ctx.pool.clone().ok_or_else(|| pingora::Error::new(ErrorType::InternalError))?;
        // Called again after a retryable connect failure: pick afresh.
        let target = pool
            .pick(monotonic_ms(), &ctx.tried)
            .ok_or_else(|| pingora::Error::new(ErrorType::InternalError))?;
        ctx.target = Some(target);
        ctx.tried.push(target);
        let mut peer = HttpPeer::new(target, false, String::new());
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        if let (Some(pool), Some(target)) = (&ctx.pool, ctx.target) {
            pool.failed(target, monotonic_ms());
            // Nothing reached the upstream yet, so another target is safe to try.
            if ctx.tried.len() < pool.len() {
                e.set_retry(true);
            }
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let (Some(pool), Some(target)) = (&ctx.pool, ctx.target) {
            pool.succeeded(target);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        {
            let path = &ctx.forward_path;
            let query = upstream.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            let uri = format!("{path}{query}")
                .parse()
                .map_err(|_| pingora::Error::new(ErrorType::InternalError))?;
            upstream.set_uri(uri);
        }
        if let Some(claims) = &ctx.identity {
            let names = &self.identity_names;
            upstream.insert_header(names.user_id.clone(), claims.sub.to_string())?;
            upstream.insert_header(names.email.clone(), claims.email.as_str())?;
            upstream.insert_header(names.roles.clone(), claims.roles.join(","))?;
        }
        upstream.insert_header(self.identity_names.request_id.clone(), ctx.request_id.as_str())?;
        let forwarded = forwarded_for(session.req_header(), ctx.peer_ip, &self.trusted_proxies);
        upstream.remove_header(X_FORWARDED_FOR);
        if let Some(value) = forwarded {
            upstream.insert_header(X_FORWARDED_FOR, value)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        response.insert_header(self.identity_names.request_id.clone(), ctx.request_id.as_str())?;
        if let Some((limit, decision)) = &ctx.rate {
            for (name, value) in rate_limit_headers(limit, decision) {
                response.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // Headers already sent (a denial, or an upstream response that broke
        // midway): nothing more may be written to this response.
        if let Some(written) = session.response_written() {
            return FailToProxy { error_code: written.status.as_u16(), can_reuse_downstream: false };
        }
        let denial = match (e.esource(), e.etype()) {
            (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => Denial::new(
                ProblemKind::GATEWAY_TIMEOUT,
                "The upstream did not answer in time.",
                "upstream_timeout",
            ),
            (ErrorSource::Upstream, _) => {
                Denial::new(ProblemKind::BAD_GATEWAY, "The upstream could not be reached.", "upstream_error")
            }
            // The client went away: there is no one to answer.
            (
                ErrorSource::Downstream,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
            ) => {
                ctx.decision = "client_gone";
                return FailToProxy { error_code: 0, can_reuse_downstream: false };
            }
            (ErrorSource::Downstream, _) => {
                Denial::new(ProblemKind::MALFORMED_REQUEST, "The request could not be read.", "bad_request")
            }
            _ => Denial::new(ProblemKind::INTERNAL, "An internal error occurred.", "internal"),
        };
        // pingora will not reuse this connection; say so, so that clients do
        // not send their next request into a closing socket. (A header alone
        // is overwritten: pingora writes the session's keep-alive state.)
        session.set_keepalive(None);
        let denial = denial.with("connection", "close");
        ctx.decision = denial.decision;
        let code = denial.kind.status;
        if let Err(write_error) = denial.write(session, &ctx.request_id).await {
            tracing::debug!(error = %write_error, "could not write the error response");
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.map_or(Duration::ZERO, |t| t.elapsed());
        let micros = elapsed.as_micros() as u64;
        self.metrics.observe(ctx.route.as_deref().unwrap_or("-"), status, ctx.decision, elapsed);
        tracing::info!(
            target: "bouncer::access",
            request_id = %ctx.request_id,
            method = %session.req_header().method,
            route = ctx.route.as_deref().unwrap_or("-"),
            status,
            decision = ctx.decision,
            user_id = ctx.identity.as_ref().map(|c| c.sub.to_string()).unwrap_or_default(),
            client = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            micros,
            "request"
        );
    }
}

impl Gateway {
    /// The pipeline, top to bottom. `Err` is a denial to write.
    async fn decide(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Denial> {
        // 1. Normalize the path: what is matched is what is forwarded. Only
        // origin-form ("/…") and absolute-form targets have a path at all; an
        // upstream might read another form ("foo:/admin") as a path we never
        // checked, so it is refused.
        let req = session.req_header();
        let raw = req.raw_path();
        let form_ok = raw.starts_with(b"/") || raw.starts_with(b"http://") || raw.starts_with(b"https://");
        let invalid = || {
            Denial::new(ProblemKind::INVALID_PATH, "The request target is not acceptable.", "invalid_path")
        };
        if !form_ok {
            return Err(invalid());
        }
        // A lower-case method could slip past `methods: [DELETE]` to a wider
        // route, then be upper-cased by the upstream.
        if !req.method.as_str().bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Denial::new(
                ProblemKind::MALFORMED_REQUEST,
                "The method must be upper case.",
                "bad_method",
            ));
        }
        if req.uri.query().is_some_and(identity::query_overrides_method) {
            return Err(Denial::new(
                ProblemKind::MALFORMED_REQUEST,
                "Method overrides (_method) are not accepted.",
                "method_override",
            ));
        }
        // Always forwarded in origin form built from this checked path.
        ctx.forward_path = normalize_path(req.uri.path()).map_err(|_| invalid())?.into_owned();

        // 2. Match the route (default deny).
        let loaded = self.table.load_full();
        let (route, params) = match loaded.table.match_request(req.method.as_str(), &ctx.forward_path) {
            RouteMatch::Found { route, params } => (route, params),
            RouteMatch::MethodNotAllowed { allow } => {
                return Err(Denial::new(
                    ProblemKind::METHOD_NOT_ALLOWED,
                    "This method is not allowed here.",
                    "method_not_allowed",
                )
                .with("allow", allow.join(", ")));
            }
            RouteMatch::NotFound => {
                return Err(Denial::new(ProblemKind::NOT_FOUND, "No route matches this path.", "no_route"));
            }
        };
        ctx.route = Some(route.name().to_owned());

        // 3. Strip every client-sent identity header, on every route.
        strip_identity_headers(session.req_header_mut(), &self.identity_names);

        // 4. Authenticate, then 5. check revocations.
        ctx.identity = match route.spec.auth {
            AuthMode::None => None,
            mode => self.authenticate(session.req_header(), mode == AuthMode::Required).await?,
        };
        if let Some(claims) = &ctx.identity {
            if !self.revocations.is_ready() {
                return Err(Denial::new(
                    ProblemKind::UNAVAILABLE,
                    "Revocations are not loaded yet.",
                    "no_revocations",
                )
                .with("retry-after", "1"));
            }
            if self.revocations.is_revoked(claims.sub, claims.sid, claims.iat) {
                return Err(Denial::invalid_token("The access token was revoked.", "revoked"));
            }
        }

        // 6. Authorize: any-of roles, or the owner rule (core::routes).
        let subject = ctx.identity.as_ref().map(|c| c.sub.to_string());
        let caller = subject.as_deref().zip(ctx.identity.as_ref().map(|c| c.roles.as_slice()));
        match route.authorize(caller, &params) {
            Access::Allowed => {}
            Access::Unauthenticated => return Err(Denial::no_token()),
            Access::Forbidden => {
                return Err(Denial::new(
                    ProblemKind::FORBIDDEN,
                    "Your roles do not allow this request.",
                    "forbidden",
                ));
            }
        }

        // 7. Rate limit: one bucket per route and key value, shared by every
        // replica when Redis is configured.
        if let (Some(spec), Some(limit)) = (&route.spec.rate_limit, route.limit) {
            let bucket = bucket_key(route.name(), spec.key, ctx.identity.as_deref(), ctx.client_ip);
            match self.limiter.check(&bucket, &limit).await {
                Verdict::Checked(decision) => {
                    ctx.rate = Some((limit, decision));
                    ctx.bucket = Some(bucket);
                    if !decision.allowed {
                        let mut denial = Denial::new(
                            ProblemKind::TOO_MANY_REQUESTS,
                            "Slow down: the rate limit is spent.",
                            "rate_limited",
                        )
                        .with("retry-after", decision.retry_after_secs().to_string());
                        for (name, value) in rate_limit_headers(&limit, &decision) {
                            denial = denial.with(name, value);
                        }
                        return Err(denial);
                    }
                }
                Verdict::Unlimited => {}
                Verdict::Unavailable => {
                    return Err(Denial::new(
                        ProblemKind::UNAVAILABLE,
                        "The rate-limit store is unavailable.",
                        "limiter_unavailable",
                    )
                    .with("retry-after", "1"));
                }
            }
        }

        ctx.pool = loaded.pool(&route.spec.upstream).filter(|p| !p.is_empty());
        if ctx.pool.is_none() {
            return Err(Denial::new(
                ProblemKind::BAD_GATEWAY,
                "The upstream could not be reached.",
                "no_target",
            ));
        }
        Ok(())
    }

    /// `Ok(None)` for an anonymous caller on an optional route.
    async fn authenticate(
        &self,
        req: &RequestHeader,
        required: bool,
    ) -> Result<Option<Arc<AccessClaims>>, Denial> {
        let mut headers = req.headers.get_all(http::header::AUTHORIZATION).iter();
        let header = headers.next();
        let query_token =
            req.uri.query().is_some_and(|q| q.split('&').any(|p| p.starts_with("access_token=")));
        // Tokens in URLs leak into logs and caches: a query token is refused
        // on its own as well as beside a header.
        if headers.next().is_some() || query_token {
            return Err(Denial::new(
                ProblemKind::AMBIGUOUS_CREDENTIALS,
                "Send exactly one credential, as an Authorization: Bearer header.",
                "ambiguous_credentials",
            ));
        }
        let Some(value) = header else {
            return if required { Err(Denial::no_token()) } else { Ok(None) };
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| {
                Denial::invalid_token("The Authorization header is not a bearer token.", "invalid_token")
            })?;
        let claims = match self.verify(token).await {
            Ok(c) => c,
            Err(None) => {
                return Err(Denial::new(
                    ProblemKind::UNAVAILABLE,
                    "Token verification keys are not loaded yet.",
                    "no_keys",
                )
                .with("retry-after", "1"));
            }
            Err(Some(reason)) => {
                tracing::debug!(%reason, "token refused");
                return Err(Denial::invalid_token(
                    "The access token is invalid, expired or revoked.",
                    "invalid_token",
                ));
            }
        };
        let printable = identity::safe_header_value(&claims.email)
            && claims.roles.iter().all(|r| identity::safe_header_value(r));
        if !printable {
            return Err(Denial::invalid_token(
                "The token's claims cannot be passed on safely.",
                "unsafe_claims",
            ));
        }
        Ok(Some(claims))
    }

    /// `Err(None)`: no keys were ever loaded (503). `Err(Some(_))`: refused.
    async fn verify(&self, token: &str) -> Result<Arc<AccessClaims>, Option<TokenError>> {
        let now = OffsetDateTime::now_utc();
        let generation = self.jwks.generation();
        if let Some(claims) = self.verified.get(token, generation) {
            // Signature known good under these keys; times still move.
            claims.validate(&self.expectations, now).map_err(|e| Some(TokenError::Claims(e)))?;
            return Ok(claims);
        }
        let attempt = |keys: &Option<std::collections::HashMap<String, jsonwebtoken::DecodingKey>>| {
            keys.as_ref().map(|keys| jwt::verify(token, |kid| keys.get(kid), &self.expectations, now))
        };
        let keys = self.jwks.current();
        let verified = match attempt(&keys) {
            None => return Err(None),
            Some(Err(TokenError::UnknownKid)) if jwt::kid_of(token).is_some() => {
                // A key rotated in since the last fetch: refresh (rate limited) and retry once.
                self.jwks.refresh_for_unknown_kid().await;
                attempt(&self.jwks.current()).unwrap_or(Err(TokenError::UnknownKid))
            }
            Some(result) => result,
        };
        let claims = Arc::new(verified.map_err(Some)?);
        self.verified.insert(token, claims.clone(), self.jwks.generation());
        Ok(claims)
    }
}

/// The client's request id when sane, otherwise a new one.
fn request_id(req: &RequestHeader, name: &http::HeaderName) -> String {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().to_string())
}

fn strip_identity_headers(req: &mut RequestHeader, names: &IdentityNames) {
    // Decided while borrowing the headers, removed afterwards; both vectors
    // stay empty (no allocation) for the usual request with nothing to strip.
    let to_strip = {
        let connection: Vec<&str> = req
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        names.names_to_strip(req.headers.keys(), &connection)
    };
    for name in to_strip {
        req.remove_header(&name);
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy —
/// the right-most `X-Forwarded-For` entry that is not itself trusted (the
/// left part of the chain is whatever the client chose to write).
fn client_ip(req: &RequestHeader, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut last = peer;
    let entries = req.headers.get_all(X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok());
    let hops: Vec<&str> = entries.flat_map(|v| v.split(',')).collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => last = ip,
            Ok(ip) => return ip,
            // Garbage in the chain: stop at the last address we could vouch for.
            Err(_) => return last,
        }
    }
    last
}

/// The bucket of a request: route name, then the key value. IPv6 clients
/// are bucketed by /64, the block one subscriber typically gets.
fn bucket_key(route: &str, key: LimitKey, identity: Option<&AccessClaims>, ip: Option<IpAddr>) -> String {
    let ip_part = |ip: Option<IpAddr>| match ip {
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(v4) => format!("ip:{v4}"),
        None => "ip:unknown".to_owned(),
    };
    match (key, identity) {
        (LimitKey::User, Some(claims)) => format!("{route}:user:{}", claims.sub),
        (LimitKey::User | LimitKey::Ip, _) => format!("{route}:{}", ip_part(ip)),
        (LimitKey::Route, _) => format!("{route}:route"),
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds).
fn rate_limit_headers(limit: &Limit, decision: &Decision) -> [(&'static str, String); 3] {
    [
        ("ratelimit-limit", limit.burst.to_string()),
        ("ratelimit-remaining", decision.remaining.to_string()),
        ("ratelimit-reset", decision.reset_secs().to_string()),
    ]
}

/// The audit stream's record of a denial.
fn denial_event(req: &RequestHeader, ctx: &RequestCtx, status: u16) -> DenialEvent {
    DenialEvent {
        id: Uuid::now_v7(),
        at: OffsetDateTime::now_utc(),
        status,
        decision: ctx.decision.to_owned(),
        route: ctx.route.clone().unwrap_or_else(|| "-".into()),
        method: req.method.as_str().to_owned(),
        path: ctx.forward_path.clone(),
        user_id: ctx.identity.as_ref().map(|c| c.sub.to_string()),
        ip: ctx.client_ip.map(|ip| ip.to_string()),
        request_id: Some(ctx.request_id.clone()),
        bucket: ctx.bucket.clone(),
        count: 1,
    }
}

/// `X-Forwarded-For` for the upstream: the inbound chain only when the peer
/// is a trusted proxy, then the peer itself.
fn forwarded_for(req: &RequestHeader, peer: Option<IpAddr>, trusted: &[IpNet]) -> Option<String> {
    let peer = peer?;
    let inbound: Vec<&str> = if trusted.iter().any(|n| n.contains(&peer)) {
        req.headers.get_all(X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect()
    } else {
        Vec::new()
    };
    let mut chain = inbound.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer.to_string());
    Some(chain)
}
