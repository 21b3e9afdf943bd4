//! In-memory token buckets: the embedded default, and the `local` fallback
//! while Redis is unreachable. Same arithmetic as the Redis script
//! ([`bouncer_core::bucket`]).
//!
//! Sharded so concurrent requests for different buckets rarely contend,
//! and bounded: a flood of distinct keys (one per spoofed IP, say) evicts
//! idle buckets first and, if none are idle, the bucket nearest to full —
//! forgetting a bucket only ever resets it to full, never blocks anyone.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Mutex,
    time::Instant,
};

use bouncer_core::bucket::{self, Decision, Limit};

const SHARDS: usize = 64;

/// Bucket id → theoretical arrival time (µs).
type Shard = Mutex<HashMap<Box<str>, u64>>;

/// Buckets of this process only.
pub struct MemoryBuckets {
    shards: Box<[Shard]>,
    hasher: RandomState,
    per_shard: usize,
    origin: Instant,
}

impl std::fmt::Debug for MemoryBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBuckets").field("capacity", &(self.per_shard * SHARDS)).finish()
    }
}

impl MemoryBuckets {
    /// Holds at most about `capacity` buckets.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            origin: Instant::now(),
        }
    }

    /// Takes one token from `key`'s bucket now.
    pub fn take(&self, key: &str, limit: &Limit) -> Decision {
        self.take_at(key, limit, self.origin.elapsed().as_micros() as u64)
    }

    /// [`Self::take`] with the clock passed in (microseconds, monotonic).
    pub fn take_at(&self, key: &str, limit: &Limit, now_us: u64) -> Decision {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut buckets = shard.lock().unwrap_or_else(|p| p.into_inner());
        let (decision, next) = bucket::take(limit, buckets.get(key).copied(), now_us);
        if let Some(tat) = next {
            match buckets.get_mut(key) {
                Some(slot) => *slot = tat,
                None => {
                    if buckets.len() >= self.per_shard {
                        evict(&mut buckets, now_us);
                    }
                    buckets.insert(key.into(), tat);
                }
            }
        }
        decision
    }

    /// Buckets currently held (for metrics and tests).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops every full (idle) bucket; if none is, the one closest to full.
fn evict(buckets: &mut HashMap<Box<str>, u64>, now_us: u64) {
    let before = buckets.len();
    buckets.retain(|_, tat| *tat > now_us);
    if buckets.len() == before
        && let Some(oldest) = buckets.iter().min_by_key(|(_, tat)| **tat).map(|(k, _)| k.clone())
    {
        buckets.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Limit = Limit { burst: 2, interval_us: 1_000_000 };

    #[test]
    fn buckets_are_independent_per_key() {
        let m = MemoryBuckets::new(100);
        assert!(m.take_at("a", &LIMIT, 0).allowed);
        assert!(m.take_at("a", &LIMIT, 0).allowed);
        assert!(!m.take_at("a", &LIMIT, 0).allowed, "a's burst is spent");
        assert!(m.take_at("b", &LIMIT, 0).allowed, "b has its own bucket");
        assert!(m.take_at("a", &LIMIT, 1_000_000).allowed, "a refills with time");
    }

    #[test]
    fn the_map_stays_bounded_under_a_flood_of_keys() {
        let m = MemoryBuckets::new(SHARDS); // one bucket per shard
        for i in 0..10_000 {
            m.take_at(&format!("ip-{i}"), &LIMIT, 0);
        }
        assert!(m.len() <= SHARDS, "held {} buckets for a capacity of {SHARDS}", m.len());
    }

    #[test]
    fn eviction_drops_idle_buckets_and_otherwise_the_one_nearest_full() {
        let mut map: HashMap<Box<str>, u64> =
            [("idle".into(), 5), ("busy".into(), 50), ("busier".into(), 90)].into_iter().collect();
        evict(&mut map, 10);
        assert_eq!(map.len(), 2, "only the bucket already full again goes: {map:?}");
        evict(&mut map, 10);
        assert_eq!(map.keys().map(|k| &**k).collect::<Vec<_>>(), ["busier"], "then the nearest to full");
    }
}
