//! Catching up in place: merging a snapshot into the live database by the LWW rule.
//!
//! A replica that fell behind the stream's retention cannot replay the messages it missed.
//! Replacing its database file is not an option while an application may hold it open (in
//! any process or container: its connection would keep writing into the replaced file).
//! Instead the replica merges a snapshot that covers the stream into the live database, in
//! short write transactions that the application's own writes interleave with, then
//! consumes the stream from the snapshot's covered sequence. [`Store::catch_up_step`] runs
//! one transaction; call it until the report says `finished`:
//!
//! 1. Replicated migrations the snapshot applied and this database has not are applied
//!    first, in version order, so the tables have the snapshot's columns.
//! 2. Each replicated table's row versions (live rows and tombstones) are merged in key
//!    order, `max_rows` per transaction. A snapshot row replaces the local row exactly when
//!    its HLC wins ([`crate::merge::incoming_wins`]), as a stream message would; a
//!    tombstone deletes the row. Every transaction first drains the local change log
//!    (capture before apply), so a write the application made meanwhile, captured or not,
//!    carries its own version and wins or loses by the same rule.
//! 3. The last transaction copies the snapshot's parked messages and stored parts of
//!    multi-part batches that this replica never received, and moves the cursor to the
//!    covered sequence. A crash before it leaves the cursor where it was: the next attempt
//!    merges again, which changes nothing that was merged (LWW is idempotent).
//!
//! Deleted rows never come back: deletes are kept as tombstones and tombstones are never
//! removed (only dropping a table, changing its primary key or `--cleanup` forgets a
//! table's versions), so the snapshot carries every delete it covers, and its tombstone beats the
//! older local row. A local row the snapshot knows nothing of is kept: it is a write of this
//! replica's own that the snapshot does not cover yet, and it reaches the other replicas
//! through the stream. A live row version in the snapshot whose row is missing from the
//! snapshot's table (the taker had deleted it and not captured the delete yet) is skipped;
//! that delete arrives later through the stream.
//!
//! Rows of a table that does not exist here are not merged; they are counted in the report
//! (`skipped_tables`) for the host to log.
//!
//! A catch-up reads only replicated state from the snapshot (migrations, the table registry,
//! row versions, column-merge state, parked messages, stored batch parts, the cursor), never
//! the taker's node-local state (outbox, change log, pending partitions, node id and
//! counters: [`crate::sqlite::snapshot`]). So a snapshot that still carries it (format
//! version 2, streamed from the taker's live file) merges exactly like a stripped one, and
//! the file needs no stripping first (it is opened read-only).

use std::path::Path;

use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection, OptionalExtension};

use super::apply::{ApplyFailure, TableStatements};
use super::cells;
use super::install::table_columns;
use super::snapshot::table_exists;
use super::tables::ShapeMismatch;
use super::{meta, run_migration, set_applying, Store};
use crate::capture::names::{self, quote};
use crate::change::StreamSeq;
use crate::column_merge::{ColumnChange, ColumnRow, Stored};
use crate::error::{ApplyError, Context, StoreError};
use crate::hlc::{Hlc, NodeId, NTP64};
use crate::merge::incoming_wins;
use crate::value::Value;
use crate::wire::MigrationV1;

/// Why a catch-up step failed.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// The database failed; retry the step later (see [`StoreError::is_transient`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The snapshot cannot be merged into this database (its schema differs in a way no
    /// replicated migration explains, or one of its migrations fails here).
    #[error("the snapshot cannot be merged into this database: {0}")]
    Refused(String),
}

