//! The password policy: length limits only, as NIST SP 800-63B recommends.
//!
//! Composition rules ("one digit, one symbol") are deliberately absent: they
//! push users to predictable patterns. Length is counted in Unicode scalar
//! values so a passphrase in any script gets the same allowance.

use serde::{Deserialize, Serialize};

/// Length limits for new passwords (`admin.password` in `bouncer.yaml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordPolicy {
    /// Fewest characters accepted. Default 12.
    pub min_length: usize,
    /// Most characters accepted. Default 128; bounds the work of one hash.
    pub max_length: usize,
    /// Argon2id cost parameters.
    pub hash: HashParams,
}

/// Argon2id cost. Changing these makes the next successful login rehash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashParams {
    /// Memory in KiB. Default 19456 (19 MiB), OWASP's recommendation.
    pub memory_kib: u32,
    /// Passes over memory. Default 2.
    pub iterations: u32,
    /// Lanes. Default 1.
    pub parallelism: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        Self { memory_kib: 19_456, iterations: 2, parallelism: 1 }
    }
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_length: 12, max_length: 128, hash: HashParams::default() }
    }
}

/// Why a password was refused; the text is safe to show the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyViolation {
    #[error("must be at least {0} characters")]
    TooShort(usize),
    #[error("must be at most {0} characters")]
    TooLong(usize),
}

impl PasswordPolicy {
    /// Checks a candidate password. The byte length is checked first so a
    /// megabyte of input is refused without walking it.
    pub fn check(&self, password: &str) -> Result<(), PolicyViolation> {
        if self.exceeds_max(password) {
            return Err(PolicyViolation::TooLong(self.max_length));
        }
        if password.chars().count() < self.min_length {
            return Err(PolicyViolation::TooShort(self.min_length));
        }
        Ok(())
    }

    /// Whether `password` is longer than any password this policy admits.
    /// Used by login to refuse over-long input before it reaches Argon2.
    pub fn exceeds_max(&self, password: &str) -> bool {
        // A char is at most 4 bytes, so more bytes than that is over for sure.
        password.len() > self.max_length.saturating_mul(4) || password.chars().count() > self.max_length
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_length_in_characters_not_bytes() {
        let p = PasswordPolicy::default();
        assert_eq!(p.check("short"), Err(PolicyViolation::TooShort(12)));
        assert_eq!(p.check("correct horse"), Ok(()));
        // 12 three-byte characters: long enough although only 12 "letters".
        assert_eq!(p.check(&"密".repeat(12)), Ok(()));
        assert_eq!(p.check(&"密".repeat(128)), Ok(()));
        assert_eq!(p.check(&"密".repeat(129)), Err(PolicyViolation::TooLong(128)));
        assert_eq!(p.check(&"a".repeat(1_000_000)), Err(PolicyViolation::TooLong(128)));
    }
}
