//! Identity headers: which client-sent headers are stripped, and what the
//! gateway injects in their place.
//!
//! An upstream trusts `X-User-*` because only the gateway can have set them,
//! so every client-sent spelling is removed before anything else looks at
//! the request: any case, `_` or `.` instead of `-` (some servers and CGI
//! layers treat them alike), and any header a `Connection` header names
//! (hop-by-hop headers a proxy would otherwise drop *after* our check).
//! Headers that make upstreams re-route or re-interpret a request are
//! stripped too.

use std::borrow::Cow;

use http::HeaderName;

use bouncer_core::{claims::AccessClaims, config::IdentityHeaders};

use crate::error::SetupError;

/// Default names of the headers the gateway injects; a client may never
/// supply them, whatever names are configured.
pub const X_USER_ID: &str = "x-user-id";
pub const X_USER_EMAIL: &str = "x-user-email";
pub const X_USER_ROLES: &str = "x-user-roles";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// Which kind of credential the caller used: `jwt` or `api_key:<id>`.
pub const X_CREDENTIAL: &str = "x-credential";
/// Where a client may send an API key instead of `Authorization`.
pub const X_API_KEY: &str = "x-api-key";

/// Stripped from every request on every route, in canonical (`-`, lower
/// case) form.
const STRIPPED: [&str; 12] = [
    X_USER_ID,
    X_CREDENTIAL,
    X_USER_EMAIL,
    X_USER_ROLES,
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-prefix",
    "x-original-method",
];

/// The configured identity header names, ready for the per-request path.
#[derive(Debug, Clone)]
pub struct IdentityNames {
    pub user_id: HeaderName,
    pub email: HeaderName,
    pub roles: HeaderName,
    pub request_id: HeaderName,
    /// Canonical forms of the configured user headers, stripped besides the defaults.
    extra_stripped: Vec<String>,
}

impl IdentityNames {
    /// From validated configuration (names were checked to be header tokens).
    pub fn new(config: &IdentityHeaders) -> Result<Self, SetupError> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                .map_err(|error| SetupError::IdentityHeader { name: n.to_owned(), error })
        };
        Ok(Self {
            user_id: name(&config.user_id)?,
            email: name(&config.email)?,
            roles: name(&config.roles)?,
            request_id: name(&config.request_id)?,
            extra_stripped: [&config.user_id, &config.email, &config.roles]
                .iter()
                .map(|n| canonical(n))
                .collect(),
        })
    }

    /// The identity headers the upstream gets for a verified caller:
    /// subject, email and roles (comma-separated), under the configured
    /// names; a service client has no email, so it gets no email header
    /// (the client's copy is stripped all the same). Built on every forward
    /// attempt (a retry sends them again).
    pub fn injected<'a>(
        &self,
        claims: &'a AccessClaims,
    ) -> impl Iterator<Item = (HeaderName, Cow<'a, str>)> + use<'a> {
        [
            Some((self.user_id.clone(), Cow::Owned(claims.sub.to_string()))),
            claims.email.as_deref().map(|email| (self.email.clone(), Cow::Borrowed(email))),
            Some((self.roles.clone(), Cow::Owned(claims.roles.join(",")))),
        ]
        .into_iter()
        .flatten()
    }

    /// Whether a header name is an identity or re-routing header in any
    /// spelling. Runs for every request header, so it compares in place
    /// instead of building the canonical form.
    pub fn is_stripped(&self, name: &str) -> bool {
        STRIPPED.iter().any(|s| same_canonical(name, s))
            || self.extra_stripped.iter().any(|s| same_canonical(name, s))
    }

    /// The names to remove from a request's headers: every stripped spelling
    /// present, plus what `Connection` names when that is one of them.
    pub fn names_to_strip<'a>(
        &self,
        names: impl Iterator<Item = &'a HeaderName>,
        connection: &[&str],
    ) -> Vec<HeaderName> {
        let mut out: Vec<HeaderName> = names.filter(|n| self.is_stripped(n.as_str())).cloned().collect();
        for token in connection {
            if self.is_stripped(token.trim())
                && let Ok(name) = HeaderName::from_bytes(token.trim().to_ascii_lowercase().as_bytes())
                && !out.contains(&name)
            {
                out.push(name);
            }
        }
        out
    }
}

