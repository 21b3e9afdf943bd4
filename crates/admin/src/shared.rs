//! The admin's side of the shared state, as background tasks: keep the
//! revocation record in Redis in step with the store, and turn the
//! gateways' denials into audit events.

use std::{sync::Arc, time::Duration};

use bouncer_core::{audit::AuditEvent, config::AdminConfig, revocation};
use bouncer_shared_state::{
    Redis, RevocationBus,
    denials::{DenialEvent, DenialSource},
};
use bouncer_store::Store;
use time::OffsetDateTime;

/// How long this admin's revocations must be remembered: the longest an
/// access token issued before them can live ([`revocation::relevance`]).
pub fn revocation_keep(config: &AdminConfig) -> Duration {
    revocation::relevance(config.access_token_ttl.get())
}

/// Whenever the bus asks (start, reconnect, failed publish), writes the
/// store's recent revocations to the shared record again. Runs forever.
pub async fn keep_revocations_recorded(bus: Arc<RevocationBus>, store: Arc<dyn Store>, keep: Duration) {
    loop {
        bus.resync_wanted().await;
        // Short: gateways that start while Redis is away become ready only
        // once an admin has recorded the revocations there.
        let mut retry = Backoff::up_to(Duration::from_secs(2));
        loop {
            let since = OffsetDateTime::now_utc() - keep;
            let recorded = match store.revocations_since(since).await {
                Ok(revocations) => {
                    bus.record(&revocations).await.map(|()| revocations.len()).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            match recorded {
                Ok(count) => {
                    tracing::info!(count, "revocations recorded in redis");
                    break;
                }
                Err(error) => {
                    let pause = retry.pause();
                    tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "cannot record revocations in redis yet");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Pauses between retries of a failing Redis or database call: from
/// [`Backoff::FIRST`], doubling up to a cap, reset by a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Default for Backoff {
    /// Up to 30 s: for work that can wait (the denial stream).
    fn default() -> Self {
        Self::up_to(Duration::from_secs(30))
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(500);

    pub fn up_to(max: Duration) -> Self {
        Self { next: Self::FIRST.min(max), max }
    }

    /// The pause before the next attempt.
    pub fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST.min(self.max);
    }
}

/// Joins the denial stream on Redis as `consumer` — retrying while Redis
/// is away, so an admin starts without it — and then records denials like
/// [`record_denials`]. Runs forever.
pub async fn record_denials_from_redis(redis: Redis, consumer: String, store: Arc<dyn Store>) {
    let mut backoff = Backoff::default();
    loop {
        match DenialSource::redis(&redis, &consumer).await {
            Ok(source) => return record_denials(source, store).await,
            Err(e) => {
                let pause = backoff.pause();
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot join the denial stream yet");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Appends each batch of gateway denials to the audit log and acknowledges
/// it only after the commit; a batch that cannot be appended is retried
/// (and, on Redis, redelivered after a crash). Runs until the source closes.
pub async fn record_denials(mut source: DenialSource, store: Arc<dyn Store>) {
    let mut backoff = Backoff::default();
    loop {
        let delivery = match source.next().await {
            Ok(Some(d)) => {
                backoff.reset();
                d
            }
            Ok(None) => return,
            Err(e) => {
                let pause = backoff.pause();
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot read gateway denials");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let events: Vec<AuditEvent> = delivery.events.iter().map(DenialEvent::to_audit).collect();
        let mut retry = Backoff::default();
        loop {
            match store.append_audit_once(&events).await {
                Ok(_) => break,
                Err(e) => {
                    let pause = retry.pause();
                    tracing::error!(error = %e, events = events.len(), retry_in_ms = pause.as_millis() as u64, "cannot append gateway denials");
                    tokio::time::sleep(pause).await;
                }
            }
        }
        if let Err(e) = source.ack(delivery).await {
            // Redelivered later and recognised by id: nothing is lost or doubled.
            tracing::warn!(error = %e, "cannot acknowledge gateway denials");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::up_to(Duration::from_secs(3));
        let pauses: Vec<u64> = (0..5).map(|_| b.pause().as_millis() as u64).collect();
        assert_eq!(pauses, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.pause(), Backoff::FIRST);
        assert_eq!(Backoff::default().max, Duration::from_secs(30));
    }
}
