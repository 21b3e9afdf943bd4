//! Request-path normalization: the one spelling of a path that is matched,
//! rate-keyed and forwarded, so an upstream never sees a path the route
//! table did not.
//!
//! Rules (SPEC, "Gateway request pipeline" step 1, plus the gateway issue):
//! percent-encoded *unreserved* characters are decoded (`%41` → `A`,
//! `%2E` → `.`), other escapes are kept with upper-case hex; `.` and `..`
//! segments are resolved and repeated `/` merged; the result must decode to
//! valid UTF-8. Refused outright: anything but visible ASCII, a raw `\`, a
//! `;` (path parameters), a `#` (fragment), a `?` (the query is split off
//! before), an encoded `/`, `\`, `?`, `#`, `;` or NUL, a malformed escape,
//! and a `..` that climbs above the root.

use std::borrow::Cow;

/// Why a path was refused (always answered with 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path contains a character outside visible ASCII")]
    InvalidCharacter,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains ';' path parameters")]
    PathParameter,
    #[error("the path contains a fragment")]
    Fragment,
    #[error("the path contains a '?'; split the query off first")]
    QueryInPath,
    #[error("the path contains a malformed percent escape")]
    BadEscape,
    #[error("the path encodes a character that changes its structure (/ \\ ? # ; or NUL)")]
    EncodedDelimiter,
    #[error("the path does not decode to valid UTF-8")]
    InvalidUtf8,
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes `path` (the request target without its query string).
/// Borrows when the input is already normal, the common case, so the hot
/// path does not allocate.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut needs_rewrite = false;
    let mut i = 0;
    // Pass 1: validate every byte and escape; learn whether anything changes.
    let mut decoded_non_ascii = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::PathParameter),
            b'#' => return Err(PathError::Fragment),
            // The query is split off before normalizing; a '?' left in a
            // path means a caller passed the whole target.
            b'?' => return Err(PathError::QueryInPath),
            b'%' => {
                let (hi, lo) = match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let value = hi << 4 | lo;
                if matches!(value, b'/' | b'\\' | b'?' | b'#' | b';' | 0) {
                    return Err(PathError::EncodedDelimiter);
                }
                if is_unreserved(value)
                    || bytes[i + 1].is_ascii_lowercase()
                    || bytes[i + 2].is_ascii_lowercase()
                {
                    needs_rewrite = true;
                }
                decoded_non_ascii |= value >= 0x80;
                i += 3;
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => needs_rewrite = true,
            b'.' if bytes[i - 1] == b'/' => {
                let rest = &bytes[i + 1..];
                if rest.is_empty()
                    || rest[0] == b'/'
                    || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/'))
                {
                    needs_rewrite = true;
                }
            }
            0x21..=0x7e => {}
            _ => return Err(PathError::InvalidCharacter),
        }
        i += 1;
    }
    if decoded_non_ascii {
        check_utf8(bytes)?;
    }
    if !needs_rewrite {
        return Ok(Cow::Borrowed(path));
    }
    rewrite(bytes).map(Cow::Owned)
}

/// Every escape, decoded, must form valid UTF-8 (this also refuses
/// overlong forms such as `%C0%AE`, a disguised `.`).
fn check_utf8(bytes: &[u8]) -> Result<(), PathError> {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Validated in pass 1.
            let h = hex(bytes[i + 1]).unwrap_or(0);
            let l = hex(bytes[i + 2]).unwrap_or(0);
            decoded.push(h << 4 | l);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&decoded).map(drop).map_err(|_| PathError::InvalidUtf8)
}

/// Pass 2: decode unreserved escapes, upper-case the others, then resolve
/// dot segments and empty segments.
fn rewrite(bytes: &[u8]) -> Result<String, PathError> {
    let mut text = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let value = hex(bytes[i + 1]).unwrap_or(0) << 4 | hex(bytes[i + 2]).unwrap_or(0);
            if is_unreserved(value) {
                text.push(value as char);
            } else {
                text.push('%');
                text.push(bytes[i + 1].to_ascii_uppercase() as char);
                text.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            text.push(bytes[i] as char);
            i += 1;
        }
    }
    let trailing_slash = text.ends_with('/') || text.ends_with("/.") || text.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(text.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in
            ["/", "/api/orders", "/api/orders/", "/a/b.json", "/caf%C3%A9", "/x/%20y", "/a/.hidden", "/a/..b"]
        {
            let n = normalize_path(p).unwrap();
            assert_eq!(n, p);
            assert!(matches!(n, Cow::Borrowed(_)), "{p} should not allocate");
        }
    }

    #[test]
    fn rewrites_to_the_canonical_spelling() {
        for (input, expected) in [
            ("//api///orders", "/api/orders"),
            ("/api/./orders", "/api/orders"),
            ("/api/v1/../orders", "/api/orders"),
            ("/api/orders/.", "/api/orders/"),
            ("/api/orders/x/..", "/api/orders/"),
            ("/%61pi/%4Frders", "/api/Orders"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E/x", "/api/x"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a/%7e", "/a/~"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("//", "/"),
        ] {
            assert_eq!(normalize_path(input).unwrap(), expected, "normalizing {input}");
        }
    }

    #[test]
    fn refuses_what_could_confuse_an_upstream() {
        for (input, error) in [
            ("api", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/a\\b", PathError::Backslash),
            ("/a;jsessionid=1", PathError::PathParameter),
            ("/a#frag", PathError::Fragment),
            ("/a/%2f/b", PathError::EncodedDelimiter),
            ("/a/%2F/b", PathError::EncodedDelimiter),
            ("/a%5cb", PathError::EncodedDelimiter),
            ("/a%3fb", PathError::EncodedDelimiter),
            ("/a%23b", PathError::EncodedDelimiter),
            ("/a%3Bb", PathError::EncodedDelimiter),
            ("/a%00b", PathError::EncodedDelimiter),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("/a b", PathError::InvalidCharacter),
            ("/a\tb", PathError::InvalidCharacter),
            ("/caf\u{e9}", PathError::InvalidCharacter),
            ("/a%ff", PathError::InvalidUtf8),
            ("/%c0%ae%c0%ae/etc", PathError::InvalidUtf8),
            ("/..", PathError::AboveRoot),
            ("/a/../../etc/passwd", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
        ] {
            assert_eq!(normalize_path(input), Err(error), "{input:?}");
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for p in ["//a/./b/../c/", "/%61/%2e/%7E", "/x/y/z/../../w"] {
            let once = normalize_path(p).unwrap().into_owned();
            assert_eq!(normalize_path(&once).unwrap(), once, "idempotent for {p}");
        }
    }
}
