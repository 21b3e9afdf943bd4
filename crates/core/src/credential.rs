//! Machine credentials: OAuth2 client secrets and API keys.
//!
//! Both are 256 random bits shown once and kept only as a SHA-256 hash. A
//! slow hash (Argon2) buys nothing here: it protects low-entropy secrets a
//! person chose, while these cannot be guessed, and the gateway must check
//! an API key on every request with a hash and a map lookup.
//!
//! API keys read `bk_<prefix>_<secret>`: `prefix` (8 hex digits, public)
//! finds the key without a database scan and names it in lists and logs;
//! `secret` is 43 base64url characters. The hash covers the whole key.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::token::TokenHash;

/// Bytes of randomness in a client secret or an API key's secret.
pub const SECRET_BYTES: usize = 32;
/// Bytes of randomness in an API key's prefix.
pub const PREFIX_BYTES: usize = 4;

const KEY_START: &str = "bk_";
const PREFIX_LEN: usize = PREFIX_BYTES * 2;
const SECRET_LEN: usize = 43;

/// A client secret as issued: shown once, stored as [`Self::hash`].
pub struct ClientSecret {
    encoded: String,
    hash: TokenHash,
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecret").field("hash", &self.hash).finish_non_exhaustive()
    }
}

impl ClientSecret {
    pub fn from_random(bytes: [u8; SECRET_BYTES]) -> Self {
        let encoded = URL_SAFE_NO_PAD.encode(bytes);
        let hash = hash_text(&encoded);
        Self { encoded, hash }
    }

    pub fn expose(&self) -> &str {
        &self.encoded
    }

    pub fn hash(&self) -> TokenHash {
        self.hash
    }
}

/// The hash of a presented client secret, or `None` when it cannot be one.
pub fn hash_client_secret(presented: &str) -> Option<TokenHash> {
    let shaped = presented.len() == SECRET_LEN && presented.bytes().all(is_base64url);
    shaped.then(|| hash_text(presented))
}

/// An API key as issued: shown once, stored as its prefix and hash.
pub struct ApiKey {
    key: String,
    prefix: String,
    hash: TokenHash,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl ApiKey {
    pub fn from_random(prefix: [u8; PREFIX_BYTES], secret: [u8; SECRET_BYTES]) -> Self {
        let prefix: String = prefix.iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("{KEY_START}{prefix}_{}", URL_SAFE_NO_PAD.encode(secret));
        let hash = hash_text(&key);
        Self { key, prefix, hash }
    }

    /// The whole key, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.key
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn hash(&self) -> TokenHash {
        self.hash
    }
}

/// A presented API key, taken apart: its prefix (to look the key up) and
/// the hash of the whole key (to compare in constant time). `None` when the
/// text cannot be a key of ours.
pub fn parse_api_key(presented: &str) -> Option<(&str, TokenHash)> {
    let rest = presented.strip_prefix(KEY_START)?;
    let (prefix, secret) = (rest.get(..PREFIX_LEN)?, rest.get(PREFIX_LEN..)?);
    let secret = secret.strip_prefix('_')?;
    let shaped = prefix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && secret.len() == SECRET_LEN
        && secret.bytes().all(is_base64url);
    shaped.then(|| (prefix, hash_text(presented)))
}

/// Whether a header value looks like an API key at all (so a bearer token
/// can be told from a JWT before anything is parsed).
pub fn looks_like_api_key(value: &str) -> bool {
    value.starts_with(KEY_START)
}

/// Compares two hashes without an early exit: how long it takes says
/// nothing about how much of a stored hash a guess matched.
pub fn same_hash(a: &TokenHash, b: &TokenHash) -> bool {
    a.0.iter().zip(b.0.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A key a gateway may accept, with the roles it acts with: what the admin
/// computes with [`key_grants`] and hands to every gateway. It carries the
/// key's hash, never the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsableApiKey {
    pub id: uuid::Uuid,
    pub user_id: uuid::Uuid,
    pub prefix: String,
    pub hash: TokenHash,
    pub roles: Vec<String>,
    pub expires_at: Option<time::OffsetDateTime>,
}

impl UsableApiKey {
    /// Whether `presented` (the hash of a key with this key's prefix) is
    /// this key, still unexpired at `now`.
    pub fn admits(&self, presented: &TokenHash, now: time::OffsetDateTime) -> bool {
        // Both checks run: the comparison's time never depends on expiry.
        let same = same_hash(&self.hash, presented);
        same & self.expires_at.is_none_or(|t| now < t)
    }
}

/// What the admin tells gateways about API keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyUpdate {
    /// Every usable key: replaces what a gateway holds.
    All(Vec<UsableApiKey>),
    /// One user's usable keys after a change: replaces that user's.
    User { user: uuid::Uuid, keys: Vec<UsableApiKey> },
}

/// The roles an API key acts with, or `None` when it must be refused: a
/// key never outlives its expiry or its owner's ban, and never acts with a
/// role its owner has since lost (it was created with a subset of the
/// owner's roles; this keeps it one).
pub fn key_grants(
    key_roles: &[String],
    owner_roles: &[String],
    owner_banned: bool,
    expires_at: Option<time::OffsetDateTime>,
    now: time::OffsetDateTime,
) -> Option<Vec<String>> {
    if owner_banned || expires_at.is_some_and(|t| t <= now) {
        return None;
    }
    Some(key_roles.iter().filter(|r| owner_roles.contains(r)).cloned().collect())
}

/// Whether `asked` roles may be given to a credential of someone holding
/// `held` (API keys: a subset of the owner's; a client-credentials scope: a
/// subset of the client's). `Err` names the first role that may not.
pub fn within<'a>(asked: &'a [String], held: &[String]) -> Result<(), &'a str> {
    asked.iter().find(|r| !held.contains(r)).map_or(Ok(()), |r| Err(r.as_str()))
}