/// Progress of a catch-up, cumulative over its steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUpReport {
    /// The stream sequence the snapshot covers (the cursor once finished).
    pub covered: StreamSeq,
    /// Row versions (live rows and tombstones) in the snapshot's tables that exist here.
    pub rows_total: u64,
    /// Row versions read so far.
    pub rows_read: u64,
    /// Rows the snapshot's version won (written or deleted here).
    pub remote_won: u64,
    /// Rows whose local version is newer (a local write or a later stream message).
    pub local_won: u64,
    /// Rows already at the snapshot's version.
    pub unchanged: u64,
    /// Live row versions whose row the snapshot lacks (skipped, see the module docs).
    pub missing_rows: u64,
    /// Replicated migrations applied from the snapshot.
    pub migrations: u64,
    /// Parked messages copied from the snapshot.
    pub parked_copied: u64,
    /// Stored multi-part batch parts copied from the snapshot.
    pub parts_copied: u64,
    /// Tables of the snapshot that do not exist here, with their row-version counts.
    pub skipped_tables: Vec<(String, u64)>,
    /// Local writes captured by the steps (drained before merging).
    pub local_rows_captured: u64,
    /// The cursor is at `covered`: consume the stream from the next sequence.
    pub finished: bool,
}

/// A snapshot being merged into a live database (see the module docs).
pub struct CatchUp {
    source: Connection,
    report: CatchUpReport,
    stage: Stage,
    tables: Vec<SourceTable>,
}

#[derive(Debug, Clone, PartialEq)]
enum Stage {
    Migrations,
    Rows {
        table: usize,
        after: Option<Vec<Value>>,
    },
    Finish,
    Done,
}

/// A replicated table as the snapshot has it.
#[derive(Debug, Clone)]
struct SourceTable {
    name: String,
    version_table: String,
    /// Its column-merge state table, when the snapshot has one.
    cells_table: Option<String>,
    key_columns: Vec<String>,
    value_columns: Vec<String>,
}

impl CatchUp {
    /// Opens the snapshot file at `path` (read-only) and checks it covers `covered`, as its
    /// header claims.
    pub fn open(path: &Path, covered: StreamSeq) -> Result<Self, CatchUpError> {
        let text = path
            .to_str()
            .ok_or_else(|| CatchUpError::Refused(format!("{} is not UTF-8", path.display())))?;
        let source = super::snapshot::open_read_only(text)
            .context(format!("opening the snapshot {text}"))?;
        if !table_exists(&source, names::META)? {
            return Err(CatchUpError::Refused(
                "the snapshot has no harmonylite metadata".into(),
            ));
        }
        let cursor = meta::get_i64(&source, meta::keys::CURSOR)?.unwrap_or(0) as u64;
        if cursor != covered.get() {
            return Err(CatchUpError::Refused(format!(
                "the snapshot's header says it covers sequence {} but its cursor is {cursor}",
                covered.get()
            )));
        }
        Ok(CatchUp {
            source,
            report: CatchUpReport {
                covered,
                ..Default::default()
            },
            stage: Stage::Migrations,
            tables: Vec::new(),
        })
    }

    /// Progress so far.
    pub fn report(&self) -> &CatchUpReport {
        &self.report
    }

    /// Gives the snapshot's connection back (to close it before removing the file).
    pub fn into_source(self) -> Connection {
        self.source
    }
}

impl Store {
    /// Runs the next step of `catch_up` in one write transaction, merging at most
    /// `max_rows` row versions, and returns the progress so far. Call it until the report
    /// says `finished`; between calls the application's writes go ahead. A failed step
    /// changes nothing and may be retried.
    pub fn catch_up_step(
        &mut self,
        catch_up: &mut CatchUp,
        now: NTP64,
        max_rows: usize,
    ) -> Result<CatchUpReport, CatchUpError> {
        if catch_up.stage == Stage::Done {
            return Ok(catch_up.report.clone());
        }
        let saved = (self.next_batch, self.cursor, self.clock.clone());
        let migrations_before = catch_up.report.migrations;
        let mut report = catch_up.report.clone();
        let mut stage = catch_up.stage.clone();
        let mut tables = None;
        let result = self.catch_up_tx(
            catch_up,
            &mut report,
            &mut stage,
            &mut tables,
            now,
            max_rows,
        );
        match result {
            Ok(()) => {
                // Checkpoint what the step wrote now, on this connection, so the WAL never
                // grows to the automatic checkpoint and an application commit never pays
                // for copying merged pages. Passive: it never waits for, or blocks, a writer.
                let _ = self
                    .conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                catch_up.report = report;
                catch_up.stage = stage;
                if let Some(tables) = tables {
                    catch_up.tables = tables;
                }
                self.follow_merge_switches(catch_up.report.migrations > migrations_before)?;
                Ok(catch_up.report.clone())
            }
            Err(e) => {
                (self.next_batch, self.cursor, self.clock) = saved;
                Err(e)
            }
        }
    }

