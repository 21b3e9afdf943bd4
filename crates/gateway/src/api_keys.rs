//! The API keys this gateway accepts, as the admin announces them.
//!
//! The gateway never reads the database: the admin sends the keys that
//! may be used (hash, owner, roles, expiry — never a key), all of them at
//! start and periodically, and one user's after any change that affects
//! them (a key made or deleted, the owner banned, unbanned, deleted or
//! given other roles). Checking a presented key is a parse, a SHA-256, a
//! map lookup by its public prefix and a constant-time comparison.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use bouncer_core::{
    claims::{AccessClaims, Audience},
    credential::{KeyUpdate, UsableApiKey, parse_api_key},
};
use time::OffsetDateTime;
use uuid::Uuid;

/// A key with the identity the gateway forwards for it, built once per
/// update rather than per request.
#[derive(Debug)]
pub struct KeyIdentity {
    pub key: UsableApiKey,
    /// The owner as the decision's other steps read a caller: `sub`, the
    /// key's roles, no session, no email.
    pub claims: Arc<AccessClaims>,
}

/// Why a presented key is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    /// The admin has not sent the keys yet (503).
    NotLoaded,
    /// Not a key, unknown, wrong, or expired (401).
    Invalid,
}

#[derive(Debug, Default)]
struct Keys {
    by_prefix: HashMap<String, Arc<KeyIdentity>>,
    by_user: HashMap<Uuid, Vec<String>>,
}

/// The keys accepted now.
#[derive(Debug, Default)]
pub struct ApiKeySet {
    keys: RwLock<Keys>,
    loaded: AtomicBool,
}

impl ApiKeySet {
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Applies what the admin sent: every key, or one user's.
    pub fn apply(&self, update: &KeyUpdate) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        match update {
            KeyUpdate::All(all) => {
                *keys = Keys::default();
                for key in all {
                    insert(&mut keys, key);
                }
                drop(keys);
                if !self.loaded.swap(true, Ordering::AcqRel) {
                    tracing::info!(keys = all.len(), "api keys loaded");
                }
            }
            KeyUpdate::User { user, keys: theirs } => {
                for prefix in keys.by_user.remove(user).unwrap_or_default() {
                    keys.by_prefix.remove(&prefix);
                }
                for key in theirs.iter().filter(|k| k.user_id == *user) {
                    insert(&mut keys, key);
                }
            }
        }
    }

    /// The identity of `presented` at `now`.
    pub fn verify(&self, presented: &str, now: OffsetDateTime) -> Result<Arc<KeyIdentity>, KeyRefusal> {
        if !self.is_loaded() {
            return Err(KeyRefusal::NotLoaded);
        }
        let (prefix, hash) = parse_api_key(presented).ok_or(KeyRefusal::Invalid)?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let found = keys.by_prefix.get(prefix).ok_or(KeyRefusal::Invalid)?;
        if found.key.admits(&hash, now) { Ok(found.clone()) } else { Err(KeyRefusal::Invalid) }
    }
}

fn insert(keys: &mut Keys, key: &UsableApiKey) {
    let claims = AccessClaims {
        iss: String::new(),
        aud: Audience::Many(Vec::new()),
        sub: key.user_id,
        sid: None,
        roles: key.roles.clone(),
        email: None,
        client_id: None,
        iat: 0,
        nbf: 0,
        exp: key.expires_at.map_or(i64::MAX, |t| t.unix_timestamp()),
        jti: key.id,
    };
    let identity = Arc::new(KeyIdentity { key: key.clone(), claims: Arc::new(claims) });
    keys.by_user.entry(key.user_id).or_default().push(key.prefix.clone());
    keys.by_prefix.insert(key.prefix.clone(), identity);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bouncer_core::credential::ApiKey;
    use time::macros::datetime;

    fn usable(key: &ApiKey, user: Uuid, expires_at: Option<OffsetDateTime>) -> UsableApiKey {
        UsableApiKey {
            id: Uuid::now_v7(),
            user_id: user,
            prefix: key.prefix().to_owned(),
            hash: key.hash(),
            roles: vec!["user".into()],
            expires_at,
        }
    }

    #[test]
    fn keys_are_accepted_until_replaced_removed_or_expired() {
        let now = datetime!(2026-06-01 12:00 UTC);
        let (alice, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let a = ApiKey::from_random([1; 4], [1; 32]);
        let b = ApiKey::from_random([2; 4], [2; 32]);
        let expiring = ApiKey::from_random([3; 4], [3; 32]);
        let set = ApiKeySet::default();
        assert_eq!(set.verify(a.expose(), now).unwrap_err(), KeyRefusal::NotLoaded);
        set.apply(&KeyUpdate::All(vec![
            usable(&a, alice, None),
            usable(&b, bob, None),
            usable(&expiring, bob, Some(now)),
        ]));
        let who = set.verify(a.expose(), now).expect("alice's key");
        assert_eq!(
            (who.claims.sub, who.claims.sid, &who.claims.roles),
            (alice, None, &vec!["user".to_owned()])
        );
        assert_eq!(set.verify(expiring.expose(), now).unwrap_err(), KeyRefusal::Invalid, "expired at now");
        let mut wrong = b.expose().to_owned();
        wrong.replace_range(wrong.len() - 1.., if wrong.ends_with('A') { "B" } else { "A" });
        assert_eq!(
            set.verify(&wrong, now).unwrap_err(),
            KeyRefusal::Invalid,
            "the prefix alone admits nothing"
        );
        assert_eq!(set.verify("bk_nope", now).unwrap_err(), KeyRefusal::Invalid);

        // Bob's keys after a change: none. Alice's stay.
        set.apply(&KeyUpdate::User { user: bob, keys: vec![] });
        assert_eq!(set.verify(b.expose(), now).unwrap_err(), KeyRefusal::Invalid);
        assert!(set.verify(a.expose(), now).is_ok());
        // An update for one user never installs another's key.
        set.apply(&KeyUpdate::User { user: alice, keys: vec![usable(&b, bob, None)] });
        assert_eq!(set.verify(a.expose(), now).unwrap_err(), KeyRefusal::Invalid);
        assert_eq!(set.verify(b.expose(), now).unwrap_err(), KeyRefusal::Invalid);
    }
}
