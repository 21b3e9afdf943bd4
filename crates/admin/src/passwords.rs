//! Argon2id hashing off the async runtime, with bounded concurrency.
//!
//! Hashing is CPU-bound (~40 ms at the defaults), so it runs on tokio's
//! blocking pool behind a semaphore with one permit per core: a login flood
//! queues here instead of starving every other endpoint, and past
//! [`MAX_QUEUED_PER_PERMIT`] waiters per permit new work is shed with 503
//! rather than queued beyond any client's patience.
//!
//! Verification (the hot path: every login) reuses one Argon2 memory buffer
//! per permit instead of allocating 19 MiB per call: fresh pages cost ~1,200
//! page faults per login, measured at roughly a tenth of a login's CPU.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{
        PasswordHasher as _,
        phc::{Output, PasswordHash},
    },
};
use bouncer_core::password::HashParams;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Waiters allowed per permit before hashing requests are refused.
pub const MAX_QUEUED_PER_PERMIT: usize = 64;

/// Result of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub matches: bool,
    /// The stored hash uses other parameters than configured: rehash it.
    pub needs_rehash: bool,
}

/// The shared hasher.
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    capacity: usize,
    queued: AtomicUsize,
    /// Argon2 working memory, one buffer per running verification.
    buffers: Arc<Mutex<Vec<Vec<Block>>>>,
    /// A real hash of a random password, verified for unknown emails so they
    /// cost the same time as a wrong password.
    dummy: String,
}

impl Passwords {
    /// Builds the hasher with `permits` concurrent hashes (usually the core
    /// count). Computes the dummy hash, so it takes one hash's time.
    pub fn new(config: HashParams, permits: usize) -> Result<Self, ApiError> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|e| ApiError::Internal(format!("invalid Argon2 parameters: {e}")))?;
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| ApiError::Internal(e.to_string()))?;
        let dummy = hash_blocking(&params, &hex::encode(random))?;
        let permits = permits.max(1);
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(permits)),
            capacity: permits * MAX_QUEUED_PER_PERMIT,
            queued: AtomicUsize::new(0),
            buffers: Arc::default(),
            dummy,
        })
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let params = self.params.clone();
        self.run(move |_| hash_blocking(&params, &password)).await?
    }

    /// Checks `password` against a stored PHC string. A hash that does not
    /// parse counts as a mismatch (and is logged), never as a match.
    pub async fn verify(&self, password: String, stored: String) -> Result<Verified, ApiError> {
        let params = self.params.clone();
        self.run(move |memory| verify_blocking(&params, &password, &stored, memory)).await
    }

    /// Spends the same work as [`Self::verify`] on the dummy hash; always a mismatch.
    pub async fn verify_dummy(&self, password: String) -> Result<(), ApiError> {
        let stored = self.dummy.clone();
        let params = self.params.clone();
        self.run(move |memory| verify_blocking(&params, &password, &stored, memory)).await.map(drop)
    }

    /// Hashes waiting for a permit right now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = {
            // The guard leaves the queue even when this future is dropped
            // while waiting (a client that disconnects mid-queue).
            let _queued = QueueSlot::take(&self.queued, self.capacity).ok_or(ApiError::Overloaded)?;
            self.permits.clone().acquire_owned().await
        };
        let permit = permit.map_err(|_| ApiError::Internal("hasher closed".into()))?;
        let buffers = self.buffers.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut memory = buffers.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
            let result = work(&mut memory);
            buffers.lock().unwrap_or_else(|p| p.into_inner()).push(memory);
            result
        })
        .await
        .map_err(|e| ApiError::Internal(format!("hashing task failed: {e}")))
    }
}

/// One place in the hashing queue, released on drop.
struct QueueSlot<'a>(&'a AtomicUsize);

