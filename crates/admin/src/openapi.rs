//! The OpenAPI 3.1 document of the admin API, served at `GET /openapi.json`.
//!
//! Nothing here is a hand-kept copy of the API. Each handler carries its own
//! `#[utoipa::path]` (method, path, parameters, body, every status it can
//! answer); `routes::api` registers each handler on the router *and* in the
//! document from that one attribute (utoipa-axum), so a route cannot be
//! served without being described; bodies' schemas are derived from the
//! Rust types the handlers read and write. This module holds what belongs to
//! the whole document: the problem+json responses the handlers share, the
//! bearer security scheme, and [`document`], which finishes the document
//! for one running configuration (password limits) and for the headers
//! every response carries.

use serde::Serialize;
use serde_json::Value;
use utoipa::{
    Modify, OpenApi, ToResponse, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use bouncer_core::config::AdminConfig;

/// Name of the bearer security scheme in `components.securitySchemes`.
pub const BEARER: &str = "bearer";

/// Name of the token endpoint's HTTP Basic client authentication.
pub const CLIENT_BASIC: &str = "client_basic";

/// The media type of every error body.
pub const PROBLEM_JSON: &str = bouncer_core::problem::PROBLEM_JSON;

// The schema of `bouncer_core::problem::Problem` as `error::ApiError`
// renders it; a test below holds the two to the same members.
/// A problem document (RFC 9457): the one shape of every error. Branch on
/// `type`, which never changes once released; `detail` is for people.
#[derive(Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemSchema {
    /// `urn:bouncer:problem:<slug>`, e.g. `urn:bouncer:problem:not-found`.
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:bouncer:problem:[a-z-]+$", example = "urn:bouncer:problem:not-found")]
    pub type_uri: String,
    /// The fixed human summary of the `type`.
    pub title: String,
    /// The HTTP status, repeated.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong, in a fixed, generic sentence (never echoes input).
    pub detail: String,
    /// The request's id (also in `X-Request-Id`), for the logs.
    #[schema(nullable = false)]
    pub request_id: Option<String>,
    /// Per-field reasons; present on `422 validation-failed` and on
    /// `400 malformed-request` (field `body`, with line and column).
    #[schema(nullable = false)]
    pub errors: Option<Vec<FieldErrorSchema>>,
}

/// One invalid part of a request: a body field (dotted path), `query`, or
/// `body` for the body as a whole.
#[derive(Serialize, ToSchema)]
#[schema(as = FieldError)]
pub struct FieldErrorSchema {
    pub field: String,
    pub message: String,
}

