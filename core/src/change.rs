//! Row changes and batches: what one drain captures and one remote transaction applies.

use serde::{Deserialize, Serialize};

use crate::hlc::{Hlc, NodeId, NTP64};
use crate::value::Value;

/// Position of a message in the JetStream stream (1-based; 0 means "nothing yet").
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct StreamSeq(u64);

impl StreamSeq {
    /// The position before the first message.
    pub const ZERO: StreamSeq = StreamSeq(0);

    /// Wraps a raw stream sequence.
    pub fn new(seq: u64) -> Self {
        StreamSeq(seq)
    }

    /// The raw sequence.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The next position.
    pub fn next(self) -> Self {
        StreamSeq(self.0 + 1)
    }
}

impl std::fmt::Display for StreamSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Per-node sequence number of a captured batch (one drain). Starts at 1, never reused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct BatchSeq(u64);

impl BatchSeq {
    /// Wraps a raw batch sequence.
    pub fn new(seq: u64) -> Self {
        BatchSeq(seq)
    }

    /// The raw sequence.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for BatchSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The shape of a replicated table as the sender saw it. Receivers match columns by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// Table name (unquoted).
    pub name: String,
    /// Fingerprint of the sender's column list (see `capture::TableInfo::fingerprint`).
    pub fingerprint: u32,
    /// Primary-key column names, in key order.
    pub key_columns: Vec<String>,
    /// The other replicated columns, in the order values are sent.
    pub value_columns: Vec<String>,
}

/// One row's new state: an upsert of its full image, or a delete (tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowChange {
    /// Index into [`Batch::tables`].
    pub table: u32,
    /// HLC time of the write; the node is the batch's origin.
    pub time: u64,
    /// Primary-key values, in `key_columns` order.
    pub key: Vec<Value>,
    /// `Some(values)` in `value_columns` order for an upsert, `None` for a delete.
    pub values: Option<Vec<Value>>,
}

impl RowChange {
    /// The full timestamp of this change, given the batch's origin node.
    pub fn hlc(&self, origin: NodeId) -> Hlc {
        Hlc::new(NTP64(self.time), origin)
    }

    /// Whether this change deletes the row.
    pub fn is_delete(&self) -> bool {
        self.values.is_none()
    }
}

/// One row's change in a table that merges by column (see [`crate::column_merge`]): the
/// columns a drain saw written, the origin's counter totals, and a delete it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellChange {
    /// Index into [`Batch::tables`].
    pub table: u32,
    /// Primary-key values, in `key_columns` order.
    pub key: Vec<Value>,
    /// HLC time of a delete of the row (before `time` when the row was written again).
    pub deleted: Option<u64>,
    /// HLC time of the writes and counts; the node is the batch's origin.
    pub time: u64,
    /// Columns written, as indexes into `value_columns`, with their values (a counter
    /// column's is its base: written only by a whole-row write).
    pub columns: Vec<(u32, Value)>,
    /// The origin's running totals of the counter columns it changed.
    pub counters: Vec<CounterTotals>,
    /// With `deleted`: every replica's counter totals the delete removes (what the origin
    /// had seen of them).
    pub observed: Vec<ObservedTotals>,
}

/// A replica's running totals of one counter cell (see [`crate::column_merge`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterTotals {
    /// Index into `value_columns`.
    pub column: u32,
    /// Everything it ever added.
    pub up: u64,
    /// Everything it ever took away.
    pub down: u64,
}

/// Another replica's counter totals a delete removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedTotals {
    /// Index into `value_columns`.
    pub column: u32,
    /// The replica that counted.
    pub node: NodeId,
    /// Its totals the deleting replica had seen.
    pub totals: crate::column_merge::Totals,
}

impl CellChange {
    /// The change as merge-model changes, given its table's schema and the batch's origin.
    /// Call on a validated batch (column indexes in range).
    pub fn changes(
        &self,
        table: &TableSchema,
        origin: NodeId,
    ) -> Vec<crate::column_merge::ColumnChange> {
        use crate::column_merge::ColumnChange;
        let hlc = Hlc::new(NTP64(self.time), origin);
        let name = |i: u32| table.value_columns[i as usize].clone();
        let delete = self.deleted.map(|time| ColumnChange::Delete {
            hlc: Hlc::new(NTP64(time), origin),
            observed: self
                .observed
                .iter()
                .map(|o| crate::column_merge::Observed {
                    column: name(o.column),
                    node: o.node,
                    totals: o.totals,
                })
                .collect(),
        });
        let write = (!self.columns.is_empty()).then(|| ColumnChange::Write {
            hlc,
            columns: self
                .columns
                .iter()
                .map(|(i, value)| (name(*i), value.clone()))
                .collect(),
        });
        let counts = self.counters.iter().map(|c| ColumnChange::Counter {
            column: name(c.column),
            node: origin,
            up: c.up,
            down: c.down,
            hlc,
        });
        delete.into_iter().chain(write).chain(counts).collect()
    }

