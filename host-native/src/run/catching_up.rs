//! Catching up in place: a node that fell behind the stream's retention fetches a covering
//! snapshot and merges it, one step per turn ([`crate::snapshot::catch_up`] does the work).

use harmonylite_core::change::StreamSeq;
use harmonylite_core::session::SessionInput;
use harmonylite_core::sqlite::CatchUpReport;

use crate::ops::health::SnapshotStatus;
use crate::run::driver::Driver;
use crate::snapshot::catch_up::{CatchUpJob, Fetched, Turn};
use crate::snapshot::restore::RestoreReason;
use crate::snapshot::SnapshotError;

impl Driver {
    /// The session found the stream no longer holds messages this node has not applied:
    /// catch up in place from a snapshot (when snapshots are on), else wait for an operator.
    pub(super) fn fell_behind(
        &mut self,
        cursor: StreamSeq,
        first: u64,
        last: u64,
        first_time: bool,
    ) {
        let Some(fetch) = self.fetch.clone() else {
            if first_time {
                tracing::error!(
                    cursor = cursor.get(),
                    stream_first = first,
                    stream_last = last,
                    "this node fell behind: the stream no longer holds messages {}..{} it has not applied. \
                     It keeps serving and publishing but applies nothing more until it is rebuilt: turn on \
                     [snapshot] enable (it then catches up in place from a snapshot), or stop it and the \
                     application, replace its database file with a copy from a healthy node, and restart",
                    cursor.get() + 1,
                    first - 1
                );
            }
            return;
        };
        if self.catch_up.is_none() {
            tracing::warn!(
                cursor = cursor.get(),
                stream_first = first,
                stream_last = last,
                "this node fell behind: the stream no longer holds messages {}..{} it has not applied; \
                 catching up in place from a snapshot while the application keeps running",
                cursor.get() + 1,
                first - 1
            );
            self.catch_up = Some(CatchUpJob::start(fetch, first));
        }
    }

    /// A snapshot for the catch-up was downloaded (or could not be had).
    pub(super) fn snapshot_fetched(
        &mut self,
        outcome: Result<Result<Fetched, SnapshotError>, tokio::task::JoinError>,
    ) {
        let (job, result) = CatchUpJob::fetched(outcome);
        self.catch_up = Some(job);
        if let Err(why) = &result {
            tracing::warn!(
                retry_in_s = crate::snapshot::catch_up::RETRY_AFTER.as_secs(),
                "{why}"
            );
            self.metrics.snapshot_failed("restore");
        }
        self.status.lock().expect("status lock").waiting = result.err();
        self.refresh_status();
    }

    /// When the catch-up's next turn is due. While the application writes, merge steps run
    /// right after its writes are captured (see `run`), not on the timer: a step then falls
    /// between its writes instead of at a random moment, where the application would wait
    /// for the write lock (and SQLite's busy handler sleeps at least 1 ms). Once it has been
    /// quiet for [`crate::snapshot::catch_up::APP_QUIET`], steps run on the timer again.
    pub(super) fn catch_up_at(&self) -> Option<tokio::time::Instant> {
        let due = self.catch_up.as_ref()?.due()?;
        let merging = matches!(self.catch_up, Some(CatchUpJob::Merging { .. }));
        match self
            .app_wrote_at
            .map(|at| at + crate::snapshot::catch_up::APP_QUIET)
        {
            Some(quiet_at) if merging && quiet_at > due => Some(quiet_at),
            _ => Some(due),
        }
    }

    /// One turn of the catch-up: a merge step, or after a failure a fresh look at the
    /// stream.
    pub(super) fn catch_up_turn(&mut self) {
        let Some(job) = self.catch_up.take() else {
            return;
        };
        let (next, turn) = job.turn(&mut self.session, self.clock.now().wall);
        self.catch_up = next;
        match turn {
            // Local writes the step captured are in the outbox: publish them as usual.
            Turn::Merged { captured: true } => self.feed(vec![SessionInput::LocalWrite]),
            Turn::Merged { captured: false } => {}
            Turn::Finished { report, fetched } => self.caught_up(*fetched, *report),
            Turn::Failed(why) => {
                tracing::error!("catching up: {why}");
                self.metrics.snapshot_failed("restore");
                self.status.lock().expect("status lock").waiting = Some(why);
            }
            Turn::Restart => self.feed(vec![SessionInput::Recheck]),
        }
        self.refresh_status();
    }

    /// The merge finished: the cursor is at the snapshot's covered sequence.
    fn caught_up(&mut self, fetched: Fetched, report: CatchUpReport) {
        let took = fetched.started.elapsed();
        for (table, rows) in &report.skipped_tables {
            tracing::warn!(
                table,
                rows,
                "the snapshot's rows of a table this database does not have were not merged"
            );
        }
        tracing::info!(
            snapshot = %fetched.info.name,
            covered_seq = report.covered.get(),
            rows = report.rows_read,
            remote_won = report.remote_won,
            local_won = report.local_won,
            unchanged = report.unchanged,
            migrations = report.migrations,
            took_ms = took.as_millis() as u64,
            "caught up in place; consuming the stream from sequence {}",
            report.covered.get() + 1
        );
        self.metrics.restored(
            RestoreReason::Behind.as_str(),
            fetched.downloaded,
            took,
            report.covered.get(),
        );
        {
            let mut s = self.status.lock().expect("status lock");
            s.waiting = None;
            s.last_restore = Some(SnapshotStatus {
                name: fetched.info.name.clone(),
                covered_seq: report.covered.get(),
                bytes: fetched.downloaded,
                duration_ms: took.as_millis() as u64,
                at_unix_ms: crate::util::unix_ms(),
                reason: Some(RestoreReason::Behind.as_str().to_owned()),
            });
        }
        self.feed(vec![SessionInput::Reopened]);
    }
}
