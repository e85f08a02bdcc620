//! What start-up does with the database, decided from what it found: a pure function,
//! tested by a table of cases (`prepare.rs` carries the decision out for the driver).

use crate::snapshot::restore::{LocalDb, RestoreReason};

pub mod error;
pub(crate) mod prepare;

pub use error::StartupError;

/// The start-up decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Open the database as it is. A node that fell behind the stream's retention catches
    /// up in place later, with the application running; its file is never replaced.
    Open,
    /// Open a new, empty database (stale `-wal`/`-shm`/`-journal` removed first).
    OpenNew,
    /// Replace the file with a restored snapshot (once no connection holds it).
    Restore(RestoreReason),
    /// Refuse to start, saying why.
    Refuse(String),
    /// The answer depends on whether the change stream holds messages: read its bounds and
    /// decide again.
    ReadStream,
}

/// Decides start-up from the database file's state, whether snapshots can restore it
/// (`[snapshot] enable` and `replicate`), and the change stream's last sequence when it was
/// read (`None`: not read yet).
pub fn plan(local: &LocalDb, restorable: bool, stream_last: Option<u64>) -> Plan {
    match (local, restorable, stream_last) {
        (LocalDb::Sound, _, _) => Plan::Open,
        (LocalDb::Missing, false, _) => Plan::OpenNew,
        (LocalDb::Missing, true, None) => Plan::ReadStream,
        (LocalDb::Missing, true, Some(0)) => Plan::OpenNew,
        (LocalDb::Missing, true, Some(_)) => Plan::Restore(RestoreReason::Missing),
        (LocalDb::Damaged { problems }, false, _) => Plan::Refuse(format!(
            "the database is damaged ({}). harmonylite rebuilds a damaged database from a snapshot only with \
             [snapshot] enable = true and replicate = true; restore the file from a backup instead",
            problems
                .first()
                .map(String::as_str)
                .unwrap_or("PRAGMA quick_check failed")
        )),
        (LocalDb::Damaged { .. }, true, _) => Plan::Restore(RestoreReason::Damaged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_up_case_has_one_plan() {
        let damaged = LocalDb::Damaged {
            problems: vec!["page 20: btree corrupt".into()],
        };
        let cases: Vec<(LocalDb, bool, Option<u64>, Plan)> = vec![
            // A sound file is never replaced, whatever the stream holds.
            (LocalDb::Sound, true, None, Plan::Open),
            (LocalDb::Sound, true, Some(1_000_000), Plan::Open),
            (LocalDb::Sound, false, Some(5), Plan::Open),
            // A missing file: a new empty one without snapshots or in a new cluster.
            (LocalDb::Missing, false, None, Plan::OpenNew),
            (LocalDb::Missing, false, Some(9), Plan::OpenNew),
            (LocalDb::Missing, true, None, Plan::ReadStream),
            (LocalDb::Missing, true, Some(0), Plan::OpenNew),
            (
                LocalDb::Missing,
                true,
                Some(1),
                Plan::Restore(RestoreReason::Missing),
            ),
            // A damaged file: restored when snapshots can, refused otherwise.
            (
                damaged.clone(),
                true,
                None,
                Plan::Restore(RestoreReason::Damaged),
            ),
            (
                damaged.clone(),
                true,
                Some(0),
                Plan::Restore(RestoreReason::Damaged),
            ),
        ];
        for (local, restorable, last, expected) in cases {
            assert_eq!(
                plan(&local, restorable, last),
                expected,
                "{local:?}, restorable {restorable}, stream last {last:?}"
            );
        }
        match plan(&damaged, false, None) {
            Plan::Refuse(why) => {
                assert!(why.contains("page 20: btree corrupt"), "{why}");
                assert!(why.contains("[snapshot] enable"), "{why}");
            }
            other => panic!("a damaged file without snapshots: {other:?}"),
        }
    }
}