    /// The newest HLC the change carries.
    pub fn hlc(&self, origin: NodeId) -> Hlc {
        Hlc::new(NTP64(self.time.max(self.deleted.unwrap_or(0))), origin)
    }
}

/// Whole local transactions captured by one drain, in commit order, one change per row.
///
/// On the wire a batch is the postcard encoding of `tables` and `rows`, followed, when
/// `cells` is not empty, by the postcard encoding of `cells` (only in frames of wire version
/// 5, which older builds park).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Batch {
    /// Schemas of the tables the rows refer to.
    pub tables: Vec<TableSchema>,
    /// Row changes in the order their last local write committed.
    pub rows: Vec<RowChange>,
    /// Changes of tables that merge by column (encoded after the rest, see above).
    #[serde(skip)]
    pub cells: Vec<CellChange>,
}

impl Batch {
    /// Number of row changes (by row or by column).
    pub fn len(&self) -> usize {
        self.rows.len() + self.cells.len()
    }

    /// Whether the batch carries no change.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.cells.is_empty()
    }

    /// Joins batches into one (rows in the order given; equal table schemas shared), as a
    /// full replica does with the route groups of one source batch.
    pub fn merge(batches: Vec<Batch>) -> Batch {
        let mut out = Batch::default();
        for batch in batches {
            let remap: Vec<u32> = batch
                .tables
                .into_iter()
                .map(|table| match out.tables.iter().position(|t| *t == table) {
                    Some(i) => i as u32,
                    None => {
                        out.tables.push(table);
                        (out.tables.len() - 1) as u32
                    }
                })
                .collect();
            out.rows.extend(batch.rows.into_iter().map(|mut row| {
                row.table = remap[row.table as usize];
                row
            }));
            out.cells.extend(batch.cells.into_iter().map(|mut cell| {
                cell.table = remap[cell.table as usize];
                cell
            }));
        }
        out
    }

    /// Checks internal consistency (table indexes and value counts), as a receiver must
    /// before touching its database.
    pub fn validate(&self) -> Result<(), String> {
        for (i, row) in self.rows.iter().enumerate() {
            let table = self.tables.get(row.table as usize).ok_or_else(|| {
                format!(
                    "row {i} names table index {} of {}",
                    row.table,
                    self.tables.len()
                )
            })?;
            if row.key.len() != table.key_columns.len() {
                return Err(format!(
                    "row {i} of table {:?} has {} key values for {} key columns",
                    table.name,
                    row.key.len(),
                    table.key_columns.len()
                ));
            }
            if let Some(values) = &row.values {
                if values.len() != table.value_columns.len() {
                    return Err(format!(
                        "row {i} of table {:?} has {} values for {} columns",
                        table.name,
                        values.len(),
                        table.value_columns.len()
                    ));
                }
            }
        }
        for (i, cell) in self.cells.iter().enumerate() {
            let table = self.tables.get(cell.table as usize).ok_or_else(|| {
                format!(
                    "column change {i} names table index {} of {}",
                    cell.table,
                    self.tables.len()
                )
            })?;
            if cell.key.len() != table.key_columns.len() {
                return Err(format!(
                    "column change {i} of table {:?} has {} key values for {} key columns",
                    table.name,
                    cell.key.len(),
                    table.key_columns.len()
                ));
            }
            let width = table.value_columns.len();
            let columns = cell.columns.iter().map(|(c, _)| *c);
            if let Some(c) = columns
                .chain(cell.counters.iter().map(|c| c.column))
                .chain(cell.observed.iter().map(|o| o.column))
                .find(|c| *c as usize >= width)
            {
                return Err(format!(
                    "column change {i} of table {:?} names column index {c} of {width}",
                    table.name
                ));
            }
            if cell.deleted.is_none() && !cell.observed.is_empty() {
                return Err(format!(
                    "column change {i} of table {:?} removes counter totals without a delete",
                    table.name
                ));
            }
            if cell.deleted.is_none() && cell.columns.is_empty() && cell.counters.is_empty() {
                return Err(format!(
                    "column change {i} of table {:?} changes nothing",
                    table.name
                ));
            }
        }
        for table in &self.tables {
            if table.key_columns.is_empty() {
                return Err(format!("table {:?} has no key columns", table.name));
            }
        }
        Ok(())
    }
}
