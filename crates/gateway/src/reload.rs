//! Route-table reload: on SIGHUP and when the file changes (checked every
//! [`POLL_INTERVAL`]). A new table is validated and resolved whole before it
//! is swapped in; an invalid file changes nothing, and says why.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

use crate::table::{LoadedTable, load_routes};

pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Counts of reload outcomes, for metrics and tests.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub applied: AtomicU64,
    pub rejected: AtomicU64,
}

/// Watches the route file and swaps valid new tables in.
pub struct RouteReloader {
    pub path: PathBuf,
    pub table: Arc<ArcSwap<LoadedTable>>,
    pub stats: Arc<ReloadStats>,
}

impl RouteReloader {
    /// Loads the file and swaps it in if valid. Returns whether it applied.
    pub fn reload(&self) -> bool {
        match load_routes(&self.path) {
            Ok(table) => {
                let routes = table.table.routes().len();
                self.table.store(Arc::new(table));
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %self.path.display(), routes, "route table reloaded");
                true
            }
            Err(reason) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%reason, "route table rejected; still serving the previous one");
                false
            }
        }
    }

    fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path).and_then(|m| m.modified()).ok()
    }
}

#[async_trait]
impl BackgroundService for RouteReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = self.modified();
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // SIGHUP's default action would kill the process; handling it here
        // turns it into a reload, as operators expect.
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(
                |e| tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file change only"),
            )
            .ok();
        loop {
            #[cfg(unix)]
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                _ = shutdown.changed() => return,
            };
            #[cfg(not(unix))]
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.changed() => return,
            };
            let modified = self.modified();
            if forced || modified != last {
                last = modified;
                self.reload();
            }
        }
    }
}