    fn catch_up_tx(
        &mut self,
        catch_up: &CatchUp,
        report: &mut CatchUpReport,
        stage: &mut Stage,
        new_tables: &mut Option<Vec<SourceTable>>,
        now: NTP64,
        max_rows: usize,
    ) -> Result<(), CatchUpError> {
        let (tx, drained) = super::begin_captured(
            &mut self.conn,
            &mut self.schema,
            &mut self.clock,
            &self.options,
            &mut self.next_batch,
            "a catch-up step",
        )?;
        report.local_rows_captured += drained.rows as u64;
        if drained.outbox_grew || drained.batch_seq.is_some() {
            self.outbox_grew = true;
        }
        set_applying(&tx, true)?;
        let source = &catch_up.source;
        match stage.clone() {
            Stage::Migrations => {
                report.migrations +=
                    apply_missing_migrations(&tx, source, &mut self.schema, &self.options, now)?;
                let (found, skipped) = source_tables(source, &self.schema.tables)?;
                report.rows_total = found.iter().map(|(_, n)| n).sum();
                report.skipped_tables = skipped;
                *new_tables = Some(found.into_iter().map(|(t, _)| t).collect());
                *stage = Stage::Rows {
                    table: 0,
                    after: None,
                };
            }
            Stage::Rows { table, after } => {
                let Some(source_table) = catch_up.tables.get(table) else {
                    *stage = Stage::Finish;
                    return finish_tx(tx, self.clock.last());
                };
                let merged = merge_page(
                    &tx,
                    source,
                    source_table,
                    &self.schema.tables,
                    &mut self.clock,
                    after.as_deref(),
                    now,
                    max_rows,
                    report,
                )?;
                *stage = match merged {
                    Some(last) => Stage::Rows {
                        table,
                        after: Some(last),
                    },
                    _ => Stage::Rows {
                        table: table + 1,
                        after: None,
                    },
                };
            }
            Stage::Finish => {
                report.parked_copied += copy_parked(&tx, source, self.cursor)?;
                report.parts_copied += copy_parts(&tx, source)?;
                if self.options.scopes.is_enabled() {
                    // Merged rows route their later deletes by the registry too.
                    super::routing::register_rows(&tx, &self.schema.tables, &self.options.scopes)?;
                }
                if report.covered > self.cursor {
                    self.cursor = report.covered;
                }
                meta::set(&tx, meta::keys::CURSOR, self.cursor.get() as i64)?;
                report.finished = true;
                *stage = Stage::Done;
            }
            Stage::Done => {}
        }
        finish_tx(tx, self.clock.last())
    }
}

fn finish_tx(tx: rusqlite::Transaction<'_>, clock: NTP64) -> Result<(), CatchUpError> {
    set_applying(&tx, false)?;
    meta::set(&tx, meta::keys::CLOCK, clock.as_u64() as i64)?;
    tx.commit().context("committing a catch-up step")?;
    Ok(())
}

/// `__hl_migrations` row: version, id, origin, stream_seq, destructive, sql.
type MigrationRow = (i64, Vec<u8>, Vec<u8>, i64, bool, String);