impl Default for IdentityNames {
    fn default() -> Self {
        Self::new(&IdentityHeaders::default()).expect("the default names are valid")
    }
}

/// Whether `name` spells `canonical` (lower case, `-`) up to case, `_` and `.`.
fn same_canonical(name: &str, canonical: &str) -> bool {
    let fold = |b: u8| if b == b'_' || b == b'.' { b'-' } else { b.to_ascii_lowercase() };
    name.len() == canonical.len() && name.bytes().zip(canonical.bytes()).all(|(a, c)| fold(a) == c)
}

fn canonical(name: &str) -> String {
    name.chars().map(|c| if c == '_' || c == '.' { '-' } else { c.to_ascii_lowercase() }).collect()
}

/// Whether a claim can travel as a header value: visible ASCII or spaces,
/// at most 1 KiB. A token whose claims fail this is refused (401) rather
/// than forwarded with a mangled identity.
pub fn safe_header_value(value: &str) -> bool {
    value.len() <= 1024 && value.bytes().all(|b| b == b' ' || (0x21..=0x7e).contains(&b))
}

/// Whether a query string carries a method override (`_method=`, as Rails,
/// Laravel and Symfony honour on POST), which would let a client run a
/// method the route table did not allow.
pub fn query_overrides_method(query: &str) -> bool {
    query.split('&').any(|pair| {
        let key = pair.split('=').next().unwrap_or("");
        percent_decoded_ascii(key).eq_ignore_ascii_case("_method")
    })
}

fn percent_decoded_ascii(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%').then(|| u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()).flatten();
        match escaped {
            Some(b) => {
                out.push(b as char);
                i += 3;
            }
            None => {
                out.push(bytes[i] as char);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_identity_header_is_stripped() {
        for name in [
            "X-User-Id",
            "x-user-id",
            "X_USER_ID",
            "x.user.id",
            "X-User_Email",
            "x-user-roles",
            "X-HTTP-Method-Override",
            "x-original-url",
            "X-Forwarded-Prefix",
        ] {
            assert!(IdentityNames::default().is_stripped(name), "{name}");
        }
        for name in ["x-user", "authorization", "x-request-id", "x-forwarded-for", "x-user-idx"] {
            assert!(!IdentityNames::default().is_stripped(name), "{name}");
        }
    }

    #[test]
    fn connection_named_identity_headers_are_stripped_too() {
        let present = [HeaderName::from_static("x_user_id"), HeaderName::from_static("accept")];
        let names = IdentityNames::default().names_to_strip(present.iter(), &["keep-alive", " X-User-Roles"]);
        assert_eq!(names, [HeaderName::from_static("x_user_id"), HeaderName::from_static("x-user-roles")]);
    }

    #[test]
    fn method_overrides_in_the_query_are_recognized() {
        for q in ["_method=DELETE", "a=1&_method=put", "_METHOD=x", "%5Fmethod=DELETE", "_method"] {
            assert!(query_overrides_method(q), "{q}");
        }
        for q in ["method=DELETE", "a=_method", "x_method=1", ""] {
            assert!(!query_overrides_method(q), "{q}");
        }
    }

    #[test]
    fn configured_names_are_stripped_too_and_defaults_stay_stripped() {
        let custom = IdentityHeaders { user_id: "X-Auth-Sub".into(), ..IdentityHeaders::default() };
        let names = IdentityNames::new(&custom).unwrap();
        assert_eq!(names.user_id.as_str(), "x-auth-sub");
        assert!(names.is_stripped("x_auth_sub") && names.is_stripped("X-User-Id"));
    }

    #[test]
    fn header_values_must_be_plain() {
        assert!(safe_header_value("alice@example.com"));
        assert!(safe_header_value("admin,user"));
        assert!(!safe_header_value("a\r\nX-Evil: 1"));
        assert!(!safe_header_value("caf\u{e9}"));
        assert!(!safe_header_value(&"a".repeat(1025)));
    }
}