impl<'a> QueueSlot<'a> {
    fn take(queued: &'a AtomicUsize, capacity: usize) -> Option<Self> {
        let slot = QueueSlot(queued);
        (queued.fetch_add(1, Ordering::AcqRel) < capacity).then_some(slot)
    }
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn argon(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, ApiError> {
    argon(params)
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing failed: {e}")))
}

/// Recomputes the stored hash with its own algorithm, version, parameters
/// and salt in the reusable `memory`, and compares in constant time.
fn verify_blocking(params: &Params, password: &str, stored: &str, memory: &mut Vec<Block>) -> Verified {
    let mismatch = Verified { matches: false, needs_rehash: true };
    let Ok(parsed) = PasswordHash::new(stored) else {
        tracing::error!("stored password hash is not a PHC string; treating as mismatch");
        return mismatch;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else { return mismatch };
    let algorithm = Algorithm::try_from(parsed.algorithm.as_str());
    let version = parsed.version.map_or(Ok(Version::default()), Version::try_from);
    let (Ok(algorithm), Ok(version), Ok(stored_params)) = (algorithm, version, Params::try_from(&parsed))
    else {
        tracing::error!("stored password hash has unsupported parameters; treating as mismatch");
        return mismatch;
    };
    if memory.len() < stored_params.block_count() {
        memory.resize(stored_params.block_count(), Block::default());
    }
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    let argon = Argon2::new(algorithm, version, stored_params.clone());
    let computed =
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut *out, &mut memory[..]);
    // Output's equality is constant-time.
    let matches = computed.is_ok() && Output::new(out).is_ok_and(|o| o == *expected);
    let current = algorithm == Algorithm::Argon2id
        && version == Version::V0x13
        && stored_params.m_cost() == params.m_cost()
        && stored_params.t_cost() == params.t_cost()
        && stored_params.p_cost() == params.p_cost();
    Verified { matches, needs_rehash: !current }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> HashParams {
        HashParams { memory_kib: 64, iterations: 1, parallelism: 1 }
    }

    #[tokio::test]
    async fn hashes_verify_and_report_parameter_changes() {
        let p = Passwords::new(cheap(), 2).unwrap();
        let hash = p.hash("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        let ok = p.verify("correct horse battery".into(), hash.clone()).await.unwrap();
        assert_eq!(ok, Verified { matches: true, needs_rehash: false });
        let wrong = p.verify("wrong horse battery".into(), hash.clone()).await.unwrap();
        assert!(!wrong.matches);
        let stronger = Passwords::new(HashParams { memory_kib: 128, ..cheap() }, 1).unwrap();
        let old = stronger.verify("correct horse battery".into(), hash).await.unwrap();
        assert_eq!(old, Verified { matches: true, needs_rehash: true }, "old hashes still verify");
    }

    #[tokio::test]
    async fn reused_memory_gives_the_same_answers_across_parameter_sizes() {
        // A big then a small then a big hash through one buffer: leftovers
        // from an earlier verification must never change a result.
        let small = Passwords::new(cheap(), 1).unwrap();
        let big = Passwords::new(HashParams { memory_kib: 256, ..cheap() }, 1).unwrap();
        let big_hash = big.hash("big password 123".into()).await.unwrap();
        let small_hash = small.hash("small password 1".into()).await.unwrap();
        for _ in 0..2 {
            assert!(small.verify("big password 123".into(), big_hash.clone()).await.unwrap().matches);
            assert!(small.verify("small password 1".into(), small_hash.clone()).await.unwrap().matches);
            assert!(!small.verify("small password 2".into(), small_hash.clone()).await.unwrap().matches);
        }
        assert_eq!(small.buffers.lock().unwrap().len(), 1, "one permit, one buffer");
    }

    #[tokio::test]
    async fn garbage_hashes_never_match() {
        let p = Passwords::new(cheap(), 1).unwrap();
        let v = p.verify("x".into(), "not a hash".into()).await.unwrap();
        assert!(!v.matches);
        p.verify_dummy("anything".into()).await.unwrap();
    }

    #[tokio::test]
    async fn sheds_load_beyond_the_queue() {
        let p = Arc::new(Passwords::new(cheap(), 1).unwrap());
        let hold = p.permits.clone().acquire_owned().await.unwrap();
        let waiting: Vec<_> = (0..MAX_QUEUED_PER_PERMIT)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.verify_dummy("x".into()).await })
            })
            .collect();
        while p.queued() < MAX_QUEUED_PER_PERMIT {
            tokio::task::yield_now().await;
        }
        assert!(matches!(p.verify_dummy("x".into()).await, Err(ApiError::Overloaded)));
        assert_eq!(p.queued(), MAX_QUEUED_PER_PERMIT, "a refused request leaves no trace in the queue");
        // A waiter whose future is dropped (client gone) leaves the queue too.
        let abandoned = tokio::spawn({
            let p = p.clone();
            async move { p.verify_dummy("x".into()).await }
        });
        abandoned.abort();
        let _ = abandoned.await;
        assert_eq!(p.queued(), MAX_QUEUED_PER_PERMIT);
        drop(hold);
        for w in waiting {
            w.await.unwrap().unwrap();
        }
    }
}
