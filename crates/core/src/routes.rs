//! The route table (`routes.yaml`): parsing, whole-file validation and the
//! matcher. Pure: the gateway hands in file text and request parts and gets
//! a table, an error naming the line, or a match.
//!
//! Patterns: literal segments, `{name}` (exactly one segment), and `**` as
//! the last segment (zero or more). The most specific route wins: more
//! leading literal segments first, then fewer wildcards, then file order. A
//! path some route matches but not for this method is `405` with `Allow`;
//! a path no route matches is `404` and never forwarded.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

/// `auth:` of a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid token is required (the default).
    #[default]
    Required,
    /// A valid token is used when present; none means anonymous; an invalid one is 401.
    Optional,
    /// No token is looked at; identity headers are still stripped.
    None,
}

/// `rate_limit.key` of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKey {
    User,
    Ip,
    Route,
}

/// `rate_limit:` of a route, as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub key: LimitKey,
    pub burst: u32,
    pub per_second: Option<f64>,
    pub per_minute: Option<f64>,
}

/// A route as written in the file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub methods: Vec<String>,
    pub upstream: String,
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default)]
    pub roles: Vec<String>,
    pub owner: Option<String>,
    pub rate_limit: Option<RateLimitSpec>,
    /// What a caller may authenticate with; default `[jwt]`.
    #[serde(default = "only_jwt")]
    pub credentials: Vec<CredentialKind>,
}

/// A kind of credential a route accepts (`credentials:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// An access token (`Authorization: Bearer <JWT>`).
    Jwt,
    /// An API key (`Authorization: Bearer bk_…` or `X-API-Key: bk_…`).
    ApiKey,
}

fn only_jwt() -> Vec<CredentialKind> {
    vec![CredentialKind::Jwt]
}

/// An upstream as written in the file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    pub targets: Vec<String>,
    /// Time to connect to a target before trying the next (default 2s).
    pub connect_timeout: Option<crate::ConfigDuration>,
    /// Time to wait for the upstream's response (default 30s; then 504).
    pub read_timeout: Option<crate::ConfigDuration>,
}

/// The whole file as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
}

/// A route file that cannot be used, naming where and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{source_name}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct RoutesError {
    pub source_name: String,
    pub line: Option<usize>,
    pub message: String,
}

/// One segment of a compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    /// `**`: zero or more trailing segments.
    Rest,
}

/// A validated route, ready to match.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub spec: RouteSpec,
    /// `spec.rate_limit` in the form the bucket arithmetic uses, converted
    /// once at load rather than on every request.
    pub limit: Option<crate::bucket::Limit>,
    segments: Vec<Segment>,
    /// Upper-case methods; empty means every method.
    methods: Vec<String>,
    leading_literals: usize,
    wildcards: usize,
    file_index: usize,
}

impl Route {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether the route takes this kind of credential.
    pub fn accepts(&self, kind: CredentialKind) -> bool {
        self.spec.credentials.contains(&kind)
    }

    /// Decides access: `auth: none` lets everyone through; otherwise roles
    /// are any-of, `owner` also grants when the named `{param}` equals the
    /// caller's subject, and a route with neither admits any caller. An
    /// anonymous caller (possible on `auth: optional`) passes only routes
    /// that grant nothing specific.
    pub fn authorize(&self, caller: Option<(&str, &[String])>, params: &[(&str, &str)]) -> Access {
        if self.spec.auth == AuthMode::None {
            return Access::Allowed;
        }
        let needs_grant = !self.spec.roles.is_empty() || self.spec.owner.is_some();
        let Some((subject, roles)) = caller else {
            return if self.spec.auth == AuthMode::Required || needs_grant {
                Access::Unauthenticated
            } else {
                Access::Allowed
            };
        };
        if !needs_grant {
            return Access::Allowed;
        }
        let by_role = self.spec.roles.iter().any(|r| roles.contains(r));
        let by_owner = self
            .spec
            .owner
            .as_deref()
            .and_then(|owner| params.iter().find(|(name, _)| *name == owner))
            .is_some_and(|(_, value)| *value == subject);
        if by_role || by_owner { Access::Allowed } else { Access::Forbidden }
    }

    fn allows(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// Matches `path` (normalized), returning the `{param}` values.
    fn match_path<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let mut parts =
            if trimmed.is_empty() { "".split_terminator('/') } else { trimmed.split_terminator('/') };
        let mut params = Vec::new();
        for segment in &self.segments {
            match segment {
                Segment::Rest => return Some(params),
                Segment::Literal(l) => {
                    if parts.next()? != l {
                        return None;
                    }
                }
                Segment::Param(name) => params.push((name.as_str(), parts.next()?)),
            }
        }
        parts.next().is_none().then_some(params)
    }
}

