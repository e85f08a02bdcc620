//! Refetching single rows for a scoped replica: the rows it wrote that were refused (see
//! `super::refusal`) come back at the version the cluster accepted, when it may see them.
//!
//! **Export** ([`export_keys`], on a full replica): for each requested `(table, key)`, the
//! row's current version from one read transaction, as a one-page [`PartitionExport`]
//! (`next` is `None`): a live row of a shared table, or of a partitioned table whose image
//! is in one of the requester's partitions; a tombstone of a shared table, or of a key the
//! registry gives to one of those partitions. Anything else (another partition's row, a
//! hidden table, a key nobody wrote) is left out: the requester keeps it deleted.
//!
//! **Import** ([`super::Store::import_refetched`]): merged by last-writer-wins like a
//! bootstrap page, without moving the cursor; the keys leave the refetch queue.

use rusqlite::{params_from_iter, Connection, OptionalExtension};

use super::scope_bootstrap::{
    hlc_bytes, source_tables, ExportRow, ExportTable, PartitionExport, Scope,
};
use super::snapshot::table_exists;
use super::tables::RegisteredTable;
use crate::capture::names::{self, quote};
use crate::change::TableSchema;
use crate::error::{Context, StoreError};
use crate::scope::{Partition, ScopeRules};
use crate::value::Value;

/// Most keys one refetch request may name.
pub const MAX_REFETCH_KEYS: usize = 500;

/// Exports the current versions of `keys` that `partitions` (and the shared tables of
/// `rules`) may see, in one read transaction (see the module docs). `conn` must not be
/// inside a transaction. Keys beyond [`MAX_REFETCH_KEYS`] are ignored.
pub fn export_keys(
    conn: &Connection,
    rules: &ScopeRules,
    partitions: &[Partition],
    keys: &[(String, Vec<Value>)],
) -> Result<PartitionExport, StoreError> {
    let tx = conn
        .unchecked_transaction()
        .context("starting a refetch export")?;
    if !table_exists(&tx, names::META)? {
        return Err(StoreError::Corrupt(
            "the database has no harmonylite metadata yet".into(),
        ));
    }
    let covered = super::meta::get_i64(&tx, super::meta::keys::CURSOR)?.unwrap_or(0) as u64;
    let tables = source_tables(&tx, rules, partitions)?;
    let mut page = PartitionExport {
        partitions: partitions.iter().map(Partition::token).collect(),
        covered,
        start: None,
        tables: Vec::new(),
        next: None,
    };
    for (name, key) in keys.iter().take(MAX_REFETCH_KEYS) {
        let folded = name.to_lowercase();
        let Some(table) = tables.iter().find(|t| t.folded == folded) else {
            continue;
        };
        if key.len() != table.info.key_columns.len() {
            continue;
        }
        let Some(row) = current_row(&tx, table, key)? else {
            continue;
        };
        let visible = match &table.scope {
            Scope::Shared => true,
            Scope::Partitioned {
                columns,
                values,
                tokens,
            } => match &row.values {
                Some(image) => {
                    let of_row: Vec<Value> = columns
                        .iter()
                        .map(|c| value_of(&table.info, key, image, c))
                        .collect();
                    values.contains(&of_row)
                }
                None => registered_partition(&tx, &folded, key)?
                    .is_some_and(|token| tokens.contains(&token)),
            },
        };
        if !visible {
            continue;
        }
        match page
            .tables
            .iter_mut()
            .find(|t| t.schema.name == table.info.name)
        {
            Some(out) => out.rows.push(row),
            None => page.tables.push(ExportTable {
                schema: TableSchema {
                    name: table.info.name.clone(),
                    fingerprint: table.fingerprint,
                    key_columns: table.info.key_names(),
                    value_columns: table.info.value_names(),
                },
                rows: vec![row],
            }),
        }
    }
    drop(tx);
    Ok(page)
}

/// A key's current version: the live row with its values, or its tombstone; `None` when it
/// has no version (never captured) or its live row is missing.
fn current_row(
    tx: &Connection,
    table: &super::scope_bootstrap::SourceTable,
    key: &[Value],
) -> Result<Option<ExportRow>, StoreError> {
    let what = format!("refetching a row of {:?}", table.info.name);
    let slot_match = (0..key.len())
        .map(|i| format!("{} = ?{}", names::key_slot(i), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let version: Option<(Vec<u8>, bool)> = tx
        .prepare_cached(&format!(
            "SELECT hlc, deleted FROM {} WHERE {slot_match}",
            quote(&table.version_table)
        ))
        .and_then(|mut s| {
            s.query_row(params_from_iter(key), |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .context(&what)?;
    let Some((hlc, deleted)) = version else {
        return Ok(None);
    };
    let hlc = hlc_bytes(hlc)?;
    if deleted {
        return Ok(Some(ExportRow {
            key: key.to_vec(),
            hlc,
            values: None,
        }));
    }
    let select_row = RegisteredTable::new(table.id, table.info.clone()).select_row;
    let width = table.info.value_columns.len();
    let values: Option<Vec<Value>> = tx
        .prepare_cached(&select_row)
        .and_then(|mut s| {
            s.query_row(params_from_iter(key), |r| {
                (0..width).map(|i| r.get::<_, Value>(i)).collect()
            })
            .optional()
        })
        .context(&what)?;
    Ok(values.map(|values| ExportRow {
        key: key.to_vec(),
        hlc,
        values: Some(values),
    }))
}

/// A column's value in a row image (key or value column), by name.
fn value_of(
    info: &crate::capture::TableInfo,
    key: &[Value],
    values: &[Value],
    column: &str,
) -> Value {
    let same = |c: &&crate::capture::ColumnInfo| c.name.eq_ignore_ascii_case(column);
    if let Some(i) = info.key_columns.iter().position(|c| same(&c)) {
        return key[i].clone();
    }
    info.value_columns
        .iter()
        .position(|c| same(&c))
        .map_or(Value::Null, |i| values[i].clone())
}

/// The partition the registry gives a key (the accepted one, else the locally registered).
fn registered_partition(
    tx: &Connection,
    folded: &str,
    key: &[Value],
) -> Result<Option<String>, StoreError> {
    let found: Option<Option<String>> = tx
        .prepare_cached(&format!(
            "SELECT coalesce(accepted, part) FROM {} WHERE tbl = ?1 AND key = ?2",
            quote(names::PARTITIONS)
        ))
        .and_then(|mut s| {
            s.query_row(
                rusqlite::params![folded, super::scope_check::encoded_key(key)],
                |r| r.get(0),
            )
            .optional()
        })
        .context("reading a key's partition")?;
    Ok(found.flatten())
}

impl super::Store {
    /// The rows waiting to be fetched again (refused writes), as (table, key).
    pub fn refetch_keys(&self) -> Result<Vec<(String, Vec<Value>)>, StoreError> {
        super::refusal::queued(&self.conn)
    }

    /// Merges a full node's answer to a refetch of `keys` ([`super::scope_refetch`]): rows
    /// it sent come back by last-writer-wins, the others stay deleted; `keys` leave the
    /// queue. The cursor does not move.
    pub fn import_refetched(
        &mut self,
        page: &super::scope_bootstrap::PartitionExport,
        keys: &[(String, Vec<Value>)],
        now: crate::hlc::NTP64,
    ) -> Result<super::scope_bootstrap::ImportReport, super::scope_bootstrap::ImportError> {
        let report = self.import_page(page, now, super::scope_bootstrap::ImportMode::Refetch)?;
        super::refusal::dequeue(&self.conn, keys)?;
        Ok(report)
    }
}
