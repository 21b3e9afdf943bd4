//! State that every replica must agree on, behind small traits with an
//! in-process backend (embedded mode, tests) and — with the shared-state
//! issue — a Redis backend. This is the only crate that will know Redis.
//!
//! Today: the [`RevocationBus`], through which the admin service announces
//! revocations the moment their transaction commits, so token verifiers can
//! refuse at once instead of waiting for tokens to expire.
#![forbid(unsafe_code)]

use bouncer_core::revocation::Revocation;
use tokio::sync::broadcast;

/// Revocations published by admin replicas, delivered to every subscriber.
///
/// Delivery is best effort: the store's revocation records are the source of
/// truth, and a subscriber that lagged or reconnected reloads them (a
/// snapshot) rather than trusting the stream to be complete.
pub trait RevocationBus: Send + Sync + 'static {
    /// Announces revocations that have been committed. Never blocks.
    fn publish(&self, revocations: &[Revocation]);

    /// Revocations published from now on. A receiver that falls more than
    /// the channel's capacity behind gets `RecvError::Lagged` and must
    /// reload a snapshot.
    fn subscribe(&self) -> broadcast::Receiver<Revocation>;
}

/// The in-process bus: one process, any number of subscribers.
#[derive(Debug)]
pub struct InProcessBus {
    sender: broadcast::Sender<Revocation>,
}

/// Messages buffered per subscriber before it lags.
pub const IN_PROCESS_CAPACITY: usize = 4096;

impl Default for InProcessBus {
    fn default() -> Self {
        Self { sender: broadcast::channel(IN_PROCESS_CAPACITY).0 }
    }
}

impl RevocationBus for InProcessBus {
    fn publish(&self, revocations: &[Revocation]) {
        for revocation in revocations {
            // No subscriber yet is fine: the records are in the store.
            let _ = self.sender.send(revocation.clone());
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use uuid::Uuid;

    #[tokio::test]
    async fn every_subscriber_sees_what_is_published_after_it_subscribed() {
        let bus = InProcessBus::default();
        let at = datetime!(2026-01-01 00:00 UTC);
        bus.publish(&[Revocation::user(Uuid::from_u128(9), at, "before anyone listened")]);
        let (mut a, mut b) = (bus.subscribe(), bus.subscribe());
        let r = Revocation::session(Uuid::from_u128(1), Uuid::from_u128(2), at, "logout");
        bus.publish(std::slice::from_ref(&r));
        assert_eq!(a.recv().await.unwrap(), r);
        assert_eq!(b.recv().await.unwrap(), r);
        assert!(a.try_recv().is_err(), "nothing else was queued");
    }
}
