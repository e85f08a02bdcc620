//! Applying a remote batch under last-writer-wins.

use rusqlite::{params_from_iter, CachedStatement, Connection, OptionalExtension};

use super::cells;
pub(super) use super::failure::refusal;
pub use super::failure::ApplyFailure;
use super::tables::{same_identifier, RegisteredTable, Tables};
use crate::change::Batch;
use crate::column_merge::ColumnChange;
use crate::error::{ApplyError, Context, StoreError};
use crate::hlc::{Clock, Hlc, NodeId, NTP64};
use crate::merge::incoming_wins;
use crate::report::Applied;
use crate::value::Value;
use crate::wire::WireError;

/// Applies `batch` from `origin` row by row: each change replaces the row when its HLC beats
/// the stored version ([`incoming_wins`]). The caller holds a write transaction with the
/// echo-suppression marker set. Every check that can refuse the batch (tables, columns,
/// keys, clock) runs before the first write, so the only refusal that can leave partial
/// writes behind is [`ApplyError::Rejected`] (SQLite refused a row, e.g. a UNIQUE
/// constraint); the caller rolls those back.
pub fn apply_batch(
    conn: &Connection,
    tables: &Tables,
    clock: &mut Clock,
    origin: NodeId,
    batch: &Batch,
    now: NTP64,
) -> Result<Applied, ApplyFailure> {
    let plans = plan(tables, batch).map_err(ApplyFailure::Park)?;
    check_keys_not_null(batch).map_err(ApplyFailure::Park)?;
    check_merge_modes(&plans, batch, origin).map_err(ApplyFailure::Park)?;
    let newest_row = batch.rows.iter().map(|r| r.hlc(origin)).max();
    let newest_cell = batch.cells.iter().map(|c| c.hlc(origin)).max();
    if let Some(newest) = newest_row.max(newest_cell) {
        clock
            .check_not_too_far_ahead(newest, now)
            .map_err(|e| ApplyFailure::Park(e.into()))?;
    }
    let mut statements: Vec<Option<TableStatements>> = plans.iter().map(|_| None).collect();
    let mut applied = Applied::default();
    for row in &batch.rows {
        let Some((table, upsert_sql)) = &plans[row.table as usize] else {
            // A table this replica excludes from replication: its rows stay local here.
            applied.excluded += 1;
            continue;
        };
        let hlc = row.hlc(origin);
        if table.merge.is_some() {
            // A row image from a replica that still merged the table by row (a switch to
            // column merging in flight): it writes every column, or deletes the row.
            let change = match &row.values {
                None => ColumnChange::Delete {
                    hlc,
                    observed: Vec::new(),
                },
                Some(values) => ColumnChange::Write {
                    hlc,
                    columns: batch.tables[row.table as usize]
                        .value_columns
                        .iter()
                        .map(|name| local_name(table, name))
                        .zip(values.iter().cloned())
                        .collect(),
                },
            };
            let merged = cells::merge_into_row(conn, table, &row.key, &[change], origin)?;
            count_cells(&mut applied, table, merged);
            continue;
        }
        let st = match &mut statements[row.table as usize] {
            Some(st) => st,
            slot => slot.insert(TableStatements::prepare(conn, table, upsert_sql)?),
        };
        let stored = st.read_version(&row.key)?;
        if !incoming_wins(hlc, stored) {
            if stored == Some(hlc) {
                applied.duplicates += 1;
            } else {
                applied.local_won += 1;
            }
            continue;
        }
        if stored.is_some() {
            applied.remote_won += 1;
        } else {
            applied.new_rows += 1;
        }
        st.write_winner(table, &row.key, row.values.as_deref(), hlc)?;
        applied.tables.insert(table.info.name.clone());
    }
    for cell in &batch.cells {
        let Some((table, _)) = &plans[cell.table as usize] else {
            applied.excluded += 1;
            continue;
        };
        let schema = &batch.tables[cell.table as usize];
        let changes: Vec<ColumnChange> = cell
            .changes(schema, origin)
            .into_iter()
            .map(|change| change.map(|name| local_name(table, &name), |_, value| value))
            .collect();
        let merged = cells::merge_into_row(conn, table, &cell.key, &changes, origin)?;
        count_cells(&mut applied, table, merged);
    }
    if let Some(newest) = newest_row.max(newest_cell) {
        // Checked above: cannot fail.
        let _ = clock.observe(newest, now);
    }
    Ok(applied)
}

/// Counts a column-merge row in the report.
fn count_cells(applied: &mut Applied, table: &RegisteredTable, merged: cells::Merged) {
    match merged {
        cells::Merged::Duplicate => applied.duplicates += 1,
        cells::Merged::Changed { new_row } => {
            if new_row {
                applied.new_rows += 1;
            } else {
                applied.remote_won += 1;
            }
            applied.tables.insert(table.info.name.clone());
        }
    }
}

/// This table's own name of a column the sender named (the plan checked it exists).
fn local_name(table: &RegisteredTable, name: &str) -> String {
    table
        .info
        .value_columns
        .iter()
        .find(|c| same_identifier(&c.name, name))
        .map_or_else(|| name.to_owned(), |c| c.name.clone())
}

