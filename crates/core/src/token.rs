//! Refresh tokens: 256 random bits, shown to the client once, stored as SHA-256.
//!
//! Storing only the hash means a database leak yields no usable token, and a
//! lookup by hash leaks nothing through timing about the secret itself.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// Length of the token's secret in bytes.
pub const REFRESH_TOKEN_BYTES: usize = 32;

/// The SHA-256 of a refresh token: what the store keeps and looks up.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is not a secret, but eight hex digits are enough to correlate logs.
        write!(f, "TokenHash({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// A freshly minted refresh token. Its `Debug` never prints the secret.
pub struct RefreshToken {
    encoded: String,
    hash: TokenHash,
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshToken").field("hash", &self.hash).finish_non_exhaustive()
    }
}

impl RefreshToken {
    /// Builds a token from random bytes the caller drew from the OS.
    pub fn from_random(bytes: [u8; REFRESH_TOKEN_BYTES]) -> Self {
        Self { encoded: URL_SAFE_NO_PAD.encode(bytes), hash: TokenHash(Sha256::digest(bytes).into()) }
    }

    /// The opaque string handed to the client (43 base64url characters).
    pub fn expose(&self) -> &str {
        &self.encoded
    }

    pub fn hash(&self) -> TokenHash {
        self.hash
    }
}

/// Hashes a token presented by a client, or `None` when it cannot be one of
/// ours (wrong length or alphabet) so the store is not asked at all.
pub fn hash_presented(token: &str) -> Option<TokenHash> {
    if token.len() != 43 {
        return None;
    }
    let mut bytes = [0u8; REFRESH_TOKEN_BYTES];
    let n = URL_SAFE_NO_PAD.decode_slice(token, &mut bytes).ok()?;
    (n == REFRESH_TOKEN_BYTES).then(|| TokenHash(Sha256::digest(bytes).into()))
}

/// What the store found for a presented refresh token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presented {
    /// No such token.
    Unknown,
    /// It was exchanged before: whoever presents it now replayed it.
    AlreadyRotated,
    /// Live, and now spent (the conditional update that spends it is the
    /// race arbiter); `session_live` and `user_banned` describe its session.
    Spent { session_live: bool, user_banned: bool },
}

/// The refresh rotation rule (strict OAuth 2.0 BCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// Refuse and change nothing (a spent token is rolled back).
    Invalid,
    /// Refuse and revoke the whole session: the token family leaked.
    RevokeSession,
    /// Store the next token of the family and issue an access token.
    Rotate,
}

pub fn refresh_outcome(presented: Presented) -> RefreshOutcome {
    match presented {
        Presented::Unknown => RefreshOutcome::Invalid,
        Presented::AlreadyRotated => RefreshOutcome::RevokeSession,
        Presented::Spent { session_live: true, user_banned: false } => RefreshOutcome::Rotate,
        Presented::Spent { .. } => RefreshOutcome::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_live_token_of_a_live_session_rotates_and_a_replay_revokes() {
        let spent = |session_live, user_banned| Presented::Spent { session_live, user_banned };
        assert_eq!(refresh_outcome(Presented::Unknown), RefreshOutcome::Invalid);
        assert_eq!(refresh_outcome(Presented::AlreadyRotated), RefreshOutcome::RevokeSession);
        assert_eq!(refresh_outcome(spent(true, false)), RefreshOutcome::Rotate);
        assert_eq!(refresh_outcome(spent(false, false)), RefreshOutcome::Invalid);
        assert_eq!(refresh_outcome(spent(true, true)), RefreshOutcome::Invalid);
    }

    #[test]
    fn presented_token_hashes_like_the_minted_one() {
        let t = RefreshToken::from_random([7; 32]);
        assert_eq!(t.expose().len(), 43);
        assert_eq!(hash_presented(t.expose()), Some(t.hash()));
        let other = RefreshToken::from_random([8; 32]);
        assert_ne!(t.hash(), other.hash());
    }

    #[test]
    fn hash_is_sha256_of_the_raw_bytes() {
        // SHA-256 of 32 zero bytes, a published test vector.
        let t = RefreshToken::from_random([0; 32]);
        assert_eq!(
            t.hash().0.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
    }

    #[test]
    fn refuses_what_cannot_be_a_token() {
        for bad in ["", "abc", &"a".repeat(44), &"!".repeat(43), &format!("{}=", "A".repeat(42))] {
            assert_eq!(hash_presented(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = RefreshToken::from_random([9; 32]);
        assert!(!format!("{t:?}").contains(t.expose()));
    }
}
