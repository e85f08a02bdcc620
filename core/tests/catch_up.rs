//! Catching up in place (`sqlite::catch_up`): a replica that missed part of the stream
//! merges a snapshot into its live database while its application keeps writing, and ends
//! where LWW says it must.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::{ntp64_from_unix, NodeId, NTP64};
use harmonylite_core::report::Inbound;
use harmonylite_core::sqlite::snapshot::{strip_node_local, vacuum_into};
use harmonylite_core::sqlite::{CatchUp, CatchUpReport, Store, StoreOptions};
use rusqlite::Connection;

const SCHEMA: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);
                      CREATE TABLE tags(a TEXT, b INTEGER, label TEXT, PRIMARY KEY(a, b));";

fn now() -> NTP64 {
    ntp64_from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
}

fn open(path: &Path, node: u128) -> Store {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    Store::open(conn, StoreOptions::new(NodeId::from_u128(node).unwrap())).unwrap()
}

fn app(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch("PRAGMA trusted_schema = OFF").unwrap();
    conn
}

/// Drains `store` and returns its outbox frames as the next stream messages.
fn publish(store: &mut Store, stream: &mut Vec<Inbound>) {
    store.drain().unwrap();
    let frames = store.outbox_after(0, 1000).unwrap();
    let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
    for f in frames {
        let seq = StreamSeq::new(stream.len() as u64 + 1);
        stream.push(Inbound {
            seq,
            frame: f.frame,
            subject: None,
        });
    }
    store.outbox_remove(&ids).unwrap();
}

fn body(path: &Path, id: i64) -> Option<String> {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT body FROM notes WHERE id = ?1", [id], |r| r.get(0))
        .ok()
}

fn count(path: &Path, table: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn snapshot_of(store: &Store, dir: &Path) -> (std::path::PathBuf, StreamSeq) {
    let path = dir.join("snapshot.db");
    let _ = std::fs::remove_file(&path);
    vacuum_into(store.connection(), path.to_str().unwrap()).unwrap();
    let mut copy = Connection::open(&path).unwrap();
    let covered = strip_node_local(&mut copy).unwrap();
    (path, covered)
}

fn catch_up(store: &mut Store, path: &Path, covered: StreamSeq, rows: usize) -> CatchUpReport {
    let mut job = CatchUp::open(path, covered).unwrap();
    for _ in 0..10_000 {
        let report = store.catch_up_step(&mut job, now(), rows).unwrap();
        if report.finished {
            return report;
        }
    }
    panic!("the catch-up never finished");
}

#[test]
fn a_replica_behind_merges_the_snapshot_and_keeps_its_own_newer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let mut a = open(&a_path, 1);
    let mut b = open(&b_path, 2);
    let (a_app, b_app) = (app(&a_path), app(&b_path));
    let mut stream = Vec::new();

    // Both see the first rows.
    for id in 1..=10 {
        a_app
            .execute("INSERT INTO notes VALUES (?1, 'a1')", [id])
            .unwrap();
    }
    a_app
        .execute_batch("INSERT INTO tags VALUES ('x', 1, 'one'), ('x.y z', 2, 'two')")
        .unwrap();
    publish(&mut a, &mut stream);
    b.receive(now(), &stream).unwrap();
    a.receive(now(), &stream).unwrap();

    // B writes row 3 before A does (A's later write must win), A updates, deletes and
    // inserts: the stream loses these messages for B.
    b_app
        .execute("UPDATE notes SET body = 'b-early' WHERE id = 3", [])
        .unwrap();
    publish(&mut b, &mut Vec::new());
    std::thread::sleep(Duration::from_millis(5));
    a_app
        .execute_batch(
            "UPDATE notes SET body = 'a2' WHERE id IN (1, 3);
             DELETE FROM notes WHERE id = 2;
             DELETE FROM tags WHERE a = 'x' AND b = 1;",
        )
        .unwrap();
    for id in 11..=30 {
        a_app
            .execute("INSERT INTO notes VALUES (?1, 'a-new')", [id])
            .unwrap();
    }
    publish(&mut a, &mut stream);
    a.receive(now(), &stream).unwrap();
    let (snapshot, covered) = snapshot_of(&a, dir.path());
    assert_eq!(covered, StreamSeq::new(stream.len() as u64));

    // After the snapshot: B's own newer write to row 1, one captured before the catch-up
    // and one the application makes without the sidecar capturing it first.
    std::thread::sleep(Duration::from_millis(5));
    b_app
        .execute("UPDATE notes SET body = 'b-late' WHERE id = 1", [])
        .unwrap();
    b.drain().unwrap();
    b_app
        .execute("INSERT INTO notes VALUES (100, 'b-uncaptured')", [])
        .unwrap();
    b_app
        .execute("UPDATE notes SET body = 'b-uncaptured' WHERE id = 5", [])
        .unwrap();

    let report = catch_up(&mut b, &snapshot, covered, 7);
    assert!(report.finished);
    assert_eq!(b.cursor(), covered);
    assert_eq!(report.rows_total, 32, "30 notes + 2 tags versions");
    assert_eq!(report.rows_read, 32);
    assert!(report.local_rows_captured >= 2, "{report:?}");

    assert_eq!(
        body(&b_path, 1).as_deref(),
        Some("b-late"),
        "B's later write wins"
    );
    assert_eq!(body(&b_path, 2), None, "A's delete reaches B");
    assert_eq!(
        body(&b_path, 3).as_deref(),
        Some("a2"),
        "A's later write wins"
    );
    assert_eq!(body(&b_path, 5).as_deref(), Some("b-uncaptured"));
    assert_eq!(body(&b_path, 30).as_deref(), Some("a-new"));
    assert_eq!(body(&b_path, 100).as_deref(), Some("b-uncaptured"));
    assert_eq!(count(&b_path, "notes"), 30, "29 of A's rows + B's own");
    assert_eq!(count(&b_path, "tags"), 1);

    // B's own writes are in its outbox, to publish: merged rows are not.
    let frames = b.outbox_after(0, 100).unwrap();
    let rows: u64 = b.outbox_depth().unwrap().1;
    assert!(!frames.is_empty());
    assert_eq!(
        rows, 3,
        "B-late, row 100, row 5: nothing merged is republished"
    );

    // A second catch-up from the same snapshot changes nothing.
    let again = catch_up(&mut b, &snapshot, covered, 1000);
    assert_eq!(again.remote_won, 0, "{again:?}");
    assert_eq!(body(&b_path, 1).as_deref(), Some("b-late"));
}

