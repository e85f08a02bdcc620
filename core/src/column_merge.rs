//! Column-level last-writer-wins and counter columns: the merge rule a table in `column`
//! merge mode obeys (issue 19), next to the row-level rule of [`crate::merge`]. The SQLite
//! store keeps one [`ColumnRow`] per row of such a table (without the plain columns'
//! values, which live in the row itself) and applies changes with the same code.
//!
//! A row's state is a join-semilattice, so replicas that merged the same changes, in any
//! order and with any duplicates, hold the same state:
//!
//! - **Columns.** Each column keeps the value of the write with the greatest HLC that set
//!   it. An INSERT sets every column; an UPDATE only the columns it changed.
//! - **Deletes.** A delete is a row tombstone: the row keeps the greatest delete HLC seen.
//!   A column write older than it is hidden for good. A write newer than the delete brings
//!   the row back with only the columns written after the delete; every other column reads
//!   as its default (`None` here: the table's default on apply).
//! - **Counters.** Each replica publishes, per counter cell, the running totals of what it
//!   added (`up`) and took away (`down`); they only grow, so merging is a maximum. A
//!   delete carries the totals it had seen (per replica) and removes exactly those: an
//!   increment the deleting replica had not seen (made concurrently, or after the delete)
//!   survives. A counter's value is its *base* (the value the last whole-row write set, by
//!   the column rule above; the column's default when a delete hid that write) plus every
//!   replica's increments not removed by a delete.
//! - **Visibility.** The row exists when some column write is newer than its latest delete
//!   (or there is no delete), or some counter has an increment no delete removed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hlc::{Hlc, NodeId};
use crate::value::Value;

/// One change to one row of a `column`-mode table. `V` is a column's value: [`Value`] on
/// the wire and in the model; the store keeps only counters' bases (see [`Stored`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnChange<V = Value> {
    /// An INSERT or UPDATE at `hlc`: the columns it set.
    Write {
        /// The write's HLC.
        hlc: Hlc,
        /// The columns it set, with their new values.
        columns: BTreeMap<String, V>,
    },
    /// A DELETE at `hlc`, removing the counter totals the deleting replica had seen.
    Delete {
        /// The delete's HLC.
        hlc: Hlc,
        /// Per counter column and replica, the totals it removes.
        observed: Vec<Observed>,
    },
    /// A replica's running totals of one counter column.
    Counter {
        /// The counter column.
        column: String,
        /// The replica whose increments these are.
        node: NodeId,
        /// Everything it ever added.
        up: u64,
        /// Everything it ever took away.
        down: u64,
        /// When it last counted.
        hlc: Hlc,
    },
}

/// A replica's running totals of a counter cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Totals {
    /// Added.
    pub up: u64,
    /// Taken away.
    pub down: u64,
}

impl Totals {
    /// The component-wise maximum.
    fn join(self, other: Totals) -> Totals {
        Totals {
            up: self.up.max(other.up),
            down: self.down.max(other.down),
        }
    }

    /// What is left of `self` once `removed` is taken out (never below zero per component:
    /// a replica may learn of a delete before the increments it removed).
    fn beyond(self, removed: Totals) -> Totals {
        Totals {
            up: self.up.saturating_sub(removed.up),
            down: self.down.saturating_sub(removed.down),
        }
    }

    fn net(self) -> i128 {
        i128::from(self.up) - i128::from(self.down)
    }

    fn is_zero(self) -> bool {
        self.up == 0 && self.down == 0
    }
}

/// The totals a delete removes for one counter column and replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// The counter column.
    pub column: String,
    /// The replica that counted.
    pub node: NodeId,
    /// Its totals the deleting replica had seen.
    pub totals: Totals,
}

impl<V> ColumnChange<V> {
    /// The same change with each column renamed by `name` and each written value turned by
    /// `value` (given the column's new name).
    pub fn map<W>(
        self,
        mut name: impl FnMut(String) -> String,
        mut value: impl FnMut(&str, V) -> W,
    ) -> ColumnChange<W> {
        match self {
            ColumnChange::Write { hlc, columns } => ColumnChange::Write {
                hlc,
                columns: columns
                    .into_iter()
                    .map(|(column, v)| {
                        let column = name(column);
                        let v = value(&column, v);
                        (column, v)
                    })
                    .collect(),
            },
            ColumnChange::Delete { hlc, observed } => ColumnChange::Delete {
                hlc,
                observed: observed
                    .into_iter()
                    .map(|o| Observed {
                        column: name(o.column),
                        ..o
                    })
                    .collect(),
            },
            ColumnChange::Counter {
                column,
                node,
                up,
                down,
                hlc,
            } => ColumnChange::Counter {
                column: name(column),
                node,
                up,
                down,
                hlc,
            },
        }
    }
}

