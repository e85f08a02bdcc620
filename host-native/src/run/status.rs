//! What the driver reports and when it wakes: the health status and gauges from the
//! session's status, whether it is caught up, its next deadline, and the shutdown flush.

use std::time::{Duration, Instant};

use harmonylite_core::session::SessionInput;

use crate::run::driver::Driver;
use crate::snapshot::catch_up::CatchUpJob;

impl Driver {
    /// Consuming the stream, not behind it, and within one batch of its end.
    pub(super) fn is_caught_up(&self) -> bool {
        self.session.status().caught_up(self.batch_limit as u64)
    }

    pub(super) fn deadline(&self) -> tokio::time::Instant {
        let now = self.clock.now().monotonic;
        let mut wait = match self.session.poll_timeout() {
            Some(t) => t.saturating_sub(now),
            None => Duration::from_secs(3600),
        };
        if let Some(s) = self.snapshots.as_ref().filter(|s| s.job.is_none()) {
            wait = wait.min(s.check_at.saturating_duration_since(Instant::now()));
        }
        tokio::time::Instant::now() + wait
    }

    pub(super) fn refresh_status(&mut self) {
        let session = &self.session;
        let replication = session.status();
        let (outbox_frames, outbox_rows) = session.outbox_depth().unwrap_or((0, 0));
        let parked = session.parked_count().unwrap_or(0);
        let schema = session.schema_status().ok();
        let parked_by_table = if parked > 0 {
            session.parked_by_table().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut s = self.status.lock().expect("status lock");
        if let Some(schema) = schema {
            s.schema_fingerprint = schema.fingerprint;
            s.migration_version = schema.migration_version;
            s.parked_migrations = schema.parked_migrations;
        }
        s.parked_by_table = parked_by_table.iter().cloned().collect();
        self.metrics
            .schema(&parked_by_table, s.migration_version, s.parked_migrations);
        s.cursor = replication.cursor;
        s.stream_last_seq = replication.stream_last_seq;
        s.lag = replication.lag;
        s.outbox_depth = outbox_frames;
        s.outbox_rows = outbox_rows;
        s.parked = parked;
        s.nats_connected = replication.connected;
        s.fell_behind = replication.fell_behind;
        s.catching_up = self.catch_up.as_ref().map(CatchUpJob::status);
        s.healthy = replication.healthy() && !s.restoring;
        s.consumer_error = replication.consumer_error;
        s.scope_rules = replication.scope_rules;
        self.metrics
            .gauges(outbox_frames, s.lag, parked, replication.connected);
    }

    /// Captures the last local writes and waits (bounded) until the outbox is acknowledged.
    pub(super) async fn finish(&mut self, limit: Duration) {
        self.messages = None;
        self.feed(vec![SessionInput::LocalWrite]);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (frames, _) = self.session.outbox_depth().unwrap_or((0, 0));
            let replication = self.session.status();
            if frames == 0 || !replication.connected && replication.in_flight == 0 {
                if frames > 0 {
                    tracing::warn!(
                        frames,
                        "stopping with unacknowledged frames; they are sent at the next start"
                    );
                }
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(frames, "stopping before JetStream acknowledged every frame; they are sent at the next start");
                    return;
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => self.feed(vec![SessionInput::Timeout]),
            }
        }
    }
}
