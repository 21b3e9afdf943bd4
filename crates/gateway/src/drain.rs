//! Graceful stop. pingora's own answer to SIGTERM is to wait a fixed grace
//! period (every stop takes the whole period, even when idle) and to make
//! SIGINT an instant exit that cuts requests off. Instead, on SIGTERM or
//! SIGINT the gateway drains: requests keep being served but every response
//! closes its connection, and the stop proceeds as soon as no request is in
//! flight — or when `shutdown_grace` runs out.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::Notify;

/// Requests in flight, and whether the gateway is draining.
#[derive(Default)]
pub struct Drain {
    in_flight: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

/// Held by each request's context; counts it as in flight until dropped.
pub struct InFlight(Arc<Drain>);

impl Drain {
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts draining and waits until nothing is in flight, or `grace`.
    async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::Release);
        let idle = async {
            loop {
                let notified = self.idle.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace, idle).await.is_err() {
            tracing::warn!(
                in_flight = self.in_flight.load(Ordering::Acquire),
                "grace period over; stopping anyway"
            );
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The signal watch handed to pingora: SIGTERM and SIGINT drain, then stop;
/// SIGQUIT keeps pingora's graceful upgrade.
pub struct Signals {
    pub drain: Arc<Drain>,
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) =
            (signal(SignalKind::quit()), signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stop requested; finishing in-flight requests");
        self.drain.drain(self.grace).await;
        ShutdownSignal::GracefulTerminate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_waits_for_the_last_request_only() {
        let drain = Arc::new(Drain::default());
        let request = drain.enter();
        let waiting = tokio::spawn({
            let drain = drain.clone();
            async move { drain.drain(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(drain.is_draining());
        assert!(!waiting.is_finished(), "a request is still in flight");
        drop(request);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("drained at once").unwrap();
        // Idle: no wait at all.
        tokio::time::timeout(Duration::from_millis(100), Drain::default().drain(Duration::from_secs(10)))
            .await
            .expect("an idle gateway stops at once");
    }
}
