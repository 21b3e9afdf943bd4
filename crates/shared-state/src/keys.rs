//! API keys on Redis: how admin replicas tell gateways of their own which
//! keys they may accept — the same shape as the revocation bus.
//!
//! A hash `{prefix}api_keys` holds one field per user with that user's
//! usable keys (id, prefix, SHA-256, expiry, roles — never a key), and a
//! `recorded` field once an admin has written every key from its store.
//! Each write is announced on the channel of the same name: a user id
//! (that user's field changed) or `*` (everything was rewritten). A gateway
//! subscribes, then loads the whole hash — at start, after every reconnect
//! and on `*` — and counts itself loaded only once the hash is marked
//! recorded; in between it keeps the keys it had. Admins rewrite the whole
//! hash when they start and every minute, so a Redis that lost its data
//! converges again.

use std::{collections::HashMap, time::Duration};

use bouncer_core::{
    credential::{KeyUpdate, UsableApiKey},
    token::TokenHash,
};
use fred::{interfaces::HashesInterface, types::scripts::Script};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::redis::{Redis, RedisError};

/// The hash field that says an admin has written every key.
const RECORDED: &str = "recorded";
/// The announcement of a full rewrite.
const EVERYTHING: &str = "*";

/// Sets (or, for no keys, removes) one user's field and announces it.
const USER_SCRIPT: &str = r#"
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"#;

/// Replaces the whole hash, marks it recorded and announces it.
const ALL_SCRIPT: &str = r#"
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'recorded', '1')
redis.call('PUBLISH', KEYS[1], '*')
return 1
"#;

/// The key feed on one Redis (one client each for the admin's writes and
/// a gateway's reads; the subscription has its own connection).
pub struct RedisKeys {
    redis: Redis,
    key: String,
    user_script: Script,
    all_script: Script,
}

impl std::fmt::Debug for RedisKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKeys").field("key", &self.key).finish_non_exhaustive()
    }
}

impl RedisKeys {
    pub fn new(redis: Redis) -> Self {
        Self {
            key: redis.key("api_keys"),
            redis,
            user_script: Script::from_lua(USER_SCRIPT),
            all_script: Script::from_lua(ALL_SCRIPT),
        }
    }

    /// Admin: `user`'s usable keys after a change (none: the field goes).
    pub async fn publish_user(&self, user: Uuid, keys: &[UsableApiKey]) -> Result<(), RedisError> {
        let args = vec![user.to_string(), encode(keys)];
        let _: i64 =
            self.user_script.evalsha_with_reload(self.redis.client(), self.key.as_str(), args).await?;
        Ok(())
    }

    /// Admin: every usable key, replacing what the hash held.
    pub async fn publish_all(&self, keys: &[UsableApiKey]) -> Result<(), RedisError> {
        let mut by_user: HashMap<Uuid, Vec<UsableApiKey>> = HashMap::new();
        for key in keys {
            by_user.entry(key.user_id).or_default().push(key.clone());
        }
        let mut args = Vec::with_capacity(2 * by_user.len());
        for (user, theirs) in &by_user {
            args.push(user.to_string());
            args.push(encode(theirs));
        }
        let _: i64 =
            self.all_script.evalsha_with_reload(self.redis.client(), self.key.as_str(), args).await?;
        Ok(())
    }

