//! Tables that merge by column, on real SQLite files: concurrent edits of different columns
//! both survive, the later write of one column wins, a delete hides older writes, counters
//! add up, capture works under `trusted_schema=OFF`, and replicas whose merge modes differ
//! refuse loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harmonylite_core::change::StreamSeq;
use harmonylite_core::column_merge::MergeConfig;
use harmonylite_core::error::StoreError;
use harmonylite_core::hlc::{ntp64_from_unix, NodeId, NTP64};
use harmonylite_core::report::{Inbound, ParkReason, ReceiveReport};
use harmonylite_core::sqlite::{Store, StoreOptions};
use rusqlite::Connection;
use tempfile::TempDir;

const SCHEMA: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT, \
                      tag TEXT DEFAULT 'none');
                      CREATE TABLE stock(sku TEXT PRIMARY KEY, qty INTEGER NOT NULL DEFAULT 0, \
                      name TEXT);";

fn now() -> NTP64 {
    ntp64_from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
}

fn merge() -> MergeConfig {
    MergeConfig::new(&["notes".into()], &["stock.qty".into()]).unwrap()
}

fn options(id: u128, merge: MergeConfig) -> StoreOptions {
    let mut options = StoreOptions::new(NodeId::from_u128(id).unwrap());
    options.merge = Some(merge);
    options
}

struct Replica {
    _dir: TempDir,
    path: PathBuf,
    store: Store,
    app: Connection,
}

impl Replica {
    fn new(id: u128) -> Self {
        Self::with(options(id, merge()))
    }

    fn with(options: StoreOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let app = Connection::open(&path).unwrap();
        app.busy_timeout(Duration::from_secs(5)).unwrap();
        app.execute_batch(SCHEMA).unwrap();
        let store = Store::open(Connection::open(&path).unwrap(), options).expect("open");
        Replica {
            _dir: dir,
            path,
            store,
            app,
        }
    }

    fn exec(&self, sql: &str) {
        self.app.execute_batch(sql).unwrap();
    }

    fn note(&self, id: i64) -> Option<(Option<String>, Option<String>, Option<String>)> {
        self.app
            .query_row(
                "SELECT title, body, tag FROM notes WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ok()
    }

    fn qty(&self, sku: &str) -> Option<i64> {
        self.app
            .query_row("SELECT qty FROM stock WHERE sku = ?1", [sku], |r| r.get(0))
            .ok()
    }
}

/// JetStream in miniature: frames in publish order.
#[derive(Default)]
struct Stream {
    frames: Vec<Vec<u8>>,
}

impl Stream {
    /// Drains `from` and publishes its outbox; returns the bytes published.
    fn publish(&mut self, from: &mut Replica) -> usize {
        from.store.drain().expect("drain");
        let frames = from.store.outbox_after(0, 100_000).unwrap();
        let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
        let bytes = frames.iter().map(|f| f.frame.len()).sum();
        self.frames.extend(frames.into_iter().map(|f| f.frame));
        from.store.outbox_remove(&ids).unwrap();
        bytes
    }

    /// Delivers every frame after `to`'s cursor.
    fn deliver(&self, to: &mut Replica) -> ReceiveReport {
        let after = to.store.cursor().get() as usize;
        let messages: Vec<Inbound> = self.frames[after..]
            .iter()
            .enumerate()
            .map(|(i, frame)| Inbound {
                seq: StreamSeq::new((after + i + 1) as u64),
                frame: frame.clone(),
                subject: None,
            })
            .collect();
        to.store.receive(now(), &messages).expect("receive")
    }
}

fn sync_all(stream: &mut Stream, replicas: &mut [&mut Replica]) {
    for r in replicas.iter_mut() {
        stream.publish(r);
    }
    for r in replicas.iter_mut() {
        let report = stream.deliver(r);
        assert!(report.parked.is_empty(), "parked: {:?}", report.parked);
    }
}

#[test]
fn concurrent_edits_of_different_columns_both_survive() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    let mut stream = Stream::default();
    a.exec("INSERT INTO notes(id, title, body) VALUES (1, 'draft', 'text')");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    // Partitioned: each edits another column.
    a.exec("UPDATE notes SET title = 'final' WHERE id = 1");
    b.exec("UPDATE notes SET body = 'longer text' WHERE id = 1");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    let both = Some((
        Some("final".into()),
        Some("longer text".into()),
        Some("none".into()),
    ));
    assert_eq!(a.note(1), both);
    assert_eq!(b.note(1), both);
}