/// `400 malformed-request`: the body is not JSON.
#[derive(ToResponse)]
#[response(
    description = "`malformed-request`: the body is not JSON (`errors[0]` gives line and column).",
    content_type = "application/problem+json"
)]
pub struct MalformedRequest(#[allow(dead_code)] ProblemSchema);

/// `401` for a bearer-authenticated route.
#[derive(ToResponse)]
#[response(
    description = "`unauthenticated`: no bearer token; `invalid-token`: a bad, expired or revoked access token.",
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"bouncer\"`, with `error=\"invalid_token\"` for a bad token (RFC 6750)"))
)]
pub struct Unauthenticated(#[allow(dead_code)] ProblemSchema);

/// `403` for an admin route.
#[derive(ToResponse)]
#[response(
    description = "`forbidden`: the token's user does not hold the `admin` role now.",
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"bouncer\", error=\"insufficient_scope\"`"))
)]
pub struct Forbidden(#[allow(dead_code)] ProblemSchema);

/// `404 not-found`.
#[derive(ToResponse)]
#[response(description = "`not-found`: no such resource.", content_type = "application/problem+json")]
pub struct NotFound(#[allow(dead_code)] ProblemSchema);

/// `413 payload-too-large`.
#[derive(ToResponse)]
#[response(
    description = "`payload-too-large`: the body is over 64 KiB (declared or streamed); the connection is closed.",
    content_type = "application/problem+json"
)]
pub struct PayloadTooLarge(#[allow(dead_code)] ProblemSchema);

/// `415 unsupported-media-type`.
#[derive(ToResponse)]
#[response(
    description = "`unsupported-media-type`: the body is not sent as `application/json` (or `application/*+json`).",
    content_type = "application/problem+json"
)]
pub struct UnsupportedMediaType(#[allow(dead_code)] ProblemSchema);

/// `422 validation-failed`.
#[derive(ToResponse)]
#[response(
    description = "`validation-failed`: a field is missing, has the wrong type or breaks a rule; see `errors`.",
    content_type = "application/problem+json"
)]
pub struct ValidationFailed(#[allow(dead_code)] ProblemSchema);

/// `429 too-many-requests` from the login throttle.
#[derive(ToResponse)]
#[response(
    description = "`too-many-requests`: too many failed password checks for this account or this client IP within `admin.login_throttle.window`.",
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds until the throttle lets the next attempt through."))
)]
pub struct TooManyRequests(#[allow(dead_code)] ProblemSchema);

/// `503 unavailable`.
#[derive(ToResponse)]
#[response(
    description = "`unavailable`: the database is unreachable, or the password-hash queue is full.",
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Always `1`."))
)]
pub struct Unavailable(#[allow(dead_code)] ProblemSchema);

/// The parts of the document that no handler owns.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bouncer admin API",
        description = "Users, sessions, roles, bans, signing keys and the audit log of a Bouncer deployment. \
            Every error is `application/problem+json` (RFC 9457) with a stable `type`; \
            every response carries `X-Request-Id`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(
        schemas(ProblemSchema, FieldErrorSchema),
        responses(
            MalformedRequest,
            Unauthenticated,
            Forbidden,
            NotFound,
            PayloadTooLarge,
            UnsupportedMediaType,
            ValidationFailed,
            TooManyRequests,
            Unavailable,
        ),
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "auth", description = "Sign up, log in, rotate refresh tokens, log out."),
        (name = "users", description = "The caller's own account."),
        (name = "admin", description = "Administration; every route needs the `admin` role."),
        (name = "clients", description = "Service clients (admin role): create, rotate a secret, delete."),
        (name = "oauth", description = "Access tokens for service clients (RFC 6749 client credentials)."),
        (name = "ops", description = "Keys, health, metrics and this document."),
    ),
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from `POST /auth/login` or `POST /auth/refresh` (EdDSA `at+jwt`).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            CLIENT_BASIC,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "A service client's id and secret (RFC 6749 §2.3.1), for `POST /oauth/token`; \
                         the form fields `client_id` and `client_secret` are the alternative.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The header every response carries (`request_id::track`).
const REQUEST_ID_HEADER: &str = "X-Request-Id";

/// The finished document for a service running `config`, as JSON.
///
/// Starts from what the handlers declare (`generated`, from
/// `routes::api`), then:
/// - writes the configured password limits into the bodies that carry a
///   password, so the document states this deployment's rules;
/// - marks every documented response header `required`: only headers that
///   are always sent are documented (utoipa's header object has no
///   `required` member, hence this pass over the JSON);
/// - adds `X-Request-Id` (one shared header object) to every response.
pub fn document(generated: utoipa::openapi::OpenApi, config: &AdminConfig) -> Value {
    let mut doc = serde_json::to_value(&generated).expect("an OpenAPI document serializes");
    apply_password_policy(&mut doc, config);
    let reference = serde_json::json!({ "$ref": format!("#/components/headers/{REQUEST_ID_HEADER}") });
    for response in responses_mut(&mut doc) {
        let Some(object) = response.as_object_mut() else { continue };
        if object.contains_key("$ref") {
            continue;
        }
        let headers = object.entry("headers").or_insert_with(|| Value::Object(Default::default()));
        if let Some(headers) = headers.as_object_mut() {
            for header in headers.values_mut() {
                if let Some(header) = header.as_object_mut() {
                    header.insert("required".into(), Value::Bool(true));
                }
            }
            headers.insert(REQUEST_ID_HEADER.into(), reference.clone());
        }
    }
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        let headers = components.entry("headers").or_insert_with(|| Value::Object(Default::default()));
        if let Some(headers) = headers.as_object_mut() {
            headers.insert(
                REQUEST_ID_HEADER.into(),
                serde_json::json!({
                    "description": "The request's id: the caller's `X-Request-Id` when it is 1 to 128 characters of `[A-Za-z0-9._:-]`, a new UUID otherwise.",
                    "required": true,
                    "schema": { "type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$" },
                }),
            );
        }
    }
    doc
}

