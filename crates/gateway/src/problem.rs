//! Denials written by the gateway itself, as RFC 9457 problem documents.
//!
//! [`Denial`] names every reason the gateway refuses a request, and its
//! methods are the one place that maps a reason to what the client and the
//! operator see: the problem kind (and so the status), the detail, the
//! label that the access log, the metrics and the audit record carry, the
//! extra headers (`WWW-Authenticate`, `Allow`, `Retry-After`,
//! `RateLimit-*`) and whether the denial is audited. [`Denial::write`] is
//! the only code that writes one.

use std::borrow::Cow;

use bouncer_core::{
    bucket::{Decision, Limit},
    problem::{PROBLEM_JSON, Problem, ProblemKind},
};
use bytes::Bytes;
use pingora::{http::ResponseHeader, proxy::Session};

/// Why a request is refused. The request filter decides the first fifteen;
/// the last four are `fail_to_proxy`'s, when forwarding failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// 400: a target in neither origin nor absolute form, or a path that
    /// does not normalize (encoded `/`, `..` above the root, …).
    InvalidPath,
    /// 400: a method not in upper case, which could slip past
    /// `methods: [DELETE]` and be upper-cased by the upstream.
    BadMethod,
    /// 400: `_method=` in the query.
    MethodOverride,
    /// 405: the path matches routes, none of them for this method.
    MethodNotAllowed { allow: Vec<String> },
    /// 404: no route matches the path (default deny).
    NoRoute,
    /// 401: no credential where the route needs one.
    NoToken,
    /// 400: two `Authorization` headers, or a token in the query string.
    AmbiguousCredentials,
    /// 401: `Authorization` holds something other than a bearer token.
    NotBearer,
    /// 401: the token failed verification (signature, key, type, times,
    /// issuer, audience, size).
    InvalidToken,
    /// 401: the token's email or roles cannot travel as header values.
    UnsafeClaims,
    /// 401: the token's user or session is revoked.
    Revoked,
    /// 503: no verification keys were ever loaded.
    NoKeys,
    /// 503: no complete revocation snapshot was loaded yet.
    NoRevocations,
    /// 503: an API key came and the admin's keys are not loaded (yet).
    NoApiKeys,
    /// 403: neither the roles nor the owner rule allow the caller.
    Forbidden,
    /// 429: the bucket is spent; what it said, for the headers.
    RateLimited { limit: Limit, decision: Decision },
    /// 503: the rate-limit store is down and `on_store_error: deny`.
    LimiterUnavailable,
    /// 502: the route's upstream has no target.
    NoTarget,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
    /// 502: the upstream could not be reached, or broke off.
    UpstreamError,
    /// 400: the client's request could not be read.
    BadRequest,
    /// 500: anything else that stopped the proxying.
    Internal,
}

const BEARER_CHALLENGE: &str = "Bearer realm=\"bouncer\"";
const INVALID_TOKEN_CHALLENGE: &str = "Bearer realm=\"bouncer\", error=\"invalid_token\"";

impl Denial {
    /// The problem kind; its `status` is the response's.
    pub fn kind(&self) -> ProblemKind {
        match self {
            Self::InvalidPath => ProblemKind::INVALID_PATH,
            Self::BadMethod | Self::MethodOverride | Self::BadRequest => ProblemKind::MALFORMED_REQUEST,
            Self::MethodNotAllowed { .. } => ProblemKind::METHOD_NOT_ALLOWED,
            Self::NoRoute => ProblemKind::NOT_FOUND,
            Self::NoToken => ProblemKind::UNAUTHENTICATED,
            Self::AmbiguousCredentials => ProblemKind::AMBIGUOUS_CREDENTIALS,
            Self::NotBearer | Self::InvalidToken | Self::UnsafeClaims | Self::Revoked => {
                ProblemKind::INVALID_TOKEN
            }
            Self::NoKeys | Self::NoRevocations | Self::NoApiKeys | Self::LimiterUnavailable => {
                ProblemKind::UNAVAILABLE
            }
            Self::Forbidden => ProblemKind::FORBIDDEN,
            Self::RateLimited { .. } => ProblemKind::TOO_MANY_REQUESTS,
            Self::NoTarget | Self::UpstreamError => ProblemKind::BAD_GATEWAY,
            Self::UpstreamTimeout => ProblemKind::GATEWAY_TIMEOUT,
            Self::Internal => ProblemKind::INTERNAL,
        }
    }

    /// The response status.
    pub fn status(&self) -> u16 {
        self.kind().status
    }

