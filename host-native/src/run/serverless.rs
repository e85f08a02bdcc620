//! Serverless mode (`sleep_timeout`, HarmonyLite's key): the sidecar exits 0 after being
//! idle that long — no local write captured and no remote change applied — so that a
//! platform that scales to zero can stop the machine. Before it exits it takes a snapshot
//! when it can take the snapshot lease and the newest snapshot does not already cover
//! everything it applied, so the next start (of this node or a new one) restores quickly.
//!
//! Nothing is lost by sleeping: the driver's normal shutdown captures the last writes and
//! waits for JetStream's acks, the cursor is in the database, and the next start consumes
//! the stream from there (exactly once, as after any restart). The driver never sleeps
//! with unacknowledged outbox frames or while a periodic snapshot is being taken; it looks
//! again a second later.

use std::time::{Duration, Instant};

use harmonylite_core::change::StreamSeq;

use crate::snapshot::{JobContext, JobOutcome, SnapshotSchedule, Taken};

/// How long to wait before looking again when the node was idle but could not sleep yet.
pub const RECHECK: Duration = Duration::from_secs(1);

/// When an idle node may sleep.
#[derive(Debug, Clone, Copy)]
pub struct IdleTimer {
    timeout: Duration,
    idle_since: Instant,
    not_before: Instant,
}

impl IdleTimer {
    /// A timer for `sleep_timeout` (None when it is 0: never sleep), idle from `now`.
    pub fn new(timeout: Duration, now: Instant) -> Option<Self> {
        (!timeout.is_zero()).then_some(IdleTimer {
            timeout,
            idle_since: now,
            not_before: now,
        })
    }

    /// Something happened at `now`: the idle period starts again.
    pub fn touch(&mut self, now: Instant) {
        self.idle_since = now;
    }

    /// Idle long enough, but not ready to sleep: look again at `at`.
    pub fn postpone(&mut self, at: Instant) {
        self.not_before = at;
    }

    /// When the node may sleep, if nothing happens before.
    pub fn deadline(&self) -> Instant {
        (self.idle_since + self.timeout).max(self.not_before)
    }

    /// Whether the node has been idle for the whole timeout at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// The configured timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The schedule of the snapshot before sleeping: due whenever it would cover something the
/// newest stored snapshot does not.
pub fn schedule() -> SnapshotSchedule {
    SnapshotSchedule {
        interval: None,
        every_messages: Some(1),
    }
}

/// Takes the snapshot before sleeping (under the lease, like a periodic one) and logs the
/// outcome; returns the snapshot when one was taken. Failing to take one is logged, never
/// fatal: the node's data is in the stream either way.
pub async fn snapshot_before_sleep(ctx: JobContext, cursor: StreamSeq) -> Option<Taken> {
    let ctx = JobContext {
        schedule: schedule(),
        ..ctx
    };
    match crate::snapshot::run_job(ctx, cursor).await {
        Ok(JobOutcome::Taken(taken)) => {
            tracing::info!(
                covered_seq = taken.info.covered_seq.get(),
                bytes = taken.bytes,
                took_ms = taken.took.as_millis() as u64,
                "took snapshot {} before sleeping",
                taken.info.name
            );
            Some(taken)
        }
        Ok(JobOutcome::NotDue(newest)) => {
            tracing::info!(
                newest = ?newest.map(|n| n.name),
                "the newest snapshot already covers everything this node applied; none taken before sleeping"
            );
            None
        }
        Ok(JobOutcome::LeaseHeld(holder)) => {
            tracing::info!(
                holder = ?holder,
                "another node holds the snapshot lease; sleeping without taking a snapshot"
            );
            None
        }
        Err(e) => {
            tracing::warn!("could not take a snapshot before sleeping: {e:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_expires_after_the_timeout_without_activity() {
        let t0 = Instant::now();
        assert!(IdleTimer::new(Duration::ZERO, t0).is_none(), "0 = never");
        let second = Duration::from_secs(1);
        let mut timer = IdleTimer::new(10 * second, t0).unwrap();
        assert_eq!(timer.deadline(), t0 + 10 * second);
        assert!(!timer.expired(t0 + 9 * second));
        assert!(timer.expired(t0 + 10 * second));

        timer.touch(t0 + 5 * second);
        assert!(
            !timer.expired(t0 + 10 * second),
            "activity restarts the period"
        );
        assert!(timer.expired(t0 + 15 * second));

        timer.postpone(t0 + 16 * second);
        assert!(!timer.expired(t0 + 15 * second), "postponed");
        assert_eq!(timer.deadline(), t0 + 16 * second);
        assert!(timer.expired(t0 + 16 * second));
        assert_eq!(timer.timeout(), 10 * second);
    }

    #[test]
    fn the_snapshot_before_sleeping_is_due_only_when_it_covers_something_new() {
        let s = schedule();
        let seq = StreamSeq::new;
        assert!(s.due(None, seq(3), 0));
        assert!(!s.due(None, seq(0), 0), "nothing applied, nothing to cover");
        assert!(s.due(Some((seq(2), u64::MAX / 2)), seq(3), 0));
        assert!(!s.due(Some((seq(3), 0)), seq(3), u64::MAX / 2));
    }
}
