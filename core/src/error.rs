//! Error types shared across the crate.

/// The kind of a database failure, as the engine reports it
/// ([`crate::engine::Event::DatabaseError`]); the engine retries every kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatabaseErrorKind {
    /// Another connection holds a lock (`SQLITE_BUSY`, `SQLITE_LOCKED`).
    Busy,
    /// The disk or the database's size limit is full.
    DiskFull,
    /// Reading or writing the file failed, or it cannot be opened.
    Io,
    /// The database is read-only here.
    ReadOnly,
    /// The file or harmonylite's own tables are damaged.
    Corrupt,
    /// Anything else.
    Other,
}

impl DatabaseErrorKind {
    /// A stable short name (metrics labels, JS events).
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseErrorKind::Busy => "busy",
            DatabaseErrorKind::DiskFull => "disk_full",
            DatabaseErrorKind::Io => "io",
            DatabaseErrorKind::ReadOnly => "read_only",
            DatabaseErrorKind::Corrupt => "corrupt",
            DatabaseErrorKind::Other => "other",
        }
    }
}

impl std::fmt::Display for DatabaseErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "sqlite")]
pub use store_errors::*;

#[cfg(feature = "sqlite")]
mod store_errors {
    use super::DatabaseErrorKind;
    use crate::hlc::ClockError;
    use crate::report::ParkReason;
    use crate::wire::WireError;

    /// A failure of the database itself: the operation did nothing and may be retried.
    #[derive(Debug, thiserror::Error)]
    pub enum StoreError {
        /// SQLite returned an error.
        #[error("SQLite error while {context}: {source}")]
        Sqlite {
            /// What the store was doing.
            context: String,
            /// The underlying error.
            #[source]
            source: rusqlite::Error,
        },
        /// Internal state in the database is not what this build wrote.
        #[error("harmonylite metadata is damaged: {0}")]
        Corrupt(String),
        /// The store's options do not fit this database (e.g. a table's merge mode).
        #[error("{0}")]
        Config(String),
    }

    impl StoreError {
        /// Whether retrying later may succeed (busy, locked, I/O, full disk) rather than the
        /// database being unusable.
        pub fn is_transient(&self) -> bool {
            match self {
                StoreError::Sqlite { source, .. } => is_transient_sqlite(source),
                StoreError::Corrupt(_) | StoreError::Config(_) => false,
            }
        }

        /// The kind of failure, kept as a type for hosts to report and count.
        pub fn kind(&self) -> DatabaseErrorKind {
            use rusqlite::ErrorCode::*;
            match self {
                StoreError::Corrupt(_) => DatabaseErrorKind::Corrupt,
                StoreError::Config(_) => DatabaseErrorKind::Other,
                StoreError::Sqlite {
                    source: rusqlite::Error::SqliteFailure(e, _),
                    ..
                } => match e.code {
                    DatabaseBusy | DatabaseLocked => DatabaseErrorKind::Busy,
                    DiskFull => DatabaseErrorKind::DiskFull,
                    SystemIoFailure | CannotOpen | FileLockingProtocolFailed => {
                        DatabaseErrorKind::Io
                    }
                    ReadOnly => DatabaseErrorKind::ReadOnly,
                    DatabaseCorrupt | NotADatabase => DatabaseErrorKind::Corrupt,
                    _ => DatabaseErrorKind::Other,
                },
                StoreError::Sqlite { .. } => DatabaseErrorKind::Other,
            }
        }