/// Applies the snapshot's migrations this database lacks, in version order.
fn apply_missing_migrations(
    tx: &rusqlite::Transaction<'_>,
    source: &Connection,
    schema: &mut super::Schema,
    options: &super::StoreOptions,
    now: NTP64,
) -> Result<u64, CatchUpError> {
    if !table_exists(source, names::MIGRATIONS)? {
        return Ok(0);
    }
    let rows: Vec<MigrationRow> = source
        .prepare(&format!(
            "SELECT version, id, origin, stream_seq, destructive, sql FROM {} ORDER BY version",
            quote(names::MIGRATIONS)
        ))
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect()
        })
        .context("reading the snapshot's migrations")?;
    let mut applied = 0;
    for (version, id, origin, seq, destructive, sql) in rows {
        let origin = <[u8; NodeId::LEN]>::try_from(origin.as_slice())
            .ok()
            .and_then(NodeId::from_bytes)
            .ok_or_else(|| {
                CatchUpError::Refused(format!("migration {version} has a malformed origin"))
            })?;
        let migration = MigrationV1 {
            origin,
            id,
            base_version: (version - 1).max(0) as u64,
            destructive,
            sql,
        };
        match run_migration(
            tx,
            schema,
            options,
            StreamSeq::new(seq as u64),
            &migration,
            now,
        )? {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(e) => {
                return Err(CatchUpError::Refused(format!(
                    "the snapshot's migration {version} fails here: {e}"
                )))
            }
        }
    }
    Ok(applied)
}

/// The snapshot's replicated tables that exist here (with their row-version counts), and
/// those that do not.
#[allow(clippy::type_complexity)]
fn source_tables(
    source: &Connection,
    local: &super::tables::Tables,
) -> Result<(Vec<(SourceTable, u64)>, Vec<(String, u64)>), CatchUpError> {
    let registry: Vec<(i64, String)> = source
        .prepare(&format!(
            "SELECT id, name FROM {} ORDER BY id",
            quote(names::TABLES)
        ))
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .context("reading the snapshot's table registry")?;
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for (id, name) in registry {
        let version_table = names::version_table(id);
        if !table_exists(source, &version_table)? || !table_exists(source, &name)? {
            continue;
        }
        let count: i64 = source
            .query_row(
                &format!("SELECT count(*) FROM {}", quote(&version_table)),
                [],
                |r| r.get(0),
            )
            .context(format!("counting the snapshot's row versions of {name:?}"))?;
        let Some(here) = local.by_name(&name) else {
            if count > 0 && !local.is_excluded(&name) {
                skipped.push((name, count as u64));
            }
            continue;
        };
        let columns = table_columns(source, &name)?;
        let mut keys: Vec<(u32, String)> = columns
            .iter()
            .filter(|c| c.pk > 0)
            .map(|c| (c.pk, c.name.clone()))
            .collect();
        keys.sort();
        let key_columns: Vec<String> = keys.into_iter().map(|(_, n)| n).collect();
        let value_columns: Vec<String> = columns
            .iter()
            .filter(|c| c.pk == 0 && c.hidden == 0)
            .map(|c| c.name.clone())
            .collect();
        match here.shape_mismatch(&key_columns, &value_columns) {
            None => {}
            Some(ShapeMismatch::Key { ours }) => {
                return Err(CatchUpError::Refused(format!(
                    "table {name:?} has the primary key {key_columns:?} in the snapshot and {ours:?} here"
                )))
            }
            Some(ShapeMismatch::MissingColumn(missing)) => {
                return Err(CatchUpError::Refused(format!(
                    "table {name:?} has a column {missing:?} in the snapshot that it lacks here, and no \
                     replicated migration in the snapshot adds it"
                )))
            }
        }
        let cells_table = names::cells_table(id);
        let cells_table = table_exists(source, &cells_table)?.then_some(cells_table);
        found.push((
            SourceTable {
                name,
                version_table,
                cells_table,
                key_columns,
                value_columns,
            },
            count as u64,
        ));
    }
    Ok((found, skipped))
}