#[test]
fn the_later_write_of_one_column_wins() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    let mut stream = Stream::default();
    a.exec("INSERT INTO notes(id, title) VALUES (1, 'first')");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    a.exec("UPDATE notes SET title = 'a' WHERE id = 1");
    std::thread::sleep(Duration::from_millis(5));
    b.exec("UPDATE notes SET title = 'b, later' WHERE id = 1");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    assert_eq!(a.note(1).unwrap().0.as_deref(), Some("b, later"));
    assert_eq!(b.note(1).unwrap().0.as_deref(), Some("b, later"));
}

#[test]
fn a_delete_hides_older_writes_and_a_later_write_brings_back_only_its_columns() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    let mut stream = Stream::default();
    a.exec("INSERT INTO notes(id, title, body, tag) VALUES (1, 't', 'b', 'x')");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    // An edit older than a concurrent delete is lost with the row.
    b.exec("UPDATE notes SET body = 'older edit' WHERE id = 1");
    std::thread::sleep(Duration::from_millis(5));
    a.exec("DELETE FROM notes WHERE id = 1");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    assert_eq!(a.note(1), None);
    assert_eq!(b.note(1), None);
    // An edit later than the delete brings the row back: its column, defaults elsewhere.
    b.exec("INSERT INTO notes(id, title) VALUES (1, 'again')");
    a.exec("INSERT INTO notes(id, title, body) VALUES (2, 'two', 'kept')");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    let back = Some((Some("again".into()), None, Some("none".into())));
    assert_eq!(a.note(1), back);
    assert_eq!(b.note(1), back);

    // A delete arriving after a newer edit of one column: the row lives on with that
    // column, the older columns back to their defaults.
    std::thread::sleep(Duration::from_millis(5));
    a.exec("DELETE FROM notes WHERE id = 2");
    stream.publish(&mut a);
    std::thread::sleep(Duration::from_millis(5));
    b.exec("UPDATE notes SET tag = 'newer' WHERE id = 2");
    stream.publish(&mut b);
    stream.deliver(&mut a);
    stream.deliver(&mut b);
    let survivor = Some((None, None, Some("newer".into())));
    assert_eq!(a.note(2), survivor);
    assert_eq!(b.note(2), survivor);
}

#[test]
fn concurrent_decrements_from_four_replicas_add_up() {
    let mut replicas: Vec<Replica> = (1..=4).map(Replica::new).collect();
    let mut stream = Stream::default();
    replicas[0].exec("INSERT INTO stock(sku, qty, name) VALUES ('apple', 0, 'Apple')");
    {
        let mut all: Vec<&mut Replica> = replicas.iter_mut().collect();
        sync_all(&mut stream, &mut all);
    }
    for round in 0..25 {
        for r in replicas.iter_mut() {
            for _ in 0..10 {
                r.exec("UPDATE stock SET qty = qty - 1 WHERE sku = 'apple'");
            }
            stream.publish(r);
        }
        // Half the rounds apply nothing in between: the decrements are truly concurrent.
        if round % 2 == 1 {
            for r in replicas.iter_mut() {
                stream.deliver(r);
            }
        }
    }
    let mut all: Vec<&mut Replica> = replicas.iter_mut().collect();
    sync_all(&mut stream, &mut all);
    for r in &replicas {
        assert_eq!(r.qty("apple"), Some(-1000));
    }
    // Redelivering everything changes nothing.
    let mut again = Replica::new(9);
    stream.deliver(&mut again);
    let mut doubled = Stream {
        frames: stream
            .frames
            .iter()
            .chain(&stream.frames)
            .cloned()
            .collect(),
    };
    let mut fresh = Replica::new(10);
    doubled.deliver(&mut fresh);
    assert_eq!(again.qty("apple"), Some(-1000));
    assert_eq!(fresh.qty("apple"), Some(-1000));
    doubled.frames.clear();
}