    /// Gateway: hands every update to `apply`, for as long as the process
    /// runs — subscribing, loading the whole hash, then following the
    /// announcements, and loading the hash again after every reconnect.
    pub async fn follow(&self, apply: impl Fn(KeyUpdate) + Send + Sync) {
        let mut subscription = match crate::redis::subscribe(&self.redis, &self.key, "api keys").await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the api key subscriber");
                return;
            }
        };
        let (messages, reconnects) = (&mut subscription.messages, &mut subscription.reconnects);
        self.load_all(&apply).await;
        loop {
            tokio::select! {
                message = messages.recv() => match message {
                    Ok(m) => match m.value.as_str().as_deref() {
                        Some(EVERYTHING) => self.load_all(&apply).await,
                        Some(user) => match Uuid::parse_str(user) {
                            Ok(user) => self.load_user(user, &apply).await,
                            Err(_) => tracing::warn!("ignoring a malformed api key message"),
                        },
                        None => tracing::warn!("ignoring a malformed api key message"),
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => self.load_all(&apply).await,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                reconnect = reconnects.recv() => match reconnect {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        // As the revocation feed: now, and once the
                        // resubscription has surely finished.
                        self.load_all(&apply).await;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        self.load_all(&apply).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Loads the hash until it is marked recorded, then hands it over whole.
    async fn load_all(&self, apply: &impl Fn(KeyUpdate)) {
        let mut waiting_said = false;
        loop {
            match self.redis.client().hgetall::<HashMap<String, String>, _>(self.key.as_str()).await {
                Ok(fields) if fields.contains_key(RECORDED) => {
                    let mut keys = Vec::new();
                    for (user, value) in &fields {
                        if let Ok(user) = Uuid::parse_str(user) {
                            keys.extend(decode(user, value));
                        }
                    }
                    tracing::debug!(keys = keys.len(), "api keys loaded from redis");
                    apply(KeyUpdate::All(keys));
                    return;
                }
                Ok(_) => {
                    if !std::mem::replace(&mut waiting_said, true) {
                        tracing::info!("waiting for an admin to record the api keys in redis");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot load the api keys; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn load_user(&self, user: Uuid, apply: &impl Fn(KeyUpdate)) {
        let field = user.to_string();
        match self.redis.client().hget::<Option<String>, _, _>(self.key.as_str(), field.as_str()).await {
            Ok(value) => {
                let keys = value.map(|v: String| decode(user, &v)).unwrap_or_default();
                apply(KeyUpdate::User { user, keys })
            }
            // Refuse the user's keys rather than keep what may be revoked;
            // the next full load brings back what is still valid.
            Err(e) => {
                tracing::warn!(error = %e, user_id = %user, "cannot load a user's api keys; dropping them");
                apply(KeyUpdate::User { user, keys: Vec::new() });
            }
        }
    }
}

/// One line per key: `id prefix sha256-hex expiry-unix-seconds|- role,role`.
fn encode(keys: &[UsableApiKey]) -> String {
    let mut out = String::new();
    for k in keys {
        if !out.is_empty() {
            out.push('\n');
        }
        let hash: String = k.hash.0.iter().map(|b| format!("{b:02x}")).collect();
        let expires = k.expires_at.map_or_else(|| "-".to_owned(), |t| t.unix_timestamp().to_string());
        out.push_str(&format!("{} {} {hash} {expires} {}", k.id, k.prefix, k.roles.join(",")));
    }
    out
}

/// The keys of `user` in a field; a malformed line is skipped (and so
/// refused), never trusted.
fn decode(user: Uuid, value: &str) -> Vec<UsableApiKey> {
    value
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(5, ' ');
            let id = Uuid::parse_str(parts.next()?).ok()?;
            let prefix = parts.next()?.to_owned();
            let hex = parts.next()?;
            let mut hash = [0u8; 32];
            if hex.len() != 64 {
                return None;
            }
            for (i, byte) in hash.iter_mut().enumerate() {
                *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            let expires_at = match parts.next()? {
                "-" => None,
                secs => Some(OffsetDateTime::from_unix_timestamp(secs.parse().ok()?).ok()?),
            };
            let roles =
                parts.next().unwrap_or("").split(',').filter(|r| !r.is_empty()).map(str::to_owned).collect();
            Some(UsableApiKey { id, user_id: user, prefix, hash: TokenHash(hash), roles, expires_at })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_garbage_is_dropped() {
        let user = Uuid::from_u128(1);
        let keys = vec![
            UsableApiKey {
                id: Uuid::from_u128(2),
                user_id: user,
                prefix: "abcd0123".into(),
                hash: TokenHash([7; 32]),
                roles: vec!["reports".into(), "user".into()],
                expires_at: Some(OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()),
            },
            UsableApiKey {
                id: Uuid::from_u128(3),
                user_id: user,
                prefix: "00000000".into(),
                hash: TokenHash([0xab; 32]),
                roles: vec![],
                expires_at: None,
            },
        ];
        assert_eq!(decode(user, &encode(&keys)), keys);
        let mangled = format!("{}\nnot a key\n{} x", encode(&keys[..1]), Uuid::from_u128(4));
        assert_eq!(decode(user, &mangled), keys[..1], "only well-formed lines count");
        assert_eq!(decode(user, ""), Vec::new());
    }
}
