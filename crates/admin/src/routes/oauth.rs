//! `POST /oauth/token`: the client-credentials grant (RFC 6749 §4.4).
//!
//! A service client authenticates with its id and secret — HTTP Basic, or
//! the `client_id` / `client_secret` form fields (§2.3.1), never both — and
//! gets Bouncer's usual EdDSA `at+jwt`, with `sub` and `client_id` set to
//! the client's id and no session, so every gateway accepts it as it is.
//! No refresh token: a client authenticates again instead (§4.4.3).
//!
//! Errors are RFC 6749 §5.2 JSON (`{"error", "error_description"}`), which
//! OAuth client libraries read, not problem+json. Failed secrets are
//! throttled like passwords: per client id and per IP, through the login
//! throttle's store rows, and audited; a right secret is never counted.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use bouncer_core::{
    claims::{AccessClaims, NewClientToken},
    credential::{hash_client_secret, same_hash, within},
    throttle::AttemptEnd,
};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState,
    error::ApiError,
    extract::{ClientInfo, MAX_BODY_BYTES},
};

/// Longest `client_id` looked at; ours are 36 characters.
const MAX_CLIENT_ID: usize = 64;

/// The form of `POST /oauth/token` (`application/x-www-form-urlencoded`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct TokenForm {
    /// Only `client_credentials`.
    #[schema(pattern = "^client_credentials$", example = "client_credentials")]
    grant_type: String,
    /// Space-separated roles to narrow the token to; default: all the
    /// client's roles.
    scope: Option<String>,
    /// With `client_secret`, instead of HTTP Basic.
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// An access token for a client (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientTokenResponse {
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until `access_token` expires.
    expires_in: i64,
    /// The roles the token carries, space-separated.
    scope: String,
}

/// An RFC 6749 §5.2 error.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `unsupported_grant_type`,
    /// `invalid_scope`, or `slow_down` when throttled.
    error: &'static str,
    error_description: &'static str,
}

/// Why a token request was refused.
#[derive(Debug)]
enum OAuthError {
    InvalidRequest(&'static str),
    /// Unknown client, wrong or missing secret (401, `WWW-Authenticate: Basic`).
    InvalidClient,
    UnsupportedGrantType,
    InvalidScope,
    /// The throttle refused the attempt.
    SlowDown {
        retry_after_secs: u64,
    },
    /// Not an OAuth error: the store or the keys failed.
    Api(ApiError),
}

impl From<ApiError> for OAuthError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Throttled { retry_after_secs } => OAuthError::SlowDown { retry_after_secs },
            other => OAuthError::Api(other),
        }
    }
}

impl From<bouncer_store::StoreError> for OAuthError {
    fn from(e: bouncer_store::StoreError) -> Self {
        OAuthError::Api(e.into())
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (status, error, description) = match self {
            OAuthError::InvalidRequest(why) => (StatusCode::BAD_REQUEST, "invalid_request", why),
            OAuthError::InvalidClient => {
                (StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed.")
            }
            OAuthError::UnsupportedGrantType => {
                (StatusCode::BAD_REQUEST, "unsupported_grant_type", "Only client_credentials is supported.")
            }
            OAuthError::InvalidScope => {
                (StatusCode::BAD_REQUEST, "invalid_scope", "The scope names a role the client does not hold.")
            }
            OAuthError::SlowDown { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "slow_down", "Too many failed attempts; retry later.")
            }
            OAuthError::Api(e) => return e.into_response(),
        };
        let mut response =
            (status, Json(OAuthErrorBody { error, error_description: description })).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        match self {
            OAuthError::InvalidClient => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"bouncer\""));
            }
            OAuthError::SlowDown { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

/// Issues an access token to a service client (client-credentials grant).
#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "oauth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    security((), ("client_basic" = [])),
    responses(
        (status = 200, description = "The token. No refresh token: authenticate again when it expires.", body = ClientTokenResponse, headers(
            ("Cache-Control" = String, description = "`no-store`"),
            ("Pragma" = String, description = "`no-cache`"),
        )),
        (status = 400, description = "`invalid_request` (not a form, a parameter twice, two ways of client authentication), `unsupported_grant_type`, `invalid_scope`.", body = OAuthErrorBody),
        (status = 401, description = "`invalid_client`: no, unknown or wrong client credentials.", body = OAuthErrorBody, headers(
            ("WWW-Authenticate" = String, description = "`Basic realm=\"bouncer\"`"),
        )),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 429, description = "`slow_down`: too many failed attempts for this client id or IP within `admin.login_throttle.window`.", body = OAuthErrorBody, headers(
            ("Retry-After" = u64, description = "Seconds until the next attempt is let through."),
        )),
        (status = 503, response = crate::openapi::Unavailable),
    ),
)]
pub async fn token(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match issue(&state, &client, &headers, &body).await {
        Ok(response) => response,
        Err(e) => {
            let outcome = match &e {
                OAuthError::InvalidClient => "invalid_client",
                OAuthError::InvalidScope => "invalid_scope",
                OAuthError::SlowDown { .. } => "throttled",
                OAuthError::InvalidRequest(_) | OAuthError::UnsupportedGrantType => "invalid_request",
                OAuthError::Api(_) => "error",
            };
            state.metrics.client_token(outcome);
            e.into_response()
        }
    }
}