        /// Whether SQLite reported `SQLITE_BUSY` or `SQLITE_LOCKED`.
        pub fn is_busy(&self) -> bool {
            matches!(
                self,
                StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. }
                    if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            )
        }
    }

    /// Whether an SQLite error is environmental (retry later) rather than caused by the data.
    pub(crate) fn is_transient_sqlite(e: &rusqlite::Error) -> bool {
        use rusqlite::ErrorCode::*;
        match e {
            rusqlite::Error::SqliteFailure(f, _) => matches!(
                f.code,
                DatabaseBusy
                    | DatabaseLocked
                    | SystemIoFailure
                    | DiskFull
                    | OutOfMemory
                    | CannotOpen
                    | FileLockingProtocolFailed
                    | ReadOnly
                    | OperationInterrupted
            ),
            _ => false,
        }
    }

    /// Adds context to rusqlite results.
    pub(crate) trait Context<T> {
        /// Wraps the error with what the store was doing.
        fn context(self, context: impl Into<String>) -> Result<T, StoreError>;
    }

    impl<T> Context<T> for Result<T, rusqlite::Error> {
        fn context(self, context: impl Into<String>) -> Result<T, StoreError> {
            self.map_err(|source| StoreError::Sqlite {
                context: context.into(),
                source,
            })
        }
    }

    /// Why a received message cannot be applied here (it is parked, not dropped).
    #[derive(Debug, thiserror::Error)]
    pub enum ApplyError {
        /// The frame or batch does not decode.
        #[error(transparent)]
        Wire(#[from] WireError),
        /// The batch names a table this replica does not replicate.
        #[error("table {table:?} does not exist or is not replicated on this node")]
        UnknownTable {
            /// The table named by the sender.
            table: String,
        },
        /// The batch names a column the local table lacks.
        #[error("table {table:?} has no column {column:?} on this node")]
        UnknownColumn {
            /// The table.
            table: String,
            /// The missing column.
            column: String,
        },
        /// The sender's primary key differs from ours.
        #[error("table {table:?} has primary key {ours:?} here but {theirs:?} on the sender")]
        KeyMismatch {
            /// The table.
            table: String,
            /// Our key columns.
            ours: Vec<String>,
            /// The sender's key columns.
            theirs: Vec<String>,
        },
        /// A timestamp is too far in the future.
        #[error(transparent)]
        Clock(#[from] ClockError),
        /// A replicated migration failed here, or waits behind an earlier one that did.
        #[error("migration not applied: {0}")]
        Migration(String),
        /// SQLite refused the change because of the data (constraint, type).
        #[error("SQLite refused a change to table {table:?}: {source}")]
        Rejected {
            /// The table.
            table: String,
            /// The SQLite error.
            #[source]
            source: rusqlite::Error,
        },
        /// The publisher's scope rules differ from this replica's.
        #[error("scope rules differ: node {origin} has rules {theirs:08x}, this node {ours:08x}; make [scopes] identical on every node (the message applies once they are)")]
        ScopeRules {
            /// The publishing node.
            origin: String,
            /// Its rules' fingerprint.
            theirs: u32,
            /// This replica's.
            ours: u32,
        },
        /// The publisher merges a table by column, this replica by row.
        #[error("table {table:?} merges by column on node {origin} but by row here; make the merge modes identical on every replica (`harmonylite migrate --merge`, see docs/column-merge.md)")]
        MergeMode {
            /// The table.
            table: String,
            /// The publishing node.
            origin: String,
        },
    }

    impl ApplyError {
        /// The kind of refusal, for metrics and the parked table.
        pub fn kind(&self) -> ParkReason {
            match self {
                ApplyError::Wire(WireError::UnsupportedVersion(_)) => ParkReason::Version,
                ApplyError::Wire(_) => ParkReason::Decode,
                ApplyError::UnknownTable { .. } => ParkReason::UnknownTable,
                ApplyError::UnknownColumn { .. } => ParkReason::UnknownColumn,
                ApplyError::KeyMismatch { .. } => ParkReason::KeyMismatch,
                ApplyError::Clock(_) => ParkReason::Clock,
                ApplyError::Rejected { .. } => ParkReason::Rejected,
                ApplyError::Migration(_) => ParkReason::Migration,
                ApplyError::ScopeRules { .. } => ParkReason::ScopeRules,
                ApplyError::MergeMode { .. } => ParkReason::MergeMode,
            }
        }

        /// The table the refusal is about, when it is about one (parked counts per table).
        pub fn table(&self) -> Option<&str> {
            match self {
                ApplyError::UnknownTable { table }
                | ApplyError::UnknownColumn { table, .. }
                | ApplyError::KeyMismatch { table, .. }
                | ApplyError::Rejected { table, .. }
                | ApplyError::MergeMode { table, .. } => Some(table),
                ApplyError::Wire(_)
                | ApplyError::Clock(_)
                | ApplyError::Migration(_)
                | ApplyError::ScopeRules { .. } => None,
            }
        }
    }
}