/// The authorization decision for a matched route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// No caller, but the route needs one (401).
    Unauthenticated,
    /// A caller without a granting role and not the owner (403).
    Forbidden,
}

/// The outcome of matching a request.
#[derive(Debug, PartialEq)]
pub enum RouteMatch<'t, 'p> {
    Found {
        route: &'t Route,
        params: Vec<(&'t str, &'p str)>,
    },
    /// Some route matches the path, none the method: answer 405 with `Allow`.
    MethodNotAllowed {
        allow: Vec<String>,
    },
    NotFound,
}

/// A validated route table, routes ordered most specific first.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteTable {
    routes: Vec<Route>,
    pub upstreams: BTreeMap<String, UpstreamSpec>,
}

const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];

impl RouteTable {
    /// Parses and validates a whole file; the first problem is returned with
    /// its line. A table is either entirely valid or not produced at all.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Self, RoutesError> {
        let err = |line: Option<usize>, message: String| RoutesError {
            source_name: source_name.to_owned(),
            line,
            message,
        };
        let file: RoutesFile =
            serde_yaml::from_str(text).map_err(|e| err(e.location().map(|l| l.line()), e.to_string()))?;
        let lines = LineFinder::new(text);
        let mut names = HashSet::new();
        for (name, upstream) in &file.upstreams {
            if upstream.targets.is_empty() {
                return Err(err(
                    lines.key_line(name),
                    format!("upstreams.{name}.targets: at least one target is needed"),
                ));
            }
            if let Some(bad) = upstream.targets.iter().find(|t| !valid_target(t)) {
                return Err(err(
                    lines.key_line(name),
                    format!("upstreams.{name}.targets: {bad:?} is not host:port"),
                ));
            }
        }
        let mut routes = Vec::with_capacity(file.routes.len());
        for (index, spec) in file.routes.into_iter().enumerate() {
            let line = lines.route_line(&spec.name);
            let field = |f: &str, m: String| err(line, format!("routes[{index}] ({}): {f}: {m}", spec.name));
            if spec.name.is_empty()
                || !spec.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(field("name", "must be letters, digits, '-', '_' or '.'".into()));
            }
            if !names.insert(spec.name.clone()) {
                return Err(field("name", "is used by an earlier route".into()));
            }
            if !file.upstreams.contains_key(&spec.upstream) {
                return Err(field("upstream", format!("{:?} is not defined under upstreams", spec.upstream)));
            }
            let segments = compile_pattern(&spec.path).map_err(|m| field("path", m))?;
            let mut methods = Vec::new();
            for m in &spec.methods {
                let upper = m.to_ascii_uppercase();
                if !METHODS.contains(&upper.as_str()) {
                    return Err(field("methods", format!("{m:?} is not an HTTP method")));
                }
                if !methods.contains(&upper) {
                    methods.push(upper);
                }
            }
            if let Some(owner) = &spec.owner {
                if !segments.iter().any(|s| matches!(s, Segment::Param(p) if p == owner)) {
                    return Err(field("owner", format!("{owner:?} is not a {{param}} of the path")));
                }
                if spec.auth == AuthMode::None {
                    return Err(field("owner", "needs authentication; auth is none".into()));
                }
            }
            if spec.credentials.is_empty() {
                return Err(field("credentials", "needs at least one of jwt, api_key".into()));
            }
            if spec.credentials.iter().enumerate().any(|(i, c)| spec.credentials[..i].contains(c)) {
                return Err(field("credentials", "names a kind twice".into()));
            }
            if spec.auth == AuthMode::None && spec.credentials != only_jwt() {
                return Err(field("credentials", "cannot be checked when auth is none".into()));
            }
            if spec.auth == AuthMode::None && !spec.roles.is_empty() {
                return Err(field("roles", "cannot be checked when auth is none".into()));
            }
            if let Some(bad) = spec.roles.iter().find(|r| !crate::role::is_valid_role_name(r)) {
                return Err(field("roles", format!("{bad:?} is not a role name")));
            }
            if let Some(limit) = &spec.rate_limit {
                if limit.burst < 1 {
                    return Err(field("rate_limit.burst", "must be at least 1".into()));
                }
                match (limit.per_second, limit.per_minute) {
                    (Some(r), None) | (None, Some(r)) if r > 0.0 && r.is_finite() => {}
                    _ => {
                        return Err(field(
                            "rate_limit",
                            "needs exactly one of per_second or per_minute, above 0".into(),
                        ));
                    }
                }
            }
            let leading_literals = segments.iter().take_while(|s| matches!(s, Segment::Literal(_))).count();
            let wildcards = segments.iter().filter(|s| !matches!(s, Segment::Literal(_))).count();
            let limit = spec.rate_limit.as_ref().map(crate::bucket::Limit::of);
            routes.push(Route {
                spec,
                limit,
                segments,
                methods,
                leading_literals,
                wildcards,
                file_index: index,
            });
        }
        // An identical pattern with overlapping methods can never be reached
        // after the first: refuse rather than silently shadow it.
        for (i, later) in routes.iter().enumerate() {
            for earlier in &routes[..i] {
                if same_shape(&earlier.segments, &later.segments) && methods_overlap(earlier, later) {
                    return Err(err(
                        lines.route_line(later.name()),
                        format!(
                            "routes[{}] ({}): path: unreachable — route {:?} has the same pattern and overlapping methods",
                            later.file_index,
                            later.name(),
                            earlier.name()
                        ),
                    ));
                }
            }
        }
        routes.sort_by_key(|r| (std::cmp::Reverse(r.leading_literals), r.wildcards, r.file_index));
        Ok(Self { routes, upstreams: file.upstreams })
    }

    /// Routes, most specific first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Finds the route for `method` (upper case) and a normalized `path`.
    pub fn match_request<'t, 'p>(&'t self, method: &str, path: &'p str) -> RouteMatch<'t, 'p> {
        let mut allow: Vec<String> = Vec::new();
        for route in &self.routes {
            let Some(params) = route.match_path(path) else { continue };
            if route.allows(method) {
                return RouteMatch::Found { route, params };
            }
            for m in &route.methods {
                if !allow.contains(m) {
                    allow.push(m.clone());
                }
            }
        }
        if allow.is_empty() {
            RouteMatch::NotFound
        } else {
            allow.sort_by_key(|m| METHODS.iter().position(|k| k == m));
            RouteMatch::MethodNotAllowed { allow }
        }
    }
}