fn hash_text(text: &str) -> TokenHash {
    TokenHash(Sha256::digest(text.as_bytes()).into())
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_key_parses_back_to_its_prefix_and_hash() {
        let key = ApiKey::from_random([0xab, 0xcd, 0x01, 0x23], [7; SECRET_BYTES]);
        assert_eq!(key.prefix(), "abcd0123");
        assert!(key.expose().starts_with("bk_abcd0123_"), "{}", key.expose());
        assert_eq!(key.expose().len(), 3 + 8 + 1 + 43);
        let (prefix, hash) = parse_api_key(key.expose()).expect("our own key parses");
        assert_eq!(prefix, "abcd0123");
        assert!(same_hash(&hash, &key.hash()));
        assert!(!format!("{key:?}").contains(&key.expose()[12..]), "Debug never shows the secret");
    }

    #[test]
    fn anything_else_is_not_a_key() {
        let good = ApiKey::from_random([1; 4], [2; SECRET_BYTES]).expose().to_owned();
        for bad in [
            "",
            "bk_",
            "bk_abcd0123",
            "bk_abcd0123_",
            "bk_ABCD0123_AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI",
            "bk_abcd012_AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI",
            "xx_abcd0123_AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI",
            "bk_abcd0123_AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg",
            "bk_abcd0123_AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
            "bk_abcd0123_AgICAgICAgICAgICAgICAgI+ICAgICAgICAgICAgICAgI",
            "bk_abcdé123_AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI",
        ] {
            assert_eq!(parse_api_key(bad), None, "{bad:?}");
        }
        assert!(parse_api_key(&good).is_some());
    }

    #[test]
    fn a_key_grants_what_both_it_and_its_owner_hold_until_it_expires_or_the_owner_is_banned() {
        use time::macros::datetime;
        let v = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let now = datetime!(2026-06-01 12:00 UTC);
        let key = v(&["reports", "user"]);
        assert_eq!(key_grants(&key, &v(&["user", "reports", "admin"]), false, None, now), Some(key.clone()));
        assert_eq!(
            key_grants(&key, &v(&["user"]), false, None, now),
            Some(v(&["user"])),
            "a lost role is gone"
        );
        assert_eq!(key_grants(&key, &key, true, None, now), None, "banned owner");
        assert_eq!(key_grants(&key, &key, false, Some(now), now), None, "expired at its instant");
        assert_eq!(key_grants(&key, &key, false, Some(now + time::Duration::SECOND), now), Some(key.clone()));
        assert_eq!(within(&v(&["user"]), &key), Ok(()));
        assert_eq!(within(&v(&["user", "admin"]), &key), Err("admin"));
    }

    #[test]
    fn client_secrets_hash_only_when_shaped_like_ours() {
        let s = ClientSecret::from_random([9; SECRET_BYTES]);
        assert_eq!(s.expose().len(), 43);
        assert!(same_hash(&hash_client_secret(s.expose()).unwrap(), &s.hash()));
        assert_eq!(hash_client_secret("short"), None);
        assert_eq!(hash_client_secret(&format!("{}!", &s.expose()[1..])), None);
        let other = hash_client_secret(ClientSecret::from_random([8; SECRET_BYTES]).expose()).unwrap();
        assert!(!same_hash(&other, &s.hash()));
    }
}