#[test]
fn a_counter_reset_by_delete_counts_from_its_new_insert() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    let mut stream = Stream::default();
    a.exec("INSERT INTO stock(sku, qty) VALUES ('pear', 10)");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    b.exec("UPDATE stock SET qty = qty + 5 WHERE sku = 'pear'");
    a.exec("UPDATE stock SET qty = qty - 3 WHERE sku = 'pear'");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    assert_eq!(a.qty("pear"), Some(12));
    assert_eq!(b.qty("pear"), Some(12));
    a.exec("DELETE FROM stock WHERE sku = 'pear'; INSERT INTO stock(sku, qty) VALUES ('pear', 1)");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    b.exec("UPDATE stock SET qty = qty + 1 WHERE sku = 'pear'");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    assert_eq!(a.qty("pear"), Some(2));
    assert_eq!(b.qty("pear"), Some(2));
}

#[test]
fn an_update_of_one_column_sends_fewer_bytes_than_a_row_image() {
    let wide = "CREATE TABLE wide(id INTEGER PRIMARY KEY, c1 TEXT, c2 TEXT, c3 TEXT, c4 TEXT, \
                c5 TEXT, c6 TEXT, c7 TEXT, c8 TEXT)";
    let bytes = |merge: MergeConfig| {
        let mut r = Replica::with(options(1, merge));
        r.exec(wide);
        let value = "x".repeat(40);
        r.exec(&format!(
            "INSERT INTO wide VALUES (1, '{value}1', '{value}2', '{value}3', '{value}4', \
             '{value}5', '{value}6', '{value}7', '{value}8')"
        ));
        let mut stream = Stream::default();
        stream.publish(&mut r);
        r.exec("UPDATE wide SET c3 = 'changed' WHERE id = 1");
        stream.publish(&mut r)
    };
    let row = bytes(MergeConfig::default());
    let column = bytes(MergeConfig::new(&["wide".into()], &[]).unwrap());
    assert!(column < row, "column {column} bytes, row {row} bytes");
}

#[test]
fn opening_with_another_merge_mode_than_the_database_has_is_refused() {
    let r = Replica::new(1);
    let path = r.path.clone();
    drop(r.store);
    let err = Store::open(
        Connection::open(&path).unwrap(),
        options(1, MergeConfig::default()),
    )
    .err()
    .expect("a row-merge config on a column-merge database");
    assert!(matches!(err, StoreError::Config(_)), "{err}");
    assert!(
        err.to_string().contains("\"notes\" merges by column"),
        "{err}"
    );
    let counters = MergeConfig::new(
        &["notes".into()],
        &["stock.qty".into(), "stock.name".into()],
    );
    let err = Store::open(
        Connection::open(&path).unwrap(),
        options(1, counters.unwrap()),
    )
    .err()
    .expect("other counters");
    assert!(err.to_string().contains("\"stock\""), "{err}");
    // The same configuration opens, and so do options that say nothing.
    Store::open(Connection::open(&path).unwrap(), options(1, merge())).expect("reopen");
    let unsaid = StoreOptions::new(NodeId::from_u128(1).unwrap());
    let store = Store::open(Connection::open(&path).unwrap(), unsaid).expect("reopen");
    let modes = store.merge_modes();
    assert_eq!(modes[0].0, "notes");
    assert!(modes[0].1.is_some());
    assert_eq!(
        modes[1].1.as_ref().unwrap().counters,
        vec!["qty".to_string()]
    );
}