fn valid_target(target: &str) -> bool {
    target
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

fn compile_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err("must start with '/'".into());
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    let mut params = HashSet::new();
    for (i, part) in parts.iter().enumerate() {
        let segment = if *part == "**" {
            if i + 1 != parts.len() {
                return Err("'**' may only be the last segment".into());
            }
            Segment::Rest
        } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(format!("{{{name}}} is not a valid parameter name"));
            }
            if !params.insert(name) {
                return Err(format!("parameter {{{name}}} appears twice"));
            }
            Segment::Param(name.to_owned())
        } else {
            // A literal must already be in normalized form, or no normalized
            // request path could ever equal it.
            let slashed = format!("/{part}");
            let normal =
                crate::path::normalize_path(&slashed).map_err(|e| format!("segment {part:?}: {e}"))?;
            if part.is_empty() || normal != slashed || part.contains('*') || part.contains('{') {
                return Err(format!(
                    "segment {part:?} is not a normalized literal, {{param}} or trailing **"
                ));
            }
            Segment::Literal((*part).to_owned())
        };
        segments.push(segment);
    }
    Ok(segments)
}

fn same_shape(a: &[Segment], b: &[Segment]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Segment::Literal(l), Segment::Literal(m)) => l == m,
            (Segment::Param(_), Segment::Param(_)) | (Segment::Rest, Segment::Rest) => true,
            _ => false,
        })
}

fn methods_overlap(a: &Route, b: &Route) -> bool {
    a.methods.is_empty() || b.methods.is_empty() || a.methods.iter().any(|m| b.methods.contains(m))
}

/// Finds the line of a key in the file text, for errors serde cannot place
/// (YAML values carry no positions once deserialized).
struct LineFinder<'a> {
    lines: Vec<&'a str>,
}

impl<'a> LineFinder<'a> {
    fn new(text: &'a str) -> Self {
        Self { lines: text.lines().collect() }
    }

