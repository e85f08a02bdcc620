//! Serverless mode, the driver's side: whether the idle node stops now (the idle timer and
//! the snapshot before sleeping are [`crate::run::serverless`]'s).

use std::time::Instant;

use harmonylite_core::session::SessionInput;

use crate::run::driver::Driver;

impl Driver {
    /// Serverless mode, when the idle timer fires: captures the last local writes, and when
    /// the node is still idle, every frame is acknowledged and no periodic snapshot is being
    /// taken, takes the snapshot before sleeping and returns true (the caller stops).
    pub(super) async fn ready_to_sleep(&mut self) -> bool {
        self.feed(vec![SessionInput::LocalWrite]);
        let Some(sleep) = self.sleep.as_mut() else {
            return false;
        };
        let now = Instant::now();
        if !sleep.timer.expired(now) {
            return false;
        }
        let (frames, _) = self.session.outbox_depth().unwrap_or((0, 0));
        let snapshotting = self.snapshots.as_ref().is_some_and(|s| s.job.is_some());
        if frames > 0 || snapshotting || self.catch_up.is_some() {
            sleep.timer.postpone(now + crate::run::serverless::RECHECK);
            return false;
        }
        let timeout = sleep.timer.timeout();
        let snapshot = sleep.snapshot.clone();
        tracing::info!(
            idle_ms = timeout.as_millis() as u64,
            "idle for sleep_timeout: sleeping (serverless mode)"
        );
        if let Some(ctx) = snapshot {
            let cursor = self.session.applied_cursor();
            if let Some(taken) = crate::run::serverless::snapshot_before_sleep(ctx, cursor).await {
                let info = &taken.info;
                self.metrics
                    .snapshot_taken(taken.bytes, taken.took, info.covered_seq.get());
            }
        }
        true
    }
}
