//! Schema changes while running, on real SQLite files: the application's DDL followed at
//! runtime (new, altered, renamed, re-created and dropped tables) under an application
//! connection with `trusted_schema=OFF`; rolling changes (parked, then applied once the
//! local schema has them); replicated migrations (exactly once, in stream order, blocked
//! behind a failed one, destructive only with the flag, kept by snapshots).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harmonylite_core::capture::names;
use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::{ntp64_from_unix, NodeId, NTP64};
use harmonylite_core::migration::MigrationError;
use harmonylite_core::report::{Inbound, ReceiveReport};
use harmonylite_core::sqlite::{snapshot, PublishMigrationError, Store, StoreOptions};
use harmonylite_core::value::Value;
use rusqlite::Connection;
use tempfile::TempDir;

fn now() -> NTP64 {
    ntp64_from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
}

/// A replica: its file, the store (the host's connection) and an application connection
/// with `trusted_schema=OFF`, as a cautious application would run.
struct Replica {
    _dir: TempDir,
    path: PathBuf,
    store: Store,
    app: Connection,
}

impl Replica {
    fn new(id: u128, schema: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let app = Connection::open(&path).unwrap();
        app.busy_timeout(Duration::from_secs(5)).unwrap();
        app.execute_batch("PRAGMA trusted_schema=OFF").unwrap();
        app.execute_batch(schema).expect("creating the app schema");
        let store = Store::open(
            Connection::open(&path).unwrap(),
            StoreOptions::new(NodeId::from_u128(id).unwrap()),
        )
        .expect("opening the store");
        Replica {
            _dir: dir,
            path,
            store,
            app,
        }
    }

    /// Runs application SQL; it must succeed.
    fn sql(&self, sql: &str) {
        self.app
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("application SQL {sql:?} failed: {e}"));
    }

    fn rows(&self, sql: &str) -> Vec<Vec<Value>> {
        rows(&self.app, sql)
    }

    fn parked_by_table(&self) -> Vec<(String, u64)> {
        self.store.parked_by_table().unwrap()
    }
}