/// What the store keeps of a column's value: a counter's base, or nothing for a plain
/// column (its value is the row's).
pub type Stored = Option<i64>;

/// A value a counter's base can be read from.
pub trait CounterBase {
    /// The base as an integer (counters count integers: a real is truncated, anything
    /// else that is not an integer counts as 0).
    fn counter_base(&self) -> i64;
}

impl CounterBase for Value {
    fn counter_base(&self) -> i64 {
        counter_integer(self)
    }
}

impl CounterBase for Stored {
    fn counter_base(&self) -> i64 {
        self.unwrap_or(0)
    }
}

/// A SQLite value as a counter's integer: integers as they are, reals truncated, integer
/// text parsed, anything else 0.
pub fn counter_integer(value: &Value) -> i64 {
    match value {
        Value::Integer(i) => *i,
        Value::Real(r) => *r as i64,
        Value::Text(t) => t.trim().parse().unwrap_or(0),
        Value::Null | Value::Blob(_) => 0,
    }
}

/// One replica's totals of a counter cell, and when it last counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    /// Its totals.
    pub totals: Totals,
    /// When it last counted.
    pub hlc: Hlc,
}

/// The merged state of one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnRow<V = Value> {
    deleted_at: Option<Hlc>,
    columns: BTreeMap<String, (Hlc, V)>,
    counters: BTreeMap<String, BTreeMap<NodeId, Contribution>>,
    /// Per counter column and replica, the totals deletes removed.
    removed: BTreeMap<String, BTreeMap<NodeId, Totals>>,
}

impl<V> Default for ColumnRow<V> {
    fn default() -> Self {
        ColumnRow {
            deleted_at: None,
            columns: BTreeMap::new(),
            counters: BTreeMap::new(),
            removed: BTreeMap::new(),
        }
    }
}

impl<V: Clone + PartialEq + CounterBase> ColumnRow<V> {
    /// Merges one change; returns whether the state changed.
    pub fn merge(&mut self, change: &ColumnChange<V>) -> bool {
        match change {
            ColumnChange::Write { hlc, columns } => {
                let mut changed = false;
                for (name, value) in columns {
                    let newer = self
                        .columns
                        .get(name)
                        .is_none_or(|(stored, _)| hlc > stored);
                    if newer {
                        self.columns.insert(name.clone(), (*hlc, value.clone()));
                        changed = true;
                    }
                }
                changed
            }
            ColumnChange::Delete { hlc, observed } => {
                let mut changed = Some(*hlc) > self.deleted_at;
                if changed {
                    self.deleted_at = Some(*hlc);
                }
                for o in observed {
                    let cell = self.removed.entry(o.column.clone()).or_default();
                    let joined = cell.get(&o.node).map_or(o.totals, |r| r.join(o.totals));
                    changed |= cell.insert(o.node, joined) != Some(joined);
                }
                changed
            }
            ColumnChange::Counter {
                column,
                node,
                up,
                down,
                hlc,
            } => {
                let incoming = Contribution {
                    totals: Totals {
                        up: *up,
                        down: *down,
                    },
                    hlc: *hlc,
                };
                let cell = self.counters.entry(column.clone()).or_default();
                let joined = match cell.get(node) {
                    Some(stored) => Contribution {
                        totals: stored.totals.join(incoming.totals),
                        hlc: stored.hlc.max(incoming.hlc),
                    },
                    None => incoming,
                };
                cell.insert(*node, joined) != Some(joined)
            }
        }
    }

