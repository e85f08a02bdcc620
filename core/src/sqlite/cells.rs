//! Tables that merge by column: turning what the capture log recorded into a
//! [`CellChange`] at drain, and merging received changes into the row (see
//! [`crate::column_merge`] for the rule).
//!
//! Each row of such a table has a [`ColumnRow<Stored>`] in the table's state table
//! (`__hl_c<id>`): the HLC of every column's last write, counters' bases and every
//! replica's counter totals. The row itself holds the plain columns' values; a counter
//! column holds the counter's value. The row version (`__hl_v<id>`) is kept too, with the
//! state's latest HLC and whether the row exists, for snapshots and the catch-up.

use std::collections::BTreeMap;

use rusqlite::{params_from_iter, Connection, OptionalExtension};

use super::failure::{refusal, ApplyFailure};
use super::row_io::{read_row, write_version};
use super::tables::RegisteredTable;
use crate::capture::ddl::{LOG_COLS_ALL, LOG_COLS_DELETE};
use crate::capture::names::quote;
use crate::change::{CellChange, CounterTotals, ObservedTotals};
use crate::column_merge::{counter_integer, ColumnChange, ColumnRow, Stored};
use crate::error::{Context, StoreError};
use crate::hlc::{Clock, Hlc, NodeId, NTP64};
use crate::value::Value;

/// What the log says happened to one row of a column-merge table since the last drain.
#[derive(Debug, Default, Clone)]
pub(super) struct CellsSeen {
    /// A DELETE happened.
    deleted: bool,
    /// An INSERT (or an entry written before the table merged by column) happened after the
    /// last DELETE: every column was written.
    whole: bool,
    /// Plain value columns UPDATEs changed since then (bit per value column).
    mask: u64,
    /// Counter changes since then, by value-column index.
    deltas: BTreeMap<usize, i64>,
}

impl CellsSeen {
    /// Records one log entry (`cols`, `delta`, see `ddl::create_column_triggers`).
    pub(super) fn record(&mut self, cols: Option<i64>, delta: Option<i64>) {
        match (cols, delta) {
            (Some(column), Some(delta)) if column >= 0 => {
                if !self.whole {
                    let total = self.deltas.entry(column as usize).or_insert(0);
                    *total = total.saturating_add(delta);
                }
            }
            (Some(LOG_COLS_DELETE), _) => {
                *self = CellsSeen {
                    deleted: true,
                    ..CellsSeen::default()
                }
            }
            (Some(mask), None) if mask >= 0 => self.mask |= mask as u64,
            // An INSERT, or an entry of the row-merge triggers (before a switch, or a table
            // seeded on creation): the whole row.
            (Some(LOG_COLS_ALL), _) | (None, _) | (Some(_), _) => {
                self.whole = true;
                self.deltas.clear();
            }
        }
    }
}

/// Reads a row's merge state, or builds it from the row version and image when the row
/// has none yet (it was written before the table merged by column). `uncounted`: counter
/// changes the image holds that the state must not take as its base (a drain's own, by
/// value-column index). Also says whether the row was known here (a state or a version).
fn load_state(
    conn: &Connection,
    table: &RegisteredTable,
    key: &[Value],
    image: Option<&[Value]>,
    uncounted: &BTreeMap<usize, i64>,
    node: NodeId,
) -> Result<(ColumnRow<Stored>, bool), StoreError> {
    let merge = table.merge.as_ref().expect("a column-merge table");
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached(&merge.select_state)
        .and_then(|mut s| s.query_row(params_from_iter(key), |r| r.get(0)).optional())
        .context("reading a row's column-merge state")?;
    if let Some(bytes) = bytes {
        let state = postcard::from_bytes(&bytes).map_err(|e| {
            StoreError::Corrupt(format!(
                "column-merge state of a row of {:?}: {e}",
                table.info.name
            ))
        })?;
        return Ok((state, true));
    }
    let version = read_version(conn, table, key)?;
    let known = version.is_some();
    let mut state = ColumnRow::default();
    match (version, image) {
        (Some((hlc, true)), _) => {
            state.merge(&ColumnChange::Delete {
                hlc,
                observed: Vec::new(),
            });
        }
        (version, Some(values)) => {
            // A row nobody versioned yet (written before capture) counts as the oldest write.
            let hlc = version.map_or(Hlc::new(NTP64(0), node), |(hlc, _)| hlc);
            let columns = whole_row(table, values, |i, value| {
                counter_integer(value).saturating_sub(uncounted.get(&i).copied().unwrap_or(0))
            });
            state.merge(&ColumnChange::Write { hlc, columns });
        }
        (_, None) => {}
    }
    Ok((state, known))
}

