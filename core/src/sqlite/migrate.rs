//! Replicated migrations on a database: applying one exactly once, recording it in
//! `__hl_migrations`, and describing the local schema (fingerprint, migration version).
//!
//! Replicas number migrations by the order they apply them, which is stream order, so every
//! replica gives a migration the same version. A migration that fails here is parked like
//! any message, and every later migration waits behind it (they are parked too and retried
//! in stream order), so migrations never apply out of order.

use rusqlite::{params, Connection, OptionalExtension};

use crate::capture::names::{self, quote};
use crate::change::StreamSeq;
use crate::error::{Context, StoreError};
use crate::wire::MigrationV1;

use super::install::{column_exists, object_exists};

/// One applied migration, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its version here (1, 2, … in apply order, the same on every replica).
    pub version: u64,
    /// Its id (the origin's HLC, 24 bytes).
    pub id: Vec<u8>,
    /// Stream position it arrived at.
    pub stream_seq: StreamSeq,
    /// Whether destructive statements were allowed.
    pub destructive: bool,
    /// The SQL it ran.
    pub sql: String,
    /// When it was applied here (Unix ms).
    pub applied_at: i64,
}

/// The local schema: what `--schema-status` prints and health reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// CRC-32 of the application's schema (every `sqlite_schema` entry but SQLite's and
    /// harmonylite's own, by type and name, with its SQL), as 8 hex digits. Equal on two
    /// replicas means the same tables, columns, indexes, views and triggers.
    pub fingerprint: String,
    /// Version of the last applied migration (0: none).
    pub migration_version: u64,
    /// Migrations parked here (failed, or waiting behind one that failed).
    pub parked_migrations: u64,
}

/// Version of the last applied migration (0: none).
pub fn version(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT coalesce(max(version), 0) FROM {}",
        quote(names::MIGRATIONS)
    ))
    .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
    .map(|v| v as u64)
    .context("reading the migration version")
}

/// Whether the migration with this id was applied here.
pub fn is_applied(conn: &Connection, id: &[u8]) -> Result<bool, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT 1 FROM {} WHERE id = ?1",
        quote(names::MIGRATIONS)
    ))
    .and_then(|mut s| s.query_row([id], |_| Ok(())).optional())
    .map(|found| found.is_some())
    .context("looking up a migration")
}

/// Runs a migration's SQL and records it with the next version, inside the caller's
/// transaction (with the echo-suppression marker set, so statements that write rows are not
/// captured: every replica runs them itself). `Err(message)` when SQLite refused it: the
/// caller rolls back to its savepoint and parks the message.
pub fn apply(
    conn: &Connection,
    seq: StreamSeq,
    migration: &MigrationV1,
    now_millis: i64,
) -> Result<Result<u64, String>, StoreError> {
    if let Err(e) = conn.execute_batch(&migration.sql) {
        if crate::error::is_transient_sqlite(&e) {
            return Err(StoreError::Sqlite {
                context: "applying a migration".into(),
                source: e,
            });
        }
        return Ok(Err(e.to_string()));
    }
    let next = version(conn)? + 1;
    conn.execute(
        &format!(
            "INSERT INTO {}(version, id, origin, stream_seq, destructive, sql, applied_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            quote(names::MIGRATIONS)
        ),
        params![
            next as i64,
            migration.id,
            &migration.origin.to_bytes()[..],
            seq.get() as i64,
            migration.destructive,
            migration.sql,
            now_millis
        ],
    )
    .context("recording a migration")?;
    Ok(Ok(next))
}

/// Applied migrations, in version order.
pub fn list(conn: &Connection) -> Result<Vec<AppliedMigration>, StoreError> {
    conn.prepare(&format!(
        "SELECT version, id, stream_seq, destructive, sql, applied_at FROM {} ORDER BY version",
        quote(names::MIGRATIONS)
    ))
    .and_then(|mut s| {
        s.query_map([], |r| {
            Ok(AppliedMigration {
                version: r.get::<_, i64>(0)? as u64,
                id: r.get(1)?,
                stream_seq: StreamSeq::new(r.get::<_, i64>(2)? as u64),
                destructive: r.get(3)?,
                sql: r.get(4)?,
                applied_at: r.get(5)?,
            })
        })?
        .collect()
    })
    .context("listing migrations")
}

/// Fingerprint of the application's schema (see [`SchemaStatus::fingerprint`]).
pub fn fingerprint(conn: &Connection) -> Result<String, StoreError> {
    let mut hasher = crc32fast::Hasher::new();
    let mut stmt = conn
        .prepare(
            "SELECT type, name, coalesce(sql, '') FROM sqlite_schema \
             WHERE substr(name, 1, 5) <> '__hl_' AND substr(tbl_name, 1, 5) <> '__hl_' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name",
        )
        .context("reading the schema")?;
    let mut rows = stmt.query([]).context("reading the schema")?;
    while let Some(row) = rows.next().context("reading the schema")? {
        for i in 0..3 {
            let text: String = row.get(i).context("reading the schema")?;
            hasher.update(text.as_bytes());
            hasher.update(&[0]);
        }
    }
    Ok(format!("{:08x}", hasher.finalize()))
}

/// Number of parked migrations.
pub fn parked_count(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT count(*) FROM {} WHERE kind = ?1",
        quote(names::PARKED)
    ))
    .and_then(|mut s| s.query_row([KIND], |r| r.get::<_, i64>(0)))
    .map(|n| n as u64)
    .context("counting parked migrations")
}

/// `kind` of parked migrations in `__hl_parked`.
pub const KIND: &str = crate::report::ParkReason::Migration.as_str();

/// The schema status of a database read without opening a `Store` (no install, no writes):
/// a database harmonylite never ran on reports version 0 and no parked migrations.
pub fn status(conn: &Connection) -> Result<SchemaStatus, StoreError> {
    let installed = object_exists(conn, "table", names::MIGRATIONS)?;
    Ok(SchemaStatus {
        fingerprint: fingerprint(conn)?,
        migration_version: if installed { version(conn)? } else { 0 },
        parked_migrations: if installed { parked_count(conn)? } else { 0 },
    })
}

/// Applied migrations of a database read without opening a `Store` (none when harmonylite
/// never ran on it).
pub fn list_if_installed(conn: &Connection) -> Result<Vec<AppliedMigration>, StoreError> {
    if object_exists(conn, "table", names::MIGRATIONS)? {
        list(conn)
    } else {
        Ok(Vec::new())
    }
}

/// Parked message counts by table of a database read without opening a `Store`.
pub fn parked_by_table(conn: &Connection) -> Result<Vec<(String, u64)>, StoreError> {
    if object_exists(conn, "table", names::PARKED)? && column_exists(conn, names::PARKED, "tbl")? {
        super::inbox::parked_by_table(conn)
    } else {
        Ok(Vec::new())
    }
}

/// Stream sequence of the oldest parked migration, if any.
pub fn first_parked_migration(conn: &Connection) -> Result<Option<StreamSeq>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT min(stream_seq) FROM {} WHERE kind = ?1",
        quote(names::PARKED)
    ))
    .and_then(|mut s| s.query_row([KIND], |r| r.get::<_, Option<i64>>(0)))
    .map(|seq| seq.map(|s| StreamSeq::new(s as u64)))
    .context("looking for parked migrations")
}
