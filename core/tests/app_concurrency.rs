//! Applications writing while the store drains and applies on the same file: every write is
//! captured exactly once, transactions stay whole, and the applications never see
//! `SQLITE_BUSY`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harmonylite_core::capture::names::quote;
use harmonylite_core::change::{Batch, StreamSeq};
use harmonylite_core::hlc::{ntp64_from_unix, NodeId, NTP64};
use harmonylite_core::report::Inbound;
use harmonylite_core::sqlite::{Store, StoreOptions};
use harmonylite_core::value::Value;
use harmonylite_core::wire;
use rusqlite::{Connection, TransactionBehavior};

const SCHEMA: &str = "
CREATE TABLE items(id INTEGER PRIMARY KEY, writer INTEGER NOT NULL, txn INTEGER,
                   n INTEGER NOT NULL, payload TEXT);
CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);";

/// Single-row transactions per writer (plus one 5-row transaction every 50 operations).
const OPS_PER_WRITER: usize = 3000;
const MULTI_EVERY: usize = 50;
const MULTI_ROWS: i64 = 5;

fn now() -> NTP64 {
    ntp64_from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
}

fn node(n: u128) -> NodeId {
    NodeId::from_u128(n).unwrap()
}

/// An application's connection: 5 s busy timeout, like a well-configured app.
fn app_connection(path: &Path, trusted_schema: bool) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
    if !trusted_schema {
        conn.execute_batch("PRAGMA trusted_schema = OFF").unwrap();
        let on: i64 = conn
            .query_row("PRAGMA trusted_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(on, 0);
    }
    conn
}

/// What one writer did.
#[derive(Debug, Default)]
struct Written {
    /// Rows changed (each is one capture-log entry: no key is ever changed).
    changes: u64,
    /// Multi-row transactions: tag -> ids.
    multi: BTreeMap<i64, Vec<i64>>,
}

/// Writes until `OPS_PER_WRITER` operations are done; any error (busy included) is returned
/// with the operation it happened in.
fn write_continuously(path: PathBuf, writer: i64, trusted_schema: bool) -> Result<Written, String> {
    let mut conn = app_connection(&path, trusted_schema);
    let mut rng = fastrand::Rng::with_seed(writer as u64);
    let mut written = Written::default();
    let mut live: Vec<i64> = Vec::new();
    let mut next_id = writer * 1_000_000;
    let mut next_multi = writer * 1_000_000 + 500_000;
    for op in 0..OPS_PER_WRITER {
        let fail =
            |what: &str, e: rusqlite::Error| format!("writer {writer}, op {op} ({what}): {e}");
        if op % MULTI_EVERY == MULTI_EVERY - 1 {
            let tag = writer * 1_000_000 + op as i64;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(|e| fail("begin", e))?;
            let mut ids = Vec::new();
            for _ in 0..MULTI_ROWS {
                tx.execute(
                    "INSERT INTO items VALUES (?1, ?2, ?3, 0, 'multi')",
                    rusqlite::params![next_multi, writer, tag],
                )
                .map_err(|e| fail("multi insert", e))?;
                ids.push(next_multi);
                next_multi += 1;
            }
            tx.commit().map_err(|e| fail("commit", e))?;
            written.changes += MULTI_ROWS as u64;
            written.multi.insert(tag, ids);
            continue;
        }
        let roll = rng.u8(0..100);
        let changed = if live.len() < 20 || roll < 45 {
            next_id += 1;
            live.push(next_id);
            conn.execute(
                "INSERT INTO items VALUES (?1, ?2, NULL, 0, ?3)",
                rusqlite::params![next_id, writer, format!("w{writer} op{op}")],
            )
            .map_err(|e| fail("insert", e))?
        } else if roll < 85 {
            let id = live[rng.usize(..live.len())];
            conn.execute(
                "UPDATE items SET n = n + 1, payload = ?2 WHERE id = ?1",
                rusqlite::params![id, format!("w{writer} op{op} upd")],
            )
            .map_err(|e| fail("update", e))?
        } else {
            let id = live.swap_remove(rng.usize(..live.len()));
            conn.execute("DELETE FROM items WHERE id = ?1", [id])
                .map_err(|e| fail("delete", e))?
        };
        assert_eq!(changed, 1, "writer {writer}, op {op}");
        written.changes += 1;
    }
    Ok(written)
}

/// Delivers every frame after `store`'s cursor.
fn deliver(stream: &[Vec<u8>], store: &mut Store) -> harmonylite_core::report::ReceiveReport {
    let after = store.cursor().get() as usize;
    let messages: Vec<Inbound> = stream[after..]
        .iter()
        .enumerate()
        .map(|(i, f)| Inbound {
            seq: StreamSeq::new((after + i + 1) as u64),
            frame: f.clone(),
            subject: None,
        })
        .collect();
    store.receive(now(), &messages).expect("receive")
}

/// Moves the outbox to the stream (and acknowledges it).
fn publish(stream: &mut Vec<Vec<u8>>, store: &mut Store) {
    loop {
        let frames = store.outbox_after(0, 1000).unwrap();
        if frames.is_empty() {
            return;
        }
        let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
        stream.extend(frames.into_iter().map(|f| f.frame));
        store.outbox_remove(&ids).unwrap();
    }
}

