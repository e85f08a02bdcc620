//! The startup layer's errors.

use std::fmt;
use std::path::PathBuf;

use harmonylite_core::error::StoreError;

use crate::snapshot::SnapshotError;
use crate::util::UtilError;

/// Why start-up could not open the database.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The start-up plan refuses to start (a damaged database without snapshots).
    Refused {
        /// The database.
        db: PathBuf,
        /// Why, and what to do.
        why: String,
    },
    /// The start-up plan still asks for the change stream after reading it (a bug).
    Undecided,
    /// The database file could not be opened.
    OpenDatabase {
        /// The database.
        db: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Change capture could not be installed in the database.
    InstallCapture {
        /// The database.
        db: PathBuf,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Inspecting, restoring or preparing the database file failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A util-layer step failed (randomness for the node id or the incarnation).
    #[error(transparent)]
    Util(#[from] UtilError),
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = match self {
            StartupError::Refused { db, why } => format!("{}: {why}", db.display()),
            StartupError::Undecided => {
                "start-up read the change stream and still could not decide".to_owned()
            }
            StartupError::OpenDatabase { db, .. } => format!("opening db_path {}", db.display()),
            StartupError::InstallCapture { db, .. } => {
                format!("installing change capture in {}", db.display())
            }
            StartupError::Snapshot(e) => e.to_string(),
            StartupError::Util(e) => e.to_string(),
        };
        crate::util::error::write_error(f, &head, self)
    }
}
