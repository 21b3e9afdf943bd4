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

use http::HeaderName;

/// Headers the gateway injects; a client may never supply them.
pub const X_USER_ID: &str = "x-user-id";
pub const X_USER_EMAIL: &str = "x-user-email";
pub const X_USER_ROLES: &str = "x-user-roles";
pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Stripped from every request on every route, in canonical (`-`, lower
/// case) form.
const STRIPPED: [&str; 11] = [
    X_USER_ID,
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

/// Whether a header name is an identity or re-routing header in any spelling.
pub fn is_stripped(name: &str) -> bool {
    let canonical = canonical(name);
    STRIPPED.contains(&canonical.as_str())
}

fn canonical(name: &str) -> String {
    name.chars().map(|c| if c == '_' || c == '.' { '-' } else { c.to_ascii_lowercase() }).collect()
}

/// The names to remove from a request's headers: every stripped spelling
/// present, plus what `Connection` names when that is one of them.
pub fn names_to_strip<'a>(
    names: impl Iterator<Item = &'a HeaderName>,
    connection: &[&str],
) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = names.filter(|n| is_stripped(n.as_str())).cloned().collect();
    for token in connection {
        if is_stripped(token.trim())
            && let Ok(name) = HeaderName::from_bytes(token.trim().to_ascii_lowercase().as_bytes())
            && !out.contains(&name)
        {
            out.push(name);
        }
    }
    out
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
            assert!(is_stripped(name), "{name}");
        }
        for name in ["x-user", "authorization", "x-request-id", "x-forwarded-for", "x-user-idx"] {
            assert!(!is_stripped(name), "{name}");
        }
    }

    #[test]
    fn connection_named_identity_headers_are_stripped_too() {
        let present = [HeaderName::from_static("x_user_id"), HeaderName::from_static("accept")];
        let names = names_to_strip(present.iter(), &["keep-alive", " X-User-Roles"]);
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
    fn header_values_must_be_plain() {
        assert!(safe_header_value("alice@example.com"));
        assert!(safe_header_value("admin,user"));
        assert!(!safe_header_value("a\r\nX-Evil: 1"));
        assert!(!safe_header_value("caf\u{e9}"));
        assert!(!safe_header_value(&"a".repeat(1025)));
    }
}
