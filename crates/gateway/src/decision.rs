//! The gateway's decision for one request, apart from pingora's `Session`:
//! [`Pipeline::decide`] takes the request head, the client's address and
//! the loaded state ([`Pipeline`]), and admits ([`Admit`]) or refuses
//! ([`Denial`]). It reads top to bottom — normalize, match, strip,
//! authenticate, revocation, authorize, rate limit, forward — each step a
//! call into a focused module (`core::path`, `core::routes`, [`identity`],
//! `core::jwt`, [`crate::revocations`], the limiter, [`crate::table`]).
//! The proxy's `request_filter` applies what it returns: strips, forwards,
//! or writes the denial.
//!
//! It is `async` only where state may have to be fetched: verification
//! refreshes the JWKS once on an unknown `kid`, and a shared limiter asks
//! Redis. Nothing else waits, and nothing touches a database.

use std::{net::IpAddr, sync::Arc};

use arc_swap::ArcSwap;
use bouncer_core::{
    bucket::{Decision, Limit},
    claims::{AccessClaims, Expectations},
    credential,
    jwt::{self, TokenError},
    path::normalize_path,
    routes::{Access, AuthMode, CredentialKind, LimitKey, Route, RouteMatch},
};
use bouncer_shared_state::limiter::{RateLimiter, Verdict};
use http::HeaderName;
use pingora::http::RequestHeader;
use time::OffsetDateTime;

use crate::{
    api_keys::{ApiKeySet, KeyRefusal},
    identity::{self, IdentityNames},
    jwks::Jwks,
    problem::Denial,
    revocations::RevocationSet,
    table::LoadedTable,
    token_cache::VerifiedTokens,
    upstream::Pool,
};

/// Everything the decision reads, shared by all requests: the route table
/// (swapped whole on reload), verification keys, revocations, the rate
/// limiter, the token expectations and the identity header names.
pub struct Pipeline {
    pub table: Arc<ArcSwap<LoadedTable>>,
    pub jwks: Arc<Jwks>,
    pub revocations: Arc<RevocationSet>,
    pub expectations: Expectations,
    /// Tokens whose signature was already checked under the current keys.
    pub verified: VerifiedTokens,
    pub identity_names: IdentityNames,
    pub limiter: Arc<RateLimiter>,
    /// The API keys the admin announced (in-process, or through Redis).
    pub api_keys: Arc<ApiKeySet>,
}

/// The credential a caller authenticated with, for `X-Credential`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialUsed {
    Jwt,
    /// The key's id.
    ApiKey(uuid::Uuid),
}

/// What the pipeline established about a request on the way to its
/// verdict, admitted or not: the access-log line, the metrics and the audit
/// record are made of it, and the forward step reads it.
#[derive(Debug, Default)]
pub struct Facts {
    /// The matched route's name; `None` when nothing matched (yet).
    pub route: Option<String>,
    /// The normalized path: what was matched, and what is forwarded.
    /// Empty when the request target did not normalize.
    pub forward_path: String,
    /// The verified caller; `None` when anonymous or not authenticated.
    pub identity: Option<Arc<AccessClaims>>,
    /// How [`Self::identity`] was established.
    pub credential: Option<CredentialUsed>,
    /// The route's limit and what the bucket said, for `RateLimit-*`.
    pub rate: Option<(Limit, Decision)>,
    /// The bucket the request was counted in (route name + key value).
    pub bucket: Option<String>,
}

/// An admitted request: where it goes and what to remove first. The path,
/// identity and rate state to forward with are in [`Facts`].
#[derive(Debug)]
pub struct Admit {
    /// The route's upstream targets (never empty).
    pub pool: Arc<Pool>,
    /// Client-sent identity and re-routing headers to remove before the
    /// request goes anywhere (step 3); empty, without allocating, for the
    /// usual request.
    pub strip: Vec<HeaderName>,
}

/// [`Pipeline::decide`]'s answer.
#[derive(Debug)]
pub struct Decided {
    pub facts: Facts,
    pub verdict: Result<Admit, Denial>,
}

