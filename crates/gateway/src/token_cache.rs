//! A bounded cache of verified access tokens, so a client presenting the
//! same token again costs a hash lookup instead of an Ed25519 verification
//! (~60 µs, by far the largest per-request cost — see benches/README.md).
//!
//! Only successful verifications are cached, keyed by the whole token. A hit
//! still re-checks issuer, audience and times against `now`, and the
//! revocation check runs on every request regardless. Entries are tied to
//! the JWKS generation they were verified under: any key-set refresh retires
//! them, so a key removed from the JWKS stops being trusted at the next
//! refresh, cached or not. Each shard is cleared when full — crude, but
//! memory stays bounded and the cost of a miss is one verification.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, RwLock},
};

use bouncer_core::claims::AccessClaims;

const SHARDS: usize = 16;
/// Entries per shard; 16 × 512 tokens of ~1 KiB is a few MiB at most.
const PER_SHARD: usize = 512;

struct Entry {
    claims: Arc<AccessClaims>,
    generation: u64,
}

pub struct VerifiedTokens {
    shards: Vec<RwLock<HashMap<Box<str>, Entry>>>,
    hasher: RandomState,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| RwLock::default()).collect(), hasher: RandomState::new() }
    }
}

impl VerifiedTokens {
    fn shard(&self, token: &str) -> &RwLock<HashMap<Box<str>, Entry>> {
        &self.shards[(self.hasher.hash_one(token) as usize) % SHARDS]
    }

    /// The claims of `token` if it was verified under key-set `generation`.
    pub fn get(&self, token: &str, generation: u64) -> Option<Arc<AccessClaims>> {
        let shard = self.shard(token).read().unwrap_or_else(|p| p.into_inner());
        shard.get(token).filter(|e| e.generation == generation).map(|e| e.claims.clone())
    }

    pub fn insert(&self, token: &str, claims: Arc<AccessClaims>, generation: u64) {
        let mut shard = self.shard(token).write().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= PER_SHARD {
            shard.clear();
        }
        shard.insert(token.into(), Entry { claims, generation });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bouncer_core::claims::NewAccessToken;
    use time::OffsetDateTime;
    use uuid::Uuid;

    fn claims() -> Arc<AccessClaims> {
        Arc::new(AccessClaims::issue(
            NewAccessToken {
                issuer: "i",
                audience: "a",
                user_id: Uuid::nil(),
                session_id: Uuid::nil(),
                email: "e@example.com",
                roles: &[],
                ttl: std::time::Duration::from_secs(60),
                jti: Uuid::nil(),
            },
            OffsetDateTime::now_utc(),
        ))
    }

    #[test]
    fn hits_only_under_the_same_key_generation() {
        let cache = VerifiedTokens::default();
        cache.insert("tok", claims(), 1);
        assert!(cache.get("tok", 1).is_some());
        assert!(cache.get("tok", 2).is_none(), "a key-set refresh retires entries");
        assert!(cache.get("other", 1).is_none());
    }

    #[test]
    fn stays_bounded() {
        let cache = VerifiedTokens::default();
        for i in 0..(SHARDS * PER_SHARD * 3) {
            cache.insert(&format!("t{i}"), claims(), 1);
        }
        let total: usize = cache.shards.iter().map(|s| s.read().unwrap().len()).sum();
        assert!(total <= SHARDS * PER_SHARD, "{total} entries");
    }
}