/// Every response object of the document: inline ones under each
/// operation, and the shared ones in `components.responses`.
fn responses_mut(doc: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    let (paths, components) = match doc.as_object_mut() {
        Some(root) => {
            let mut paths = None;
            let mut components = None;
            for (key, value) in root.iter_mut() {
                match key.as_str() {
                    "paths" => paths = Some(value),
                    "components" => components = Some(value),
                    _ => {}
                }
            }
            (paths, components)
        }
        None => (None, None),
    };
    if let Some(paths) = paths.and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for operation in item.values_mut() {
                if let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) {
                    out.extend(responses.values_mut());
                }
            }
        }
    }
    if let Some(responses) = components.and_then(|c| c.get_mut("responses")).and_then(Value::as_object_mut) {
        out.extend(responses.values_mut());
    }
    out
}

/// Schemas whose `password`-like properties follow `admin.password`:
/// (schema, property, whether the minimum applies). Login and the current
/// password only refuse what is too long to be any password.
const PASSWORD_FIELDS: &[(&str, &str, bool)] = &[
    ("Signup", "password", true),
    ("Credentials", "password", false),
    ("PasswordChange", "new_password", true),
    ("PasswordChange", "current_password", false),
];

fn apply_password_policy(doc: &mut Value, config: &AdminConfig) {
    let policy = &config.password;
    for (schema, property, with_min) in PASSWORD_FIELDS {
        let pointer = format!("/components/schemas/{schema}/properties/{property}");
        let Some(field) = doc.pointer_mut(&pointer).and_then(Value::as_object_mut) else { continue };
        field.insert("maxLength".into(), policy.max_length.into());
        if *with_min {
            field.insert("minLength".into(), policy.min_length.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, sync::LazyLock};

    use axum::{
        Router,
        http::{StatusCode, header},
    };
    use bouncer_core::{
        email::Email,
        problem::{FieldError, Problem, ProblemKind},
    };
    use regex::Regex;

    use super::*;
    use crate::testing::{app_with, call};

    async fn app() -> (Router, tempfile::TempDir) {
        app_with(|config| config.password.min_length = 10).await
    }

    async fn get(app: &Router, path: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        call(app, "GET", path, None).await
    }

    /// The document as served, for the running configuration.
    async fn served() -> Value {
        let (app, _dir) = app().await;
        let (status, headers, body) = get(&app, "/openapi.json").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        serde_json::from_slice(&body).expect("the document is JSON")
    }

    #[tokio::test]
    async fn openapi_json_is_an_openapi_3_1_document_for_this_configuration() {
        let doc = served().await;
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
        assert_eq!(doc["components"]["securitySchemes"][BEARER]["scheme"], "bearer");
        // The password rules are the running configuration's (min 10 here).
        for (schema, property, with_min) in PASSWORD_FIELDS {
            let field = &doc["components"]["schemas"][schema]["properties"][property];
            let min = with_min.then_some(10);
            assert_eq!(
                (field["minLength"].as_u64(), field["maxLength"].as_u64()),
                (min, Some(128)),
                "{schema}.{property}"
            );
        }
        // Every response names its headers as always sent, X-Request-Id first of all.
        let unauthenticated = &doc["components"]["responses"]["Unauthenticated"]["headers"];
        assert_eq!(unauthenticated["WWW-Authenticate"]["required"], true);
        let request_id = serde_json::json!({ "$ref": "#/components/headers/X-Request-Id" });
        assert_eq!(unauthenticated["X-Request-Id"], request_id);
        assert_eq!(
            doc["paths"]["/healthz"]["get"]["responses"]["200"]["headers"]["X-Request-Id"],
            request_id
        );
        assert_eq!(doc["components"]["headers"]["X-Request-Id"]["required"], true);
    }

    /// Every (method, path) the router serves, read from the router itself.
    ///
    /// axum has no public route list, so this reads the router's `Debug`
    /// output: each route's path and the `Allow` value its method router
    /// answers with. Should axum change that output, the test fails (it
    /// insists on finding routes) instead of passing vacuously.
    fn served_operations(app: &Router) -> BTreeSet<(String, String)> {
        static PATH: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r#"RouteId\((\d+)\): "([^"]*)""#).unwrap());
        static METHODS: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(
                r#"RouteId\((\d+)\): MethodRouter\(MethodRouter \{[^}]*?allow_header: Bytes\(b"([A-Z,]*)"\)"#,
            )
            .unwrap()
        });
        let text = format!("{app:?}");
        // The routes proper, not the fallback router's catch-all.
        let routes = text.split("fallback_router").next().unwrap();
        let paths: Vec<(String, String)> =
            PATH.captures_iter(routes).map(|c| (c[1].to_owned(), c[2].to_owned())).collect();
        let methods: Vec<(String, String)> =
            METHODS.captures_iter(routes).map(|c| (c[1].to_owned(), c[2].to_owned())).collect();
        assert!(paths.len() > 10, "cannot read the routes from axum's Debug output:\n{text}");
        let mut operations = BTreeSet::new();
        for (id, path) in paths {
            let (_, allow) = methods.iter().find(|(m, _)| *m == id).unwrap_or_else(|| {
                panic!("{path} is not a method router (a plain service?); route it with routes!() and document it")
            });
            let allow: Vec<&str> = allow.split(',').collect();
            for method in &allow {
                // axum answers HEAD for every GET by itself.
                if *method == "HEAD" && allow.contains(&"GET") {
                    continue;
                }
                operations.insert((method.to_ascii_lowercase(), path.clone()));
            }
        }
        operations
    }

    /// The drift guard: what the router serves and what the document
    /// describes are the same set of operations, read from each side.
    #[tokio::test]
    async fn the_document_describes_exactly_the_routes_served() {
        let (app, _dir) = app().await;
        let served = served_operations(&app);
        let (_, _, body) = get(&app, "/openapi.json").await;
        let doc: Value = serde_json::from_slice(&body).unwrap();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object().unwrap().keys().map(move |method| (method.clone(), path.clone()))
            })
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(undocumented.is_empty(), "served but not in /openapi.json: {undocumented:?}");
        assert!(unserved.is_empty(), "in /openapi.json but not served: {unserved:?}");
        for operation in [("get", "/openapi.json"), ("get", "/metrics"), ("delete", "/admin/users/{id}")] {
            assert!(served.contains(&(operation.0.into(), operation.1.into())), "{operation:?}");
        }
    }

    /// Every operation says what it answers when things go wrong: each one
    /// that needs a token declares the bearer scheme and its 401; admin
    /// routes their 403; each one with a body its 400/413/415/422.
    #[tokio::test]
    async fn every_operation_documents_its_failures() {
        let doc = served().await;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                let has = |status: &str| responses.contains_key(status);
                let name = format!("{} {path}", method.to_uppercase());
                let secured = operation.get("security").is_some();
                assert_eq!(secured, has("401") && path != "/auth/login" && path != "/auth/refresh", "{name}");
                if path.starts_with("/admin/") {
                    assert!(secured && has("403"), "{name}: admin routes need the token and answer 403");
                }
                if let Some(body) = operation.get("requestBody") {
                    // The token endpoint's form answers in RFC 6749's terms:
                    // a bad form is 400 invalid_request, never 415/422.
                    let form = body["content"].get("application/x-www-form-urlencoded").is_some();
                    let expected: &[&str] =
                        if form { &["400", "413"] } else { &["400", "413", "415", "422"] };
                    for status in expected {
                        assert!(has(status), "{name}: its body can be refused with {status}");
                    }
                }
                if path.contains('{') {
                    assert!(has("404"), "{name}: a path parameter can name nothing");
                }
            }
        }
    }

    /// The schema names the members `Problem` serializes, no more, no less;
    /// `request_id` and `errors` are the optional ones.
    #[test]
    fn problem_schema_matches_the_rendered_problem() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schema = &doc["components"]["schemas"]["Problem"];
        let mut full = Problem::new(ProblemKind::VALIDATION, "x");
        full.request_id = Some("r".into());
        full.errors.push(FieldError { field: "f".into(), message: "m".into() });
        let rendered = serde_json::to_value(&full).unwrap();
        let members: BTreeSet<&String> = rendered.as_object().unwrap().keys().collect();
        let properties: BTreeSet<&String> = schema["properties"].as_object().unwrap().keys().collect();
        assert_eq!(members, properties);
        let bare = serde_json::to_value(Problem::new(ProblemKind::NOT_FOUND, "x")).unwrap();
        let always: BTreeSet<&str> = bare.as_object().unwrap().keys().map(String::as_str).collect();
        let required: BTreeSet<&str> =
            schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(always, required);
        let field: BTreeSet<&String> =
            doc["components"]["schemas"]["FieldError"]["properties"].as_object().unwrap().keys().collect();
        assert_eq!(field, rendered["errors"][0].as_object().unwrap().keys().collect());
    }

    fn pattern(doc: &Value, schema: &str, property: &str) -> Regex {
        let text = doc["components"]["schemas"][schema]["properties"][property]["pattern"].as_str().unwrap();
        Regex::new(text).unwrap()
    }

    /// Samples on every edge the email rules have: the schema's pattern and
    /// the server's checks must agree on each.
    const EMAILS: &[&str] = &[
        "alice@example.com",
        "  Alice@Example.COM \n",
        "\u{3000}a@b.co\u{85}",
        "a.b+c@d.e.f",
        "ü@ß.de",
        "\"quoted\"@x.y",
        "",
        "   ",
        "no-at.example.com",
        "a@b",
        "a@.b.c",
        "a@b.c.",
        "a@b..c",
        "@b.c",
        "a@b@c.d",
        "a b@c.d",
        "a\u{a0}b@c.d",
        "a@c\u{2009}d.e",
        "a\u{7}b@c.d",
        "a\u{9c}@c.d",
        "a\u{0}@c.d",
        "\u{0}a@c.d",
    ];

    #[tokio::test]
    async fn body_patterns_agree_with_the_server_rules() {
        let doc = served().await;
        let signup = pattern(&doc, "Signup", "email");
        for email in EMAILS {
            assert_eq!(signup.is_match(email), Email::parse(email).is_ok(), "signup email {email:?}");
        }
        // Login and ban reasons: not blank once trimmed, no NUL.
        let login = pattern(&doc, "Credentials", "email");
        let reason = pattern(&doc, "BanBody", "reason");
        for text in EMAILS.iter().chain(&["x", " \t", "\u{2028}x\u{2029}", "x\u{0}"]) {
            let server = !text.trim().is_empty() && !text.contains('\0');
            assert_eq!(login.is_match(text), server, "login email {text:?}");
            assert_eq!(reason.is_match(text), server, "ban reason {text:?}");
        }
        let role = pattern(&doc, "NewRoleBody", "name");
        for name in ["a", "auditor", "a-b_c9", &"a".repeat(32), "", "A", "9a", "a b", &"a".repeat(33)] {
            assert_eq!(role.is_match(name), bouncer_core::role::is_valid_role_name(name), "role {name:?}");
        }
    }
}