async fn issue(
    state: &AppState,
    client: &ClientInfo,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, OAuthError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(OAuthError::Api(ApiError::PayloadTooLarge));
    }
    if !is_form(headers) {
        return Err(OAuthError::InvalidRequest("Send the parameters as application/x-www-form-urlencoded."));
    }
    let form = Form::parse(body)?;
    match form.grant_type.as_deref() {
        None => return Err(OAuthError::InvalidRequest("grant_type is missing.")),
        Some("client_credentials") => {}
        Some(_) => return Err(OAuthError::UnsupportedGrantType),
    }
    let (id_text, secret) = client_credentials(headers, &form)?;
    if id_text.is_empty() || id_text.len() > MAX_CLIENT_ID || id_text.contains('\0') {
        return Err(OAuthError::InvalidClient);
    }

    let now = OffsetDateTime::now_utc();
    let account_key = format!("client:{id_text}");
    let attempt =
        super::auth::begin_attempt(state, &account_key, client, now, |m| m.client_token("throttled")).await?;
    let id = super::admin::hyphenated_uuid(&id_text);
    let credential = match id {
        Some(id) => state.store.client_credential(id, now).await?,
        None => None,
    };
    let presented = hash_client_secret(&secret);
    // Every valid secret is compared, each in constant time: how long the
    // check takes says nothing about which secret came close.
    let matched = match (&credential, &presented) {
        (Some(c), Some(p)) => c.secrets.iter().fold(false, |any, s| same_hash(s, p) | any),
        _ => false,
    };
    let ctx = client.audit(None);
    // The audit record names the client only when the id is one of ours.
    let known = credential.as_ref().map(|c| c.client.id);
    let Some(credential) = credential.filter(|_| matched) else {
        let end = AttemptEnd::WrongClientSecret { client: known };
        state.store.finish_login_attempt(attempt, end, now, &ctx).await?;
        state.metrics.audited();
        tracing::info!(ip = %client.ip, "client authentication failed");
        return Err(OAuthError::InvalidClient);
    };
    let held = &credential.client.roles;
    let scope = match form.scope.as_deref().map(str::trim) {
        None | Some("") => held.clone(),
        Some(asked) => {
            let mut asked: Vec<String> =
                asked.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect();
            asked.sort();
            asked.dedup();
            if within(&asked, held).is_err() {
                let end = AttemptEnd::ScopeRefused { client: credential.client.id };
                state.store.finish_login_attempt(attempt, end, now, &ctx).await?;
                state.metrics.audited();
                return Err(OAuthError::InvalidScope);
            }
            asked
        }
    };
    let claims = AccessClaims::issue_client(
        NewClientToken {
            issuer: &state.config.issuer,
            audience: &state.config.audience,
            client_id: credential.client.id,
            roles: &scope,
            ttl: state.config.access_token_ttl.get(),
            jti: Uuid::new_v4(),
        },
        now,
    );
    let access_token = state.keys.sign(&claims, now).map_err(|e| ApiError::Internal(e.to_string()))?;
    let end = AttemptEnd::ClientAuthenticated { client: credential.client.id, scope: &scope };
    state.store.finish_login_attempt(attempt, end, now, &ctx).await?;
    state.metrics.audited();
    state.metrics.client_token("issued");
    tracing::info!(client_id = %credential.client.id, ip = %client.ip, "client token issued");
    let body = ClientTokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: claims.expires_in(now),
        scope: scope.join(" "),
    };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The parameters this endpoint reads; any other is ignored (§3.2).
