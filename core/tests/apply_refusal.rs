//! A message SQLite refuses half-way (here a UNIQUE constraint on the receiver) is parked
//! whole, while the other messages received in the same transaction apply.

use harmonylite_core::change::{Batch, BatchSeq, RowChange, StreamSeq, TableSchema};
use harmonylite_core::hlc::{NodeId, NTP64};
use harmonylite_core::report::Inbound;
use harmonylite_core::sqlite::{Store, StoreOptions};
use harmonylite_core::value::Value;
use harmonylite_core::wire::{encode_batch, Compression};
use rusqlite::Connection;

fn node(n: u128) -> NodeId {
    NodeId::from_u128(n).unwrap()
}

/// One message from node 2 upserting `(id, email)` rows at HLC time `time`.
fn message(seq: u64, time: u64, rows: &[(i64, &str)]) -> Inbound {
    let batch = Batch {
        tables: vec![TableSchema {
            name: "users".into(),
            fingerprint: 0,
            key_columns: vec!["id".into()],
            value_columns: vec!["email".into()],
        }],
        rows: rows
            .iter()
            .map(|(id, email)| RowChange {
                table: 0,
                time,
                key: vec![Value::Integer(*id)],
                values: Some(vec![Value::Text(email.to_string())]),
            })
            .collect(),
        cells: Vec::new(),
    };
    let frame = encode_batch(
        node(2),
        BatchSeq::new(seq),
        &batch,
        Compression::None,
        1 << 20,
    )
    .unwrap()
    .remove(0);
    Inbound {
        seq: StreamSeq::new(seq),
        frame,
        subject: None,
    }
}

#[test]
fn a_row_refused_by_a_constraint_parks_its_message_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let app = Connection::open(&path).unwrap();
    app.execute_batch("CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE)")
        .unwrap();
    let mut store =
        Store::open(Connection::open(&path).unwrap(), StoreOptions::new(node(1))).unwrap();
    app.execute("INSERT INTO users VALUES (1, 'taken@example.com')", [])
        .unwrap();
    store.drain().unwrap();

    let report = store
        .receive(
            NTP64(0),
            &[
                message(1, 10, &[(2, "a")]),
                // Row 3 applies, then row 4 collides with the local row 1's email.
                message(2, 11, &[(3, "b"), (4, "taken@example.com")]),
                message(3, 12, &[(5, "c")]),
            ],
        )
        .unwrap();
    assert_eq!(report.batches, 2);
    assert_eq!(report.parked.len(), 1);
    assert_eq!(report.parked[0].seq, StreamSeq::new(2));
    assert_eq!(report.parked[0].kind.as_str(), "rejected");
    assert_eq!(report.cursor, StreamSeq::new(3));
    let ids: Vec<i64> = app
        .prepare("SELECT id FROM users ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // Nothing of message 2 was applied, not even its first row.
    assert_eq!(ids, [1, 2, 5]);
    assert_eq!(store.parked_count().unwrap(), 1);
    // No version was left behind for the refused rows either.
    let versions: i64 = app
        .query_row("SELECT count(*) FROM __hl_v1 WHERE k0 IN (3, 4)", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(versions, 0);

    // Once the local conflict is resolved, the retry applies it.
    app.execute(
        "UPDATE users SET email = 'moved@example.com' WHERE id = 1",
        [],
    )
    .unwrap();
    let retry = store.retry_parked(NTP64(0)).unwrap();
    assert_eq!(retry.unparked, 1);
    assert_eq!(store.parked_count().unwrap(), 0);
    let count: i64 = app
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 5);
}

/// A transaction that touched a table this replica excludes (`exclude_tables`) applies its
/// other rows here and skips the excluded table's: nothing is parked, nothing is written to
/// the local table of that name.
#[test]
fn rows_of_an_excluded_table_are_skipped_and_the_rest_of_the_batch_applies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    let app = Connection::open(&path).unwrap();
    app.execute_batch(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT);
         CREATE TABLE local_only(id INTEGER PRIMARY KEY, secret TEXT);",
    )
    .unwrap();
    let mut options = StoreOptions::new(node(1));
    options.exclude_tables = vec!["LOCAL_ONLY".into()];
    let mut store = Store::open(Connection::open(&path).unwrap(), options).unwrap();
    let batch = Batch {
        tables: vec![
            TableSchema {
                name: "users".into(),
                fingerprint: 0,
                key_columns: vec!["id".into()],
                value_columns: vec!["email".into()],
            },
            TableSchema {
                name: "local_only".into(),
                fingerprint: 0,
                key_columns: vec!["id".into()],
                value_columns: vec!["secret".into()],
            },
        ],
        rows: vec![
            RowChange {
                table: 0,
                time: 10,
                key: vec![Value::Integer(1)],
                values: Some(vec![Value::Text("a@example.com".into())]),
            },
            RowChange {
                table: 1,
                time: 10,
                key: vec![Value::Integer(1)],
                values: Some(vec![Value::Text("theirs".into())]),
            },
        ],
        cells: Vec::new(),
    };
    let frame = encode_batch(
        node(2),
        BatchSeq::new(1),
        &batch,
        Compression::None,
        1 << 20,
    )
    .unwrap()
    .remove(0);
    let report = store
        .receive(
            NTP64(0),
            &[Inbound {
                seq: StreamSeq::new(1),
                frame,
                subject: None,
            }],
        )
        .unwrap();
    assert!(report.parked.is_empty(), "{:?}", report.parked);
    assert_eq!(report.applied.new_rows, 1);
    assert_eq!(report.applied.excluded, 1);
    assert_eq!(store.parked_count().unwrap(), 0);
    let users: i64 = app
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    let secrets: i64 = app
        .query_row("SELECT count(*) FROM local_only", [], |r| r.get(0))
        .unwrap();
    assert_eq!((users, secrets), (1, 0));
}