/// Every value column as a stored write: `None` for a plain column, `Some(base)` for a
/// counter (`base` from the column's index and value).
fn whole_row(
    table: &RegisteredTable,
    values: &[Value],
    base: impl Fn(usize, &Value) -> i64,
) -> BTreeMap<String, Stored> {
    let merge = table.merge.as_ref().expect("a column-merge table");
    table
        .info
        .value_columns
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (column, value))| {
            let stored = merge.counter[i].then(|| base(i, value));
            (column.name.clone(), stored)
        })
        .collect()
}

fn read_version(
    conn: &Connection,
    table: &RegisteredTable,
    key: &[Value],
) -> Result<Option<(Hlc, bool)>, StoreError> {
    let merge = table.merge.as_ref().expect("a column-merge table");
    let row: Option<(Vec<u8>, bool)> = conn
        .prepare_cached(&merge.select_version)
        .and_then(|mut s| {
            s.query_row(params_from_iter(key), |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .context("reading a row version")?;
    row.map(|(bytes, deleted)| {
        Hlc::from_bytes(&bytes)
            .map(|hlc| (hlc, deleted))
            .map_err(|e| StoreError::Corrupt(format!("row version: {e}")))
    })
    .transpose()
}

/// Stores a row's merge state and its row version.
fn save_state(
    conn: &Connection,
    table: &RegisteredTable,
    key: &[Value],
    state: &ColumnRow<Stored>,
) -> Result<(), StoreError> {
    let merge = table.merge.as_ref().expect("a column-merge table");
    let bytes = postcard::to_allocvec(state).expect("encoding into a Vec cannot fail");
    let params = key
        .iter()
        .map(|v| v as &dyn rusqlite::ToSql)
        .chain([&bytes as &dyn rusqlite::ToSql]);
    conn.prepare_cached(&merge.upsert_state)
        .and_then(|mut s| s.execute(params_from_iter(params)))
        .context("writing a row's column-merge state")?;
    if let Some(latest) = state.latest() {
        write_version(conn, &table.upsert_version, key, latest, !state.exists())?;
    }
    Ok(())
}

/// Turns what the log saw of one row into the change to publish, stamping its delete and
/// its writes with the clock, and records it in the row's state. `None`: nothing changed
/// (an UPDATE that wrote the same values).
pub(super) fn drain_row(
    conn: &Connection,
    table: &RegisteredTable,
    key: &[Value],
    seen: &CellsSeen,
    wall: NTP64,
    clock: &mut Clock,
) -> Result<Option<CellChange>, StoreError> {
    let merge = table.merge.as_ref().expect("a column-merge table");
    let width = table.info.value_columns.len();
    let image = read_row(conn, &table.select_row, key, width)?;
    let node = clock.node();
    let uncounted = if seen.whole {
        BTreeMap::new()
    } else {
        seen.deltas.clone()
    };
    let (mut state, _) = load_state(conn, table, key, image.as_deref(), &uncounted, node)?;
    let mut deleted = None;
    let mut observed = Vec::new();
    if seen.deleted || (image.is_none() && state.exists()) {
        let hlc = clock.stamp_local_write(wall);
        if let ColumnChange::Delete { observed: seen, .. } = state.delete_local(hlc) {
            observed = seen
                .into_iter()
                .filter_map(|o| {
                    Some(ObservedTotals {
                        column: value_index(table, &o.column)? as u32,
                        node: o.node,
                        totals: o.totals,
                    })
                })
                .collect();
        }
        deleted = Some(hlc);
    }
    let mut columns = Vec::new();
    let mut counters = Vec::new();
    let mut time = deleted;
    if let Some(values) = &image {
        let hlc = clock.stamp_local_write(wall);
        time = Some(hlc);
        let written: Vec<usize> = (0..width)
            .filter(|&i| {
                if seen.whole {
                    true
                } else {
                    !merge.counter[i] && seen.mask & (1 << i) != 0
                }
            })
            .collect();
        if !written.is_empty() {
            let mut stored = BTreeMap::new();
            for &i in &written {
                let name = &table.info.value_columns[i].name;
                let value = if merge.counter[i] {
                    // The base keeps the value the application sees: what it wrote, less
                    // the increments already counted since the latest delete.
                    let base = i128::from(counter_integer(&values[i])) - state.increments(name);
                    let base = clamp(base);
                    stored.insert(name.clone(), Some(base));
                    Value::Integer(base)
                } else {
                    stored.insert(name.clone(), None);
                    values[i].clone()
                };
                columns.push((i as u32, value));
            }
            state.merge(&ColumnChange::Write {
                hlc,
                columns: stored,
            });
        }
        if !seen.whole {
            for (&i, &delta) in seen.deltas.iter().filter(|(_, d)| **d != 0) {
                if i >= width || !merge.counter[i] {
                    continue;
                }
                let name = &table.info.value_columns[i].name;
                if let ColumnChange::Counter { up, down, .. } =
                    state.count_local(name, node, delta, hlc)
                {
                    counters.push(CounterTotals {
                        column: i as u32,
                        up,
                        down,
                    });
                }
            }
        }
        normalize_counters(conn, table, key, values, &state)?;
    }
    if deleted.is_none() && columns.is_empty() && counters.is_empty() {
        return Ok(None);
    }
    save_state(conn, table, key, &state)?;
    Ok(Some(CellChange {
        table: 0,
        key: key.to_vec(),
        deleted: deleted.map(|hlc| hlc.time().as_u64()),
        time: time.expect("set above").time().as_u64(),
        columns,
        counters,
        observed,
    }))
}

/// The index of value column `name` of `table`.
fn value_index(table: &RegisteredTable, name: &str) -> Option<usize> {
    table.info.value_columns.iter().position(|c| c.name == name)
}

/// Counters count integers: a counter the application set to something else (a real, a
/// NULL, text) is rewritten, with capture off, to the integer value every replica computes
/// for it, so this replica does not keep a value the others never see.
fn normalize_counters(
    conn: &Connection,
    table: &RegisteredTable,
    key: &[Value],
    values: &[Value],
    state: &ColumnRow<Stored>,
) -> Result<(), StoreError> {
    let merge = table.merge.as_ref().expect("a column-merge table");
    let mut fixes = Vec::new();
    for (i, column) in table.info.value_columns.iter().enumerate() {
        if !merge.counter[i] {
            continue;
        }
        let value = Value::Integer(clamp(state.counter(&column.name, merge.default[i])));
        if !same_value(&values[i], &value) {
            fixes.push((column.name.clone(), value));
        }
    }
    if fixes.is_empty() {
        return Ok(());
    }
    super::set_applying(conn, true)?;
    for (column, value) in fixes {
        let key_match = table
            .info
            .key_columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} IS ?{}", quote(&c.name), i + 2))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "UPDATE {} SET {} = ?1 WHERE {key_match}",
            quote(&table.info.name),
            quote(&column)
        );
        let params = std::iter::once(&value).chain(key);
        conn.prepare_cached(&sql)
            .and_then(|mut s| s.execute(params_from_iter(params)))
            .context(format!("rewriting counter {column:?} as an integer"))?;
    }
    super::set_applying(conn, false)
}

/// Whether two values are the same SQLite value (same storage class and contents).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => x == y,
        _ => false,
    }
}