#[derive(Debug, Default)]
struct Form {
    grant_type: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

impl Form {
    fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let mut form = Form::default();
        for (name, value) in form_urlencoded::parse(body) {
            let slot = match name.as_ref() {
                "grant_type" => &mut form.grant_type,
                "scope" => &mut form.scope,
                "client_id" => &mut form.client_id,
                "client_secret" => &mut form.client_secret,
                _ => continue,
            };
            // §3.2: parameters must not be included more than once.
            if slot.replace(value.into_owned()).is_some() {
                return Err(OAuthError::InvalidRequest("A parameter is given more than once."));
            }
        }
        Ok(form)
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    value.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// The client's id and secret, from exactly one of HTTP Basic and the form.
fn client_credentials(headers: &HeaderMap, form: &Form) -> Result<(String, String), OAuthError> {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let basic = match (authorization.next(), authorization.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err(OAuthError::InvalidRequest("More than one Authorization header.")),
        (Some(value), None) => Some(basic_credentials(value).ok_or(OAuthError::InvalidClient)?),
    };
    let in_form = (form.client_id.clone(), form.client_secret.clone());
    match (basic, in_form) {
        (Some(_), (_, Some(_))) => {
            Err(OAuthError::InvalidRequest("Authenticate the client one way: HTTP Basic or the form."))
        }
        // A form client_id beside Basic must name the same client.
        (Some((id, _)), (Some(form_id), None)) if form_id != id => {
            Err(OAuthError::InvalidRequest("client_id differs from the HTTP Basic user."))
        }
        (Some(pair), _) => Ok(pair),
        (None, (Some(id), Some(secret))) => Ok((id, secret)),
        (None, _) => Err(OAuthError::InvalidClient),
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let (scheme, encoded) = value.to_str().ok()?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    // form-urlencoded: `+` is a space, then percent-decoding.
    let unescape = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8().ok().map(|c| c.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw))).unwrap(),
        );
        h
    }

    fn form(pairs: &[(&str, &str)]) -> Form {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        Form::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let got = client_credentials(&basic("my%20client:s%3Acret+x"), &Form::default()).unwrap();
        assert_eq!(got, ("my client".to_owned(), "s:cret x".to_owned()));
        assert!(matches!(
            client_credentials(&basic("no-colon"), &Form::default()),
            Err(OAuthError::InvalidClient)
        ));
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert!(matches!(client_credentials(&bearer, &Form::default()), Err(OAuthError::InvalidClient)));
    }

    #[test]
    fn exactly_one_way_of_client_authentication() {
        let both = form(&[("client_id", "a"), ("client_secret", "b")]);
        assert!(matches!(client_credentials(&basic("a:b"), &both), Err(OAuthError::InvalidRequest(_))));
        let other_id = form(&[("client_id", "z")]);
        assert!(matches!(client_credentials(&basic("a:b"), &other_id), Err(OAuthError::InvalidRequest(_))));
        let same_id = form(&[("client_id", "a")]);
        assert_eq!(client_credentials(&basic("a:b"), &same_id).unwrap(), ("a".to_owned(), "b".to_owned()));
        assert_eq!(client_credentials(&HeaderMap::new(), &both).unwrap(), ("a".to_owned(), "b".to_owned()));
        let id_only = form(&[("client_id", "a")]);
        assert!(matches!(client_credentials(&HeaderMap::new(), &id_only), Err(OAuthError::InvalidClient)));
    }

    #[test]
    fn a_repeated_parameter_is_refused_and_unknown_ones_ignored() {
        assert!(matches!(Form::parse(b"grant_type=a&grant_type=b"), Err(OAuthError::InvalidRequest(_))));
        let f = Form::parse(b"grant_type=client_credentials&audience=x&scope=a+b").unwrap();
        assert_eq!((f.grant_type.as_deref(), f.scope.as_deref()), (Some("client_credentials"), Some("a b")));
    }
}
