//! The arbiter's side of the systemd conversation: what it shows
//! [`crate::systemd::Service`] each loop turn. Kept apart from the loop so
//! the loop only has one call per event.

use super::Arbiter;
use crate::systemd::Snapshot;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Arbiter {
    /// The worker table, summed up for READY/STATUS decisions.
    pub(super) fn sd_snapshot(&self) -> Snapshot {
        let booting = self.sup.booting_count();
        let requests = self
            .sup
            .workers()
            .map(|(_, w)| {
                self.scoreboard
                    .slot(w.slot)
                    .requests
                    .load(Ordering::Relaxed)
            })
            .sum();
        Snapshot {
            ready: self.sup.ready_count(),
            target: self.sup.target(),
            booting,
            requests,
        }
    }

    /// Let the service manager know what changed (READY, watchdog, status).
    pub(super) fn sd_tick(&mut self) {
        let snap = self.sd_snapshot();
        self.sd.tick(Instant::now(), &snap);
    }
}
