//! Errors of the replica and how they cross into JavaScript.
//!
//! Every error becomes a JS `Error` whose `name` is one of the stable names below (the npm
//! package turns them into `Error` subclasses of the same names):
//!
//! | name | when | extra properties |
//! | --- | --- | --- |
//! | `InvalidArgumentError` | bad options, unsupported parameter values, a refused `discardParked` | — |
//! | `SqliteError` | SQLite refused the application's SQL | `code` (`"SQLITE_CONSTRAINT"` ...), `extendedCode` (number) |
//! | `StorageError` | opening the database, OPFS unavailable or its directory in use by another tab, harmonylite metadata damaged | — |
//! | `ReplicaClosedError` | the replica was closed | — |
//! | `MigrationError` | `migrate` refused the SQL (destructive without the flag, transaction control, fails on this database) | — |

use harmonylite_core::error::StoreError;
use wasm_bindgen::JsValue;

/// Why a replica operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// An option or argument from JavaScript is not usable.
    #[error("{0}")]
    InvalidArgument(String),
    /// SQLite refused the application's SQL.
    #[error("{source}")]
    Sqlite {
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database could not be opened or its harmonylite state is unusable.
    #[error("{0}")]
    Storage(String),
    /// The replica was closed.
    #[error("the replica is closed")]
    Closed,
    /// A migration was refused before publishing.
    #[error("{0}")]
    Migration(String),
}

impl ReplicaError {
    /// The stable JS name of this error.
    pub fn name(&self) -> &'static str {
        match self {
            ReplicaError::InvalidArgument(_) => "InvalidArgumentError",
            ReplicaError::Sqlite { .. } => "SqliteError",
            ReplicaError::Storage(_) => "StorageError",
            ReplicaError::Closed => "ReplicaClosedError",
            ReplicaError::Migration(_) => "MigrationError",
        }
    }
}

impl From<rusqlite::Error> for ReplicaError {
    fn from(source: rusqlite::Error) -> Self {
        ReplicaError::Sqlite { source }
    }
}

impl From<StoreError> for ReplicaError {
    fn from(e: StoreError) -> Self {
        ReplicaError::Storage(e.to_string())
    }
}

impl From<ReplicaError> for JsValue {
    fn from(e: ReplicaError) -> Self {
        let error = js_sys::Error::new(&e.to_string());
        error.set_name(e.name());
        if let ReplicaError::Sqlite { source } = &e {
            // Errors rusqlite raises itself (several statements, wrong parameter count) are
            // misuse of the API from SQLite's point of view.
            let extended = match source {
                rusqlite::Error::SqliteFailure(failure, _) => failure.extended_code,
                rusqlite::Error::SqlInputError { error, .. } => error.extended_code,
                _ => 21,
            };
            let _ =
                js_sys::Reflect::set(&error, &"code".into(), &primary_code_name(extended).into());
            let _ = js_sys::Reflect::set(&error, &"extendedCode".into(), &JsValue::from(extended));
        }
        error.into()
    }
}

/// `SQLITE_*` name of the primary result code inside an extended code.
fn primary_code_name(extended: i32) -> &'static str {
    match extended & 0xff {
        1 => "SQLITE_ERROR",
        2 => "SQLITE_INTERNAL",
        3 => "SQLITE_PERM",
        4 => "SQLITE_ABORT",
        5 => "SQLITE_BUSY",
        6 => "SQLITE_LOCKED",
        7 => "SQLITE_NOMEM",
        8 => "SQLITE_READONLY",
        9 => "SQLITE_INTERRUPT",
        10 => "SQLITE_IOERR",
        11 => "SQLITE_CORRUPT",
        12 => "SQLITE_NOTFOUND",
        13 => "SQLITE_FULL",
        14 => "SQLITE_CANTOPEN",
        15 => "SQLITE_PROTOCOL",
        16 => "SQLITE_EMPTY",
        17 => "SQLITE_SCHEMA",
        18 => "SQLITE_TOOBIG",
        19 => "SQLITE_CONSTRAINT",
        20 => "SQLITE_MISMATCH",
        21 => "SQLITE_MISUSE",
        22 => "SQLITE_NOLFS",
        23 => "SQLITE_AUTH",
        24 => "SQLITE_FORMAT",
        25 => "SQLITE_RANGE",
        26 => "SQLITE_NOTADB",
        _ => "SQLITE_ERROR",
    }
}