#[test]
fn a_running_cluster_switches_to_column_merging_by_a_replicated_migration() {
    let row = || options(1, MergeConfig::default());
    let mut a = Replica::with(row());
    let mut b = Replica::with(options(2, MergeConfig::default()));
    let mut stream = Stream::default();
    a.exec("INSERT INTO notes(id, title, body) VALUES (1, 't', 'b');             INSERT INTO stock(sku, qty) VALUES ('kiwi', 7)");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    // b writes by row, not yet published when the switch is.
    b.exec("UPDATE notes SET body = 'b, by row' WHERE id = 1");
    let counters = harmonylite_core::column_merge::TableMerge {
        counters: vec!["qty".into()],
    };
    for (table, merge) in [("notes", Default::default()), ("stock", counters)] {
        a.store
            .publish_merge_switch(table, Some(&merge), now())
            .expect("publishing the switch");
    }
    assert!(a
        .store
        .publish_merge_switch("missing", None, now())
        .is_err());
    let bad = harmonylite_core::column_merge::TableMerge {
        counters: vec!["nope".into()],
    };
    let err = a
        .store
        .publish_merge_switch("stock", Some(&bad), now())
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    for r in [&a, &b] {
        let modes = r.store.merge_modes();
        assert!(modes.iter().all(|(_, m)| m.is_some()), "{modes:?}");
        assert_eq!(r.note(1).unwrap().1.as_deref(), Some("b, by row"));
        assert_eq!(r.qty("kiwi"), Some(7));
    }
    // From now on concurrent edits of different columns both survive, counters add up.
    a.exec("UPDATE notes SET title = 'a' WHERE id = 1; UPDATE stock SET qty = qty - 1");
    b.exec("UPDATE notes SET body = 'b' WHERE id = 1; UPDATE stock SET qty = qty - 2");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    for r in [&a, &b] {
        assert_eq!(
            r.note(1),
            Some((Some("a".into()), Some("b".into()), Some("none".into())))
        );
        assert_eq!((a.qty("kiwi"), b.qty("kiwi")), (Some(4), Some(4)));
    }
    // Reopening with the old options is refused; the store's own options followed the
    // switch, so reopening with them (as a host does in place) works.
    let Replica {
        _dir, path, store, ..
    } = a;
    let own = store.options().clone();
    assert!(own
        .merge
        .as_ref()
        .unwrap()
        .table("stock")
        .unwrap()
        .is_counter("qty"));
    drop(store);
    let err = Store::open(Connection::open(&path).unwrap(), row())
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
    Store::open(Connection::open(&path).unwrap(), own).expect("the store's own options");
}

#[test]
fn a_replica_merging_by_row_parks_column_changes() {
    let mut a = Replica::new(1);
    let mut b = Replica::with(options(2, MergeConfig::default()));
    let mut stream = Stream::default();
    a.exec("INSERT INTO notes(id, title) VALUES (1, 't')");
    stream.publish(&mut a);
    let report = stream.deliver(&mut b);
    assert_eq!(report.parked.len(), 1, "{report:?}");
    assert_eq!(report.parked[0].kind, ParkReason::MergeMode);
    assert!(
        report.parked[0].reason.contains("merges by column"),
        "{:?}",
        report.parked
    );
    assert_eq!(b.note(1), None);
}

#[test]
fn capture_works_for_a_python_app_under_untrusted_schema() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    let mut stream = Stream::default();
    a.exec("INSERT INTO stock(sku, qty) VALUES ('fig', 5); INSERT INTO notes(id, title, body) VALUES (1, 't', 'b')");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    python_writes(
        &b.path,
        "UPDATE stock SET qty = qty - 2 WHERE sku = 'fig'; UPDATE notes SET body = 'py' WHERE id = 1",
    );
    a.exec("UPDATE stock SET qty = qty - 1 WHERE sku = 'fig'; UPDATE notes SET title = 'rs' WHERE id = 1");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    for r in [&a, &b] {
        assert_eq!(r.qty("fig"), Some(2));
        assert_eq!(
            r.note(1),
            Some((Some("rs".into()), Some("py".into()), Some("none".into())))
        );
    }
}

