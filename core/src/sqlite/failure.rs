//! How applying a change to a user table failed: park the message, or retry later.

use super::tables::RegisteredTable;
use crate::error::{is_transient_sqlite, ApplyError, StoreError};

/// Either the batch cannot be applied here (park it) or the database failed (retry).
#[derive(Debug)]
pub enum ApplyFailure {
    /// Park the message with this reason.
    Park(ApplyError),
    /// Abort and retry later.
    Store(StoreError),
}

impl From<StoreError> for ApplyFailure {
    fn from(e: StoreError) -> Self {
        ApplyFailure::Store(e)
    }
}

/// Classifies an SQLite error on a user table: environmental (retry the whole receive) or
/// caused by the data (park the message).
pub(super) fn refusal(table: &RegisteredTable, source: rusqlite::Error) -> ApplyFailure {
    if is_transient_sqlite(&source) {
        ApplyFailure::Store(StoreError::Sqlite {
            context: format!("applying a change to {:?}", table.info.name),
            source,
        })
    } else {
        ApplyFailure::Park(ApplyError::Rejected {
            table: table.info.name.clone(),
            source,
        })
    }
}