    /// The changes that rebuild this state from nothing (merging them into another state is
    /// the join of the two).
    pub fn changes(&self) -> Vec<ColumnChange<V>> {
        let observed: Vec<Observed> = self
            .removed
            .iter()
            .flat_map(|(column, cell)| {
                cell.iter().map(|(node, totals)| Observed {
                    column: column.clone(),
                    node: *node,
                    totals: *totals,
                })
            })
            .collect();
        let deletes = self
            .deleted_at
            .map(|hlc| ColumnChange::Delete { hlc, observed });
        let writes = self
            .columns
            .iter()
            .map(|(name, (hlc, value))| ColumnChange::Write {
                hlc: *hlc,
                columns: BTreeMap::from([(name.clone(), value.clone())]),
            });
        let counters = self.counters.iter().flat_map(|(column, cell)| {
            cell.iter().map(|(node, c)| ColumnChange::Counter {
                column: column.clone(),
                node: *node,
                up: c.totals.up,
                down: c.totals.down,
                hlc: c.hlc,
            })
        });
        deletes.into_iter().chain(writes).chain(counters).collect()
    }

    /// The join of two states of the same row.
    pub fn join(&mut self, other: &ColumnRow<V>) {
        for change in other.changes() {
            self.merge(&change);
        }
    }

    /// The latest delete, if any.
    pub fn deleted_at(&self) -> Option<Hlc> {
        self.deleted_at
    }

    /// The latest HLC this state holds: its latest write, count or delete.
    pub fn latest(&self) -> Option<Hlc> {
        let writes = self.columns.values().map(|(hlc, _)| *hlc);
        let counts = self
            .counters
            .values()
            .flat_map(|c| c.values().map(|c| c.hlc));
        writes.chain(counts).chain(self.deleted_at).max()
    }

    fn after_delete(&self, hlc: Hlc) -> bool {
        self.deleted_at.is_none_or(|d| hlc > d)
    }

    /// Each replica's totals of counter `name` that no delete removed.
    fn unremoved(&self, name: &str) -> impl Iterator<Item = (NodeId, Totals)> + '_ {
        let removed = self.removed.get(name);
        self.counters
            .get(name)
            .into_iter()
            .flat_map(BTreeMap::iter)
            .map(move |(node, c)| {
                let gone = removed
                    .and_then(|r| r.get(node))
                    .copied()
                    .unwrap_or_default();
                (*node, c.totals.beyond(gone))
            })
    }

    /// Whether the row exists (see the module docs).
    pub fn exists(&self) -> bool {
        self.columns
            .values()
            .any(|(hlc, _)| self.after_delete(*hlc))
            || self
                .counters
                .keys()
                .any(|name| self.unremoved(name).any(|(_, t)| !t.is_zero()))
    }

    /// A column's visible write (its HLC and value): `None` when the row does not exist or
    /// no write after its latest delete set the column (the table's default applies).
    pub fn visible(&self, name: &str) -> Option<(Hlc, &V)> {
        if !self.exists() {
            return None;
        }
        self.columns
            .get(name)
            .filter(|(hlc, _)| self.after_delete(*hlc))
            .map(|(hlc, value)| (*hlc, value))
    }

    /// A plain column's visible value (see [`ColumnRow::visible`]).
    pub fn column(&self, name: &str) -> Option<&V> {
        self.visible(name).map(|(_, value)| value)
    }

    /// The increments to counter `name` no delete removed, summed over replicas.
    pub fn increments(&self, name: &str) -> i128 {
        self.unremoved(name).map(|(_, t)| t.net()).sum()
    }

    /// A counter column's value: its visible base (`default` when a delete hid it or
    /// nothing set it) plus [`ColumnRow::increments`]; 0 when the row does not exist.
    pub fn counter(&self, name: &str, default: i64) -> i128 {
        if !self.exists() {
            return 0;
        }
        let base = self.column(name).map_or(default, CounterBase::counter_base);
        i128::from(base) + self.increments(name)
    }

    /// Every replica's totals of every counter, as a delete made now removes them.
    pub fn observed(&self) -> Vec<Observed> {
        self.counters
            .iter()
            .flat_map(|(column, cell)| {
                cell.iter().map(|(node, c)| Observed {
                    column: column.clone(),
                    node: *node,
                    totals: c.totals,
                })
            })
            .collect()
    }

    /// Records a local delete at `hlc`: it removes every increment this replica has seen.
    /// Returns the change to publish, already merged.
    pub fn delete_local(&mut self, hlc: Hlc) -> ColumnChange<V> {
        let change = ColumnChange::Delete {
            hlc,
            observed: self.observed(),
        };
        self.merge(&change);
        change
    }

    /// Records a local change of `delta` at `hlc` to counter `column` by `node`: its running
    /// totals grow by `delta`. Returns the change to publish, already merged.
    pub fn count_local(
        &mut self,
        column: &str,
        node: NodeId,
        delta: i64,
        hlc: Hlc,
    ) -> ColumnChange<V> {
        let Totals { mut up, mut down } = self
            .counters
            .get(column)
            .and_then(|cell| cell.get(&node))
            .map(|c| c.totals)
            .unwrap_or_default();
        if delta >= 0 {
            up += delta.unsigned_abs();
        } else {
            down += delta.unsigned_abs();
        }
        let change = ColumnChange::Counter {
            column: column.to_owned(),
            node,
            up,
            down,
            hlc,
        };
        self.merge(&change);
        change
    }
}

