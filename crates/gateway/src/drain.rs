//! Graceful stop. pingora's own answer to SIGTERM is to wait a fixed grace
//! period (every stop takes the whole period, even when idle) and to make
//! SIGINT an instant exit that cuts requests off. Instead, on SIGTERM or
//! SIGINT the gateway drains: requests keep being served but every response
//! closes its connection, and the stop proceeds as soon as no request is in
//! flight — or when `shutdown_grace` runs out.
//!
//! Once pingora has the signal it cancels every task at its next await, a
//! half-sent Redis write included. So work that must outlive the requests
//! (the denial shipper's last flush, and in `bouncer up` the admin writing
//! it to the audit log) holds a [`Finishing`] guard: after the requests are
//! over, the stop waits for those guards too, for at most [`FINISH_WAIT`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::{Notify, watch};

/// Longest the stop waits for [`Finishing`] work once requests are over.
pub const FINISH_WAIT: Duration = Duration::from_secs(5);

/// Requests in flight, background work still finishing, and the stop's phase.
#[derive(Default)]
pub struct Drain {
    in_flight: Live,
    finishing: Live,
    draining: AtomicBool,
    /// True once no request is in flight any more (or the grace ran out).
    requests_over: watch::Sender<bool>,
}

/// How many guards of one kind are alive, and a wait for none.
#[derive(Default)]
struct Live {
    count: AtomicUsize,
    none: Notify,
}

impl Live {
    fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn remove(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.none.notify_waiters();
        }
    }

    fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    async fn none_left(&self) {
        loop {
            // Registered before the check, so a removal in between still wakes it.
            let notified = self.none.notified();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held by each request's context; counts it as in flight until dropped.
pub struct InFlight(Arc<Drain>);

/// Held by background work the stop must wait for; see the module docs.
pub struct Finishing(Arc<Drain>);

impl Drain {
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.add();
        InFlight(self.clone())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Makes the stop wait for the returned guard, after the requests.
    pub fn finishing(self: &Arc<Self>) -> Finishing {
        self.finishing.add();
        Finishing(self.clone())
    }

    /// Drains the requests, then waits (up to `wait`) for finishing work.
    async fn stop(&self, grace: Duration, wait: Duration) {
        self.drain(grace).await;
        self.requests_over.send_replace(true);
        if tokio::time::timeout(wait, self.finishing.none_left()).await.is_err() {
            tracing::warn!(
                pending = self.finishing.get(),
                "background work did not finish in time (gateway denials may be lost); stopping anyway"
            );
        }
    }

    /// Starts draining and waits until nothing is in flight, or `grace`.
    async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::Release);
        if tokio::time::timeout(grace, self.in_flight.none_left()).await.is_err() {
            tracing::warn!(in_flight = self.in_flight.get(), "grace period over; stopping anyway");
        }
    }
}

impl Finishing {
    /// Resolves once the stop is under way and no request is in flight:
    /// the moment for this work to wrap up.
    pub async fn requests_over(&self) {
        let mut over = self.0.requests_over.subscribe();
        let _ = over.wait_for(|over| *over).await;
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        self.0.finishing.remove();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.remove();
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
        self.drain.stop(self.grace, FINISH_WAIT).await;
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

    #[tokio::test]
    async fn the_stop_waits_for_finishing_work_after_the_requests() {
        let drain = Arc::new(Drain::default());
        let request = drain.enter();
        let work = drain.finishing();
        let flushed = Arc::new(AtomicBool::new(false));
        // Like the denial shipper: flush once the requests are over.
        tokio::spawn({
            let flushed = flushed.clone();
            async move {
                work.requests_over().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                flushed.store(true, Ordering::Release);
                drop(work);
            }
        });
        let stopping = tokio::spawn({
            let drain = drain.clone();
            async move { drain.stop(Duration::from_secs(10), Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!flushed.load(Ordering::Acquire), "finishing work must wait for the request in flight");
        drop(request);
        tokio::time::timeout(Duration::from_secs(1), stopping)
            .await
            .expect("stops once the work is done")
            .unwrap();
        assert!(flushed.load(Ordering::Acquire), "the stop returned before the finishing work was done");
    }

    #[tokio::test]
    async fn finishing_work_that_hangs_delays_the_stop_by_the_wait_only() {
        let drain = Arc::new(Drain::default());
        let _stuck = drain.finishing();
        tokio::time::timeout(
            Duration::from_secs(2),
            drain.stop(Duration::from_secs(10), Duration::from_millis(100)),
        )
        .await
        .expect("the wait bounds the stop");
    }
}