/// Runs `sql` from a Python `sqlite3` application with `trusted_schema=OFF`.
fn python_writes(path: &Path, sql: &str) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=5)\n\
             c.execute('PRAGMA trusted_schema=OFF')\n\
             c.executescript(sys.argv[2])\n\
             c.commit()",
        ])
        .arg(path)
        .arg(sql)
        .output()
        .unwrap_or_else(|e| panic!("this test needs python3 (with sqlite3) on PATH: {e}"));
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_catch_up_merges_column_versions_and_counters_from_a_snapshot() {
    use harmonylite_core::sqlite::snapshot::{strip_node_local, vacuum_into};
    use harmonylite_core::sqlite::CatchUp;
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    let mut stream = Stream::default();
    a.exec(
        "INSERT INTO notes(id, title, body) VALUES (1, 't', 'b'); \
            INSERT INTO stock(sku, qty) VALUES ('plum', 100)",
    );
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    // b is cut off; both keep writing.
    a.exec("UPDATE notes SET title = 'from a' WHERE id = 1; UPDATE stock SET qty = qty - 10");
    stream.publish(&mut a);
    b.exec("UPDATE notes SET body = 'from b' WHERE id = 1; UPDATE stock SET qty = qty - 1");
    // b catches up from a snapshot of a (as after a retention loss), not from the stream.
    let snapshot = a._dir.path().join("snapshot.db");
    vacuum_into(a.store.connection(), snapshot.to_str().unwrap()).unwrap();
    let covered = strip_node_local(&mut Connection::open(&snapshot).unwrap()).unwrap();
    let mut job = CatchUp::open(&snapshot, covered).unwrap();
    for _ in 0..100 {
        if b.store.catch_up_step(&mut job, now(), 1).unwrap().finished {
            break;
        }
    }
    assert_eq!(b.store.cursor(), covered);
    // b's own change (drained by the catch-up) reaches a through the stream.
    stream.publish(&mut b);
    stream.deliver(&mut a);
    for r in [&a, &b] {
        assert_eq!(
            r.note(1),
            Some((
                Some("from a".into()),
                Some("from b".into()),
                Some("none".into())
            ))
        );
        assert_eq!(r.qty("plum"), Some(89));
    }
    // Merging the same snapshot again changes nothing.
    let mut job = CatchUp::open(&snapshot, covered).unwrap();
    while !b.store.catch_up_step(&mut job, now(), 10).unwrap().finished {}
    assert_eq!(b.qty("plum"), Some(89));
}

#[test]
fn a_node_restored_from_its_own_older_snapshot_keeps_counting_from_its_published_totals() {
    use harmonylite_core::sqlite::snapshot::{
        install_node_local, strip_node_local, vacuum_into, NodeLocal,
    };
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    let mut stream = Stream::default();
    a.exec("INSERT INTO stock(sku, qty) VALUES ('fig', 0)");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    a.exec("UPDATE stock SET qty = qty - 3");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    // A snapshot of a (covering its 3 decrements), then 5 more decrements published.
    let snapshot = a._dir.path().join("snapshot.db");
    vacuum_into(a.store.connection(), snapshot.to_str().unwrap()).unwrap();
    let covered = strip_node_local(&mut Connection::open(&snapshot).unwrap()).unwrap();
    for _ in 0..5 {
        a.exec("UPDATE stock SET qty = qty - 1");
    }
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    assert_eq!(b.qty("fig"), Some(-8));
    // a loses its file and restores the older snapshot; its own later messages are applied
    // from the stream, not skipped, so its totals are back where it published them.
    let Replica {
        _dir,
        path,
        store,
        app,
        ..
    } = a;
    drop((store, app));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    std::fs::copy(&snapshot, &path).unwrap();
    let mut conn = Connection::open(&path).unwrap();
    let local = NodeLocal {
        node_id: NodeId::from_u128(1).unwrap(),
        incarnation: 77,
        next_batch: None,
        next_outbox_id: None,
        clock: None,
    };
    let replay_until = StreamSeq::new(stream.frames.len() as u64);
    install_node_local(&mut conn, &local, covered, replay_until).unwrap();
    drop(conn);
    let app = Connection::open(&path).unwrap();
    let store = Store::open(Connection::open(&path).unwrap(), options(1, merge())).unwrap();
    let mut a = Replica {
        _dir,
        path,
        store,
        app,
    };
    stream.deliver(&mut a);
    assert_eq!(a.qty("fig"), Some(-8));
    a.exec("UPDATE stock SET qty = qty - 1");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    assert_eq!((a.qty("fig"), b.qty("fig")), (Some(-9), Some(-9)));
}

