//! Routing captured batches by scope: which subject each row change travels on, and the
//! registry of each partitioned row's partition that routes its deletes.
//!
//! With scopes on, a drained batch is split into route groups ([`route`]): a partitioned
//! table's row goes to its partition's subject, a shared table's to the shared subject, a
//! hidden table's to the unscoped one. An upsert's partition comes from its row image; a
//! delete has no image, so its partition is the one the registry (`__hl_partitions`) holds
//! for the key: the partition of the row's last image this replica captured or applied.
//! Rows that existed before scopes were turned on are registered when the store opens
//! ([`register_existing_rows`]).

use std::collections::HashMap;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::scope_check::{column_value, encoded_key};
use super::tables::{RegisteredTable, Tables};
use crate::capture::names::{self, quote};
use crate::change::{Batch, CellChange, RowChange, TableSchema};
use crate::error::{Context, StoreError};
use crate::hlc::{Hlc, NodeId};
use crate::scope::{Partition, Route, ScopeRules, TableScope};
use crate::value::Value;

/// Creates the partition registry if missing.
pub(super) fn create_registry(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {}(tbl TEXT NOT NULL, key BLOB NOT NULL, part TEXT, \
         accepted TEXT, accepted_hlc BLOB, PRIMARY KEY(tbl, key)) WITHOUT ROWID; \
         CREATE INDEX IF NOT EXISTS {} ON {}(tbl, coalesce(accepted, part))",
        quote(names::PARTITIONS),
        quote(&format!("{}_by_partition", names::PARTITIONS)),
        quote(names::PARTITIONS)
    ))
    .context("creating the partition registry")?;
    super::scope_check::create_pending(conn)
}

/// Splits `batch` into route groups, in the order each route first appears, rows in their
/// original order within a group, and registers the partition of every partitioned upsert.
/// A delete whose partition the registry does not know (a row created and deleted within
/// one drain, never published) travels unscoped.
///
/// **Moves.** An upsert whose image is in another partition than the one the registry
/// holds for its key moves the row: besides the upsert on the new partition's subject, a
/// *moved-out marker* goes on the old one's, a delete of the key one tick of the clock
/// before the move (same origin). The old partition's scoped replicas delete their copy;
/// the marker never beats the move itself (it is older), on replicas that get both, in
/// either order; and a scoped writer's batch carrying it proves the writer may write the old
/// partition (see `scope_check`).
pub(super) fn route(
    conn: &Connection,
    rules: &ScopeRules,
    batch: Batch,
) -> Result<Vec<(Route, Batch)>, StoreError> {
    let mut groups: Vec<(Route, Batch, HashMap<u32, u32>)> = Vec::new();
    let mut index: HashMap<Route, usize> = HashMap::new();
    let Batch {
        tables: schemas,
        rows,
        cells,
    } = batch;
    let mut group_of = |route: Route, source_table: u32| {
        let schema = &schemas[source_table as usize];
        let slot = *index.entry(route.clone()).or_insert_with(|| {
            groups.push((route, Batch::default(), HashMap::new()));
            groups.len() - 1
        });
        let (_, group, remap) = &mut groups[slot];
        let table = *remap.entry(source_table).or_insert_with(|| {
            group.tables.push(schema.clone());
            (group.tables.len() - 1) as u32
        });
        (slot, table)
    };
    let mut routed_cells = Vec::new();
    for cell in cells {
        // Tables that merge by column are never partitioned (`StoreOptions::check`).
        let table = schemas[cell.table as usize].name.to_lowercase();
        let route = match rules.table_scope(&table) {
            TableScope::Shared => Route::Shared { table },
            TableScope::Hidden | TableScope::Partitioned { .. } => Route::Unscoped,
        };
        let (slot, index) = group_of(route, cell.table);
        routed_cells.push((
            slot,
            CellChange {
                table: index,
                ..cell
            },
        ));
    }
    let mut placed = Vec::new();
    let mut add = |route: Route, row: RowChange| {
        let (slot, table) = group_of(route, row.table);
        placed.push((slot, RowChange { table, ..row }));
    };
    for row in rows {
        let schema = &schemas[row.table as usize];
        let (route, moved_from) = row_route(conn, rules, schema, &row)?;
        if let (Some(old), Route::Partition { table, .. }) = (moved_from, &route) {
            let marker = RowChange {
                table: row.table,
                time: row.time.saturating_sub(1),
                key: row.key.clone(),
                values: None,
            };
            let old_route = Route::Partition {
                partition: old,
                table: table.clone(),
            };
            add(old_route, marker);
        }
        add(route, row);
    }
    for (slot, row) in placed {
        groups[slot].1.rows.push(row);
    }
    for (slot, cell) in routed_cells {
        groups[slot].1.cells.push(cell);
    }
    Ok(groups
        .into_iter()
        .map(|(route, batch, _)| (route, batch))
        .collect())
}

/// A row's route, and for an upsert that moves the row to another partition, the partition
/// it leaves.
fn row_route(
    conn: &Connection,
    rules: &ScopeRules,
    schema: &TableSchema,
    row: &RowChange,
) -> Result<(Route, Option<Partition>), StoreError> {
    let table = schema.name.to_lowercase();
    match rules.table_scope(&table) {
        TableScope::Hidden => Ok((Route::Unscoped, None)),
        TableScope::Shared => Ok((Route::Shared { table }, None)),
        TableScope::Partitioned { rule, columns } => {
            let (partition, moved_from) = match &row.values {
                Some(values) => {
                    let partition = Partition {
                        rule: rule.name.clone(),
                        values: columns
                            .iter()
                            .map(|c| column_value(schema, &row.key, values, c))
                            .collect(),
                    };
                    let before = registered_partition(conn, &table, &row.key)?;
                    if before.as_ref() != Some(&partition) {
                        register(conn, &table, &row.key, &partition)?;
                    }
                    let moved_from = before.filter(|old| *old != partition);
                    (Some(partition), moved_from)
                }
                None => (registered_partition(conn, &table, &row.key)?, None),
            };
            Ok(match partition {
                Some(partition) => (Route::Partition { partition, table }, moved_from),
                None => (Route::Unscoped, None),
            })
        }
    }
}