    /// The 1-based line of `- name: NAME` (or `name: NAME`).
    fn route_line(&self, name: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| {
                let l = l.trim_start().trim_start_matches('-').trim_start();
                l.strip_prefix("name:")
                    .is_some_and(|v| v.trim().trim_matches(|c| c == '"' || c == '\'') == name)
            })
            .map(|i| i + 1)
    }

    /// The 1-based line of the first mapping entry `KEY:` (block or flow style).
    fn key_line(&self, key: &str) -> Option<usize> {
        let entry = |line: &str| {
            line.match_indices(key).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let starts = before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',');
                starts && line[at + key.len()..].starts_with(':')
            })
        };
        self.lines.iter().position(|l| entry(l)).map(|i| i + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"
upstreams:
  app:   { targets: [127.0.0.1:9000] }
  admin: { targets: [127.0.0.1:8081] }

routes:
  - name: auth
    path: /auth/**
    upstream: admin
    auth: none
    rate_limit: { key: ip, burst: 20, per_second: 5 }
  - name: orders-read
    path: /api/orders/**
    methods: [GET, HEAD]
    upstream: app
    roles: [user, admin]
    rate_limit: { key: user, burst: 100, per_second: 10 }
  - name: profile
    path: /api/users/{id}/**
    upstream: app
    roles: [admin]
    owner: id
"#;

    fn table(yaml: &str) -> RouteTable {
        RouteTable::from_yaml(yaml, "routes.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn found<'t>(t: &'t RouteTable, method: &str, path: &str) -> Option<(&'t str, Vec<(String, String)>)> {
        match t.match_request(method, path) {
            RouteMatch::Found { route, params } => {
                Some((route.name(), params.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()))
            }
            _ => None,
        }
    }

    #[test]
    fn the_spec_example_matches_as_documented() {
        let t = table(SPEC_EXAMPLE);
        assert_eq!(found(&t, "POST", "/auth/login").unwrap().0, "auth");
        assert_eq!(found(&t, "GET", "/auth").unwrap().0, "auth", "** matches zero segments");
        assert_eq!(found(&t, "GET", "/api/orders/17/items").unwrap().0, "orders-read");
        let (name, params) = found(&t, "PUT", "/api/users/u-1/settings").unwrap();
        assert_eq!((name, params), ("profile", vec![("id".to_owned(), "u-1".to_owned())]));
        assert_eq!(
            t.match_request("DELETE", "/api/orders/17"),
            RouteMatch::MethodNotAllowed { allow: vec!["GET".into(), "HEAD".into()] }
        );
        assert_eq!(t.match_request("GET", "/api/other"), RouteMatch::NotFound, "default deny");
        assert_eq!(t.match_request("GET", "/"), RouteMatch::NotFound);
    }

    #[test]
    fn the_most_specific_route_wins() {
        let t = table(
            r#"
upstreams: { app: { targets: [h:1] } }
routes:
  - { name: catch-all, path: /api/**, upstream: app }
  - { name: by-id, path: "/api/{kind}/{id}", upstream: app }
  - { name: orders-id, path: "/api/orders/{id}", upstream: app }
  - { name: orders-me, path: /api/orders/me, upstream: app }
  - { name: orders-rest, path: /api/orders/**, upstream: app }
"#,
        );
        assert_eq!(found(&t, "GET", "/api/orders/me").unwrap().0, "orders-me", "more literals first");
        assert_eq!(found(&t, "GET", "/api/orders/7").unwrap().0, "orders-id", "then fewer wildcards");
        assert_eq!(found(&t, "GET", "/api/orders/7/x").unwrap().0, "orders-rest");
        // SPEC: leading literals, then *fewer* wildcards — so `/api/**` (one
        // wildcard) beats `/api/{kind}/{id}` (two) where both match.
        assert_eq!(found(&t, "GET", "/api/users/7").unwrap().0, "catch-all");
        assert_eq!(found(&t, "GET", "/api/a/b/c").unwrap().0, "catch-all");
        assert_eq!(
            found(&t, "GET", "/api/orders/").unwrap().0,
            "orders-rest",
            "a trailing slash is no segment"
        );
    }

    #[test]
    fn params_match_exactly_one_segment() {
        let t = table(
            "upstreams: { a: { targets: [h:1] } }\nroutes:\n  - { name: r, path: \"/u/{id}\", upstream: a }\n",
        );
        assert!(found(&t, "GET", "/u/1").is_some());
        assert!(found(&t, "GET", "/u").is_none());
        assert!(found(&t, "GET", "/u/1/2").is_none());
    }

    #[test]
    fn invalid_files_are_refused_with_a_line() {
        for (yaml, line, needle) in [
            (
                "upstreams: {}\nroutes:\n  - name: a\n    path: /x\n    upstream: nope\n",
                Some(3),
                "not defined under upstreams",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /x\n    upstream: u\n  - name: a\n    path: /y\n    upstream: u\n",
                Some(3),
                "used by an earlier route",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /x/**/y\n    upstream: u\n",
                Some(3),
                "'**' may only be the last",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: x\n    upstream: u\n",
                Some(3),
                "must start with '/'",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /x/./y\n    upstream: u\n",
                Some(3),
                "normalized literal",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /x/../y\n    upstream: u\n",
                Some(3),
                "climbs above the root",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: \"/u/{id}/{id}\"\n    upstream: u\n",
                Some(3),
                "appears twice",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /u\n    upstream: u\n    owner: id\n",
                Some(3),
                "not a {param}",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /u\n    upstream: u\n    credentials: []\n",
                Some(3),
                "needs at least one",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /u\n    upstream: u\n    credentials: [api_key, api_key]\n",
                Some(3),
                "names a kind twice",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /u\n    upstream: u\n    auth: none\n    credentials: [api_key]\n",
                Some(3),
                "cannot be checked when auth is none",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /u\n    upstream: u\n    auth: none\n    roles: [admin]\n",
                Some(3),
                "auth is none",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /u\n    upstream: u\n    methods: [FETCH]\n",
                Some(3),
                "not an HTTP method",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /u\n    upstream: u\n    rate_limit: { key: ip, burst: 5 }\n",
                Some(3),
                "exactly one of per_second",
            ),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: /u\n    upstream: u\n    colour: red\n",
                Some(6),
                "unknown field `colour`",
            ),
            ("upstreams: { u: { targets: [nohost] } }\nroutes: []\n", Some(1), "not host:port"),
            (
                "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - name: a\n    path: \"/u/{id}\"\n    upstream: u\n  - name: b\n    path: \"/u/{other}\"\n    upstream: u\n    methods: [GET]\n",
                Some(6),
                "unreachable",
            ),
        ] {
            let e = RouteTable::from_yaml(yaml, "routes.yaml").expect_err(yaml);
            assert_eq!(e.line, line, "{yaml}\n→ {e}");
            assert!(e.to_string().contains(needle), "expected {needle:?} in {e}");
            assert!(e.to_string().starts_with("routes.yaml:"), "{e}");
        }
    }

    #[test]
    fn authorization_follows_roles_owner_and_auth_mode() {
        let t = table(
            r#"
upstreams: { u: { targets: [h:1] } }
routes:
  - { name: any, path: /any, upstream: u }
  - { name: admin, path: /admin, upstream: u, roles: [admin, ops] }
  - { name: own, path: "/users/{id}", upstream: u, roles: [admin], owner: id }
  - { name: optional, path: /opt, upstream: u, auth: optional }
  - { name: optional-admin, path: /opt-admin, upstream: u, auth: optional, roles: [admin] }
  - { name: public, path: /pub, upstream: u, auth: none }
"#,
        );
        let user = ["user".to_owned()];
        let ops = ["ops".to_owned()];
        let check = |path: &str, caller: Option<(&str, &[String])>| match t.match_request("GET", path) {
            RouteMatch::Found { route, params } => route.authorize(caller, &params),
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(check("/any", Some(("u1", &user))), Access::Allowed);
        assert_eq!(check("/any", None), Access::Unauthenticated);
        assert_eq!(check("/admin", Some(("u1", &user))), Access::Forbidden);
        assert_eq!(check("/admin", Some(("u1", &ops))), Access::Allowed, "roles are any-of");
        assert_eq!(check("/users/u1", Some(("u1", &user))), Access::Allowed, "the owner");
        assert_eq!(check("/users/u2", Some(("u1", &user))), Access::Forbidden);
        assert_eq!(check("/opt", None), Access::Allowed);
        assert_eq!(
            check("/opt-admin", None),
            Access::Unauthenticated,
            "optional auth never skips a role check"
        );
        assert_eq!(check("/opt-admin", Some(("u1", &user))), Access::Forbidden);
        assert_eq!(check("/pub", None), Access::Allowed);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/routes.yaml");
        let t = table(&std::fs::read_to_string(path).unwrap());
        assert_eq!(found(&t, "POST", "/api/orders/1").unwrap().0, "orders-write");
        assert_eq!(found(&t, "GET", "/api/orders/1").unwrap().0, "orders-read");
    }

    #[test]
    fn same_pattern_with_disjoint_methods_is_fine() {
        let t = table(
            "upstreams: { u: { targets: [h:1] } }\nroutes:\n  - { name: r, path: /x, upstream: u, methods: [GET] }\n  - { name: w, path: /x, upstream: u, methods: [POST] }\n",
        );
        assert_eq!(found(&t, "POST", "/x").unwrap().0, "w");
        assert_eq!(found(&t, "GET", "/x").unwrap().0, "r");
    }
}