#[test]
fn a_decrement_the_delete_had_not_seen_survives_and_keeps_the_row() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    let mut stream = Stream::default();
    a.exec("INSERT INTO stock(sku, qty, name) VALUES ('x', 3, 'X')");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    b.exec("DELETE FROM stock WHERE sku = 'x'");
    std::thread::sleep(Duration::from_millis(5));
    a.exec("UPDATE stock SET qty = qty - 1 WHERE sku = 'x'");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    // The delete removed the base it saw (3); a's decrement, unseen by it, keeps the row,
    // whose other columns are back to their defaults.
    for r in [&a, &b] {
        let row: (i64, Option<String>) = r
            .app
            .query_row("SELECT qty, name FROM stock WHERE sku = 'x'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("the row lives on");
        assert_eq!(row, (-1, None));
    }
    // A delete that saw the decrement removes the row for good.
    a.exec("DELETE FROM stock WHERE sku = 'x'");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    assert_eq!((a.qty("x"), b.qty("x")), (None, None));
}

#[test]
fn a_counter_whose_base_a_delete_hid_reads_its_default() {
    let schema = "CREATE TABLE tally(id INTEGER PRIMARY KEY, n INTEGER NOT NULL DEFAULT 10, \
                  label TEXT)";
    let merge = || MergeConfig::new(&[], &["tally.n".into()]).unwrap();
    let mut a = Replica::with(options(1, merge()));
    let mut b = Replica::with(options(2, merge()));
    a.exec(schema);
    b.exec(schema);
    let mut stream = Stream::default();
    a.exec("INSERT INTO tally(id, n, label) VALUES (1, 3, 'a')");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    b.exec("DELETE FROM tally WHERE id = 1");
    std::thread::sleep(Duration::from_millis(5));
    a.exec("UPDATE tally SET label = 'later' WHERE id = 1");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    for r in [&a, &b] {
        let row: (i64, String) = r
            .app
            .query_row("SELECT n, label FROM tally WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(row, (10, "later".into()));
    }
}

#[test]
fn a_counter_set_to_a_real_is_kept_as_the_integer_every_replica_has() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    let mut stream = Stream::default();
    a.exec("INSERT INTO stock(sku, qty) VALUES ('r', 5)");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    a.exec("UPDATE stock SET qty = qty + 0.5 WHERE sku = 'r'");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    let kind = |r: &Replica| -> (String, i64) {
        r.app
            .query_row(
                "SELECT typeof(qty), qty FROM stock WHERE sku = 'r'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    assert_eq!(kind(&a), ("integer".into(), 5));
    assert_eq!(kind(&b), ("integer".into(), 5));
}

#[test]
fn a_replicated_migration_drops_a_column_of_a_column_merge_table() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    let mut stream = Stream::default();
    a.exec("INSERT INTO notes(id, title, body) VALUES (1, 't', 'b')");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    // The application's own DROP COLUMN fails: the capture triggers name every column.
    let err = a
        .app
        .execute_batch("ALTER TABLE notes DROP COLUMN tag")
        .unwrap_err();
    assert!(err.to_string().contains("trigger"), "{err}");
    a.store
        .publish_migration("ALTER TABLE notes DROP COLUMN tag", true, now())
        .expect("a migration may drop it");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    for r in [&a, &b] {
        let columns: i64 = r
            .app
            .query_row("SELECT count(*) FROM pragma_table_info('notes')", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(columns, 3, "id, title, body");
    }
    // Capture works on the table as it is now.
    a.exec("UPDATE notes SET title = 'a' WHERE id = 1");
    b.exec("UPDATE notes SET body = 'b2' WHERE id = 1");
    sync_all(&mut stream, &mut [&mut a, &mut b]);
    for r in [&a, &b] {
        let row: (String, String) = r
            .app
            .query_row("SELECT title, body FROM notes WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(row, ("a".into(), "b2".into()));
    }
}
