//! Column-level last-writer-wins and counter columns, as a pure model: the specification a
//! table in `column` merge mode obeys (issue 19), next to the row-level rule of
//! [`crate::merge`].
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
//! - **Counters.** A counter column merges by adding increments. Each replica publishes,
//!   per counter cell, the running totals of what it added (`up`) and took away (`down`)
//!   since the row's last delete it knew of (its `epoch`). Per replica the entry with the
//!   later epoch wins, and within an epoch the larger totals (they only grow), so merging
//!   is a maximum. The counter's value is the sum over replicas of `up - down` for entries
//!   of the row's current epoch (the greatest delete): a delete resets it, and increments
//!   made after it start from zero. An entry's epoch is evidence of a delete, so it also
//!   raises the row's tombstone.
//! - **Visibility.** The row exists when it was never deleted and something was written, or
//!   when some column write or counter entry is newer than its latest delete.

use std::collections::BTreeMap;

use crate::hlc::{Hlc, NodeId};
use crate::value::Value;

/// One change to one row of a `column`-mode table, as a replica publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnChange {
    /// An INSERT or UPDATE at `hlc`: the columns it set.
    Write {
        /// The write's HLC.
        hlc: Hlc,
        /// The columns it set, with their new values.
        columns: BTreeMap<String, Value>,
    },
    /// A DELETE at `hlc`.
    Delete {
        /// The delete's HLC.
        hlc: Hlc,
    },
    /// A replica's running totals of one counter column since the delete it knew of.
    Counter {
        /// The counter column.
        column: String,
        /// The replica whose increments these are.
        node: NodeId,
        /// The latest delete of the row that replica had seen when it counted (`None`:
        /// none), which reset its totals.
        epoch: Option<Hlc>,
        /// Everything it added since `epoch`.
        up: u64,
        /// Everything it took away since `epoch`.
        down: u64,
        /// When it last counted (a write: it brings a deleted row back).
        hlc: Hlc,
    },
}

/// One replica's contribution to a counter cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Contribution {
    epoch: Option<Hlc>,
    up: u64,
    down: u64,
    hlc: Hlc,
}

impl Contribution {
    /// The join of two contributions of one replica.
    fn join(self, other: Contribution) -> Contribution {
        match self.epoch.cmp(&other.epoch) {
            std::cmp::Ordering::Less => other,
            std::cmp::Ordering::Greater => self,
            std::cmp::Ordering::Equal => Contribution {
                epoch: self.epoch,
                up: self.up.max(other.up),
                down: self.down.max(other.down),
                hlc: self.hlc.max(other.hlc),
            },
        }
    }
}

/// The merged state of one row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnRow {
    deleted_at: Option<Hlc>,
    columns: BTreeMap<String, (Hlc, Value)>,
    counters: BTreeMap<String, BTreeMap<NodeId, Contribution>>,
}

impl ColumnRow {
    /// Merges one change.
    pub fn merge(&mut self, change: &ColumnChange) {
        match change {
            ColumnChange::Write { hlc, columns } => {
                for (name, value) in columns {
                    let newer = self
                        .columns
                        .get(name)
                        .is_none_or(|(stored, _)| hlc > stored);
                    if newer {
                        self.columns.insert(name.clone(), (*hlc, value.clone()));
                    }
                }
            }
            ColumnChange::Delete { hlc } => self.raise_tombstone(Some(*hlc)),
            ColumnChange::Counter {
                column,
                node,
                epoch,
                up,
                down,
                hlc,
            } => {
                self.raise_tombstone(*epoch);
                let incoming = Contribution {
                    epoch: *epoch,
                    up: *up,
                    down: *down,
                    hlc: *hlc,
                };
                let cell = self.counters.entry(column.clone()).or_default();
                let joined = match cell.get(node) {
                    Some(stored) => stored.join(incoming),
                    None => incoming,
                };
                cell.insert(*node, joined);
            }
        }
    }

    fn raise_tombstone(&mut self, hlc: Option<Hlc>) {
        if hlc > self.deleted_at {
            self.deleted_at = hlc;
        }
    }

    /// The join of two states of the same row.
    pub fn join(&mut self, other: &ColumnRow) {
        self.raise_tombstone(other.deleted_at);
        for (name, (hlc, value)) in &other.columns {
            self.merge(&ColumnChange::Write {
                hlc: *hlc,
                columns: BTreeMap::from([(name.clone(), value.clone())]),
            });
        }
        for (column, cell) in &other.counters {
            for (node, c) in cell {
                self.merge(&ColumnChange::Counter {
                    column: column.clone(),
                    node: *node,
                    epoch: c.epoch,
                    up: c.up,
                    down: c.down,
                    hlc: c.hlc,
                });
            }
        }
    }

    /// The latest delete, if any.
    pub fn deleted_at(&self) -> Option<Hlc> {
        self.deleted_at
    }