#[test]
fn a_failed_step_changes_nothing_and_the_catch_up_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let mut a = open(&a_path, 1);
    let mut b = {
        let conn = Connection::open(&b_path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let mut options = StoreOptions::new(NodeId::from_u128(2).unwrap());
        options.busy_timeout = Duration::from_millis(100);
        Store::open(conn, options).unwrap()
    };
    let a_app = app(&a_path);
    for id in 1..=50 {
        a_app
            .execute("INSERT INTO notes VALUES (?1, 'a')", [id])
            .unwrap();
    }
    let mut stream = Vec::new();
    publish(&mut a, &mut stream);
    a.receive(now(), &stream).unwrap();
    let (snapshot, covered) = snapshot_of(&a, dir.path());

    let mut job = CatchUp::open(&snapshot, covered).unwrap();
    b.catch_up_step(&mut job, now(), 10).unwrap();
    b.catch_up_step(&mut job, now(), 10).unwrap();
    // The application holds the write lock past the store's busy timeout: the step fails
    // and changes nothing.
    let before = job.report().clone();
    let blocker = app(&b_path);
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let failed = b.catch_up_step(&mut job, now(), 10);
    assert!(
        matches!(&failed, Err(harmonylite_core::sqlite::CatchUpError::Store(e)) if e.is_busy()),
        "{:?}",
        failed.err()
    );
    assert_eq!(job.report(), &before);
    blocker.execute_batch("ROLLBACK").unwrap();
    let mut finished = None;
    for _ in 0..100 {
        let report = b.catch_up_step(&mut job, now(), 10).unwrap();
        if report.finished {
            finished = Some(report);
            break;
        }
    }
    let report = finished.expect("finished");
    assert_eq!(report.rows_read, 50);
    assert_eq!(report.remote_won, 50);
    assert_eq!(count(&b_path, "notes"), 50);
    assert_eq!(b.cursor(), covered);
}

#[test]
fn a_snapshot_whose_cursor_disagrees_with_its_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a_path = dir.path().join("a.db");
    let a = open(&a_path, 1);
    let (snapshot, covered) = snapshot_of(&a, dir.path());
    assert!(CatchUp::open(&snapshot, StreamSeq::new(covered.get() + 5)).is_err());
}
