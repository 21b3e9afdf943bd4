//! The gateway's request pipeline: one [`ProxyHttp`] implementation whose
//! `request_filter` takes the decision — [`Pipeline::decide`], which reads
//! top to bottom: normalize, match, strip, authenticate, revocation,
//! authorize, rate limit, forward — and applies it, and whose later phases
//! forward with identity headers.
//!
//! pingora phases used, in the order they run:
//! - `request_filter`: the decision; a denial is written here and
//!   `Ok(true)` ends the request. `Ok(false)` forwards, once the client's
//!   identity headers are stripped.
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

use async_trait::async_trait;
use bouncer_shared_state::denials::{DenialEvent, DenialRecorder};
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
    access_log::{AccessLog, Entry},
    decision::{Admit, CredentialUsed, Decided, Facts, Pipeline},
    drain::{Drain, InFlight},
    identity::{X_CREDENTIAL, X_FORWARDED_FOR},
    metrics::GatewayMetrics,
    problem::{Denial, rate_limit_headers},
    upstream::Pool,
};

/// Milliseconds on a monotonic clock, for upstream health.
fn monotonic_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The proxy: the decision's state and what the phases around it use;
/// shared by all requests.
pub struct Gateway {
    /// Everything the decision reads (routes, keys, revocations, limiter).
    pub pipeline: Pipeline,
    pub trusted_proxies: Vec<IpNet>,
    pub metrics: Arc<GatewayMetrics>,
    pub denials: Arc<DenialRecorder>,
    pub access_log: Arc<AccessLog>,
    /// In-flight requests, for a graceful stop.
    pub drain: Arc<Drain>,
}

/// Per-request state carried between phases.
#[derive(Default)]
pub struct RequestCtx {
    request_id: String,
    started: Option<Instant>,
    /// What the decision established: route, forward path, identity, rate.
    facts: Facts,
    target: Option<SocketAddr>,
    /// The route's upstream pool, kept for retries against other targets.
    pool: Option<Arc<Pool>>,
    /// Targets already tried for this request (a retry goes elsewhere).
    tried: Vec<SocketAddr>,
    /// The TCP peer.
    peer_ip: Option<IpAddr>,
    /// The client as far as trusted proxies vouch for it (rate keys, audit).
    client_ip: Option<IpAddr>,
    /// The access log's and the metrics' label: "forwarded", a denial's
    /// label, or "client_gone".
    decision: &'static str,
    /// Counts this request as in flight until the context is dropped.
    _in_flight: Option<InFlight>,
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
        ctx.request_id = request_id(session.req_header(), &self.pipeline.identity_names.request_id);
        ctx.peer_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        ctx.client_ip = ctx.peer_ip.map(|peer| client_ip(session.req_header(), peer, &self.trusted_proxies));
        // 1.–8., top to bottom: normalize, match, strip, authenticate,
        // revocation, authorize, rate limit, forward.
        let Decided { facts, verdict } = self.pipeline.decide(session.req_header(), ctx.client_ip).await;
        ctx.facts = facts;
        match verdict {
            Ok(Admit { pool, strip }) => {
                // 3., applied: the client's identity headers never travel on.
                let req = session.req_header_mut();
                for name in &strip {
                    req.remove_header(name);
                }
                ctx.pool = Some(pool);
                Ok(false)
            }
            Err(denial) => {
                ctx.decision = denial.label();
                if denial.is_audited() {
                    self.denials.record(denial_event(session.req_header(), ctx, denial.status()));
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
            let path = &ctx.facts.forward_path;
            let query = upstream.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            let uri = format!("{path}{query}")
                .parse()
                .map_err(|_| pingora::Error::new(ErrorType::InternalError))?;
            upstream.set_uri(uri);
        }
        let names = &self.pipeline.identity_names;
        if let Some(claims) = &ctx.facts.identity {
            for (name, value) in names.injected(claims) {
                upstream.insert_header(name, value.as_ref())?;
            }
        }
        match ctx.facts.credential {
            Some(CredentialUsed::Jwt) => upstream.insert_header(X_CREDENTIAL, "jwt")?,
            Some(CredentialUsed::ApiKey(id)) => {
                upstream.insert_header(X_CREDENTIAL, format!("api_key:{id}"))?
            }
            None => {}
        }
        upstream.insert_header(names.request_id.clone(), ctx.request_id.as_str())?;
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
        response.insert_header(self.pipeline.identity_names.request_id.clone(), ctx.request_id.as_str())?;
        if let Some((limit, decision)) = &ctx.facts.rate {
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
            (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => {
                Denial::UpstreamTimeout
            }
            (ErrorSource::Upstream, _) => Denial::UpstreamError,
            // The client went away: there is no one to answer.
            (
                ErrorSource::Downstream,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
            ) => {
                ctx.decision = "client_gone";
                return FailToProxy { error_code: 0, can_reuse_downstream: false };
            }
            (ErrorSource::Downstream, _) => Denial::BadRequest,
            _ => Denial::Internal,
        };
        // pingora will not reuse this connection; say so (the denial carries
        // `Connection: close`), so that clients do not send their next
        // request into a closing socket. (The header alone is overwritten:
        // pingora writes the session's keep-alive state.)
        session.set_keepalive(None);
        ctx.decision = denial.label();
        let code = denial.status();
        if let Err(write_error) = denial.write(session, &ctx.request_id).await {
            tracing::debug!(error = %write_error, "could not write the error response");
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.map_or(Duration::ZERO, |t| t.elapsed());
        let micros = elapsed.as_micros() as u64;
        let facts = &mut ctx.facts;
        self.metrics.observe(facts.route.as_deref().unwrap_or("-"), status, ctx.decision, elapsed);
        // The request is over: its strings move into the entry, and the
        // writer's thread does the formatting.
        self.access_log.record(Entry {
            at: std::time::SystemTime::now(),
            request_id: std::mem::take(&mut ctx.request_id),
            method: session.req_header().method.clone(),
            route: facts.route.take(),
            status,
            decision: ctx.decision,
            user_id: facts.identity.as_ref().map(|c| c.sub),
            client: ctx.client_ip,
            micros,
        });
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

/// The client's address by the one rule in `bouncer_core::client_ip`, which
/// the admin's login throttle uses too.
fn client_ip(req: &RequestHeader, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let lines = req.headers.get_all(X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok());
    bouncer_core::client_ip::client_ip(peer, lines, trusted)
}

/// The audit stream's record of a denial.
fn denial_event(req: &RequestHeader, ctx: &RequestCtx, status: u16) -> DenialEvent {
    let facts = &ctx.facts;
    DenialEvent {
        id: Uuid::now_v7(),
        at: OffsetDateTime::now_utc(),
        status,
        decision: ctx.decision.to_owned(),
        route: facts.route.clone().unwrap_or_else(|| "-".into()),
        method: req.method.as_str().to_owned(),
        path: facts.forward_path.clone(),
        user_id: facts.identity.as_ref().map(|c| c.sub.to_string()),
        ip: ctx.client_ip.map(|ip| ip.to_string()),
        request_id: Some(ctx.request_id.clone()),
        bucket: facts.bucket.clone(),
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
