//! The admin service's one error type, mapped to HTTP in one place.
//!
//! Clients get a problem+json document with a stable `type` and a fixed,
//! generic detail; the underlying cause goes to the log. No `Display` of an
//! internal error ever reaches a response.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bouncer_core::problem::{FieldError, PROBLEM_JSON, Problem, ProblemKind};
use bouncer_store::StoreError;

use crate::request_id;

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("malformed JSON body")]
    MalformedJson(String),
    #[error("unsupported content type")]
    UnsupportedMediaType,
    #[error("body too large")]
    PayloadTooLarge,
    /// No credentials were presented (RFC 6750 §3.1: no `error` attribute).
    #[error("bearer token missing")]
    MissingToken,
    /// The bearer token failed a check; the reason is for logs only.
    #[error("invalid bearer token: {0}")]
    InvalidToken(&'static str),
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    #[error("account banned")]
    Banned,
    #[error("email already registered")]
    EmailTaken,
    /// Authenticated, but without the `admin` role (RFC 6750 insufficient_scope).
    #[error("forbidden")]
    Forbidden,
    #[error("user already banned")]
    AlreadyBanned,
    #[error("role exists")]
    RoleExists,
    #[error("role in use by {0} user(s)")]
    RoleInUse(u64),
    #[error("built-in role")]
    BuiltinRole,
    /// A request that would leave the caller locked out of administration.
    #[error("refused on oneself: {0}")]
    SelfLockout(&'static str),
    #[error("too many failed logins")]
    Throttled { retry_after_secs: u64 },
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Password hashing queue is full: shed load instead of queueing forever.
    #[error("overloaded")]
    Overloaded,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmailTaken => ApiError::EmailTaken,
            StoreError::UnknownRole(role) => ApiError::Validation(vec![FieldError {
                field: "roles".into(),
                message: format!("unknown role {role:?}"),
            }]),
            StoreError::Unavailable(cause) => ApiError::Unavailable(cause),
            StoreError::NotFound => ApiError::NotFound,
            StoreError::AlreadyBanned => ApiError::AlreadyBanned,
            StoreError::RoleExists => ApiError::RoleExists,
            StoreError::RoleInUse(n) => ApiError::RoleInUse(n),
            StoreError::BuiltinRole => ApiError::BuiltinRole,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Validation(vec![e])
    }
}

impl ApiError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError { field: field.into(), message: message.into() }])
    }

    fn kind_and_detail(&self) -> (ProblemKind, &'static str) {
        use ProblemKind as K;
        match self {
            ApiError::Validation(_) => (K::VALIDATION, "One or more fields are invalid; see errors."),
            ApiError::MalformedJson(_) => (K::MALFORMED_REQUEST, "The body could not be parsed as JSON."),
            ApiError::UnsupportedMediaType => {
                (K::UNSUPPORTED_MEDIA_TYPE, "Send the body as application/json.")
            }
            ApiError::PayloadTooLarge => (K::PAYLOAD_TOO_LARGE, "The body must be at most 64 KiB."),
            ApiError::MissingToken => {
                (K::UNAUTHENTICATED, "Send an access token as 'Authorization: Bearer <token>'.")
            }
            ApiError::InvalidToken(_) => {
                (K::INVALID_TOKEN, "The access token is invalid, expired or revoked.")
            }
            ApiError::InvalidCredentials => (K::INVALID_CREDENTIALS, "The email or password is wrong."),
            ApiError::InvalidRefreshToken => {
                (K::INVALID_TOKEN, "The refresh token is invalid, expired or revoked.")
            }
            ApiError::Banned => (K::ACCOUNT_BANNED, "This account is banned."),
            ApiError::EmailTaken => (K::EMAIL_TAKEN, "An account with this email already exists."),
            ApiError::Forbidden => (K::FORBIDDEN, "This requires the admin role."),
            ApiError::AlreadyBanned => (K::ALREADY_BANNED, "The user is already banned."),
            ApiError::RoleExists => (K::ROLE_EXISTS, "A role with this name already exists."),
            ApiError::RoleInUse(_) => (
                K::ROLE_IN_USE,
                "Users hold this role; delete with ?force=true to remove it from them and revoke their tokens.",
            ),
            ApiError::BuiltinRole => {
                (K::BUILTIN_ROLE, "The built-in roles admin, user and service cannot be deleted.")
            }
            ApiError::SelfLockout(_) => {
                (K::CONFLICT, "Administrators cannot ban, delete or demote themselves.")
            }
            ApiError::Throttled { .. } => (K::TOO_MANY_REQUESTS, "Too many failed logins; retry later."),
            ApiError::NotFound => (K::NOT_FOUND, "No such resource."),
            ApiError::MethodNotAllowed => (K::METHOD_NOT_ALLOWED, "This method is not allowed here."),
            ApiError::Overloaded => (K::UNAVAILABLE, "The service is overloaded; retry shortly."),
            ApiError::Unavailable(_) => (K::UNAVAILABLE, "The database is unavailable; retry shortly."),
            ApiError::Internal(_) => (K::INTERNAL, "An internal error occurred."),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (kind, detail) = self.kind_and_detail();
        match &self {
            ApiError::Internal(_) => tracing::error!(error = %self, "request failed"),
            ApiError::Unavailable(_) | ApiError::Overloaded => {
                tracing::warn!(error = %self, "request refused")
            }
            _ => tracing::debug!(error = %self, "request denied"),
        }
        let mut problem = Problem::new(kind, detail);
        problem.request_id = request_id::current();
        problem.errors = match &self {
            ApiError::Validation(errors) => errors.clone(),
            ApiError::MalformedJson(reason) => {
                vec![FieldError { field: "body".into(), message: reason.clone() }]
            }
            _ => Vec::new(),
        };
        let status = StatusCode::from_u16(kind.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            ApiError::MissingToken | ApiError::InvalidCredentials | ApiError::InvalidRefreshToken => {
                headers
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"bouncer\""));
            }
            ApiError::InvalidToken(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"bouncer\", error=\"invalid_token\""),
                );
            }
            ApiError::Forbidden => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"bouncer\", error=\"insufficient_scope\""),
                );
            }
            ApiError::Throttled { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unavailable(_) | ApiError::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // The rest of the body was never read: the connection cannot be
            // reused, so tell the client instead of letting it find out.
            ApiError::PayloadTooLarge => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