/// What merging changes into a row did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Merged {
    /// Nothing new: every change was merged before.
    Duplicate,
    /// The state changed; `new_row`: the row had no state or version before.
    Changed {
        /// The row was unknown here.
        new_row: bool,
    },
}

/// Merges `changes` (named by this table's own column names) into a row and writes the
/// result: the row as the merged state shows it (plain columns from the winning writes or
/// the row as it is, counters summed; columns hidden by a delete back to their defaults),
/// its state and version. The caller holds a write transaction with capture off.
pub(super) fn merge_into_row(
    conn: &Connection,
    table: &RegisteredTable,
    key: &[Value],
    changes: &[ColumnChange],
    node: NodeId,
) -> Result<Merged, ApplyFailure> {
    let width = table.info.value_columns.len();
    let image = read_row(conn, &table.select_row, key, width)?;
    let (mut state, known) =
        load_state(conn, table, key, image.as_deref(), &BTreeMap::new(), node)?;
    let merge = table.merge.as_ref().expect("a column-merge table");
    let counter = |name: &str| {
        table
            .info
            .value_columns
            .iter()
            .position(|c| c.name == name)
            .is_some_and(|i| merge.counter[i])
    };
    let mut incoming: BTreeMap<&str, (Hlc, &Value)> = BTreeMap::new();
    let mut changed = false;
    for change in changes {
        if let ColumnChange::Write { hlc, columns } = change {
            for (name, value) in columns {
                incoming.insert(name, (*hlc, value));
            }
        }
        let stored = change.clone().map(
            |name| name,
            |name, value| counter(name).then(|| counter_integer(&value)),
        );
        changed |= state.merge(&stored);
    }
    if !changed {
        return Ok(Merged::Duplicate);
    }
    write_row(conn, table, key, &state, image.as_deref(), &incoming)?;
    save_state(conn, table, key, &state)?;
    Ok(Merged::Changed { new_row: !known })
}

