//! RFC 9457 problem details: the one shape every denial and error takes.

use serde::Serialize;

/// Media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A stable problem kind. The `type` URI never changes once released, so
/// clients may branch on it; `title` is the fixed human summary of the kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProblemKind {
    pub slug: &'static str,
    pub title: &'static str,
    pub status: u16,
}

macro_rules! kinds {
    ($($name:ident = ($slug:literal, $status:literal, $title:literal);)*) => {
        $(pub const $name: ProblemKind = ProblemKind { slug: $slug, title: $title, status: $status };)*
    };
}

impl ProblemKind {
    kinds! {
        MALFORMED_REQUEST = ("malformed-request", 400, "The request body is not valid JSON");
        INVALID_PATH = ("invalid-path", 400, "The request path is not acceptable");
        AMBIGUOUS_CREDENTIALS = ("ambiguous-credentials", 400, "More than one credential was sent");
        UNAUTHENTICATED = ("unauthenticated", 401, "Authentication required");
        INVALID_CREDENTIALS = ("invalid-credentials", 401, "Invalid email or password");
        INVALID_TOKEN = ("invalid-token", 401, "The token is invalid, expired or revoked");
        FORBIDDEN = ("forbidden", 403, "Not allowed");
        ACCOUNT_BANNED = ("account-banned", 403, "This account is banned");
        NOT_FOUND = ("not-found", 404, "Not found");
        METHOD_NOT_ALLOWED = ("method-not-allowed", 405, "Method not allowed");
        CONFLICT = ("conflict", 409, "Conflict");
        ALREADY_BANNED = ("already-banned", 409, "The user is already banned");
        ROLE_EXISTS = ("role-exists", 409, "The role already exists");
        ROLE_IN_USE = ("role-in-use", 409, "The role is held by users");
        BUILTIN_ROLE = ("builtin-role", 409, "Built-in roles cannot be deleted");
        EMAIL_TAKEN = ("email-taken", 409, "The email address is already registered");
        PAYLOAD_TOO_LARGE = ("payload-too-large", 413, "The request body is too large");
        UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", 415, "Content-Type must be application/json");
        VALIDATION = ("validation-failed", 422, "The request is not valid");
        TOO_MANY_REQUESTS = ("too-many-requests", 429, "Too many requests");
        INTERNAL = ("internal", 500, "Internal error");
        UNAVAILABLE = ("unavailable", 503, "Service temporarily unavailable");
        BAD_GATEWAY = ("bad-gateway", 502, "The upstream could not be reached");
        GATEWAY_TIMEOUT = ("gateway-timeout", 504, "The upstream did not answer in time");
    }

    /// The `type` URI of this kind.
    pub fn type_uri(&self) -> String {
        format!("urn:bouncer:problem:{}", self.slug)
    }
}

/// One invalid field of a request, for `422` responses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// A problem document ready to serialize.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            type_uri: kind.type_uri(),
            title: kind.title,
            status: kind.status,
            detail: detail.into(),
            request_id: None,
            errors: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_to_rfc9457_members() {
        let mut p = Problem::new(ProblemKind::VALIDATION, "email is invalid");
        p.request_id = Some("r1".into());
        p.errors
            .push(FieldError { field: "email".into(), message: "must look like name@example.com".into() });
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "urn:bouncer:problem:validation-failed");
        assert_eq!(v["status"], 422);
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["errors"][0]["field"], "email");
        let bare = serde_json::to_value(Problem::new(ProblemKind::NOT_FOUND, "x")).unwrap();
        assert!(bare.get("errors").is_none() && bare.get("request_id").is_none());
    }
}