/// Refuses a batch with column changes for a table this replica merges by row: the
/// replicas' merge modes differ (a row image for a column-merge table is fine: see above).
fn check_merge_modes(
    plans: &[Option<(&RegisteredTable, String)>],
    batch: &Batch,
    origin: NodeId,
) -> Result<(), ApplyError> {
    for cell in &batch.cells {
        if let Some((table, _)) = &plans[cell.table as usize] {
            if table.merge.is_none() {
                return Err(ApplyError::MergeMode {
                    table: table.info.name.clone(),
                    origin: origin.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The four statements applying to one table needs, prepared once per batch.
pub(super) struct TableStatements<'c> {
    select_version: CachedStatement<'c>,
    pub(super) upsert_version: CachedStatement<'c>,
    pub(super) delete_row: CachedStatement<'c>,
    pub(super) upsert_row: CachedStatement<'c>,
}

impl<'c> TableStatements<'c> {
    pub(super) fn prepare(
        conn: &'c Connection,
        table: &RegisteredTable,
        upsert_sql: &str,
    ) -> Result<Self, ApplyFailure> {
        let versions = |sql: &str| {
            conn.prepare_cached(sql)
                .context("preparing row-version statements")
        };
        Ok(TableStatements {
            select_version: versions(&table.select_version)?,
            upsert_version: versions(&table.upsert_version)?,
            delete_row: conn
                .prepare_cached(&table.delete_row)
                .map_err(|e| refusal(table, e))?,
            upsert_row: conn
                .prepare_cached(upsert_sql)
                .map_err(|e| refusal(table, e))?,
        })
    }

    /// Writes a change that won by the LWW rule: the row (`values`) or its delete (`None`),
    /// then its version.
    pub(super) fn write_winner(
        &mut self,
        table: &RegisteredTable,
        key: &[Value],
        values: Option<&[Value]>,
        hlc: Hlc,
    ) -> Result<(), ApplyFailure> {
        let written = match values {
            None => self.delete_row.execute(params_from_iter(key)),
            Some(values) => self
                .upsert_row
                .execute(params_from_iter(key.iter().chain(values))),
        };
        written.map_err(|source| refusal(table, source))?;
        let hlc_bytes = hlc.to_bytes();
        let deleted = values.is_none();
        let params = key.iter().map(|v| v as &dyn rusqlite::ToSql).chain([
            &hlc_bytes as &dyn rusqlite::ToSql,
            &deleted as &dyn rusqlite::ToSql,
        ]);
        self.upsert_version
            .execute(params_from_iter(params))
            .context("writing a row version")?;
        Ok(())
    }

    pub(super) fn read_version(&mut self, key: &[Value]) -> Result<Option<Hlc>, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .select_version
            .query_row(params_from_iter(key), |r| r.get(0))
            .optional()
            .context("reading a row version")?;
        bytes
            .map(|b| {
                Hlc::from_bytes(&b).map_err(|e| StoreError::Corrupt(format!("row version: {e}")))
            })
            .transpose()
    }
}

/// Resolves each table of the batch to a local table and an upsert statement (`None`: a
/// table this replica excludes, whose rows are skipped), refusing the whole batch when a
/// table, key or column does not match.
fn plan<'t>(
    tables: &'t Tables,
    batch: &Batch,
) -> Result<Vec<Option<(&'t RegisteredTable, String)>>, ApplyError> {
    batch
        .tables
        .iter()
        .map(|schema| {
            if tables.is_excluded(&schema.name) {
                return Ok(None);
            }
            let table = tables
                .by_name(&schema.name)
                .ok_or_else(|| ApplyError::UnknownTable {
                    table: schema.name.clone(),
                })?;
            let ours = table.info.key_names();
            let same_key = ours.len() == schema.key_columns.len()
                && ours
                    .iter()
                    .zip(&schema.key_columns)
                    .all(|(a, b)| same_identifier(a, b));
            if !same_key {
                return Err(ApplyError::KeyMismatch {
                    table: schema.name.clone(),
                    ours,
                    theirs: schema.key_columns.clone(),
                });
            }
            for column in &schema.value_columns {
                if !table
                    .info
                    .value_columns
                    .iter()
                    .any(|c| same_identifier(&c.name, column))
                {
                    return Err(ApplyError::UnknownColumn {
                        table: schema.name.clone(),
                        column: column.clone(),
                    });
                }
            }
            Ok(Some((table, table.upsert_row_sql(&schema.value_columns))))
        })
        .collect()
}

/// Refuses a batch with a NULL key value: no drain produces one (such rows are not
/// replicated), and the version tables cannot store it.
fn check_keys_not_null(batch: &Batch) -> Result<(), ApplyError> {
    let null = |key: &[Value]| key.iter().any(|v| matches!(v, Value::Null));
    if let Some(i) = batch.cells.iter().position(|c| null(&c.key)) {
        return Err(ApplyError::Wire(WireError::InvalidBatch(format!(
            "column change {i} has a NULL primary-key value"
        ))));
    }
    match batch.rows.iter().position(|r| null(&r.key)) {
        Some(i) => Err(ApplyError::Wire(WireError::InvalidBatch(format!(
            "row {i} has a NULL primary-key value"
        )))),
        None => Ok(()),
    }
}