    /// Whether the row exists (see the module docs).
    pub fn exists(&self) -> bool {
        let after_delete = |hlc: &Hlc| self.deleted_at.is_none_or(|d| *hlc > d);
        self.columns.values().any(|(hlc, _)| after_delete(hlc))
            || self
                .counters
                .values()
                .flat_map(BTreeMap::values)
                .any(|c| c.epoch == self.deleted_at && after_delete(&c.hlc))
    }

    /// A plain column's visible value: `None` when the row does not exist or no write after
    /// its latest delete set the column (the table's default applies).
    pub fn column(&self, name: &str) -> Option<&Value> {
        if !self.exists() {
            return None;
        }
        self.columns
            .get(name)
            .filter(|(hlc, _)| self.deleted_at.is_none_or(|d| *hlc > d))
            .map(|(_, value)| value)
    }

    /// A counter column's value: the increments of the row's current epoch, summed over
    /// replicas (0 when the row does not exist or nobody counted since its latest delete).
    pub fn counter(&self, name: &str) -> i128 {
        if !self.exists() {
            return 0;
        }
        self.counters
            .get(name)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|c| c.epoch == self.deleted_at)
            .map(|c| i128::from(c.up) - i128::from(c.down))
            .sum()
    }
}

/// A replica's running totals for its counter cells, which turn `qty = qty - 1` into the
/// [`ColumnChange::Counter`] it publishes: what a capture keeps per counter cell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterTotals {
    epoch: Option<Hlc>,
    up: u64,
    down: u64,
}

impl CounterTotals {
    /// Records a local change of `delta` at `hlc` to the counter `column`, counted since
    /// `epoch` (the row's latest delete this replica knows), and returns the change to
    /// publish.
    pub fn add(
        &mut self,
        column: &str,
        node: NodeId,
        epoch: Option<Hlc>,
        delta: i64,
        hlc: Hlc,
    ) -> ColumnChange {
        if epoch != self.epoch {
            *self = CounterTotals {
                epoch,
                up: 0,
                down: 0,
            };
        }
        if delta >= 0 {
            self.up += delta.unsigned_abs();
        } else {
            self.down += delta.unsigned_abs();
        }
        ColumnChange::Counter {
            column: column.to_owned(),
            node,
            epoch,
            up: self.up,
            down: self.down,
            hlc,
        }
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
        let mut row = ColumnRow::default();
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
        let delete = ColumnChange::Delete { hlc: hlc(4, 1) };
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
        let mut changes = Vec::new();
        for node in 1..=4u128 {
            let mut totals = CounterTotals::default();
            for i in 0..250u64 {
                let id = NodeId::from_u128(node).unwrap();
                changes.push(totals.add("qty", id, None, -1, hlc(i + 1, node)));
            }
        }
        let mut reversed = changes.clone();
        reversed.reverse();
        for order in [changes, reversed] {
            let mut row = state(&[write(0, 1, &[("qty", 0)])]);
            for c in &order {
                row.merge(c);
                row.merge(c);
            }
            assert_eq!(row.counter("qty"), -1000);
        }
    }

    #[test]
    fn a_delete_resets_counters_and_later_increments_start_from_zero() {
        let a = NodeId::from_u128(1).unwrap();
        let mut totals = CounterTotals::default();
        let before = totals.add("likes", a, None, 5, hlc(2, 1));
        let delete = ColumnChange::Delete { hlc: hlc(3, 2) };
        let after = totals.add("likes", a, Some(hlc(3, 2)), 2, hlc(4, 1));
        let row = state(&[after.clone(), before.clone(), delete.clone()]);
        assert!(row.exists());
        assert_eq!(row.counter("likes"), 2);
        // The increment made after the delete is evidence of it, even before it arrives.
        let row = state(&[before, after]);
        assert_eq!(row.deleted_at(), Some(hlc(3, 2)));
        assert_eq!(row.counter("likes"), 2);
    }

    fn any_change() -> impl Strategy<Value = ColumnChange> {
        let column = prop_oneof![Just("a"), Just("b"), Just("c")];
        prop_oneof![
            (0u64..8, 1u128..4, column.clone()).prop_map(|(t, n, c)| {
                // One write (one HLC) always carries the same value for a column.
                write(t, n, &[(c, (t * 7 + n as u64) as i64)])
            }),
            (0u64..8, 1u128..4).prop_map(|(t, n)| ColumnChange::Delete { hlc: hlc(t, n) }),
            (
                0u64..8,
                1u128..4,
                proptest::option::of((0u64..8, 1u128..4)),
                0u64..5,
                0u64..5
            )
                .prop_map(|(t, n, epoch, up, down)| ColumnChange::Counter {
                    column: "n".into(),
                    node: NodeId::from_u128(n).unwrap(),
                    epoch: epoch.map(|(et, en)| hlc(et, en)),
                    up,
                    down,
                    hlc: hlc(t, n),
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
