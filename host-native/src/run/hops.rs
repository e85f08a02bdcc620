//! Per-hop timing of commit -> visible: the file notifications a capture's writes are
//! matched against, and the commit -> notice and notice -> captured hops.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ops::metrics::Hop;
use crate::run::driver::Driver;

/// File notifications remembered between captures (for the commit -> notice hop).
pub(super) const NOTICES_KEPT: usize = 64;

impl Driver {
    /// A file notification arrived: remember when (the latest [`NOTICES_KEPT`]).
    pub(super) fn notice_arrived(&mut self) {
        if self.notices.len() == NOTICES_KEPT {
            self.notices.pop_front();
        }
        self.notices.push_back(unix_ms_f64());
    }

    /// Records commit -> notice and notice -> captured for a capture whose oldest write was
    /// made at `oldest_write_unix_ms`. Its notice is the first file notification at or after
    /// that write (earlier ones were this node's own applies or earlier commits); a capture
    /// no notification announced (the polling timer) counts from the start of its feed.
    pub(super) fn record_capture_hops(
        &mut self,
        oldest_write_unix_ms: Option<i64>,
        took: Duration,
    ) {
        let now = unix_ms_f64();
        let notices = std::mem::take(&mut self.notices);
        let Some(written) = oldest_write_unix_ms.map(|ms| ms as f64) else {
            return;
        };
        // The trigger's clock has millisecond steps: a notification in the same
        // millisecond as the write counts.
        let noticed = notices
            .into_iter()
            .find(|&t| t >= written - 1.0)
            .unwrap_or(now - took.as_secs_f64() * 1000.0);
        self.metrics
            .hop(Hop::CommitToNotice, (noticed - written).max(0.0) / 1000.0);
        self.metrics
            .hop(Hop::NoticeToCaptured, (now - noticed).max(0.0) / 1000.0);
    }
}

/// Wall-clock time now, Unix milliseconds with a fraction.
pub(super) fn unix_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}
