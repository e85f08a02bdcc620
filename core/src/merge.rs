//! The last-writer-wins rule, as a pure function: the specification every apply path obeys.
//!
//! Each replicated row has a version: the HLC of the last write applied to it and whether
//! that write was a delete (a tombstone). An incoming change replaces the row exactly when its
//! HLC is **strictly greater** than the stored version's; a row with no stored version
//! accepts any change. HLCs never tie between distinct writes (the node id is part of the
//! timestamp), so an equal HLC means the same write seen again and changes nothing.
//!
//! Consequences:
//! - a delete leaves a tombstone with its HLC, so an older update that arrives later does not
//!   bring the row back;
//! - the result does not depend on delivery order or duplication: per row the state is the
//!   change with the greatest HLC, a maximum, which is commutative, associative and
//!   idempotent ([`LwwModel`] is that state, and the tests prove the laws).

use std::collections::BTreeMap;

use crate::hlc::Hlc;
use crate::value::Value;

/// Whether an incoming change with `incoming` HLC replaces a row whose stored version is
/// `stored` (`None` when the row has never been versioned on this replica).
pub fn incoming_wins(incoming: Hlc, stored: Option<Hlc>) -> bool {
    match stored {
        None => true,
        Some(stored) => incoming > stored,
    }
}

/// The state of one row in the model: its version and its image (`None` = tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedRow {
    /// HLC of the write that produced this state.
    pub hlc: Hlc,
    /// Column values by name, or `None` for a deleted row.
    pub image: Option<BTreeMap<String, Value>>,
}

/// Key of a row in the model: table name and primary-key values.
pub type RowKey = (String, Vec<Value>);

/// A pure in-memory LWW replica: the reference the SQL path is tested against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LwwModel {
    rows: BTreeMap<RowKey, VersionedRow>,
}

impl LwwModel {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one change; returns whether it replaced the stored state.
    pub fn merge(&mut self, key: RowKey, change: VersionedRow) -> bool {
        let stored = self.rows.get(&key).map(|row| row.hlc);
        if incoming_wins(change.hlc, stored) {
            self.rows.insert(key, change);
            true
        } else {
            false
        }
    }

    /// Merges every row of `other` into `self` (the join of the two states).
    pub fn join(&mut self, other: &LwwModel) {
        for (key, row) in &other.rows {
            self.merge(key.clone(), row.clone());
        }
    }

    /// The state of one row, if any change to it was merged.
    pub fn get(&self, key: &RowKey) -> Option<&VersionedRow> {
        self.rows.get(key)
    }

    /// Live rows of `table` (tombstones omitted), keyed by primary key.
    pub fn live_rows(&self, table: &str) -> BTreeMap<Vec<Value>, BTreeMap<String, Value>> {
        self.rows
            .iter()
            .filter(|((t, _), _)| t == table)
            .filter_map(|((_, key), row)| row.image.clone().map(|image| (key.clone(), image)))
            .collect()
    }

    /// Every row state, tombstones included.
    pub fn rows(&self) -> impl Iterator<Item = (&RowKey, &VersionedRow)> {
        self.rows.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::{NodeId, NTP64};
    use proptest::prelude::*;

    /// Random changes over a few rows; one write (one HLC) always carries the same image.
    fn change() -> impl Strategy<Value = (RowKey, VersionedRow)> {
        (0u8..3, 0i64..4, 0u64..6, 1u128..4).prop_map(|(t, k, time, node)| {
            let hlc = Hlc::new(NTP64(time), NodeId::from_u128(node).unwrap());
            let tag = time * 10 + node as u64;
            let image = (tag % 3 != 0)
                .then(|| BTreeMap::from([("v".to_string(), Value::Integer(tag as i64))]));
            (
                (format!("t{t}"), vec![Value::Integer(k)]),
                VersionedRow { hlc, image },
            )
        })
    }

    fn model_of(changes: &[(RowKey, VersionedRow)]) -> LwwModel {
        let mut m = LwwModel::new();
        for (k, v) in changes {
            m.merge(k.clone(), v.clone());
        }
        m
    }

    #[test]
    fn tombstone_blocks_an_older_update() {
        let n = NodeId::from_u128(1).unwrap();
        let key: RowKey = ("t".into(), vec![Value::Integer(1)]);
        let mut m = LwwModel::new();
        m.merge(
            key.clone(),
            VersionedRow {
                hlc: Hlc::new(NTP64(5), n),
                image: None,
            },
        );
        let stale = VersionedRow {
            hlc: Hlc::new(NTP64(4), n),
            image: Some(BTreeMap::new()),
        };
        assert!(!m.merge(key.clone(), stale));
        assert!(m.live_rows("t").is_empty());
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in proptest::collection::vec(change(), 0..30)) {
            let mut reversed = a.clone();
            reversed.reverse();
            prop_assert_eq!(model_of(&a), model_of(&reversed));
        }

        #[test]
        fn merge_is_associative(
            a in proptest::collection::vec(change(), 0..20),
            b in proptest::collection::vec(change(), 0..20),
            c in proptest::collection::vec(change(), 0..20),
        ) {
            let (ma, mb, mc) = (model_of(&a), model_of(&b), model_of(&c));
            let mut left = ma.clone();
            left.join(&mb);
            left.join(&mc);
            let mut bc = mb.clone();
            bc.join(&mc);
            let mut right = ma.clone();
            right.join(&bc);
            prop_assert_eq!(left, right);
        }

        #[test]
        fn merge_is_idempotent(a in proptest::collection::vec(change(), 0..30)) {
            let m = model_of(&a);
            let mut twice = m.clone();
            twice.join(&m);
            prop_assert_eq!(twice, m);
        }
    }
}