/// A table's rows ordered by key, each cell with its storage class.
fn dump(conn: &Connection, table: &str) -> Vec<Vec<(String, Value)>> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .unwrap()
        .query_map([table], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let select = columns
        .iter()
        .map(|c| format!("typeof({0}), {0}", quote(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn
        .prepare(&format!("SELECT {select} FROM {} ORDER BY 2", quote(table)))
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            (0..columns.len())
                .map(|i| Ok((r.get(2 * i)?, r.get(2 * i + 1)?)))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

/// Batches of `origin` in stream order (single-part: these batches are small).
fn batches_of(stream: &[Vec<u8>], origin: NodeId) -> Vec<Batch> {
    stream
        .iter()
        .map(|f| wire::decode_frame(f).unwrap())
        .filter(|m| m.origin == origin)
        .map(|m| {
            assert_eq!(m.parts, 1);
            wire::decode_batch(m.compression, &m.body).unwrap()
        })
        .collect()
}

#[test]
fn app_writes_during_drain_and_apply_are_captured_exactly_once_without_busy() {
    let dir = tempfile::tempdir().unwrap();
    let path_a = dir.path().join("a.db");
    let path_b = dir.path().join("b.db");
    app_connection(&path_a, true).execute_batch(SCHEMA).unwrap();
    let app_b = app_connection(&path_b, true);
    app_b.execute_batch(SCHEMA).unwrap();
    let mut a = Store::open(
        Connection::open(&path_a).unwrap(),
        StoreOptions::new(node(1)),
    )
    .unwrap();
    let mut b = Store::open(
        Connection::open(&path_b).unwrap(),
        StoreOptions::new(node(2)),
    )
    .unwrap();
    let mut stream: Vec<Vec<u8>> = Vec::new();

    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [(1, true), (2, false)]
        .into_iter()
        .map(|(writer, trusted)| {
            let path = path_a.clone();
            let done = done.clone();
            thread::spawn(move || {
                let result = write_continuously(path, writer, trusted);
                done.store(true, Ordering::SeqCst);
                result
            })
        })
        .collect();

    // The host: drain, publish, and apply remote batches (B's notes) into A, in a loop.
    let mut log_entries = 0u64;
    let mut drains_with_changes = 0u64;
    let mut applied_at_a = 0u64;
    let mut note = 0i64;
    let mut round = 0u64;
    while !writers.iter().all(|w| w.is_finished()) {
        round += 1;
        let drained = a.drain().expect("drain while the app writes");
        log_entries += drained.log_entries as u64;
        drains_with_changes += u64::from(drained.log_entries > 0);
        publish(&mut stream, &mut a);
        if round % 3 == 0 {
            note += 1;
            app_b
                .execute("INSERT INTO notes VALUES (?1, 'from b')", [note])
                .unwrap();
            b.drain().unwrap();
            publish(&mut stream, &mut b);
        }
        let received = deliver(&stream, &mut a);
        log_entries += received.drained.log_entries as u64;
        drains_with_changes += u64::from(received.drained.log_entries > 0);
        applied_at_a += received.applied.rows_changed();
        assert!(received.parked.is_empty(), "{:?}", received.parked);
        deliver(&stream, &mut b);
    }
    assert!(done.load(Ordering::SeqCst));
    let written: Vec<Written> = writers
        .into_iter()
        .map(|w| {
            w.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("the app got an error: {e}"))
        })
        .collect();
    let elapsed = started.elapsed();

    // Final round.
    log_entries += a.drain().unwrap().log_entries as u64;
    publish(&mut stream, &mut a);
    deliver(&stream, &mut a);
    deliver(&stream, &mut b);

    let expected: u64 = written.iter().map(|w| w.changes).sum();
    assert_eq!(
        log_entries, expected,
        "every app change is one log entry, drained once"
    );
    assert_eq!(a.log_depth().unwrap(), 0);
    assert!(
        drains_with_changes > 3,
        "drains must interleave with the writers ({drains_with_changes} in {elapsed:?})"
    );
    assert!(
        applied_at_a > 0,
        "remote batches applied while the app wrote"
    );

    // B, built only from what A drained, equals what the app sees in A.
    let app_a = app_connection(&path_a, true);
    let items = dump(&app_a, "items");
    assert!(items.len() > 1000, "{} rows", items.len());
    assert!(dump(&app_b, "items") == items, "B's items differ from A's");
    assert_eq!(dump(&app_a, "notes"), dump(&app_b, "notes"));
    assert_eq!(dump(&app_a, "notes").len() as i64, note);

    // Multi-row transactions are never split between batches.
    let mut batch_of_tag: BTreeMap<i64, BTreeSet<usize>> = BTreeMap::new();
    let mut rows_of_tag: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    for (i, batch) in batches_of(&stream, node(1)).iter().enumerate() {
        let items = batch
            .tables
            .iter()
            .position(|t| t.name == "items")
            .map(|p| p as u32);
        let txn_col = batch
            .tables
            .iter()
            .find(|t| t.name == "items")
            .map(|t| t.value_columns.iter().position(|c| c == "txn").unwrap());
        for row in batch.rows.iter().filter(|r| Some(r.table) == items) {
            if let (Some(values), Some(col)) = (&row.values, txn_col) {
                if let Value::Integer(tag) = values[col] {
                    batch_of_tag.entry(tag).or_default().insert(i);
                    if let [Value::Integer(id)] = row.key[..] {
                        rows_of_tag.entry(tag).or_default().insert(id);
                    }
                }
            }
        }
    }
    let multi: BTreeMap<i64, Vec<i64>> = written.into_iter().flat_map(|w| w.multi).collect();
    assert_eq!(multi.len(), 2 * (OPS_PER_WRITER / MULTI_EVERY));
    for (tag, ids) in &multi {
        assert_eq!(
            batch_of_tag.get(tag).map(|s| s.len()),
            Some(1),
            "transaction {tag} split across batches"
        );
        assert_eq!(rows_of_tag[tag], ids.iter().copied().collect());
    }
    eprintln!(
        "{expected} app changes in {elapsed:?}; {drains_with_changes} drains, {} frames",
        stream.len()
    );
}