impl Pipeline {
    /// Decides one request from its head and the client's address (the
    /// peer, or what trusted proxies vouch for: rate keys use it).
    pub async fn decide(&self, req: &RequestHeader, client_ip: Option<IpAddr>) -> Decided {
        let mut facts = Facts::default();
        let verdict = self.steps(req, client_ip, &mut facts).await;
        Decided { facts, verdict }
    }

    /// The pipeline, top to bottom. `Err` is the denial to write.
    async fn steps(
        &self,
        req: &RequestHeader,
        client_ip: Option<IpAddr>,
        facts: &mut Facts,
    ) -> Result<Admit, Denial> {
        // 1. Normalize the path: what is matched is what is forwarded.
        facts.forward_path = checked_path(req)?;

        // 2. Match the route (default deny).
        let loaded = self.table.load_full();
        let (route, params) = match loaded.table.match_request(req.method.as_str(), &facts.forward_path) {
            RouteMatch::Found { route, params } => (route, params),
            RouteMatch::MethodNotAllowed { allow } => return Err(Denial::MethodNotAllowed { allow }),
            RouteMatch::NotFound => return Err(Denial::NoRoute),
        };
        facts.route = Some(route.name().to_owned());

        // 3. Strip every client-sent identity header, on every route. Nothing
        // below reads them; the request filter removes them on admission.
        let mut strip = identity_headers_to_strip(req, &self.identity_names);

        // 4. Authenticate, then 5. check revocations.
        let authenticated = match route.spec.auth {
            AuthMode::None => None,
            mode => self.authenticate(req, route, mode == AuthMode::Required).await?,
        };
        if let Some((_, CredentialUsed::ApiKey(_))) = &authenticated {
            // The key is Bouncer's credential, not the upstream's.
            strip.extend([http::header::AUTHORIZATION, HeaderName::from_static(identity::X_API_KEY)]);
        }
        facts.credential = authenticated.as_ref().map(|(_, used)| *used);
        facts.identity = authenticated.map(|(claims, _)| claims);
        // A key's owner's bans and role changes reach the key set itself.
        if let (Some(claims), Some(CredentialUsed::Jwt)) = (&facts.identity, facts.credential) {
            if !self.revocations.is_ready() {
                return Err(Denial::NoRevocations);
            }
            if self.revocations.is_revoked(claims.sub, claims.sid, claims.iat) {
                return Err(Denial::Revoked);
            }
        }

        // 6. Authorize: any-of roles, or the owner rule (core::routes).
        let subject = facts.identity.as_ref().map(|c| c.sub.to_string());
        let caller = subject.as_deref().zip(facts.identity.as_ref().map(|c| c.roles.as_slice()));
        match route.authorize(caller, &params) {
            Access::Allowed => {}
            Access::Unauthenticated => return Err(Denial::NoToken),
            Access::Forbidden => return Err(Denial::Forbidden),
        }

        // 7. Rate limit: one bucket per route and key value, shared by every
        // replica when Redis is configured.
        if let (Some(spec), Some(limit)) = (&route.spec.rate_limit, route.limit) {
            let bucket = bucket_key(route.name(), spec.key, facts.identity.as_deref(), client_ip);
            match self.limiter.check(&bucket, &limit).await {
                Verdict::Checked(decision) => {
                    facts.rate = Some((limit, decision));
                    facts.bucket = Some(bucket);
                    if !decision.allowed {
                        return Err(Denial::RateLimited { limit, decision });
                    }
                }
                Verdict::Unlimited => {}
                Verdict::Unavailable => return Err(Denial::LimiterUnavailable),
            }
        }

        // 8. Forward, to a target of the route's upstream.
        let pool = loaded.pool(&route.spec.upstream).filter(|p| !p.is_empty()).ok_or(Denial::NoTarget)?;
        Ok(Admit { pool, strip })
    }

