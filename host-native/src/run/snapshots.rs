//! Periodic snapshots and the responder: starting a snapshot job when one may be due,
//! recording its outcome, and answering other nodes' snapshot requests.

use std::time::{Duration, Instant};

use harmonylite_core::session::SessionInput;

use crate::ops::health::SnapshotStatus;
use crate::run::driver::Driver;
use crate::snapshot::responder::ResponderEvent;
use crate::snapshot::{JobOutcome, SnapshotError};

/// How often the driver looks whether a periodic snapshot is due (a local check; the store
/// is only asked when one may be).
const SNAPSHOT_CHECK: Duration = Duration::from_secs(5);
/// Pause after a snapshot attempt failed, or found another node taking one.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(60);

impl Driver {
    /// Starts a periodic snapshot job when one may be due: this node consumes the stream,
    /// has caught up, and (as far as it knows) the newest stored snapshot is old enough.
    /// Local writes are drained right before, so the copy holds them with their versions.
    pub(super) fn start_snapshot_if_due(&mut self) {
        let cursor = self.session.applied_cursor();
        let caught_up = self.is_caught_up();
        let Some(s) = self.snapshots.as_mut() else {
            return;
        };
        if s.job.is_some() || Instant::now() < s.check_at {
            return;
        }
        s.check_at = Instant::now() + SNAPSHOT_CHECK;
        if !caught_up {
            return;
        }
        if let Some(newest) = s.newest {
            if !s.ctx.schedule.due(newest, cursor, crate::util::unix_ms()) {
                return;
            }
        }
        let ctx = s.ctx.clone();
        self.feed(vec![SessionInput::LocalWrite]);
        let cursor = self.session.applied_cursor();
        if let Some(s) = self.snapshots.as_mut() {
            s.job = Some(tokio::spawn(crate::snapshot::run_job(ctx, cursor)));
        }
    }

    pub(super) fn snapshot_finished(
        &mut self,
        outcome: Result<Result<JobOutcome, SnapshotError>, tokio::task::JoinError>,
    ) {
        let Some(s) = self.snapshots.as_mut() else {
            return;
        };
        s.job = None;
        match outcome {
            Ok(Ok(JobOutcome::Taken(taken))) => {
                let info = &taken.info;
                tracing::info!(
                    covered_seq = info.covered_seq.get(),
                    bytes = taken.bytes,
                    took_ms = taken.took.as_millis() as u64,
                    "took snapshot {}",
                    info.name
                );
                s.newest = Some(Some((info.covered_seq, info.taken_at_ms)));
                self.metrics
                    .snapshot_taken(taken.bytes, taken.took, info.covered_seq.get());
                self.status.lock().expect("status lock").last_snapshot = Some(SnapshotStatus {
                    name: info.name.clone(),
                    covered_seq: info.covered_seq.get(),
                    bytes: taken.bytes,
                    duration_ms: taken.took.as_millis() as u64,
                    at_unix_ms: crate::util::unix_ms(),
                    reason: None,
                });
            }
            Ok(Ok(JobOutcome::NotDue(newest))) => {
                s.newest = Some(newest.map(|n| (n.covered_seq, n.taken_at_ms)));
            }
            Ok(Ok(JobOutcome::LeaseHeld(holder))) => {
                tracing::debug!(holder = ?holder, "another node is taking a snapshot");
                s.newest = None;
                s.check_at = Instant::now() + SNAPSHOT_RETRY;
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    "taking a snapshot failed, retrying in {}s: {e:#}",
                    SNAPSHOT_RETRY.as_secs()
                );
                self.metrics.snapshot_failed("take");
                s.newest = None;
                s.check_at = Instant::now() + SNAPSHOT_RETRY;
            }
            Err(e) => {
                tracing::warn!("the snapshot task ended: {e}");
                self.metrics.snapshot_failed("take");
                s.newest = None;
                s.check_at = Instant::now() + SNAPSHOT_RETRY;
            }
        }
    }

    /// Another node asks for a snapshot, or the one taken for it is done.
    pub(super) async fn responder_event(&mut self, event: ResponderEvent) {
        let caught_up = self.is_caught_up();
        let cursor = self.session.applied_cursor();
        let Some(responder) = self.responder.as_mut() else {
            return;
        };
        let outcome = match event {
            ResponderEvent::Request(request) => {
                return responder.answer(request, caught_up, cursor).await
            }
            ResponderEvent::JobDone(outcome) => outcome,
        };
        responder.job_done();
        match outcome {
            Ok(Ok(JobOutcome::Taken(taken))) => {
                let info = &taken.info;
                tracing::info!(
                    covered_seq = info.covered_seq.get(),
                    bytes = taken.bytes,
                    "took snapshot {} another node asked for",
                    info.name
                );
                self.metrics
                    .snapshot_taken(taken.bytes, taken.took, info.covered_seq.get());
                if let Some(s) = self.snapshots.as_mut() {
                    s.newest = Some(Some((info.covered_seq, info.taken_at_ms)));
                }
            }
            Ok(Ok(other)) => tracing::info!("no snapshot taken for another node: {other:?}"),
            Ok(Err(e)) => {
                self.metrics.snapshot_failed("take");
                tracing::warn!("taking the snapshot another node asked for failed: {e:#}");
            }
            Err(e) => tracing::warn!("the requested snapshot task ended: {e}"),
        }
    }
}