/// Merges up to `max_rows` row versions of `table` after key `after`; returns the last key
/// read (None: the table is done).
#[allow(clippy::too_many_arguments)]
fn merge_page(
    tx: &Connection,
    source: &Connection,
    table: &SourceTable,
    local: &super::tables::Tables,
    clock: &mut crate::hlc::Clock,
    after: Option<&[Value]>,
    now: NTP64,
    max_rows: usize,
    report: &mut CatchUpReport,
) -> Result<Option<Vec<Value>>, CatchUpError> {
    let here = local
        .by_name(&table.name)
        .ok_or_else(|| CatchUpError::Refused(format!("table {:?} vanished", table.name)))?;
    let n = table.key_columns.len();
    let slots: Vec<String> = (0..n)
        .map(|i| format!("v.{}", names::key_slot(i)))
        .collect();
    let join = table
        .key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("t.{} IS v.{}", quote(c), names::key_slot(i)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let values: String = table
        .value_columns
        .iter()
        .map(|c| format!(", t.{}", quote(c)))
        .collect();
    let filter = match after {
        Some(_) => format!(
            "WHERE ({}) > ({})",
            slots.join(", "),
            (1..=n)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {}, v.hlc, v.deleted, t.{} IS NOT NULL{values} FROM {} v LEFT JOIN {} t ON {join} \
         {filter} ORDER BY {} LIMIT {}",
        slots.join(", "),
        quote(&table.key_columns[0]),
        quote(&table.version_table),
        quote(&table.name),
        slots.join(", "),
        max_rows.max(1)
    );
    let mut select = source
        .prepare_cached(&sql)
        .context(format!("reading the snapshot's rows of {:?}", table.name))?;
    let mut rows = select
        .query(params_from_iter(after.unwrap_or(&[]).iter()))
        .context(format!("reading the snapshot's rows of {:?}", table.name))?;
    let upsert_sql = here.upsert_row_sql(&table.value_columns);
    let mut st = TableStatements::prepare(tx, here, &upsert_sql).map_err(failure)?;
    let mut last = None;
    let mut page_rows = 0;
    while let Some(row) = rows
        .next()
        .context(format!("reading the snapshot's rows of {:?}", table.name))?
    {
        let read = |i: usize| -> Result<Value, CatchUpError> {
            Ok(row.get::<_, Value>(i).context("reading a snapshot value")?)
        };
        let key: Vec<Value> = (0..n).map(read).collect::<Result<_, _>>()?;
        let hlc_bytes: Vec<u8> = row.get(n).context("reading a snapshot row version")?;
        let deleted: bool = row
            .get(n + 1)
            .context("reading a snapshot tombstone flag")?;
        let present: bool = row.get(n + 2).context("reading a snapshot row")?;
        report.rows_read += 1;
        page_rows += 1;
        let hlc = Hlc::from_bytes(&hlc_bytes)
            .map_err(|e| StoreError::Corrupt(format!("snapshot row version: {e}")))?;
        if !deleted && !present {
            report.missing_rows += 1;
            last = Some(key);
            continue;
        }
        let values: Option<Vec<Value>> = if deleted {
            None
        } else {
            Some(
                (n + 3..n + 3 + table.value_columns.len())
                    .map(read)
                    .collect::<Result<_, _>>()?,
            )
        };
        if here.merge.is_some() {
            let changes = snapshot_cells(source, table, &key, hlc, values.as_deref())?;
            match cells::merge_into_row(tx, here, &key, &changes, clock.node()).map_err(failure)? {
                cells::Merged::Duplicate => report.unchanged += 1,
                cells::Merged::Changed { .. } => report.remote_won += 1,
            }
            let _ = clock.observe(hlc, now);
            last = Some(key);
            continue;
        }
        let stored = st.read_version(&key)?;
        if !incoming_wins(hlc, stored) {
            if stored == Some(hlc) {
                report.unchanged += 1;
            } else {
                report.local_won += 1;
            }
            last = Some(key);
            continue;
        }
        report.remote_won += 1;
        st.write_winner(here, &key, values.as_deref(), hlc)
            .map_err(failure)?;
        // The snapshot's versions were accepted by the cluster: never refuse them here.
        let _ = clock.observe(hlc, now);
        last = Some(key);
    }
    Ok(last.filter(|_| page_rows >= max_rows.max(1)))
}

/// A snapshot row of a column-merge table as merge changes: its merge state with the
/// values of its visible columns, or, when the snapshot has no state for it (written before
/// the table merged by column), its image (or delete) at its version `hlc`. `values` are in
/// `table.value_columns` order, `None` for a tombstone.
fn snapshot_cells(
    source: &Connection,
    table: &SourceTable,
    key: &[Value],
    hlc: Hlc,
    values: Option<&[Value]>,
) -> Result<Vec<ColumnChange>, CatchUpError> {
    let value_of = |name: &str| {
        let i = table.value_columns.iter().position(|c| c == name)?;
        values.map(|v| v[i].clone())
    };
    let state: Option<ColumnRow<Stored>> = match &table.cells_table {
        Some(cells) => {
            let slot_match = (0..key.len())
                .map(|i| format!("{} = ?{}", names::key_slot(i), i + 1))
                .collect::<Vec<_>>()
                .join(" AND ");
            let bytes: Option<Vec<u8>> = source
                .prepare_cached(&format!(
                    "SELECT state FROM {} WHERE {slot_match}",
                    quote(cells)
                ))
                .and_then(|mut s| s.query_row(params_from_iter(key), |r| r.get(0)).optional())
                .context(format!(
                    "reading the snapshot's merge state of {:?}",
                    table.name
                ))?;
            bytes
                .map(|b| postcard::from_bytes(&b))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("snapshot merge state: {e}")))?
        }
        None => None,
    };
    let Some(state) = state else {
        return Ok(vec![match values {
            None => ColumnChange::Delete {
                hlc,
                observed: Vec::new(),
            },
            Some(values) => ColumnChange::Write {
                hlc,
                columns: table
                    .value_columns
                    .iter()
                    .cloned()
                    .zip(values.iter().cloned())
                    .collect(),
            },
        }]);
    };
    Ok(state
        .changes()
        .into_iter()
        .map(|change| {
            // A counter's base, or the plain column's value in the snapshot's row (a
            // column a delete hid reads NULL: it stays hidden everywhere).
            change.map(
                |name| name,
                |name, base| match base {
                    Some(base) => Value::Integer(base),
                    None => value_of(name).unwrap_or(Value::Null),
                },
            )
        })
        .collect())
}