    /// `Ok(None)` for an anonymous caller on an optional route.
    async fn authenticate(
        &self,
        req: &RequestHeader,
        route: &Route,
        required: bool,
    ) -> Result<Option<(Arc<AccessClaims>, CredentialUsed)>, Denial> {
        let mut headers = req.headers.get_all(http::header::AUTHORIZATION).iter();
        let header = headers.next();
        let query_token =
            req.uri.query().is_some_and(|q| q.split('&').any(|p| p.starts_with("access_token=")));
        // Tokens in URLs leak into logs and caches: a query token is refused
        // on its own as well as beside a header.
        if headers.next().is_some() || query_token {
            return Err(Denial::AmbiguousCredentials);
        }
        let takes_keys = route.accepts(CredentialKind::ApiKey);
        if takes_keys {
            let mut keys = req.headers.get_all(identity::X_API_KEY).iter();
            if let Some(key) = keys.next() {
                if keys.next().is_some() || header.is_some() {
                    return Err(Denial::AmbiguousCredentials);
                }
                return self.key_identity(key.to_str().unwrap_or_default()).map(Some);
            }
        }
        let Some(value) = header else {
            return if required { Err(Denial::NoToken) } else { Ok(None) };
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or(Denial::NotBearer)?;
        if credential::looks_like_api_key(token) {
            return if takes_keys { self.key_identity(token).map(Some) } else { Err(Denial::InvalidToken) };
        }
        if !route.accepts(CredentialKind::Jwt) {
            return Err(Denial::InvalidToken);
        }
        let claims = match self.verify(token).await {
            Ok(c) => c,
            Err(None) => return Err(Denial::NoKeys),
            Err(Some(reason)) => {
                tracing::debug!(%reason, "token refused");
                return Err(Denial::InvalidToken);
            }
        };
        let printable = claims.email.as_deref().is_none_or(identity::safe_header_value)
            && claims.roles.iter().all(|r| identity::safe_header_value(r));
        if !printable {
            return Err(Denial::UnsafeClaims);
        }
        Ok(Some((claims, CredentialUsed::Jwt)))
    }

    /// The owner of API key `presented`, acting with the key's roles.
    fn key_identity(&self, presented: &str) -> Result<(Arc<AccessClaims>, CredentialUsed), Denial> {
        match self.api_keys.verify(presented.trim(), OffsetDateTime::now_utc()) {
            Ok(found) => Ok((found.claims.clone(), CredentialUsed::ApiKey(found.key.id))),
            Err(KeyRefusal::NotLoaded) => Err(Denial::NoApiKeys),
            Err(KeyRefusal::Invalid) => Err(Denial::InvalidToken),
        }
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

/// Step 1: the request target, checked and normalized. Only origin-form
/// ("/…") and absolute-form targets have a path at all; an upstream might
/// read another form ("foo:/admin") as a path we never checked, so it is
/// refused. Always forwarded in origin form built from this checked path.
fn checked_path(req: &RequestHeader) -> Result<String, Denial> {
    let raw = req.raw_path();
    let form_ok = raw.starts_with(b"/") || raw.starts_with(b"http://") || raw.starts_with(b"https://");
    if !form_ok {
        return Err(Denial::InvalidPath);
    }
    // A lower-case method could slip past `methods: [DELETE]` to a wider
    // route, then be upper-cased by the upstream.
    if !req.method.as_str().bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Denial::BadMethod);
    }
    if req.uri.query().is_some_and(identity::query_overrides_method) {
        return Err(Denial::MethodOverride);
    }
    Ok(normalize_path(req.uri.path()).map_err(|_| Denial::InvalidPath)?.into_owned())
}

/// Step 3: the client-sent headers named like identity (or re-routing)
/// headers, also those a `Connection` header names.
fn identity_headers_to_strip(req: &RequestHeader, names: &IdentityNames) -> Vec<HeaderName> {
    // Decided while borrowing the headers, removed afterwards; both vectors
    // stay empty (no allocation) for the usual request with nothing to strip.
    let connection: Vec<&str> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    names.names_to_strip(req.headers.keys(), &connection)
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

#[cfg(test)]
mod tests;
