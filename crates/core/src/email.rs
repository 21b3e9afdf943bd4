//! Email addresses: trimmed, validated, compared case-insensitively.

/// Longest address accepted (RFC 5321's path limit less the angle brackets).
pub const MAX_EMAIL_LEN: usize = 254;

/// An email as given by the user (trimmed) plus its comparison key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email {
    display: String,
    key: String,
}

/// Why an email address was refused; the text is safe to show the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmailError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_EMAIL_LEN} characters")]
    TooLong,
    #[error("must look like name@example.com")]
    Malformed,
}

impl Email {
    /// Trims surrounding whitespace and checks the shape `local@domain.tld`.
    ///
    /// Deliberately permissive about the local part (deliverability is proved
    /// by mail, not by regex) but strict about what can hurt us: whitespace,
    /// control characters, a missing `@` or a domain without a dot.
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let display = input.trim();
        if display.is_empty() {
            return Err(EmailError::Empty);
        }
        if display.chars().count() > MAX_EMAIL_LEN {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = display.rsplit_once('@').ok_or(EmailError::Malformed)?;
        let bad_char = |c: char| c.is_whitespace() || c.is_control() || c == '@';
        let domain_ok = !domain.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if local.is_empty() || local.chars().any(bad_char) || domain.chars().any(bad_char) || !domain_ok {
            return Err(EmailError::Malformed);
        }
        Ok(Self { display: display.to_owned(), key: display.to_lowercase() })
    }

    /// The address as the user typed it, trimmed.
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The case-folded form used for uniqueness and lookups.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The comparison key of an address without validating it, for lookups of
/// input that may be malformed (a login with a typo must still answer 401).
pub fn lookup_key(input: &str) -> String {
    input.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_folds_case_for_the_key_only() {
        let e = Email::parse("  Alice@Example.COM \n").unwrap();
        assert_eq!(e.as_str(), "Alice@Example.COM");
        assert_eq!(e.key(), "alice@example.com");
        assert_eq!(lookup_key(" Alice@Example.COM"), e.key());
    }

    #[test]
    fn refuses_malformed_addresses() {
        for bad in [
            "",
            "   ",
            "alice",
            "alice@",
            "@example.com",
            "alice@example",
            "a b@example.com",
            "alice@exa mple.com",
            "alice@.example.com",
            "alice@example..com",
            "al\u{0}ice@example.com",
            "alice@example.com.",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn refuses_over_long_addresses() {
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
    }
}