    /// The problem document's `detail`: what the client may do about it.
    /// Never the internal cause (that goes to the debug log).
    pub fn detail(&self) -> &'static str {
        match self {
            Self::InvalidPath => "The request target is not acceptable.",
            Self::BadMethod => "The method must be upper case.",
            Self::MethodOverride => "Method overrides (_method) are not accepted.",
            Self::MethodNotAllowed { .. } => "This method is not allowed here.",
            Self::NoRoute => "No route matches this path.",
            Self::NoToken => "Send an access token as 'Authorization: Bearer <token>'.",
            Self::AmbiguousCredentials => "Send exactly one credential, as an Authorization: Bearer header.",
            Self::NotBearer => "The Authorization header is not a bearer token.",
            Self::InvalidToken => "The access token is invalid, expired or revoked.",
            Self::UnsafeClaims => "The token's claims cannot be passed on safely.",
            Self::Revoked => "The access token was revoked.",
            Self::NoKeys => "Token verification keys are not loaded yet.",
            Self::NoRevocations => "Revocations are not loaded yet.",
            Self::NoApiKeys => "API keys are not loaded yet.",
            Self::Forbidden => "Your roles do not allow this request.",
            Self::RateLimited { .. } => "Slow down: the rate limit is spent.",
            Self::LimiterUnavailable => "The rate-limit store is unavailable.",
            Self::NoTarget | Self::UpstreamError => "The upstream could not be reached.",
            Self::UpstreamTimeout => "The upstream did not answer in time.",
            Self::BadRequest => "The request could not be read.",
            Self::Internal => "An internal error occurred.",
        }
    }

    /// The short label of the access log's `decision` field, the metrics'
    /// `decision` label and the audit record's decision. Stable: dashboards
    /// and alerts select on it.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidPath => "invalid_path",
            Self::BadMethod => "bad_method",
            Self::MethodOverride => "method_override",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::NoRoute => "no_route",
            Self::NoToken => "no_token",
            Self::AmbiguousCredentials => "ambiguous_credentials",
            Self::NotBearer | Self::InvalidToken => "invalid_token",
            Self::UnsafeClaims => "unsafe_claims",
            Self::Revoked => "revoked",
            Self::NoKeys => "no_keys",
            Self::NoRevocations => "no_revocations",
            Self::NoApiKeys => "no_api_keys",
            Self::Forbidden => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::LimiterUnavailable => "limiter_unavailable",
            Self::NoTarget => "no_target",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamError => "upstream_error",
            Self::BadRequest => "bad_request",
            Self::Internal => "internal",
        }
    }

    /// Whether the denial goes to the audit stream: refusals of who the
    /// caller is or what they may do (401, 403, 429), not malformed
    /// requests or the gateway's own trouble.
    pub fn is_audited(&self) -> bool {
        matches!(self.status(), 401 | 403 | 429)
    }

    /// Headers the response carries besides the problem document's own.
    /// Empty (no allocation) for most denials.
    pub fn headers(&self) -> Vec<(&'static str, Cow<'static, str>)> {
        match self {
            // RFC 6750 §3.1: no `error` attribute when no credential was sent.
            Self::NoToken => vec![("www-authenticate", Cow::Borrowed(BEARER_CHALLENGE))],
            Self::NotBearer | Self::InvalidToken | Self::UnsafeClaims | Self::Revoked => {
                vec![("www-authenticate", Cow::Borrowed(INVALID_TOKEN_CHALLENGE))]
            }
            Self::MethodNotAllowed { allow } => vec![("allow", Cow::Owned(allow.join(", ")))],
            Self::NoKeys | Self::NoRevocations | Self::NoApiKeys | Self::LimiterUnavailable => {
                vec![("retry-after", Cow::Borrowed("1"))]
            }
            Self::RateLimited { limit, decision } => {
                let [limit, remaining, reset] = rate_limit_headers(limit, decision);
                vec![
                    ("retry-after", Cow::Owned(decision.retry_after_secs().to_string())),
                    (limit.0, Cow::Owned(limit.1)),
                    (remaining.0, Cow::Owned(remaining.1)),
                    (reset.0, Cow::Owned(reset.1)),
                ]
            }
            // Written by fail_to_proxy on a connection pingora will not
            // reuse; saying so keeps clients from sending their next request
            // into a closing socket.
            Self::UpstreamTimeout | Self::UpstreamError | Self::BadRequest | Self::Internal => {
                vec![("connection", Cow::Borrowed("close"))]
            }
            Self::InvalidPath
            | Self::BadMethod
            | Self::MethodOverride
            | Self::NoRoute
            | Self::AmbiguousCredentials
            | Self::Forbidden
            | Self::NoTarget => Vec::new(),
        }
    }

    /// Writes the response; the caller then returns `Ok(true)` from the
    /// request filter.
    pub async fn write(&self, session: &mut Session, request_id: &str) -> pingora::Result<()> {
        let kind = self.kind();
        let mut problem = Problem::new(kind, self.detail());
        problem.request_id = Some(request_id.to_owned());
        let body = Bytes::from(serde_json::to_vec(&problem).unwrap_or_default());
        let headers = self.headers();
        let mut header = ResponseHeader::build(kind.status, Some(4 + headers.len()))?;
        header.insert_header("content-type", PROBLEM_JSON)?;
        header.insert_header("content-length", body.len().to_string())?;
        header.insert_header("cache-control", "no-store")?;
        header.insert_header("x-request-id", request_id)?;
        for (name, value) in &headers {
            header.insert_header(*name, value.as_ref())?;
        }
        session.write_response_header(Box::new(header), false).await?;
        session.write_response_body(Some(body), true).await
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds),
/// on every response of a rate-limited route, admitted or not.
pub fn rate_limit_headers(limit: &Limit, decision: &Decision) -> [(&'static str, String); 3] {
    [
        ("ratelimit-limit", limit.burst.to_string()),
        ("ratelimit-remaining", decision.remaining.to_string()),
        ("ratelimit-reset", decision.reset_secs().to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every denial with what clients, logs, metrics and the audit see of it.
    /// The labels are metric label values: changing one breaks dashboards.
    #[test]
    fn every_denial_maps_to_one_status_label_and_header_set() {
        let limit = Limit { burst: 5, interval_us: 200_000 };
        let spent = Decision { allowed: false, remaining: 0, reset_us: 1_000_000, retry_after_us: 200_000 };
        let invalid_token = &[("www-authenticate", INVALID_TOKEN_CHALLENGE)][..];
        let retry_1 = &[("retry-after", "1")][..];
        let close = &[("connection", "close")][..];
        /// (denial, status, problem type slug, label, audited, extra headers)
        type Row = (Denial, u16, &'static str, &'static str, bool, &'static [(&'static str, &'static str)]);
        #[rustfmt::skip]
        let cases: &[Row] = &[
            // denial                      status  type slug                label                  audited  headers
            (Denial::InvalidPath,             400, "invalid-path",          "invalid_path",          false, &[]),
            (Denial::BadMethod,               400, "malformed-request",     "bad_method",            false, &[]),
            (Denial::MethodOverride,          400, "malformed-request",     "method_override",       false, &[]),
            (Denial::MethodNotAllowed { allow: vec!["GET".into(), "HEAD".into()] },
                                              405, "method-not-allowed",    "method_not_allowed",    false, &[("allow", "GET, HEAD")]),
            (Denial::NoRoute,                 404, "not-found",             "no_route",              false, &[]),
            (Denial::NoToken,                 401, "unauthenticated",       "no_token",              true,  &[("www-authenticate", "Bearer realm=\"bouncer\"")]),
            (Denial::AmbiguousCredentials,    400, "ambiguous-credentials", "ambiguous_credentials", false, &[]),
            (Denial::NotBearer,               401, "invalid-token",         "invalid_token",         true,  invalid_token),
            (Denial::InvalidToken,            401, "invalid-token",         "invalid_token",         true,  invalid_token),
            (Denial::UnsafeClaims,            401, "invalid-token",         "unsafe_claims",         true,  invalid_token),
            (Denial::Revoked,                 401, "invalid-token",         "revoked",               true,  invalid_token),
            (Denial::NoKeys,                  503, "unavailable",           "no_keys",               false, retry_1),
            (Denial::NoRevocations,           503, "unavailable",           "no_revocations",        false, retry_1),
            (Denial::NoApiKeys,               503, "unavailable",           "no_api_keys",           false, retry_1),
            (Denial::Forbidden,               403, "forbidden",             "forbidden",             true,  &[]),
            (Denial::RateLimited { limit, decision: spent },
                                              429, "too-many-requests",     "rate_limited",          true,
                &[("retry-after", "1"), ("ratelimit-limit", "5"), ("ratelimit-remaining", "0"), ("ratelimit-reset", "1")]),
            (Denial::LimiterUnavailable,      503, "unavailable",           "limiter_unavailable",   false, retry_1),
            (Denial::NoTarget,                502, "bad-gateway",           "no_target",             false, &[]),
            (Denial::UpstreamTimeout,         504, "gateway-timeout",       "upstream_timeout",      false, close),
            (Denial::UpstreamError,           502, "bad-gateway",           "upstream_error",        false, close),
            (Denial::BadRequest,              400, "malformed-request",     "bad_request",           false, close),
            (Denial::Internal,                500, "internal",              "internal",              false, close),
        ];
        let mut failures = Vec::new();
        for (denial, status, slug, label, audited, headers) in cases {
            let expected = (*status, *slug, *label, *audited, headers.to_vec());
            let got = denial.headers();
            let got = (
                denial.status(),
                denial.kind().slug,
                denial.label(),
                denial.is_audited(),
                got.iter().map(|(n, v)| (*n, v.as_ref())).collect::<Vec<_>>(),
            );
            if got != expected {
                failures.push(format!("{denial:?}:\n  expected {expected:?}\n  got      {got:?}"));
            }
            assert!(!denial.detail().is_empty() && denial.detail().ends_with('.'), "{denial:?}");
        }
        assert!(
            failures.is_empty(),
            "{} of {} denials map wrongly:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}