/// Copies the snapshot's parked messages after `cursor` (messages this replica never got).
fn copy_parked(
    tx: &Connection,
    source: &Connection,
    cursor: StreamSeq,
) -> Result<u64, CatchUpError> {
    if !table_exists(source, names::PARKED)? {
        return Ok(0);
    }
    let columns = "stream_seq, frame, kind, reason, parked_at, attempts, tbl";
    let mut select = source
        .prepare(&format!(
            "SELECT {columns} FROM {} WHERE stream_seq > ?1 ORDER BY stream_seq",
            quote(names::PARKED)
        ))
        .context("reading the snapshot's parked messages")?;
    let mut insert = tx
        .prepare(&format!(
            "INSERT OR IGNORE INTO {}({columns}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            quote(names::PARKED)
        ))
        .context("copying parked messages")?;
    copy_rows(&mut select, &mut insert, &[cursor.get() as i64], 7)
}

/// Copies the snapshot's stored parts of multi-part batches.
fn copy_parts(tx: &Connection, source: &Connection) -> Result<u64, CatchUpError> {
    if !table_exists(source, names::PARTS)? {
        return Ok(0);
    }
    let columns = "origin, batch_seq, part, parts, compression, body";
    let mut select = source
        .prepare(&format!("SELECT {columns} FROM {}", quote(names::PARTS)))
        .context("reading the snapshot's stored batch parts")?;
    let mut insert = tx
        .prepare(&format!(
            "INSERT OR IGNORE INTO {}({columns}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            quote(names::PARTS)
        ))
        .context("copying stored batch parts")?;
    copy_rows(&mut select, &mut insert, &[], 6)
}