/// Makes the row what `state` shows (see [`merge_into_row`]).
fn write_row(
    conn: &Connection,
    table: &RegisteredTable,
    key: &[Value],
    state: &ColumnRow<Stored>,
    image: Option<&[Value]>,
    incoming: &BTreeMap<&str, (Hlc, &Value)>,
) -> Result<(), ApplyFailure> {
    let merge = table.merge.as_ref().expect("a column-merge table");
    let delete = |conn: &Connection| {
        conn.prepare_cached(&table.delete_row)
            .and_then(|mut s| s.execute(params_from_iter(key)))
            .map_err(|e| refusal(table, e))
    };
    if !state.exists() {
        if image.is_some() {
            delete(conn)?;
        }
        return Ok(());
    }
    let mut names = Vec::new();
    let mut values = Vec::new();
    let mut hidden = false;
    for (i, column) in table.info.value_columns.iter().enumerate() {
        let value = if merge.counter[i] {
            Some(Value::Integer(clamp(
                state.counter(&column.name, merge.default[i]),
            )))
        } else {
            state.visible(&column.name).and_then(|(hlc, _)| {
                match incoming.get(column.name.as_str()) {
                    Some((written, value)) if *written == hlc => Some((*value).clone()),
                    _ => image.map(|row| row[i].clone()),
                }
            })
        };
        match value {
            Some(value) => {
                names.push(column.name.clone());
                values.push(value);
            }
            None => hidden = true,
        }
    }
    if hidden && image.is_some() {
        // A delete hid columns of a row that lives on: they go back to their defaults.
        delete(conn)?;
    }
    let sql: std::borrow::Cow<'_, str> = if hidden {
        table.upsert_row_sql(&names).into()
    } else {
        merge.upsert_all.as_str().into()
    };
    conn.prepare_cached(&sql)
        .and_then(|mut s| s.execute(params_from_iter(key.iter().chain(&values))))
        .map_err(|e| refusal(table, e))?;
    Ok(())
}

/// A counter's value as SQLite stores it (saturating at the 64-bit bounds).
fn clamp(value: i128) -> i64 {
    value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}