/// A table that merges by column, and its counter columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableMerge {
    /// Columns that merge by adding increments (names as configured).
    pub counters: Vec<String>,
}

impl TableMerge {
    /// Whether `column` is one of the counters (ASCII case ignored, as SQLite does).
    pub fn is_counter(&self, column: &str) -> bool {
        self.counters.iter().any(|c| c.eq_ignore_ascii_case(column))
    }
}

/// Which tables merge by column (with their counters); every other table merges by row.
/// Every replica must have the same (a mismatch is refused loudly, see `docs/column-merge.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeConfig {
    /// By table name folded to ASCII lower case.
    tables: BTreeMap<String, TableMerge>,
}

impl MergeConfig {
    /// From the configured lists: `column` names tables that merge by column, `counters`
    /// names counter columns as `table.column` (their tables merge by column too).
    pub fn new(column: &[String], counters: &[String]) -> Result<MergeConfig, String> {
        let mut config = MergeConfig::default();
        for table in column {
            if table.trim().is_empty() {
                return Err("merge: an empty table name in `column`".into());
            }
            config.tables.entry(table.to_ascii_lowercase()).or_default();
        }
        for counter in counters {
            let Some((table, column)) = counter.split_once('.') else {
                return Err(format!(
                    "merge: counter {counter:?} must name its table, as \"table.column\""
                ));
            };
            if table.is_empty() || column.is_empty() {
                return Err(format!(
                    "merge: counter {counter:?} must name its table, as \"table.column\""
                ));
            }
            let entry = config.tables.entry(table.to_ascii_lowercase()).or_default();
            if !entry.is_counter(column) {
                entry.counters.push(column.to_owned());
            }
        }
        Ok(config)
    }

    /// Whether no table merges by column.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// How `table` merges: `Some` by column, `None` by row.
    pub fn table(&self, table: &str) -> Option<&TableMerge> {
        self.tables.get(&table.to_ascii_lowercase())
    }

    /// Sets how `table` merges (`None`: by row).
    pub fn set(&mut self, table: &str, merge: Option<TableMerge>) {
        let key = table.to_ascii_lowercase();
        match merge {
            Some(merge) => self.tables.insert(key, merge),
            None => self.tables.remove(&key),
        };
    }

    /// The tables that merge by column (names folded to lower case).
    pub fn tables(&self) -> impl Iterator<Item = (&str, &TableMerge)> {
        self.tables
            .iter()
            .map(|(name, merge)| (name.as_str(), merge))
    }
}

