//! Differential tests: the SQL apply path on real SQLite agrees with the pure LWW rule
//! ([`harmonylite_core::merge`]), and SQLite orders encoded HLCs exactly as Rust does.

use std::collections::BTreeMap;

use harmonylite_core::change::{Batch, BatchSeq, RowChange, StreamSeq, TableSchema};
use harmonylite_core::hlc::{Hlc, NodeId, NTP64};
use harmonylite_core::merge::{LwwModel, VersionedRow};
use harmonylite_core::report::Inbound;
use harmonylite_core::sqlite::{Store, StoreOptions};
use harmonylite_core::value::Value;
use harmonylite_core::wire::{encode_batch, Compression};
use proptest::prelude::*;
use rusqlite::Connection;

/// A remote change: origin node (1..=3), HLC time, key, and new value or delete.
#[derive(Debug, Clone)]
struct Change {
    origin: u128,
    time: u64,
    key: i64,
    value: Option<i64>,
}

fn change() -> impl Strategy<Value = Change> {
    (
        1u128..=3,
        1u64..20,
        0i64..5,
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(origin, time, key, value)| Change {
            origin,
            time,
            key,
            value,
        })
}

fn schema() -> TableSchema {
    TableSchema {
        name: "t".into(),
        fingerprint: 0,
        key_columns: vec!["id".into()],
        value_columns: vec!["v".into()],
    }
}

fn node(n: u128) -> NodeId {
    NodeId::from_u128(n).unwrap()
}

/// One write (one HLC) must always carry the same content, as real writes do.
fn canonical(changes: Vec<Change>) -> Vec<Change> {
    let mut first: BTreeMap<(u128, u64, i64), Option<i64>> = BTreeMap::new();
    changes
        .into_iter()
        .map(|c| {
            let value = *first.entry((c.origin, c.time, c.key)).or_insert(c.value);
            Change { value, ..c }
        })
        .collect()
}

fn frame(c: &Change, batch_seq: u64) -> Vec<u8> {
    let batch = Batch {
        tables: vec![schema()],
        rows: vec![RowChange {
            table: 0,
            time: c.time,
            key: vec![Value::Integer(c.key)],
            values: c.value.map(|v| vec![Value::Integer(v)]),
        }],
        cells: Vec::new(),
    };
    encode_batch(
        node(c.origin),
        BatchSeq::new(batch_seq),
        &batch,
        Compression::None,
        1 << 20,
    )
    .unwrap()
    .remove(0)
}

fn table(conn: &Connection) -> BTreeMap<Vec<Value>, BTreeMap<String, Value>> {
    conn.prepare("SELECT id, v FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            let id: Value = r.get(0)?;
            let v: Value = r.get(1)?;
            Ok((
                vec![id.clone()],
                BTreeMap::from([("id".to_string(), id), ("v".to_string(), v)]),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sql_apply_agrees_with_the_pure_rule(changes in proptest::collection::vec(change(), 1..40), group in 1usize..6) {
        let changes = canonical(changes);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        Connection::open(&path).unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)").unwrap();
        let mut store = Store::open(Connection::open(&path).unwrap(), StoreOptions::new(node(99))).unwrap();
        let inbound: Vec<Inbound> = changes
            .iter()
            .enumerate()
            .map(|(i, c)| Inbound { seq: StreamSeq::new(i as u64 + 1), frame: frame(c, i as u64 + 1), subject: None })
            .collect();
        for chunk in inbound.chunks(group) {
            store.receive(NTP64(0), chunk).unwrap();
        }
        // Delivering everything again changes nothing (the cursor skips it) ...
        let before = table(store.connection());
        store.receive(NTP64(0), &inbound).unwrap();
        prop_assert_eq!(&table(store.connection()), &before);

        let mut model = LwwModel::new();
        for c in &changes {
            let image = c.value.map(|v| BTreeMap::from([
                ("id".to_string(), Value::Integer(c.key)),
                ("v".to_string(), Value::Integer(v)),
            ]));
            model.merge(
                ("t".into(), vec![Value::Integer(c.key)]),
                VersionedRow { hlc: Hlc::new(NTP64(c.time), node(c.origin)), image },
            );
        }
        prop_assert_eq!(before, model.live_rows("t"));
    }

    #[test]
    fn sqlite_blob_order_equals_rust_order(a in (any::<u64>(), 1u128..), b in (any::<u64>(), 1u128..)) {
        let a = Hlc::new(NTP64(a.0), node(a.1));
        let b = Hlc::new(NTP64(b.0), node(b.1));
        let conn = Connection::open_in_memory().unwrap();
        let (lt, eq): (bool, bool) = conn
            .query_row("SELECT ?1 < ?2, ?1 = ?2", [&a.to_bytes()[..], &b.to_bytes()[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        prop_assert_eq!(lt, a < b);
        prop_assert_eq!(eq, a == b);
    }
}
