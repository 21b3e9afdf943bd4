//! Upstream pools: round robin over an upstream's targets with passive
//! health. A target that fails to connect [`EJECT_AFTER`] times in a row is
//! skipped for [`EJECT_FOR`], then tried again; one success clears its
//! record. When every target is ejected the pool still answers (the one
//! whose ejection ends first) rather than failing closed on stale news.
//!
//! Time is passed in as milliseconds since an arbitrary monotonic origin,
//! so the rules are unit-tested without sleeping.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

pub const EJECT_AFTER: u32 = 3;
pub const EJECT_FOR: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
}

/// One upstream's targets and timeouts.
#[derive(Debug)]
pub struct Pool {
    targets: Vec<Target>,
    next: AtomicUsize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

impl Pool {
    pub fn new(addrs: Vec<SocketAddr>, connect_timeout: Duration, read_timeout: Duration) -> Self {
        let targets = addrs
            .into_iter()
            .map(|addr| Target { addr, failures: AtomicU32::new(0), ejected_until_ms: AtomicU64::new(0) })
            .collect();
        Self { targets, next: AtomicUsize::new(0), connect_timeout, read_timeout }
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The next healthy target not in `tried`, round robin; failing that,
    /// any untried one, then the one whose ejection ends first.
    pub fn pick(&self, now_ms: u64, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let n = self.targets.len();
        for _ in 0..n {
            let t = &self.targets[self.next.fetch_add(1, Ordering::Relaxed) % n];
            if t.ejected_until_ms.load(Ordering::Relaxed) <= now_ms && !tried.contains(&t.addr) {
                return Some(t.addr);
            }
        }
        let fallback = |untried_only: bool| {
            self.targets
                .iter()
                .filter(|t| !untried_only || !tried.contains(&t.addr))
                .min_by_key(|t| t.ejected_until_ms.load(Ordering::Relaxed))
                .map(|t| t.addr)
        };
        fallback(true).or_else(|| fallback(false))
    }

    /// Records a failed connection to `addr`.
    pub fn failed(&self, addr: SocketAddr, now_ms: u64) {
        if let Some(t) = self.targets.iter().find(|t| t.addr == addr) {
            let failures = t.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if failures >= EJECT_AFTER {
                t.ejected_until_ms.store(now_ms + EJECT_FOR.as_millis() as u64, Ordering::Relaxed);
                t.failures.store(0, Ordering::Relaxed);
                tracing::warn!(target = %addr, seconds = EJECT_FOR.as_secs(), "upstream target ejected after consecutive failures");
            }
        }
    }

    /// Records a successful connection to `addr`.
    pub fn succeeded(&self, addr: SocketAddr) {
        if let Some(t) = self.targets.iter().find(|t| t.addr == addr) {
            t.failures.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        let addrs =
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"].iter().map(|a| a.parse().unwrap()).collect();
        Pool::new(addrs, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT)
    }

    #[test]
    fn round_robin_over_healthy_targets() {
        let p = pool();
        let picks: Vec<u16> = (0..6).map(|_| p.pick(0, &[]).unwrap().port()).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn consecutive_failures_eject_for_a_while() {
        let p = pool();
        let bad: SocketAddr = "127.0.0.1:2".parse().unwrap();
        p.failed(bad, 0);
        p.failed(bad, 0);
        p.succeeded(bad);
        p.failed(bad, 0);
        p.failed(bad, 0);
        assert!((0..6).any(|_| p.pick(0, &[]) == Some(bad)), "a success in between resets the count");
        p.failed(bad, 0);
        assert!((0..6).all(|_| p.pick(1, &[]) != Some(bad)), "three in a row eject");
        let later = EJECT_FOR.as_millis() as u64 + 1;
        assert!((0..6).any(|_| p.pick(later, &[]) == Some(bad)), "tried again after the ejection");
    }

    #[test]
    fn a_retry_never_returns_to_a_tried_target() {
        let p = pool();
        let first = p.pick(0, &[]).unwrap();
        for _ in 0..6 {
            assert_ne!(p.pick(0, &[first]).unwrap(), first);
        }
    }

    #[test]
    fn all_ejected_still_answers() {
        let p = pool();
        for (i, port) in [1u16, 2, 3].iter().enumerate() {
            for _ in 0..EJECT_AFTER {
                p.failed(format!("127.0.0.1:{port}").parse().unwrap(), i as u64);
            }
        }
        assert_eq!(p.pick(5, &[]).unwrap().port(), 1, "the earliest to recover");
    }
}
