//! The admin's side of the shared state, as background tasks: keep the
//! revocation record in Redis in step with the store, and turn the
//! gateways' denials into audit events.

use std::{sync::Arc, time::Duration};

use bouncer_core::{audit::AuditEvent, claims::LEEWAY, config::AdminConfig};
use bouncer_shared_state::{
    RevocationBus,
    denials::{DenialEvent, DenialSource},
};
use bouncer_store::Store;
use time::OffsetDateTime;

/// How long revocations must be remembered: the longest an access token
/// issued before them can live.
pub fn revocation_keep(config: &AdminConfig) -> Duration {
    config.access_token_ttl.get() + LEEWAY + Duration::from_secs(60)
}

/// Whenever the bus asks (start, reconnect, failed publish), writes the
/// store's recent revocations to the shared record again. Runs forever.
pub async fn keep_revocations_recorded(bus: Arc<dyn RevocationBus>, store: Arc<dyn Store>, keep: Duration) {
    loop {
        bus.resync_wanted().await;
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
                    tracing::warn!(%error, "cannot record revocations in redis yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Appends each batch of gateway denials to the audit log and acknowledges
/// it only after the commit; a batch that cannot be appended is retried
/// (and, on Redis, redelivered after a crash). Runs until the source closes.
pub async fn record_denials(mut source: DenialSource, store: Arc<dyn Store>) {
    loop {
        let delivery = match source.next().await {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read gateway denials; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let events: Vec<AuditEvent> = delivery.events.iter().map(DenialEvent::to_audit).collect();
        loop {
            match store.append_audit_once(&events).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, events = events.len(), "cannot append gateway denials; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        if let Err(e) = source.ack(delivery).await {
            // Redelivered later and recognised by id: nothing is lost or doubled.
            tracing::warn!(error = %e, "cannot acknowledge gateway denials");
        }
    }
}