/// How a table merges, for messages: `"row"`, or `"column"` with its counters.
pub fn describe(merge: Option<&TableMerge>) -> String {
    match merge {
        None => "row".into(),
        Some(m) if m.counters.is_empty() => "column".into(),
        Some(m) => format!("column (counters: {})", m.counters.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::NTP64;
    use proptest::prelude::*;

    fn hlc(time: u64, node: u128) -> Hlc {
        Hlc::new(NTP64(time), NodeId::from_u128(node).unwrap())
    }

    fn write(time: u64, node: u128, columns: &[(&str, i64)]) -> ColumnChange {
        ColumnChange::Write {
            hlc: hlc(time, node),
            columns: columns
                .iter()
                .map(|(c, v)| (c.to_string(), Value::Integer(*v)))
                .collect(),
        }
    }

    fn state(changes: &[ColumnChange]) -> ColumnRow {
        let mut row: ColumnRow = ColumnRow::default();
        for c in changes {
            row.merge(c);
        }
        row
    }

    #[test]
    fn concurrent_edits_to_different_columns_both_survive() {
        let insert = write(1, 1, &[("title", 1), ("body", 1)]);
        let a = write(5, 1, &[("title", 2)]);
        let b = write(4, 2, &[("body", 3)]);
        for order in [
            vec![&insert, &a, &b],
            vec![&b, &a, &insert],
            vec![&a, &insert, &b],
        ] {
            let row = state(&order.into_iter().cloned().collect::<Vec<_>>());
            assert_eq!(row.column("title"), Some(&Value::Integer(2)));
            assert_eq!(row.column("body"), Some(&Value::Integer(3)));
        }
    }

    #[test]
    fn the_later_write_to_one_column_wins() {
        let row = state(&[write(5, 1, &[("title", 1)]), write(6, 2, &[("title", 2)])]);
        assert_eq!(row.column("title"), Some(&Value::Integer(2)));
    }

    #[test]
    fn a_delete_hides_older_writes_and_a_later_write_brings_back_only_its_columns() {
        let insert = write(1, 1, &[("title", 1), ("body", 1)]);
        let older_update = write(3, 2, &[("body", 2)]);
        let delete = ColumnChange::Delete {
            hlc: hlc(4, 1),
            observed: Vec::new(),
        };
        let row = state(&[insert.clone(), delete.clone(), older_update.clone()]);
        assert!(!row.exists());
        assert_eq!(row.column("body"), None);

        let later = write(6, 2, &[("title", 9)]);
        let row = state(&[later.clone(), insert, delete, older_update]);
        assert!(row.exists());
        assert_eq!(row.column("title"), Some(&Value::Integer(9)));
        assert_eq!(
            row.column("body"),
            None,
            "written before the delete: default"
        );
    }

    #[test]
    fn concurrent_decrements_from_four_replicas_add_up() {
        let insert = write(0, 1, &[("qty", 0)]);
        let mut changes = Vec::new();
        for node in 1..=4u128 {
            let mut replica = state(std::slice::from_ref(&insert));
            for i in 0..250u64 {
                let id = NodeId::from_u128(node).unwrap();
                changes.push(replica.count_local("qty", id, -1, hlc(i + 1, node)));
            }
        }
        let mut reversed = changes.clone();
        reversed.reverse();
        for order in [changes, reversed] {
            let mut row = state(std::slice::from_ref(&insert));
            for c in &order {
                row.merge(c);
                row.merge(c);
            }
            assert_eq!(row.counter("qty", 0), -1000);
        }
    }

    #[test]
    fn a_delete_removes_the_increments_it_saw_and_no_others() {
        let a = NodeId::from_u128(1).unwrap();
        let insert = write(1, 1, &[("likes", 10)]);
        let mut on_a = state(std::slice::from_ref(&insert));
        let mut on_b = state(std::slice::from_ref(&insert));
        let seen = on_a.count_local("likes", a, 5, hlc(2, 1));
        on_b.merge(&seen);
        assert_eq!(on_b.counter("likes", 0), 15);
        // b deletes having seen a's +5; a, not having seen the delete, adds 2 more.
        let delete = on_b.delete_local(hlc(3, 2));
        let unseen = on_a.count_local("likes", a, 2, hlc(4, 1));
        let row = state(&[unseen.clone(), seen.clone(), delete.clone(), insert.clone()]);
        assert!(
            row.exists(),
            "an increment the delete had not seen keeps the row"
        );
        assert_eq!(
            row.counter("likes", 0),
            2,
            "the base and the seen +5 are gone"
        );
        assert_eq!(
            row.counter("likes", 7),
            9,
            "a hidden base reads as the default"
        );
        // Without it, the delete wins; a replica that gets the delete before the +5 it
        // removed never counts that +5.
        let row = state(&[delete.clone(), insert.clone()]);
        assert!(!row.exists());
        let row = state(&[delete, seen, insert.clone()]);
        assert!(!row.exists());
        // A concurrent increment older (by HLC) than the delete survives too: the delete
        // had not seen it.
        let mut on_c = state(std::slice::from_ref(&insert));
        let early = on_c.count_local("likes", NodeId::from_u128(3).unwrap(), -1, hlc(2, 3));
        let delete = on_b.delete_local(hlc(5, 2));
        let row = state(&[insert, early, delete]);
        assert_eq!(row.counter("likes", 0), -1);
    }

    #[test]
    fn a_state_without_values_merges_like_the_model() {
        let changes = [
            write(1, 1, &[("title", 1), ("n", 4)]),
            write(3, 2, &[("title", 2)]),
            ColumnChange::Delete {
                hlc: hlc(2, 2),
                observed: Vec::new(),
            },
        ];
        let model = state(&changes);
        let mut stored: ColumnRow<Stored> = ColumnRow::default();
        for change in &changes {
            stored.merge(&match change {
                ColumnChange::Write { hlc, columns } => ColumnChange::Write {
                    hlc: *hlc,
                    columns: columns
                        .iter()
                        .map(|(c, v)| (c.clone(), (c == "n").then(|| v.counter_base())))
                        .collect(),
                },
                ColumnChange::Delete { hlc, observed } => ColumnChange::Delete {
                    hlc: *hlc,
                    observed: observed.clone(),
                },
                ColumnChange::Counter { .. } => unreachable!(),
            });
        }
        assert_eq!(stored.exists(), model.exists());
        assert_eq!(stored.counter("n", 3), model.counter("n", 3));
        assert_eq!(
            stored.visible("title").map(|(h, _)| h),
            model.visible("title").map(|(h, _)| h)
        );
        assert_eq!(stored.latest(), Some(hlc(3, 2)));
    }

    fn any_change() -> impl Strategy<Value = ColumnChange> {
        let column = prop_oneof![Just("a"), Just("b"), Just("c")];
        prop_oneof![
            (0u64..8, 1u128..4, column.clone()).prop_map(|(t, n, c)| {
                // One write (one HLC) always carries the same value for a column.
                write(t, n, &[(c, (t * 7 + n as u64) as i64)])
            }),
            (
                0u64..8,
                1u128..4,
                proptest::collection::vec((1u128..4, 0u64..5, 0u64..5), 0..3)
            )
                .prop_map(|(t, n, observed)| ColumnChange::Delete {
                    hlc: hlc(t, n),
                    observed: observed
                        .into_iter()
                        .map(|(node, up, down)| Observed {
                            column: "n".into(),
                            node: NodeId::from_u128(node).unwrap(),
                            totals: Totals { up, down },
                        })
                        .collect(),
                }),
            (0u64..8, 1u128..4, 0u64..5, 0u64..5).prop_map(|(t, n, up, down)| {
                ColumnChange::Counter {
                    column: "n".into(),
                    node: NodeId::from_u128(n).unwrap(),
                    up,
                    down,
                    hlc: hlc(t, n),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_delivery_order_with_duplicates_gives_one_state(
            changes in proptest::collection::vec(any_change(), 0..25),
            seed in any::<u64>(),
        ) {
            let reference = state(&changes);
            let mut shuffled: Vec<ColumnChange> = changes.iter().chain(changes.iter().take(5)).cloned().collect();
            let mut rng = fastrand::Rng::with_seed(seed);
            rng.shuffle(&mut shuffled);
            prop_assert_eq!(state(&shuffled), reference);
        }

        #[test]
        fn join_is_commutative_associative_and_idempotent(
            a in proptest::collection::vec(any_change(), 0..15),
            b in proptest::collection::vec(any_change(), 0..15),
            c in proptest::collection::vec(any_change(), 0..15),
        ) {
            let (sa, sb, sc) = (state(&a), state(&b), state(&c));
            let mut ab = sa.clone();
            ab.join(&sb);
            let mut ba = sb.clone();
            ba.join(&sa);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone();
            ab_c.join(&sc);
            let mut bc = sb.clone();
            bc.join(&sc);
            let mut a_bc = sa.clone();
            a_bc.join(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut twice = ab_c.clone();
            twice.join(&ab_c);
            prop_assert_eq!(twice, ab_c);
            // Joining states equals merging every change.
            let all: Vec<ColumnChange> = a.iter().chain(&b).chain(&c).cloned().collect();
            prop_assert_eq!(a_bc, state(&all));
        }
    }
}
