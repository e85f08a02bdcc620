//! Draining the change log: turning what the triggers recorded into a versioned batch.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use rusqlite::Connection;

use super::cells::{self, CellsSeen};
use super::row_io::{read_row, write_version};
use super::tables::Tables;
use crate::capture::names::{self, quote};
use crate::change::{Batch, CellChange, RowChange, TableSchema};
use crate::error::{Context, StoreError};
use crate::hlc::{ntp64_from_unix_millis, Clock};
use crate::value::Value;

/// One coalesced row: the last log entry for a key.
struct PendingRow {
    table_id: i64,
    key: Vec<Value>,
    last_seq: i64,
    wall_millis: i64,
    /// What happened to it, for a table that merges by column.
    cells: CellsSeen,
}

/// Result of draining the log inside a transaction.
#[derive(Debug, Default)]
pub struct Drained {
    /// The versioned changes, in commit order of each row's last write.
    pub batch: Batch,
    /// Log entries consumed (before coalescing).
    pub log_entries: usize,
    /// Consumed entries of rows whose key contains NULL, not replicated.
    pub null_keys: usize,
    /// Wall-clock time (Unix ms, from the capture trigger) of the oldest entry consumed.
    pub oldest_write_unix_ms: Option<i64>,
}

/// Reads all pending log entries, coalesces them per row, reads each row's current image,
/// stamps it with an HLC derived from its last write time, records the new versions and
/// deletes the consumed entries. Runs inside the caller's write transaction.
///
/// Rows whose key contains NULL are not replicated: SQLite lets several rows of a rowid
/// table share such a key (NULL is distinct from NULL), so replicas cannot match them.
/// Their entries are consumed and counted in [`Drained::null_keys`].
pub fn drain(
    conn: &Connection,
    tables: &Tables,
    slots: usize,
    clock: &mut Clock,
) -> Result<Drained, StoreError> {
    let slot_list: Vec<String> = (0..slots).map(names::key_slot).collect();
    let mut pending: Vec<PendingRow> = Vec::new();
    let mut index: HashMap<(i64, Vec<Value>), usize> = HashMap::new();
    let mut max_seq = None;
    let mut log_entries = 0;
    let mut null_keys = 0;
    let mut oldest_write_unix_ms: Option<i64> = None;
    {
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT seq, tbl, wall, cols, delta, {} FROM {} ORDER BY seq",
                slot_list.join(", "),
                quote(names::LOG)
            ))
            .context("reading the change log")?;
        let mut rows = stmt.query([]).context("reading the change log")?;
        while let Some(row) = rows.next().context("reading the change log")? {
            let seq: i64 = row.get(0).context("reading the change log")?;
            let table_id: i64 = row.get(1).context("reading the change log")?;
            let wall_millis: i64 = row.get(2).context("reading the change log")?;
            max_seq = Some(seq);
            log_entries += 1;
            oldest_write_unix_ms =
                Some(oldest_write_unix_ms.map_or(wall_millis, |t| t.min(wall_millis)));
            // Entries of a table no longer replicated are discarded with the rest.
            let Some(table) = tables.by_id(table_id) else {
                continue;
            };
            let cols: Option<i64> = row.get(3).context("reading the change log")?;
            let delta: Option<i64> = row.get(4).context("reading the change log")?;
            let key = (0..table.info.key_columns.len())
                .map(|i| row.get::<_, Value>(5 + i))
                .collect::<Result<Vec<_>, _>>()
                .context("reading the change log")?;
            if key.iter().any(|v| matches!(v, Value::Null)) {
                null_keys += 1;
                continue;
            }
            match index.entry((table_id, key)) {
                Entry::Occupied(entry) => {
                    let row = &mut pending[*entry.get()];
                    row.last_seq = seq;
                    row.wall_millis = wall_millis;
                    row.cells.record(cols, delta);
                }
                Entry::Vacant(entry) => {
                    let key = entry.key().1.clone();
                    entry.insert(pending.len());
                    let mut cells = CellsSeen::default();
                    cells.record(cols, delta);
                    pending.push(PendingRow {
                        table_id,
                        key,
                        last_seq: seq,
                        wall_millis,
                        cells,
                    });
                }
            }
        }
    }
    let Some(max_seq) = max_seq else {
        return Ok(Drained::default());
    };
    pending.sort_by_key(|p| p.last_seq);

    let mut batch = Batch::default();
    let mut table_index: HashMap<i64, u32> = HashMap::new();
    for row in pending {
        let table = tables.by_id(row.table_id).expect("filtered above");
        let schema_index = |batch: &mut Batch, table_index: &mut HashMap<i64, u32>| {
            *table_index.entry(row.table_id).or_insert_with(|| {
                batch.tables.push(TableSchema {
                    name: table.info.name.clone(),
                    fingerprint: table.fingerprint,
                    key_columns: table.info.key_names(),
                    value_columns: table.info.value_names(),
                });
                (batch.tables.len() - 1) as u32
            })
        };
        if table.merge.is_some() {
            let wall = ntp64_from_unix_millis(row.wall_millis);
            if let Some(change) = cells::drain_row(conn, table, &row.key, &row.cells, wall, clock)?
            {
                let table = schema_index(&mut batch, &mut table_index);
                batch.cells.push(CellChange { table, ..change });
            }
            continue;
        }
        let values = read_row(
            conn,
            &table.select_row,
            &row.key,
            table.info.value_columns.len(),
        )?;
        let hlc = clock.stamp_local_write(ntp64_from_unix_millis(row.wall_millis));
        write_version(conn, &table.upsert_version, &row.key, hlc, values.is_none())?;
        let idx = schema_index(&mut batch, &mut table_index);
        batch.rows.push(RowChange {
            table: idx,
            time: hlc.time().as_u64(),
            key: row.key,
            values,
        });
    }
    conn.prepare_cached(&format!(
        "DELETE FROM {} WHERE seq <= ?1",
        quote(names::LOG)
    ))
    .and_then(|mut s| s.execute([max_seq]))
    .context("clearing the drained change log")?;
    Ok(Drained {
        batch,
        log_entries,
        null_keys,
        oldest_write_unix_ms,
    })
}