fn rows(conn: &Connection, sql: &str) -> Vec<Vec<Value>> {
    // Reading the schema first refreshes this connection's cached copy, so `SELECT *` sees
    // columns another connection added (it is expanded when prepared).
    let _: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let width = stmt.column_count();
    stmt.query_map([], |r| (0..width).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn int(v: i64) -> Value {
    Value::Integer(v)
}

fn text(v: &str) -> Value {
    Value::Text(v.into())
}

/// JetStream in miniature: position `i` is stream sequence `i + 1`.
#[derive(Default)]
struct Stream {
    frames: Vec<Vec<u8>>,
}

impl Stream {
    /// Drains `from` and appends its outbox to the stream.
    fn publish(&mut self, from: &mut Replica) {
        from.store.drain().expect("drain");
        let frames = from.store.outbox_after(0, 10_000).unwrap();
        let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
        self.frames.extend(frames.into_iter().map(|f| f.frame));
        from.store.outbox_remove(&ids).unwrap();
    }

    /// Delivers everything after `to`'s cursor in one receive.
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

#[test]
fn ddl_at_runtime_never_breaks_the_applications_writes_and_capture_follows_it() {
    let mut a = Replica::new(1, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    let mut b = Replica::new(2, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    let mut stream = Stream::default();
    a.sql("INSERT INTO t VALUES (1, 'one')");
    stream.publish(&mut a);
    stream.deliver(&mut b);

    // Every kind of change, each followed at once by writes, with no drain in between:
    // the triggers installed for the old shape must not make any of them fail.
    for (ddl, write) in [
        (
            "ALTER TABLE t ADD COLUMN c TEXT DEFAULT 'dflt'",
            "INSERT INTO t(id, v, c) VALUES (2, 'two', 'c2'); UPDATE t SET c = 'c1' WHERE id = 1",
        ),
        (
            "CREATE INDEX t_c ON t(c)",
            "INSERT INTO t VALUES (3, 'three', 'c3')",
        ),
        (
            "ALTER TABLE t RENAME COLUMN v TO label",
            "INSERT INTO t(id, label, c) VALUES (4, 'four', 'c4')",
        ),
        (
            "ALTER TABLE t RENAME COLUMN id TO key",
            "UPDATE t SET label = 'ONE' WHERE key = 1; DELETE FROM t WHERE key = 3",
        ),
        (
            "ALTER TABLE t ADD COLUMN tmp INTEGER; ALTER TABLE t DROP COLUMN tmp",
            "INSERT INTO t(key, label, c) VALUES (5, 'five', 'c5')",
        ),
    ] {
        a.sql(ddl);
        a.sql(write);
        b.sql(ddl);
    }
    stream.publish(&mut a);
    let received = stream.deliver(&mut b);
    assert!(received.parked.is_empty(), "{:?}", received.parked);
    let want = vec![
        vec![int(1), text("ONE"), text("c1")],
        vec![int(2), text("two"), text("c2")],
        vec![int(4), text("four"), text("c4")],
        vec![int(5), text("five"), text("c5")],
    ];
    assert_eq!(a.rows("SELECT key, label, c FROM t ORDER BY key"), want);
    assert_eq!(b.rows("SELECT key, label, c FROM t ORDER BY key"), want);
    assert_eq!(
        a.store.schema_status().unwrap().fingerprint,
        b.store.schema_status().unwrap().fingerprint,
        "the same DDL gives the same fingerprint"
    );

    // A table renamed between drains keeps its pending changes.
    a.sql("INSERT INTO t(key, label) VALUES (6, 'six'); ALTER TABLE t RENAME TO items");
    b.sql("ALTER TABLE t RENAME TO items");
    stream.publish(&mut a);
    assert_eq!(
        a.store.install_report().renamed,
        vec![("t".into(), "items".into())]
    );
    stream.deliver(&mut b);
    assert_eq!(
        b.rows("SELECT key, label FROM items WHERE key = 6"),
        vec![vec![int(6), text("six")]]
    );
    assert_eq!(a.store.replicated_tables(), vec!["items".to_string()]);
}

#[test]
fn a_table_created_at_runtime_is_captured_with_the_rows_written_before_its_triggers() {
    let mut a = Replica::new(1, "CREATE TABLE t(id INTEGER PRIMARY KEY);");
    let mut b = Replica::new(2, "CREATE TABLE t(id INTEGER PRIMARY KEY);");
    let mut c = Replica::new(3, "CREATE TABLE t(id INTEGER PRIMARY KEY);");
    let mut stream = Stream::default();
    let ddl = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)";
    a.sql(ddl);
    b.sql(ddl);
    // Written before any drain: no trigger existed yet.
    a.sql("INSERT INTO notes VALUES (1, 'early'), (2, 'also early')");
    stream.publish(&mut a);
    assert_eq!(a.store.install_report().seeded, vec!["notes".to_string()]);
    a.sql("UPDATE notes SET body = 'later' WHERE id = 2");
    stream.publish(&mut a);

    let at_b = stream.deliver(&mut b);
    assert!(at_b.parked.is_empty());
    let want = vec![vec![int(1), text("early")], vec![int(2), text("later")]];
    assert_eq!(b.rows("SELECT * FROM notes ORDER BY id"), want);

    // C lacks the table: both batches park, counted under the table.
    let at_c = stream.deliver(&mut c);
    assert_eq!(at_c.parked.len(), 2);
    assert_eq!(c.parked_by_table(), vec![("notes".to_string(), 2)]);
    // C's application creates it: the next drain sees the schema change, which is the
    // engine's cue to retry parked messages.
    c.sql(ddl);
    assert!(c.store.drain().unwrap().schema_changed);
    assert!(!c.store.drain().unwrap().schema_changed);
    let retry = c.store.retry_parked(now()).unwrap();
    assert_eq!(retry.unparked, 2);
    assert_eq!(c.rows("SELECT * FROM notes ORDER BY id"), want);
    assert!(c.parked_by_table().is_empty());
    // Applied changes are not captured back.
    assert_eq!(c.store.log_depth().unwrap(), 0);
}

#[test]
fn a_change_without_a_column_the_receiver_has_leaves_that_column_alone() {
    let mut old = Replica::new(1, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    let mut new = Replica::new(
        2,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, extra TEXT DEFAULT 'dflt');",
    );
    let mut stream = Stream::default();
    new.sql("INSERT INTO t VALUES (1, 'a', 'local extra')");
    stream.publish(&mut new);
    old.sql("INSERT INTO t VALUES (2, 'b')");
    stream.publish(&mut old);
    old.store.drain().unwrap();
    // Stream: [new's row 1 (parks at old), old's row 2].
    let at_old = stream.deliver(&mut old);
    assert_eq!(at_old.parked.len(), 1);
    assert_eq!(at_old.parked[0].kind.as_str(), "unknown_column");
    let at_new = stream.deliver(&mut new);
    assert!(at_new.parked.is_empty());
    old.sql("UPDATE t SET v = 'a2' WHERE id = 1");
    // old has no row 1 yet (parked): its update touches nothing. Write row 2 instead.
    old.sql("UPDATE t SET v = 'b2' WHERE id = 2");
    stream.publish(&mut old);
    stream.deliver(&mut new);
    assert_eq!(
        new.rows("SELECT * FROM t ORDER BY id"),
        vec![
            vec![int(1), text("a"), text("local extra")],
            vec![int(2), text("b2"), text("dflt")],
        ],
        "rows from a node without `extra` keep the local value or the default"
    );
    // The old node adds the column: the parked change applies.
    old.sql("ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'dflt'");
    assert!(old.store.drain().unwrap().schema_changed);
    assert_eq!(old.store.retry_parked(now()).unwrap().unparked, 1);
    assert_eq!(
        old.rows("SELECT * FROM t ORDER BY id"),
        new.rows("SELECT * FROM t ORDER BY id")
    );
}

#[test]
fn a_dropped_tables_state_is_cleaned_and_its_in_flight_changes_park() {
    let schema =
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE keep(id INTEGER PRIMARY KEY);";
    let mut a = Replica::new(1, schema);
    let mut b = Replica::new(2, schema);
    let mut stream = Stream::default();
    a.sql("INSERT INTO t VALUES (1, 'x'), (2, 'y'); INSERT INTO keep VALUES (1)");
    stream.publish(&mut a);
    // B drops the table while A's changes are in flight, with its own pending writes.
    b.sql("INSERT INTO t VALUES (9, 'local'); DROP TABLE t;");
    let received = stream.deliver(&mut b);
    assert_eq!(received.parked.len(), 1);
    assert_eq!(b.parked_by_table(), vec![("t".to_string(), 1)]);
    assert_eq!(b.store.install_report().removed, vec!["t".to_string()]);
    let internal: i64 = b
        .app
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE tbl_name = 't' OR name GLOB '__hl_v*'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        internal, 1,
        "no trigger or version table of t is left, keep's remains"
    );
    assert_eq!(
        b.rows(&format!("SELECT name FROM {}", names::TABLES)),
        vec![vec![text("keep")]]
    );
    assert_eq!(b.store.log_depth().unwrap(), 0);
    let check: String = b
        .app
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // A batch is a transaction: the row of `keep` written with t's rows waits with them.
    assert!(b.rows("SELECT id FROM keep").is_empty());
    // More changes for t keep arriving: parked too; other batches replicate.
    a.sql("UPDATE t SET v = 'z' WHERE id = 1");
    stream.publish(&mut a);
    a.sql("INSERT INTO keep VALUES (2)");
    stream.publish(&mut a);
    let received = stream.deliver(&mut b);
    assert_eq!(received.parked.len(), 1);
    assert_eq!(
        b.rows("SELECT id FROM keep ORDER BY id"),
        vec![vec![int(2)]]
    );
    assert_eq!(b.parked_by_table(), vec![("t".to_string(), 2)]);
    // Re-creating the table (what a node that dropped it by mistake does) applies them all.
    b.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v)");
    assert!(b.store.drain().unwrap().schema_changed);
    assert_eq!(b.store.retry_parked(now()).unwrap().unparked, 2);
    assert_eq!(
        b.rows("SELECT * FROM t ORDER BY id"),
        vec![vec![int(1), text("z")], vec![int(2), text("y")]]
    );
    assert_eq!(
        b.rows("SELECT id FROM keep ORDER BY id"),
        vec![vec![int(1)], vec![int(2)]]
    );
}

fn publish_migration(r: &mut Replica, sql: &str, destructive: bool) {
    r.store
        .publish_migration(sql, destructive, now())
        .unwrap_or_else(|e| panic!("publishing {sql:?}: {e}"));
}

#[test]
fn migrations_apply_once_in_stream_order_before_the_data_that_needs_them() {
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);";
    let mut a = Replica::new(1, schema);
    let mut b = Replica::new(2, schema);
    let mut c = Replica::new(3, schema);
    let mut stream = Stream::default();

    publish_migration(
        &mut a,
        "ALTER TABLE t ADD COLUMN c TEXT; CREATE TABLE tags(id TEXT PRIMARY KEY, n INTEGER);",
        false,
    );
    stream.publish(&mut a);
    // The origin applies its own migration when it comes back from the stream.
    let at_a = stream.deliver(&mut a);
    assert_eq!(at_a.migrations, 1);
    assert!(at_a.drained.schema_changed);
    // Naming the columns makes SQLite notice its cached schema is stale (a positional
    // INSERT on a connection that has not read since another connection's DDL is checked
    // against the old column count: SQLite's behaviour for any schema change).
    a.sql("INSERT INTO t(id, v, c) VALUES (1, 'v', 'c'); INSERT INTO tags VALUES ('x', 1)");
    stream.publish(&mut a);

    // B receives migration and data in one transaction: the data applies after it.
    let at_b = stream.deliver(&mut b);
    assert_eq!(at_b.migrations, 1);
    assert!(at_b.parked.is_empty(), "{:?}", at_b.parked);
    assert_eq!(
        b.rows("SELECT * FROM t"),
        vec![vec![int(1), text("v"), text("c")]]
    );
    assert_eq!(b.rows("SELECT * FROM tags"), vec![vec![text("x"), int(1)]]);
    // Migration DDL and rows it creates are not captured as local writes.
    assert_eq!(b.store.log_depth().unwrap(), 0);
    let drained = b.store.drain().unwrap();
    assert_eq!(drained.rows, 0);

    // A duplicate delivery (a republished frame) changes nothing.
    let first = stream.frames[0].clone();
    stream.frames.push(first);
    let again = stream.deliver(&mut b);
    assert_eq!(again.migrations, 0);
    assert!(again.parked.is_empty());

    for r in [&a, &b] {
        let status = r.store.schema_status().unwrap();
        assert_eq!(status.migration_version, 1);
        assert_eq!(status.parked_migrations, 0);
    }
    assert_eq!(
        a.store.schema_status().unwrap().fingerprint,
        b.store.schema_status().unwrap().fingerprint
    );

    // C's application already added the column by hand: the migration fails there, parks,
    // and the next migration waits behind it.
    c.sql("ALTER TABLE t ADD COLUMN c TEXT");
    publish_migration(&mut b, "CREATE INDEX tags_n ON tags(n)", false);
    stream.publish(&mut b);
    let at_c = stream.deliver(&mut c);
    let kinds: Vec<&str> = at_c.parked.iter().map(|p| p.kind.as_str()).collect();
    // Stream: [migration 1, data, migration 1 again, migration 2].
    assert_eq!(
        kinds,
        vec!["migration", "unknown_table", "migration", "migration"],
        "{:?}",
        at_c.parked
    );
    assert!(
        at_c.parked[0].reason.contains("duplicate column"),
        "{}",
        at_c.parked[0].reason
    );
    assert!(at_c.parked[3].reason.contains("waiting for the migration"));
    assert_eq!(c.store.schema_status().unwrap().parked_migrations, 3);
    assert_eq!(c.store.schema_status().unwrap().migration_version, 0);
    // The operator removes the hand-made column; the retry applies everything in order.
    c.sql("ALTER TABLE t DROP COLUMN c");
    c.store.drain().unwrap();
    let retry = c.store.retry_parked(now()).unwrap();
    assert_eq!(retry.migrations, 2, "{:?}", retry.parked);
    assert!(retry.parked.is_empty(), "{:?}", retry.parked);
    assert_eq!(
        retry.unparked, 4,
        "the duplicate is unparked as already applied"
    );
    let versions: Vec<(u64, String)> = c
        .store
        .migrations()
        .unwrap()
        .into_iter()
        .map(|m| (m.version, m.sql))
        .collect();
    assert_eq!(
        stream.deliver(&mut b).migrations,
        1,
        "B applies its own migration"
    );
    let at_b: Vec<(u64, String)> = b
        .store
        .migrations()
        .unwrap()
        .into_iter()
        .map(|m| (m.version, m.sql))
        .collect();
    assert_eq!(
        versions, at_b,
        "the same migrations under the same versions"
    );
    assert_eq!(c.rows("SELECT * FROM tags"), vec![vec![text("x"), int(1)]]);
    assert_eq!(
        c.store.schema_status().unwrap().fingerprint,
        b.store.schema_status().unwrap().fingerprint
    );
}

#[test]
fn migrations_are_checked_before_publishing() {
    let mut a = Replica::new(1, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    for (sql, allow) in [
        ("DROP TABLE t", false),
        ("ALTER TABLE t DROP COLUMN v", false),
        ("BEGIN; ALTER TABLE t ADD c; COMMIT", true),
        ("ALTER TABLE missing ADD c", true),
        ("", false),
    ] {
        match a.store.publish_migration(sql, allow, now()) {
            Err(PublishMigrationError::Refused(e)) => {
                if sql == "ALTER TABLE missing ADD c" {
                    assert!(matches!(e, MigrationError::Invalid(_)), "{e}");
                    assert!(e.to_string().contains("no such table"), "{e}");
                }
            }
            other => panic!("{sql:?} was not refused: {other:?}"),
        }
    }
    assert!(
        a.store.outbox_after(0, 10).unwrap().is_empty(),
        "nothing published"
    );
    assert_eq!(
        a.rows("SELECT name FROM pragma_table_info('t') ORDER BY cid"),
        vec![vec![text("id")], vec![text("v")]],
        "the dry run left the schema alone"
    );
    let published = a
        .store
        .publish_migration("DROP TABLE t", true, now())
        .unwrap();
    assert!(published.destructive);
    assert_eq!(a.store.outbox_after(0, 10).unwrap().len(), 1);
    assert!(
        a.store.drain().unwrap().outbox_grew,
        "the engine is told to publish it"
    );
}

#[test]
fn a_migration_published_by_another_process_is_picked_up_by_the_running_store() {
    let mut a = Replica::new(1, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    a.sql("INSERT INTO t VALUES (1, 'x')");
    a.store.drain().unwrap();
    // `harmonylite migrate` next to a running sidecar: a second store on the same file.
    let mut cli = Store::open(
        Connection::open(&a.path).unwrap(),
        StoreOptions::new(NodeId::from_u128(1).unwrap()),
    )
    .unwrap();
    cli.publish_migration("ALTER TABLE t ADD COLUMN c", false, now())
        .unwrap();
    drop(cli);
    a.sql("INSERT INTO t VALUES (2, 'y')");
    let report = a.store.drain().unwrap();
    assert!(report.outbox_grew);
    let frames = a.store.outbox_after(0, 10).unwrap();
    let seqs: Vec<u64> = frames.iter().map(|f| f.batch_seq.get()).collect();
    assert_eq!(seqs, vec![1, 2, 3], "no batch sequence is reused");
    let ids: std::collections::BTreeSet<&str> = frames.iter().map(|f| f.msg_id.as_str()).collect();
    assert_eq!(ids.len(), 3);
}

#[test]
fn a_snapshot_carries_the_migration_version() {
    let mut a = Replica::new(1, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    let mut stream = Stream::default();
    publish_migration(&mut a, "ALTER TABLE t ADD COLUMN c", false);
    stream.publish(&mut a);
    stream.deliver(&mut a);
    let copy_path = a.path.with_file_name("copy.db");
    snapshot::vacuum_into(a.store.connection(), copy_path.to_str().unwrap()).unwrap();
    let mut copy = Connection::open(&copy_path).unwrap();
    snapshot::strip_node_local(&mut copy).unwrap();
    drop(copy);
    let restored = Store::open(
        Connection::open(&copy_path).unwrap(),
        StoreOptions::new(NodeId::from_u128(2).unwrap()),
    )
    .unwrap();
    let status = restored.schema_status().unwrap();
    assert_eq!(status.migration_version, 1);
    assert_eq!(
        status.fingerprint,
        a.store.schema_status().unwrap().fingerprint
    );
    // Redelivering the migration after the snapshot's cursor does not apply it twice.
    let mut restored = Replica {
        _dir: tempfile::tempdir().unwrap(),
        path: copy_path.clone(),
        app: Connection::open(&copy_path).unwrap(),
        store: restored,
    };
    let report = restored
        .store
        .receive(
            now(),
            &[Inbound {
                seq: StreamSeq::new(restored.store.cursor().get() + 1),
                frame: stream.frames[0].clone(),
                subject: None,
            }],
        )
        .unwrap();
    assert_eq!(report.migrations, 0);
    assert_eq!(restored.store.schema_status().unwrap().migration_version, 1);
    assert_eq!(restored.rows("SELECT count(*) FROM t"), vec![vec![int(0)]]);
    let _ = Path::new(&restored.path);
}
