//! Extractors: JSON bodies in our error shape, the client's identity, and
//! the authenticated user behind a bearer token.

use std::net::{IpAddr, SocketAddr};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request},
    http::{HeaderMap, header, request::Parts},
};
use bouncer_core::{
    audit::AuditContext,
    claims::{AccessClaims, MAX_TOKEN_BYTES},
    problem::FieldError,
};
use bouncer_store::User;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::{AppState, error::ApiError};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body: `415` unless `Content-Type` is JSON, `413` over 64 KiB,
/// `400` when it does not parse, `422` naming the field when a value has the
/// wrong type.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(ApiError::PayloadTooLarge);
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::PayloadTooLarge)?;
        let _ = state;
        parse_json(&bytes).map(JsonBody)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn parse_json<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                // serde's message names the expected type only; never echo input.
                let field = if path == "." { "body".to_owned() } else { path };
                ApiError::field(&field, data_error_message(&inner))
            }
            _ => ApiError::MalformedJson(format!("line {} column {}", inner.line(), inner.column())),
        }
    })
}

fn data_error_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // "missing field `email` at line 1 column 2" -> "missing field `email`"
    text.split(" at line ").next().unwrap_or("invalid value").to_owned()
}

/// Refuses text that a backend cannot store: PostgreSQL's `text` has no
/// U+0000 (it fails the statement), so a NUL in anything that reaches the
/// database is a `422` naming the field, on both backends alike. Passwords
/// are only hashed and may hold any character.
pub fn storable_text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.contains('\0') {
        return Err(FieldError { field: field.into(), message: "must not contain U+0000".into() });
    }
    Ok(())
}

/// Who is calling: the client IP (believing `X-Forwarded-For` only from
/// trusted proxies) and a truncated user agent, for throttling and audit.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl ClientInfo {
    /// The audit context of this request, done by `actor` (a user id, or
    /// `None` for an anonymous caller).
    pub fn audit(&self, actor: Option<String>) -> AuditContext {
        AuditContext {
            actor,
            ip: Some(self.ip.to_string()),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| ApiError::Internal("no peer address on request".into()))?;
        let ip = client_ip(peer, &parts.headers, &state.config.trusted_proxies);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect());
        Ok(ClientInfo { ip, user_agent, request_id: crate::request_id::current() })
    }
}

/// The client address (core's one rule: `X-Forwarded-For` believed only
/// from trusted proxies, walked from the right).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let lines = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    bouncer_core::client_ip::client_ip(peer, lines, trusted)
}

/// A user authenticated by a valid, unrevoked access token of a live
/// session. A service client's token is refused here: the admin API acts
/// for people (and the CLI); clients call the APIs behind the gateway.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub user: User,
    pub session_id: uuid::Uuid,
    pub claims: AccessClaims,
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        let now = OffsetDateTime::now_utc();
        let claims = state
            .keys
            .verify(token, &state.expectations, now)
            .map_err(|e| ApiError::InvalidToken(e.reason()))?;
        let session_id =
            claims.sid.ok_or(ApiError::InvalidToken("a service client's token, not a user's"))?;
        let (session, user) =
            state.store.session(session_id).await?.ok_or(ApiError::InvalidToken("unknown session"))?;
        if session.user_id != claims.sub {
            return Err(ApiError::InvalidToken("session belongs to another user"));
        }
        if !session.is_live(now) {
            return Err(ApiError::InvalidToken("session revoked or expired"));
        }
        if user.is_banned() {
            return Err(ApiError::InvalidToken("user banned"));
        }
        if user.token_revoked(claims.iat) {
            return Err(ApiError::InvalidToken("issued before the user's revoked-before time"));
        }
        Ok(Authenticated { user, session_id, claims })
    }
}

/// A caller holding the `admin` role — checked against the user's current
/// roles in the store, not the token's claims, so a demotion takes effect
/// on the next request. No token: 401; a token without the role: 403.
#[derive(Clone, Debug)]
pub struct AdminCaller(pub Authenticated);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let auth = Authenticated::from_request_parts(parts, state).await?;
        if !auth.user.roles.iter().any(|r| r == "admin") {
            return Err(ApiError::Forbidden);
        }
        Ok(AdminCaller(auth))
    }
}

/// Query-string parameters in our error shape (422 naming `query`).
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::field("query", e.body_text()))
    }
}

/// Exactly one `Authorization: Bearer <token>` header, within size limits.
fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Err(ApiError::MissingToken) };
    if values.next().is_some() {
        return Err(ApiError::InvalidToken("more than one Authorization header"));
    }
    let value = value.to_str().map_err(|_| ApiError::InvalidToken("non-ASCII Authorization header"))?;
    let (scheme, token) =
        value.split_once(' ').ok_or(ApiError::InvalidToken("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::MissingToken);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ApiError::InvalidToken("token larger than 8 KiB"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// The rule itself is tested in core; this is the header plumbing.
    #[test]
    fn forwarded_for_lines_reach_the_core_rule() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let lines = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "203.0.113.7, 10.0.0.9")]);
        assert_eq!(client_ip(proxy, &lines, &trusted), "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(proxy, &headers(&[]), &trusted), proxy);
    }

    #[test]
    fn bearer_header_rules() {
        assert_eq!(bearer_token(&headers(&[("authorization", "Bearer abc")])).unwrap(), "abc");
        assert_eq!(bearer_token(&headers(&[("authorization", "bearer abc")])).unwrap(), "abc");
        assert!(matches!(bearer_token(&headers(&[])), Err(ApiError::MissingToken)));
        assert!(matches!(
            bearer_token(&headers(&[("authorization", "Basic eA==")])),
            Err(ApiError::MissingToken)
        ));
        let two = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert!(matches!(bearer_token(&two), Err(ApiError::InvalidToken(_))));
        let big = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(matches!(bearer_token(&headers(&[("authorization", &big)])), Err(ApiError::InvalidToken(_))));
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(&headers(&[("content-type", ok)])), "{ok}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"] {
            assert!(!is_json(&headers(&[("content-type", bad)])), "{bad}");
        }
        assert!(!is_json(&headers(&[])));
    }

    #[test]
    fn json_errors_distinguish_syntax_from_data() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Body {
            email: String,
        }
        assert!(matches!(parse_json::<Body>(&Bytes::from_static(b"{nope")), Err(ApiError::MalformedJson(_))));
        match parse_json::<Body>(&Bytes::from_static(b"{\"email\": 5}")) {
            Err(ApiError::Validation(errors)) => assert_eq!(errors[0].field, "email"),
            other => panic!("expected a field error, got {other:?}"),
        }
        match parse_json::<Body>(&Bytes::from_static(b"{}")) {
            Err(ApiError::Validation(errors)) => assert!(errors[0].message.contains("email"), "{errors:?}"),
            other => panic!("expected a field error, got {other:?}"),
        }
    }
}