pub(super) fn register(
    conn: &Connection,
    tbl: &str,
    key: &[Value],
    partition: &Partition,
) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO {}(tbl, key, part) VALUES (?1, ?2, ?3) \
         ON CONFLICT(tbl, key) DO UPDATE SET part = excluded.part",
        quote(names::PARTITIONS)
    ))
    .and_then(|mut s| s.execute(params![tbl, encoded_key(key), partition.token()]))
    .context("registering a row's partition")?;
    Ok(())
}

fn registered_partition(
    conn: &Connection,
    tbl: &str,
    key: &[Value],
) -> Result<Option<Partition>, StoreError> {
    let token: Option<String> = conn
        .prepare_cached(&format!(
            "SELECT part FROM {} WHERE tbl = ?1 AND key = ?2 AND part IS NOT NULL",
            quote(names::PARTITIONS)
        ))
        .and_then(|mut s| {
            s.query_row(params![tbl, encoded_key(key)], |r| r.get(0))
                .optional()
        })
        .context("reading a row's partition")?;
    token
        .map(|t| {
            Partition::from_token(&t).ok_or_else(|| {
                StoreError::Corrupt(format!("partition registry holds {t:?}, not a partition"))
            })
        })
        .transpose()
}

/// Registers the partition of each partitioned upsert of an applied remote batch that won
/// (its HLC is now the row's version), so a later local delete of the row is routed to it.
pub(super) fn register_applied(
    conn: &Connection,
    tables: &Tables,
    rules: &ScopeRules,
    origin: NodeId,
    batch: &Batch,
) -> Result<(), StoreError> {
    for row in &batch.rows {
        let Some(values) = &row.values else { continue };
        let schema = &batch.tables[row.table as usize];
        let TableScope::Partitioned { rule, columns } = rules.table_scope(&schema.name) else {
            continue;
        };
        let Some(registered) = tables.by_name(&schema.name) else {
            continue;
        };
        if current_version(conn, registered, &row.key)? != Some(row.hlc(origin)) {
            continue;
        }
        let partition = Partition {
            rule: rule.name.clone(),
            values: columns
                .iter()
                .map(|c| column_value(schema, &row.key, values, c))
                .collect(),
        };
        register(conn, &schema.name.to_lowercase(), &row.key, &partition)?;
    }
    Ok(())
}

fn current_version(
    conn: &Connection,
    table: &RegisteredTable,
    key: &[Value],
) -> Result<Option<Hlc>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached(&table.select_version)
        .and_then(|mut s| s.query_row(params_from_iter(key), |r| r.get(0)).optional())
        .context("reading a row version")?;
    bytes
        .map(|b| Hlc::from_bytes(&b).map_err(|e| StoreError::Corrupt(format!("row version: {e}"))))
        .transpose()
}

/// Registers the partition of every current row of every partitioned table, once per set of
/// rules (the rules' fingerprint is remembered): rows written before scopes were turned on
/// (or before a table was partitioned) route their later deletes correctly.
pub(super) fn register_existing_rows(
    conn: &Connection,
    tables: &Tables,
    rules: &ScopeRules,
) -> Result<(), StoreError> {
    let fingerprint = i64::from(rules.fingerprint());
    if super::meta::get_i64(conn, super::meta::keys::SCOPES_FINGERPRINT)? == Some(fingerprint) {
        return Ok(());
    }
    register_rows(conn, tables, rules)?;
    super::meta::set(conn, super::meta::keys::SCOPES_FINGERPRINT, fingerprint)?;
    Ok(())
}

/// Registers the partition of every current row of every partitioned table (after a
/// catch-up merged rows in without capturing them, and by [`register_existing_rows`]).
pub(super) fn register_rows(
    conn: &Connection,
    tables: &Tables,
    rules: &ScopeRules,
) -> Result<(), StoreError> {
    for rule in rules.rules() {
        for (table, columns) in &rule.tables {
            let Some(registered) = tables.by_name(table) else {
                continue;
            };
            let keys: Vec<String> = registered
                .info
                .key_columns
                .iter()
                .map(|c| quote(&c.name))
                .collect();
            let parts: Vec<String> = columns.iter().map(|c| quote(c)).collect();
            let sql = format!(
                "SELECT {}, {} FROM {}",
                keys.join(", "),
                parts.join(", "),
                quote(&registered.info.name)
            );
            let mut stmt = conn
                .prepare(&sql)
                .context(format!("reading the partitions of {table}"))?;
            let mut rows = stmt
                .query([])
                .context(format!("reading the partitions of {table}"))?;
            while let Some(row) = rows
                .next()
                .context(format!("reading the partitions of {table}"))?
            {
                let read = |range: std::ops::Range<usize>| {
                    range
                        .map(|i| row.get::<_, Value>(i))
                        .collect::<Result<Vec<_>, _>>()
                        .context(format!("reading the partitions of {table}"))
                };
                let key = read(0..keys.len())?;
                let values = read(keys.len()..keys.len() + parts.len())?;
                register(
                    conn,
                    table,
                    &key,
                    &Partition {
                        rule: rule.name.clone(),
                        values,
                    },
                )?;
            }
        }
    }
    Ok(())
}