fn copy_rows(
    select: &mut rusqlite::Statement<'_>,
    insert: &mut rusqlite::Statement<'_>,
    params: &[i64],
    width: usize,
) -> Result<u64, CatchUpError> {
    let mut rows = select
        .query(params_from_iter(params))
        .context("reading snapshot rows")?;
    let mut copied = 0;
    while let Some(row) = rows.next().context("reading snapshot rows")? {
        let values: Vec<SqlValue> = (0..width)
            .map(|i| row.get::<_, SqlValue>(i))
            .collect::<Result<_, _>>()
            .context("reading snapshot rows")?;
        copied += insert
            .execute(params_from_iter(values))
            .context("copying snapshot rows")? as u64;
    }
    Ok(copied)
}

fn failure(f: ApplyFailure) -> CatchUpError {
    match f {
        ApplyFailure::Store(e) => CatchUpError::Store(e),
        ApplyFailure::Park(ApplyError::Rejected { table, source }) => CatchUpError::Refused(
            format!("SQLite refused a snapshot row of {table:?}: {source}"),
        ),
        ApplyFailure::Park(e) => CatchUpError::Refused(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::snapshot::{strip_node_local, vacuum_into};
    use crate::sqlite::StoreOptions;

    fn store_at(path: &Path, node: u128) -> Store {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
            .unwrap();
        Store::open(conn, StoreOptions::new(NodeId::from_u128(node).unwrap())).unwrap()
    }

    /// The notes, this replica's node id and outbox depth after catching up from `snapshot`.
    fn caught_up_from(
        snapshot: &Path,
        replica: &Path,
    ) -> (Vec<(i64, String)>, Option<NodeId>, u64) {
        let mut store = store_at(replica, 2);
        let mut job = CatchUp::open(snapshot, StreamSeq::new(0)).unwrap();
        let now = crate::hlc::ntp64_from_unix(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap(),
        );
        while !store.catch_up_step(&mut job, now, 2).unwrap().finished {}
        let notes = store
            .connection()
            .prepare("SELECT id, body FROM notes ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let node = Store::stored_node_id(store.connection()).unwrap();
        (notes, node, store.outbox_depth().unwrap().0)
    }

    #[test]
    fn a_snapshot_carrying_the_takers_node_local_state_merges_like_a_stripped_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut taker = store_at(&dir.path().join("a.db"), 1);
        taker
            .connection()
            .execute_batch("INSERT INTO notes VALUES (1, 'one'), (2, 'two'), (3, 'three')")
            .unwrap();
        taker.drain().unwrap();
        taker
            .connection()
            .execute("INSERT INTO notes VALUES (4, 'undrained')", [])
            .unwrap();
        assert!(taker.outbox_depth().unwrap().0 > 0, "unpublished frames");

        let (carrying, stripped) = (dir.path().join("raw.db"), dir.path().join("stripped.db"));
        for copy in [&carrying, &stripped] {
            vacuum_into(taker.connection(), copy.to_str().unwrap()).unwrap();
        }
        strip_node_local(&mut Connection::open(&stripped).unwrap()).unwrap();

        let from_carrying = caught_up_from(&carrying, &dir.path().join("b1.db"));
        let from_stripped = caught_up_from(&stripped, &dir.path().join("b2.db"));
        assert_eq!(from_carrying, from_stripped);
        let (notes, node, outbox) = from_carrying;
        assert_eq!(notes.len(), 3, "the drained rows merge: {notes:?}");
        assert_eq!(
            node,
            NodeId::from_u128(2),
            "the replica keeps its own identity"
        );
        assert_eq!(outbox, 0, "the taker's outbox is not adopted");
    }
}
