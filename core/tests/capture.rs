//! Capture and apply on real SQLite files: install/uninstall, round trips between two
//! replicas, skipped tables, foreign SQLite writers (older versions, `trusted_schema=OFF`),
//! write-time HLCs, coalescing, echo suppression, parking and tombstones.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harmonylite_core::capture::names::quote;
use harmonylite_core::capture::SkipReason;
use harmonylite_core::change::{Batch, BatchSeq, RowChange, StreamSeq, TableSchema};
use harmonylite_core::hlc::{ntp64_from_unix, NodeId, NTP64};
use harmonylite_core::report::{DrainReport, Inbound, ReceiveReport};
use harmonylite_core::sqlite::{uninstall, Store, StoreOptions};
use harmonylite_core::value::Value;
use harmonylite_core::wire::{self, Compression};
use rusqlite::Connection;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn now() -> NTP64 {
    ntp64_from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
}

fn unix_millis_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn ntp_to_millis(time: u64) -> i64 {
    NTP64(time).to_duration().as_millis() as i64
}

fn node(n: u128) -> NodeId {
    NodeId::from_u128(n).unwrap()
}

/// An application's connection: what any app would open, with a 5 s busy timeout.
fn app_connection(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("opening the app connection");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

fn open_store(path: &Path, options: StoreOptions) -> Store {
    Store::open(Connection::open(path).unwrap(), options).expect("opening the store")
}

/// One replica: a database file in its own temp dir, the store (the sidecar's connection)
/// and an application connection to the same file.
struct Replica {
    _dir: TempDir,
    path: PathBuf,
    store: Store,
    app: Connection,
}

impl Replica {
    /// A replica with node id `id` whose app created `schema` before the store opened.
    fn new(id: u128, schema: &str) -> Self {
        Self::with_options(StoreOptions::new(node(id)), schema)
    }

    fn with_options(options: StoreOptions, schema: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let app = app_connection(&path);
        app.execute_batch(schema).expect("creating the app schema");
        let store = open_store(&path, options);
        Replica {
            _dir: dir,
            path,
            store,
            app,
        }
    }

    fn drain(&mut self) -> DrainReport {
        self.store.drain().expect("drain")
    }

    fn dump(&self, table: &str) -> Vec<Row> {
        dump(&self.app, table)
    }
}

/// JetStream in miniature: an append-only list of frames; position `i` is stream seq `i + 1`.
#[derive(Default)]
struct Stream {
    frames: Vec<Vec<u8>>,
}

impl Stream {
    /// Publishes everything in `from`'s outbox (in order) and acknowledges it.
    fn publish(&mut self, from: &mut Store) -> usize {
        let mut published = 0;
        loop {
            let frames = from.outbox_after(0, 1000).expect("reading the outbox");
            if frames.is_empty() {
                return published;
            }
            let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
            published += frames.len();
            self.frames.extend(frames.into_iter().map(|f| f.frame));
            from.outbox_remove(&ids).expect("acknowledging frames");
        }
    }

    /// Delivers every message after `to`'s cursor, in one receive.
    fn deliver(&self, to: &mut Store) -> ReceiveReport {
        let after = to.cursor().get() as usize;
        let messages: Vec<Inbound> = self.frames[after..]
            .iter()
            .enumerate()
            .map(|(i, frame)| Inbound {
                seq: StreamSeq::new((after + i + 1) as u64),
                frame: frame.clone(),
                subject: None,
            })
            .collect();
        to.receive(now(), &messages).expect("receive")
    }

    /// Appends a frame as the next stream message (e.g. a redelivered duplicate).
    fn push(&mut self, frame: Vec<u8>) {
        self.frames.push(frame);
    }
}

/// Drains `from`, publishes its outbox and delivers the stream to `to`.
fn ship(stream: &mut Stream, from: &mut Replica, to: &mut Replica) -> ReceiveReport {
    from.drain();
    stream.publish(&mut from.store);
    stream.deliver(&mut to.store)
}

/// Decodes frames (in stream order) into whole batches, reassembling multi-part ones.
fn decode_frames(frames: &[Vec<u8>]) -> Vec<(NodeId, BatchSeq, Batch)> {
    let mut out = Vec::new();
    let mut body = Vec::new();
    for frame in frames {
        let part = wire::decode_frame(frame).expect("decoding a frame");
        if part.part == 0 {
            body.clear();
        }
        body.extend_from_slice(&part.body);
        if part.part + 1 == part.parts {
            let batch = wire::decode_batch(part.compression, &body).expect("decoding a batch");
            out.push((part.origin, part.batch_seq, batch));
        }
    }
    out
}

/// The batches waiting in a store's outbox (left in place).
fn outbox_batches(store: &Store) -> Vec<(NodeId, BatchSeq, Batch)> {
    let frames = store.outbox_after(0, 100_000).unwrap();
    decode_frames(&frames.into_iter().map(|f| f.frame).collect::<Vec<_>>())
}

/// One stored cell: its storage class (`typeof()`) and its value.
type Cell = (String, Value);
/// One row: every column in table order.
type Row = Vec<Cell>;

/// Dumps a table ordered by its primary key: every column (generated ones included) with its
/// exact storage class.
fn dump(conn: &Connection, table: &str) -> Vec<Row> {
    let columns: Vec<(String, i64)> = conn
        .prepare("SELECT name, pk FROM pragma_table_xinfo(?1) ORDER BY cid")
        .unwrap()
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!columns.is_empty(), "table {table:?} does not exist");
    let mut key: Vec<&(String, i64)> = columns.iter().filter(|c| c.1 > 0).collect();
    key.sort_by_key(|c| c.1);
    let order = if key.is_empty() {
        "rowid".to_string()
    } else {
        key.iter()
            .map(|c| quote(&c.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let select = columns
        .iter()
        .map(|c| format!("typeof({0}), {0}", quote(&c.0)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {select} FROM {} ORDER BY {order}", quote(table));
    let mut stmt = conn.prepare(&sql).unwrap();
    let rows = stmt
        .query_map([], |r| {
            (0..columns.len())
                .map(|i| Ok((r.get::<_, String>(2 * i)?, r.get::<_, Value>(2 * i + 1)?)))
                .collect::<Result<Row, _>>()
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

/// Short debug text (values can be megabytes long).
fn brief(row: &Row) -> String {
    let text = format!("{row:?}");
    if text.chars().count() > 300 {
        let head: String = text.chars().take(300).collect();
        format!("{head}… ({} chars)", text.len())
    } else {
        text
    }
}

/// Asserts two dumps are identical, row by row (storage classes and bit-exact values).
fn assert_same_rows(left: &[Row], right: &[Row], what: &str) {
    for (i, (l, r)) in left.iter().zip(right).enumerate() {
        assert!(
            l == r,
            "{what}: row {i} differs:\n  left:  {}\n  right: {}",
            brief(l),
            brief(r)
        );
    }
    assert_eq!(left.len(), right.len(), "{what}: row counts differ");
}

/// Internal objects (`__hl_%`) in the schema: (type, name, sql).
fn internal_objects(conn: &Connection) -> Vec<(String, String, Option<String>)> {
    conn.prepare(
        "SELECT type, name, sql FROM sqlite_schema WHERE name LIKE '\\_\\_hl\\_%' ESCAPE '\\' \
         ORDER BY type, name",
    )
    .unwrap()
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// User objects of the schema (everything but `__hl_%`), with their SQL.
fn user_objects(conn: &Connection) -> Vec<(String, String, Option<String>)> {
    conn.prepare(
        "SELECT type, name, sql FROM sqlite_schema WHERE substr(tbl_name, 1, 5) <> '__hl_' \
         ORDER BY type, name",
    )
    .unwrap()
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The single integer key of a change, for readable assertions on batches.
fn int_key(change: &RowChange) -> i64 {
    match change.key.as_slice() {
        [Value::Integer(i)] => *i,
        other => panic!("expected one integer key, got {other:?}"),
    }
}

/// Incompressible ASCII text of `len` bytes (so LZ4 cannot shrink it below the frame limit).
fn random_text(len: usize, seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.alphanumeric()).collect()
}

// ---------------------------------------------------------------------------------------
// 1. Install and uninstall
// ---------------------------------------------------------------------------------------

const NOTES: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);
CREATE TABLE tags(name TEXT PRIMARY KEY, weight REAL) WITHOUT ROWID;
CREATE TABLE pairs(a INTEGER, b TEXT, v, PRIMARY KEY(a, b));";

#[test]
fn install_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    app_connection(&path).execute_batch(NOTES).unwrap();

    let first = open_store(&path, StoreOptions::new(node(1)));
    let report = first.install_report().clone();
    assert_eq!(report.replicated, vec!["notes", "pairs", "tags"]);
    let mut rebuilt = report.triggers_rebuilt.clone();
    rebuilt.sort();
    assert_eq!(rebuilt, vec!["notes", "pairs", "tags"]);
    let objects = internal_objects(first.connection());
    // 12 internal tables, 3 version tables, 9 triggers.
    assert_eq!(
        objects.iter().filter(|o| o.0 == "trigger").count(),
        9,
        "{objects:?}"
    );
    assert_eq!(
        objects.iter().filter(|o| o.0 == "table").count(),
        15,
        "{objects:?}"
    );
    let schema_version = count(first.connection(), "PRAGMA schema_version");
    drop(first);

    let second = open_store(&path, StoreOptions::new(node(1)));
    assert!(
        second.install_report().triggers_rebuilt.is_empty(),
        "second install rebuilt {:?}",
        second.install_report().triggers_rebuilt
    );
    assert!(second.install_report().removed.is_empty());
    assert_eq!(second.install_report().replicated, report.replicated);
    assert_eq!(internal_objects(second.connection()), objects);
    assert_eq!(
        count(second.connection(), "PRAGMA schema_version"),
        schema_version,
        "a second install must not touch the schema at all"
    );
    assert_eq!(
        Store::stored_node_id(second.connection()).unwrap(),
        Some(node(1))
    );
}

#[test]
fn uninstall_removes_every_internal_object_and_keeps_user_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let app = app_connection(&path);
    app.execute_batch(NOTES).unwrap();
    app.execute_batch(
        "CREATE TABLE loose(x, y);
         CREATE INDEX notes_body ON notes(body);
         CREATE VIEW heavy AS SELECT * FROM tags WHERE weight > 1;
         INSERT INTO notes VALUES (1, 'before'), (2, NULL);
         INSERT INTO loose VALUES (1, x'00ff');",
    )
    .unwrap();
    let schema_before = user_objects(&app);
    let mut store = open_store(&path, StoreOptions::new(node(1)));
    // Capture some writes so the log, versions and outbox are non-empty.
    app.execute_batch(
        "INSERT INTO notes VALUES (3, 'after');
         INSERT INTO tags VALUES ('a', 1.5), ('b', -0.0);
         INSERT INTO pairs VALUES (1, 'x', x'0102'), (2, 'y', 2.25);
         UPDATE notes SET body = 'changed' WHERE id = 1;",
    )
    .unwrap();
    store.drain().unwrap();
    app.execute("DELETE FROM notes WHERE id = 2", []).unwrap(); // left in the log
    assert_eq!(store.log_depth().unwrap(), 1);
    assert!(store.outbox_depth().unwrap().0 > 0);

    let tables = ["notes", "tags", "pairs", "loose"];
    let before: Vec<Vec<Row>> = tables.iter().map(|t| dump(&app, t)).collect();
    drop(store);

    let dropped = uninstall(&app).unwrap();
    assert!(
        dropped.iter().all(|n| n.starts_with("__hl_")),
        "{dropped:?}"
    );
    assert!(dropped.len() >= 19, "{dropped:?}");
    assert_eq!(internal_objects(&app), Vec::new());
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM sqlite_schema WHERE instr(name, '__hl_') > 0 \
             OR instr(sql, '__hl_') > 0"
        ),
        0
    );
    // No internal table uses AUTOINCREMENT, so nothing leaves `sqlite_sequence` behind.
    assert_eq!(user_objects(&app), schema_before);
    for (table, rows) in tables.iter().zip(&before) {
        assert_same_rows(&dump(&app, table), rows, table);
    }
    // The app keeps writing without any trigger in the way.
    app.execute("INSERT INTO notes VALUES (9, 'free')", [])
        .unwrap();
    assert_eq!(uninstall(&app).unwrap(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------
// 2. Round trips between two replicas
// ---------------------------------------------------------------------------------------

const SHAPES: &str = r#"
CREATE TABLE ints(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);
CREATE TABLE texts(code TEXT PRIMARY KEY, v);
CREATE TABLE composite(a INTEGER, b TEXT, c BLOB, v, w REAL, PRIMARY KEY(a, b, c));
CREATE TABLE norowid(k TEXT, n INTEGER, v, PRIMARY KEY(n, k)) WITHOUT ROWID;
CREATE TABLE "it's ""we""ird tåble" ("ké y" TEXT PRIMARY KEY, "va'l ""x""" INTEGER, "日本 語" TEXT, "with space" BLOB);
CREATE TABLE keysonly(a TEXT, b INTEGER, PRIMARY KEY(a, b)) WITHOUT ROWID;
CREATE TABLE generated(id INTEGER PRIMARY KEY, a INTEGER,
                       doubled INTEGER GENERATED ALWAYS AS (a * 2) STORED,
                       tripled AS (a * 3) VIRTUAL);
"#;

const WEIRD: &str = "it's \"we\"ird tåble";

#[test]
fn round_trip_preserves_every_key_shape_and_odd_name() {
    let mut a = Replica::new(1, SHAPES);
    let mut b = Replica::new(2, SHAPES);
    let mut stream = Stream::default();
    a.app
        .execute_batch(
            r#"
INSERT INTO ints VALUES (1, 'one', 10), (-9223372036854775808, 'min', NULL),
                        (9223372036854775807, 'max', 0);
INSERT INTO texts VALUES ('a', 1), ('B', 2.5), ('ünï ''q'' "dq"', x'00'), ('', NULL);
INSERT INTO composite VALUES (1, 'x', x'00', 'v1', 1.0), (1, 'x', x'01', 'v2', 2.0),
                             (1, 'y', x'', 3, NULL), (2, 'x', x'00ff', NULL, -1.5);
INSERT INTO norowid VALUES ('k', 1, 'a'), ('k', 2, x'ff'), ('j', 2, NULL);
INSERT INTO "it's ""we""ird tåble" VALUES ('ké', 1, 'テキスト', x'6869'),
                                          ('"quoted"', 2, NULL, NULL),
                                          ('it''s', 3, '', x'');
INSERT INTO keysonly VALUES ('a', 1), ('a', 2), ('b', 1);
INSERT INTO generated(id, a) VALUES (1, 10), (2, NULL);
"#,
        )
        .unwrap();
    let received = ship(&mut stream, &mut a, &mut b);
    assert!(received.parked.is_empty(), "{:?}", received.parked);
    assert_eq!(received.batches, 1);
    assert_eq!(received.applied.new_rows, 22);

    // Updates and deletes on every shape.
    a.app
        .execute_batch(
            r#"
UPDATE ints SET v = 'uno', n = 11 WHERE id = 1;
DELETE FROM ints WHERE id = 9223372036854775807;
UPDATE texts SET v = 'changed' WHERE code = '';
DELETE FROM texts WHERE code = 'B';
UPDATE composite SET v = 'v2b' WHERE a = 1 AND b = 'x' AND c = x'01';
DELETE FROM composite WHERE a = 1 AND b = 'y' AND c = x'';
UPDATE norowid SET v = 'b' WHERE k = 'k' AND n = 2;
DELETE FROM norowid WHERE k = 'j';
UPDATE "it's ""we""ird tåble" SET "日本 語" = 'changé', "with space" = x'00' WHERE "ké y" = 'ké';
DELETE FROM "it's ""we""ird tåble" WHERE "ké y" = 'it''s';
DELETE FROM keysonly WHERE a = 'a' AND b = 2;
UPDATE generated SET a = 7 WHERE id = 2;
"#,
        )
        .unwrap();
    let received = ship(&mut stream, &mut a, &mut b);
    assert!(received.parked.is_empty(), "{:?}", received.parked);
    assert_eq!(received.applied.remote_won, 12);

    let tables = [
        "ints",
        "texts",
        "composite",
        "norowid",
        WEIRD,
        "keysonly",
        "generated",
    ];
    for table in tables {
        let rows = a.dump(table);
        assert!(!rows.is_empty(), "{table} is empty");
        assert_same_rows(&b.dump(table), &rows, table);
    }
    assert_eq!(a.dump("ints").len(), 2);
    assert_eq!(a.dump(WEIRD).len(), 2);
    assert_eq!(a.dump("keysonly").len(), 2);
    assert_eq!(
        b.dump("generated")[1],
        vec![
            ("integer".to_string(), Value::Integer(2)),
            ("integer".to_string(), Value::Integer(7)),
            ("integer".to_string(), Value::Integer(14)),
            ("integer".to_string(), Value::Integer(21)),
        ]
    );
    assert_eq!(
        b.dump(WEIRD)[0],
        vec![
            ("text".to_string(), Value::Text("\"quoted\"".into())),
            ("integer".to_string(), Value::Integer(2)),
            ("null".to_string(), Value::Null),
            ("null".to_string(), Value::Null),
        ]
    );
}

#[test]
fn round_trip_preserves_all_value_types_bit_exact() {
    let schema = "CREATE TABLE vals(id INTEGER PRIMARY KEY, anyv, r REAL, t TEXT, b BLOB);";
    let mut a = Replica::new(1, schema);
    let mut b = Replica::new(2, schema);
    let mut stream = Stream::default();

    let reals = [
        0.0,
        -0.0,
        f64::MIN_POSITIVE,
        f64::from_bits(1),            // smallest subnormal
        -f64::from_bits(0x000f_ffff), // a negative subnormal
        1e308,
        f64::MAX,
        -f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.1 + 0.2,
        std::f64::consts::PI,
        9007199254740993.0, // rounds to 2^53: integral, but stays REAL in an untyped column
    ];
    let big_text = random_text(1024 * 1024, 7);
    let values: Vec<Value> = reals
        .iter()
        .map(|r| Value::Real(*r))
        .chain([
            Value::Null,
            Value::Integer(0),
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Text(String::new()),
            Value::Text("héllo\0wörld 🎉".into()),
            Value::Text(big_text.clone()),
            Value::Blob(Vec::new()),
            Value::Blob(vec![0, 0, 0]),
            Value::Blob(vec![0xff, 0, 0x7f, 0, 0x80]),
            Value::Blob((0..=255u8).collect()),
        ])
        .collect();
    {
        let tx = a.app.unchecked_transaction().unwrap();
        for (i, v) in values.iter().enumerate() {
            // The same value in the untyped column and in each typed one.
            tx.execute(
                "INSERT INTO vals VALUES (?1, ?2, ?2, ?2, ?2)",
                rusqlite::params![i as i64, v],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let drained = a.drain();
    assert_eq!(drained.rows, values.len());
    assert!(
        drained.frames > 1,
        "the 1 MiB text must need a multi-part batch"
    );
    stream.publish(&mut a.store);
    let received = stream.deliver(&mut b.store);
    assert!(received.parked.is_empty(), "{:?}", received.parked);
    assert_eq!(received.parts_stored as usize, drained.frames - 1);
    assert_eq!(received.applied.new_rows as usize, values.len());

    let rows_a = a.dump("vals");
    assert_same_rows(&b.dump("vals"), &rows_a, "vals");

    // The untyped column kept every value exactly as written, so the test really
    // exercised -0.0, subnormals, NUL bytes and the 1 MiB text.
    for (i, v) in values.iter().enumerate() {
        assert_eq!(&rows_a[i][1].1, v, "untyped column of row {i}");
    }
    assert_eq!(rows_a[1][1], ("real".to_string(), Value::Real(-0.0)));
    assert_eq!(
        rows_a[3][1],
        ("real".to_string(), Value::Real(f64::from_bits(1)))
    );
    let texts: Vec<&Row> = rows_a
        .iter()
        .filter(|r| r[1].1 == Value::Text(big_text.clone()))
        .collect();
    assert_eq!(texts.len(), 1);
    let classes: BTreeSet<&str> = rows_a.iter().map(|r| r[1].0.as_str()).collect();
    assert_eq!(
        classes,
        BTreeSet::from(["null", "integer", "real", "text", "blob"])
    );
}

// ---------------------------------------------------------------------------------------
// 3. Primary-key updates
// ---------------------------------------------------------------------------------------

#[test]
fn primary_key_update_is_a_delete_plus_an_upsert() {
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                  CREATE TABLE c(a INTEGER, b TEXT, v, PRIMARY KEY(a, b)) WITHOUT ROWID;";
    let mut a = Replica::new(1, schema);
    let mut b = Replica::new(2, schema);
    let mut stream = Stream::default();
    a.app
        .execute_batch(
            "INSERT INTO t VALUES (1, 'one'), (2, 'two');
             INSERT INTO c VALUES (1, 'x', 'cx');",
        )
        .unwrap();
    ship(&mut stream, &mut a, &mut b);

    a.app
        .execute_batch(
            "UPDATE t SET id = 10 WHERE id = 1;
             UPDATE c SET b = 'y', v = 'cy' WHERE a = 1 AND b = 'x';",
        )
        .unwrap();
    let drained = a.drain();
    assert_eq!(drained.log_entries, 4);
    let batches = outbox_batches(&a.store);
    assert_eq!(batches.len(), 1);
    let batch = &batches[0].2;
    let t = batch.tables.iter().position(|s| s.name == "t").unwrap() as u32;
    let c = batch.tables.iter().position(|s| s.name == "c").unwrap() as u32;
    let changes: Vec<(u32, Vec<Value>, Option<Vec<Value>>)> = batch
        .rows
        .iter()
        .map(|r| (r.table, r.key.clone(), r.values.clone()))
        .collect();
    assert_eq!(
        changes,
        vec![
            (t, vec![Value::Integer(1)], None),
            (
                t,
                vec![Value::Integer(10)],
                Some(vec![Value::Text("one".into())])
            ),
            (c, vec![Value::Integer(1), Value::Text("x".into())], None),
            (
                c,
                vec![Value::Integer(1), Value::Text("y".into())],
                Some(vec![Value::Text("cy".into())])
            ),
        ]
    );
    // The delete of the old key is ordered before the upsert of the new one.
    assert!(batch.rows[0].time < batch.rows[1].time);

    stream.publish(&mut a.store);
    let received = stream.deliver(&mut b.store);
    assert_eq!(
        received.applied.remote_won, 2,
        "the two old keys were deleted"
    );
    assert_eq!(
        received.applied.new_rows, 2,
        "the two new keys were inserted"
    );
    for table in ["t", "c"] {
        assert_same_rows(&b.dump(table), &a.dump(table), table);
    }
    assert_eq!(
        count(&b.app, "SELECT count(*) FROM t WHERE id IN (2, 10)"),
        2
    );
    assert_eq!(count(&b.app, "SELECT count(*) FROM t WHERE id = 1"), 0);

    // A key change that is undone before the drain leaves one ordinary change.
    a.app
        .execute_batch("UPDATE t SET id = 20 WHERE id = 2; UPDATE t SET id = 2 WHERE id = 20;")
        .unwrap();
    let drained = a.drain();
    assert_eq!(drained.log_entries, 4);
    let rows = &outbox_batches(&a.store)[0].2.rows;
    let keys: Vec<(i64, bool)> = rows.iter().map(|r| (int_key(r), r.is_delete())).collect();
    assert_eq!(keys, vec![(20, true), (2, false)]);
    stream.publish(&mut a.store);
    stream.deliver(&mut b.store);
    assert_same_rows(&b.dump("t"), &a.dump("t"), "t");
}

// ---------------------------------------------------------------------------------------
// 4. Tables that are not replicated
// ---------------------------------------------------------------------------------------

#[test]
fn tables_that_cannot_or_must_not_replicate_are_skipped() {
    let schema = "
        CREATE TABLE keyed(id INTEGER PRIMARY KEY, v);
        CREATE TABLE nokey(x, y);
        CREATE TABLE auto(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
        CREATE TABLE private(id INTEGER PRIMARY KEY, secret);
        CREATE VIRTUAL TABLE f USING fts5(x);
        CREATE INDEX keyed_v ON keyed(v);";
    let mut options = StoreOptions::new(node(1));
    options.exclude_tables = vec!["private".into()];
    let mut a = Replica::with_options(options, schema);
    let report = a.store.install_report().clone();
    assert_eq!(report.replicated, vec!["auto", "keyed"]);
    let skipped = |name: &str| {
        report
            .skipped
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
    };
    assert_eq!(skipped("nokey"), Some(SkipReason::NoPrimaryKey));
    assert_eq!(skipped("private"), Some(SkipReason::Excluded));
    assert_eq!(skipped("f"), Some(SkipReason::Virtual));
    for shadow in ["f_config", "f_content", "f_data", "f_docsize", "f_idx"] {
        assert_eq!(skipped(shadow), Some(SkipReason::Shadow), "{shadow}");
    }
    assert!(report
        .skipped
        .iter()
        .all(|(n, _)| !n.starts_with("sqlite_")));

    a.app
        .execute_batch(
            "INSERT INTO nokey VALUES (1, 2), (3, 4);
             UPDATE nokey SET y = 5; DELETE FROM nokey WHERE x = 1;
             INSERT INTO private VALUES (1, 'pw');
             INSERT INTO f(x) VALUES ('full text'), ('search');
             INSERT INTO auto(v) VALUES ('a'), ('b');
             INSERT INTO keyed VALUES (1, 'k');
             ANALYZE;",
        )
        .unwrap();
    assert!(
        count(
            &a.app,
            "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'keyed'"
        ) > 0
    );
    assert_eq!(count(&a.app, "SELECT seq FROM sqlite_sequence"), 2);
    // Only the keyed tables logged anything: 2 rows of auto, 1 of keyed.
    assert_eq!(a.store.log_depth().unwrap(), 3);

    // ANALYZE created sqlite_stat1: the schema changed, the next drain re-installs.
    let drained = a.drain();
    assert_eq!(drained.rows, 3);
    let mut tables = drained.tables.clone();
    tables.sort();
    assert_eq!(tables, vec!["auto", "keyed"]);
    let report = a.store.install_report();
    assert_eq!(report.replicated, vec!["auto", "keyed"]);
    assert!(!report.skipped.iter().any(|(n, _)| n.starts_with("sqlite_")));
    // No trigger anywhere but on the two replicated tables.
    let triggered: BTreeSet<String> = a
        .app
        .prepare("SELECT tbl_name FROM sqlite_schema WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        triggered,
        BTreeSet::from(["auto".to_string(), "keyed".to_string()])
    );
    let batch_tables: Vec<String> = outbox_batches(&a.store)
        .iter()
        .flat_map(|(_, _, b)| b.tables.iter().map(|t| t.name.clone()))
        .collect();
    assert_eq!(batch_tables.len(), 2);

    // Full-text search still works and the skipped tables keep working.
    assert_eq!(
        count(&a.app, "SELECT count(*) FROM f WHERE f MATCH 'search'"),
        1
    );
    a.app
        .execute_batch("INSERT INTO nokey VALUES (7, 8); DELETE FROM f;")
        .unwrap();
    assert_eq!(a.drain(), DrainReport::default());
    assert_eq!(a.store.log_depth().unwrap(), 0);
}

// ---------------------------------------------------------------------------------------
// 5. Foreign writers: older SQLite, trusted_schema=OFF
// ---------------------------------------------------------------------------------------

/// The writes every foreign writer makes: insert 10, update 1, delete 2, re-key 3 -> 30.
const FOREIGN_WRITES: &str = "INSERT INTO people VALUES (10, 'new'); \
     UPDATE people SET name = 'ann2' WHERE id = 1; \
     DELETE FROM people WHERE id = 2; \
     UPDATE people SET id = 30 WHERE id = 3;";

/// A replica whose initial rows are already drained (and the outbox cleared).
fn people_replica() -> Replica {
    let mut r = Replica::new(1, "CREATE TABLE people(id INTEGER PRIMARY KEY, name TEXT);");
    r.app
        .execute_batch("INSERT INTO people VALUES (1, 'ann'), (2, 'bob'), (3, 'cy');")
        .unwrap();
    r.drain();
    Stream::default().publish(&mut r.store);
    r
}

/// Drains and checks the batch holds exactly [`FOREIGN_WRITES`], in order.
fn assert_foreign_writes_captured(r: &mut Replica) {
    let drained = r.drain();
    assert_eq!(
        drained.log_entries, 5,
        "insert, update, delete, old key, new key"
    );
    let batches = outbox_batches(&r.store);
    assert_eq!(batches.len(), 1);
    let (origin, _, batch) = &batches[0];
    assert_eq!(*origin, node(1));
    assert_eq!(batch.tables.len(), 1);
    assert_eq!(batch.tables[0].name, "people");
    assert_eq!(batch.tables[0].value_columns, vec!["name"]);
    let changes: Vec<(i64, Option<Vec<Value>>)> = batch
        .rows
        .iter()
        .map(|c| (int_key(c), c.values.clone()))
        .collect();
    let text = |s: &str| Some(vec![Value::Text(s.into())]);
    assert_eq!(
        changes,
        vec![
            (10, text("new")),
            (1, text("ann2")),
            (2, None),
            (3, None),
            (30, text("cy")),
        ]
    );
    assert_eq!(r.store.log_depth().unwrap(), 0);
}

/// Asserts a foreign writer's SQLite is older than the one the store runs (bundled).
fn assert_older_sqlite(version: &str) {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    assert!(
        version.starts_with("3.") && parse(version) < parse(rusqlite::version()),
        "expected an SQLite older than the bundled {}, got {version:?}",
        rusqlite::version()
    );
}

#[test]
fn sqlite3_shell_3_40_with_untrusted_schema_is_captured() {
    let mut r = people_replica();
    let shell = Path::new("/usr/bin/sqlite3");
    let output = Command::new(shell)
        .args(["-bail", "-cmd", ".timeout 5000"])
        .arg(&r.path)
        .arg(format!(
            "PRAGMA trusted_schema=OFF; PRAGMA trusted_schema; SELECT sqlite_version(); \
             {FOREIGN_WRITES}"
        ))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test needs the sqlite3 shell at {} (Debian package `sqlite3`): {e}",
                shell.display()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.is_empty(),
        "sqlite3 failed ({}): {stderr}",
        output.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"0"),
        "trusted_schema must be OFF: {stdout}"
    );
    assert_older_sqlite(lines.get(1).copied().unwrap_or_default());
    assert_foreign_writes_captured(&mut r);
}

#[test]
fn python_sqlite3_with_untrusted_schema_is_captured() {
    let mut r = people_replica();
    let script = format!(
        "import sqlite3, sys\n\
         c = sqlite3.connect(sys.argv[1], timeout=5)\n\
         c.execute('PRAGMA trusted_schema=OFF')\n\
         assert c.execute('PRAGMA trusted_schema').fetchone()[0] == 0\n\
         print(sqlite3.sqlite_version)\n\
         c.executescript({FOREIGN_WRITES:?})\n\
         c.commit()\n\
         c.close()\n"
    );
    let output = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(&r.path)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs python3 (with its sqlite3 module) on PATH: {e}")
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python3 failed ({}): {stderr}",
        output.status
    );
    assert_older_sqlite(String::from_utf8_lossy(&output.stdout).trim());
    assert_foreign_writes_captured(&mut r);
}

#[test]
fn rusqlite_app_with_untrusted_schema_is_captured() {
    let mut r = people_replica();
    let app = app_connection(&r.path);
    app.execute_batch("PRAGMA trusted_schema=OFF").unwrap();
    assert_eq!(count(&app, "PRAGMA trusted_schema"), 0);
    app.execute_batch(FOREIGN_WRITES).unwrap();
    assert_foreign_writes_captured(&mut r);
}

// ---------------------------------------------------------------------------------------
// 6. HLCs come from the write time
// ---------------------------------------------------------------------------------------

#[test]
fn hlc_is_the_write_time_even_when_drained_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let app = app_connection(&path);
    app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .unwrap();
    drop(open_store(&path, StoreOptions::new(node(1)))); // install, then "stop the sidecar"

    let before = unix_millis_now();
    app.execute("INSERT INTO t VALUES (1, 'offline write')", [])
        .unwrap();
    let after = unix_millis_now();
    std::thread::sleep(Duration::from_millis(1500));

    let mut store = open_store(&path, StoreOptions::new(node(1)));
    let drained_at = unix_millis_now();
    let report = store.drain().unwrap();
    assert_eq!(report.rows, 1);
    // The report dates the oldest captured write (hosts time commit -> captured with it).
    let oldest = report.oldest_write_unix_ms.expect("a write was captured");
    assert!(
        oldest >= before - 2 && oldest <= after + 2,
        "oldest write {oldest} ms is not the write time [{before}, {after}]"
    );
    let batches = outbox_batches(&store);
    let written = ntp_to_millis(batches[0].2.rows[0].time);
    assert!(
        written >= before - 2 && written <= after + 2,
        "HLC {written} ms is not the write time [{before}, {after}]"
    );
    assert!(
        drained_at - written >= 1400,
        "HLC {written} ms looks like the drain time {drained_at}"
    );
    assert_eq!(store.clock().last().as_u64(), batches[0].2.rows[0].time);
}

#[test]
fn hlc_never_goes_below_the_nodes_last_hlc() {
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v)";
    let mut a = Replica::new(1, schema);
    // A remote change stamped 60 s in the future (within the 5 min bound).
    let ahead = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(60);
    let remote_time = ntp64_from_unix(ahead).as_u64();
    let batch = Batch {
        tables: vec![TableSchema {
            name: "t".into(),
            fingerprint: 0,
            key_columns: vec!["id".into()],
            value_columns: vec!["v".into()],
        }],
        rows: vec![RowChange {
            table: 0,
            time: remote_time,
            key: vec![Value::Integer(1)],
            values: Some(vec![Value::Text("from the future".into())]),
        }],
        cells: Vec::new(),
    };
    let frames = wire::encode_batch(
        node(2),
        BatchSeq::new(1),
        &batch,
        Compression::None,
        1 << 20,
    )
    .unwrap();
    let mut stream = Stream::default();
    for f in frames {
        stream.push(f);
    }
    let received = stream.deliver(&mut a.store);
    assert_eq!(received.applied.new_rows, 1);
    assert!(a.store.clock().last().as_u64() >= remote_time);

    // Local writes now: their wall time is 60 s behind the clock, yet they stamp above it.
    a.app
        .execute_batch(
            "UPDATE t SET v = 'local' WHERE id = 1;
             INSERT INTO t VALUES (2, 'x'); INSERT INTO t VALUES (3, 'y');",
        )
        .unwrap();
    a.drain();
    let rows = outbox_batches(&a.store).remove(0).2.rows;
    assert_eq!(rows.len(), 3);
    assert!(
        rows[0].time > remote_time,
        "a local update must beat what it overwrote"
    );
    assert!(rows.windows(2).all(|w| w[0].time < w[1].time));

    // The clock survives a restart of the store.
    let last = a.store.clock().last();
    a.store = open_store(&a.path, StoreOptions::new(node(1)));
    assert_eq!(a.store.clock().last(), last);
    a.app.execute("INSERT INTO t VALUES (4, 'z')", []).unwrap();
    a.drain();
    let batches = outbox_batches(&a.store);
    let latest = batches.last().unwrap().2.rows[0].time;
    assert!(latest > last.as_u64(), "{latest} <= {}", last.as_u64());
}

// ---------------------------------------------------------------------------------------
// 7. Coalescing, whole transactions
// ---------------------------------------------------------------------------------------

#[test]
fn writes_between_drains_coalesce_in_a_batch_of_whole_transactions() {
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v, n INTEGER)";
    let mut a = Replica::new(1, schema);
    let mut b = Replica::new(2, schema);
    let mut stream = Stream::default();
    a.app
        .execute_batch(
            "BEGIN;
               INSERT INTO t VALUES (1, 'v1', 0);
               UPDATE t SET v = 'v2', n = n + 1 WHERE id = 1;
               INSERT INTO t VALUES (2, 'two', 0);
               UPDATE t SET v = 'v3', n = n + 1 WHERE id = 1;
             COMMIT;
             BEGIN;
               UPDATE t SET v = 'v4', n = n + 1 WHERE id = 1;
               DELETE FROM t WHERE id = 2;
               INSERT INTO t VALUES (3, 'three', 0);
             COMMIT;
             INSERT INTO t VALUES (4, 'temp', 0);
             DELETE FROM t WHERE id = 4;",
        )
        .unwrap();
    let drained = a.drain();
    assert_eq!(drained.log_entries, 9);
    assert_eq!(drained.rows, 4);
    let batches = outbox_batches(&a.store);
    assert_eq!(batches.len(), 1, "one drain, one batch");
    let changes: Vec<(i64, Option<Vec<Value>>)> = batches[0]
        .2
        .rows
        .iter()
        .map(|c| (int_key(c), c.values.clone()))
        .collect();
    // Ordered by each row's last write; row 1 carries its last image only.
    assert_eq!(
        changes,
        vec![
            (1, Some(vec![Value::Text("v4".into()), Value::Integer(3)])),
            (2, None),
            (
                3,
                Some(vec![Value::Text("three".into()), Value::Integer(0)])
            ),
            (4, None),
        ]
    );

    // A transaction committed after a drain lands whole in the next batch.
    a.app
        .execute_batch(
            "BEGIN; INSERT INTO t VALUES (5, 'a', 0); INSERT INTO t VALUES (6, 'b', 0);
             UPDATE t SET n = 99 WHERE id = 3; COMMIT;",
        )
        .unwrap();
    a.drain();
    let batches = outbox_batches(&a.store);
    assert_eq!(batches.len(), 2);
    let keys: Vec<i64> = batches[1].2.rows.iter().map(int_key).collect();
    assert_eq!(keys, vec![5, 6, 3]);

    stream.publish(&mut a.store);
    let received = stream.deliver(&mut b.store);
    assert_eq!(received.batches, 2);
    assert_same_rows(&b.dump("t"), &a.dump("t"), "t");
}

// ---------------------------------------------------------------------------------------
// 8. Echo suppression
// ---------------------------------------------------------------------------------------

#[test]
fn applied_remote_changes_are_not_captured_again() {
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
                  CREATE TABLE u(k TEXT PRIMARY KEY, v) WITHOUT ROWID;";
    let mut a = Replica::new(1, schema);
    let mut b = Replica::new(2, schema);
    let mut stream = Stream::default();
    a.app
        .execute_batch("INSERT INTO t VALUES (1, 'a'), (2, 'b'); INSERT INTO u VALUES ('x', 1);")
        .unwrap();
    ship(&mut stream, &mut a, &mut b);
    a.app
        .execute_batch(
            "UPDATE t SET v = 'c' WHERE id = 1; DELETE FROM u; DELETE FROM t WHERE id = 2;",
        )
        .unwrap();
    let received = ship(&mut stream, &mut a, &mut b);
    assert_eq!(received.applied.rows_changed(), 3);
    assert_eq!(received.drained, DrainReport::default());

    assert_eq!(b.store.log_depth().unwrap(), 0, "applying must not log");
    assert_eq!(b.drain(), DrainReport::default());
    assert_eq!(b.store.outbox_depth().unwrap(), (0, 0));
    assert_eq!(
        count(&b.app, "SELECT count(*) FROM __hl_applying"),
        0,
        "the marker is cleared before commit"
    );
    // B's own writes are still captured after an apply.
    b.app.execute("INSERT INTO t VALUES (3, 'b')", []).unwrap();
    assert_eq!(b.store.log_depth().unwrap(), 1);
    // A sees its own messages come back and skips them; B's change arrives once.
    let back = ship(&mut stream, &mut b, &mut a);
    assert_eq!(back.own, 2);
    assert_eq!(back.applied.new_rows, 1);
    assert_eq!(a.store.log_depth().unwrap(), 0);
    assert_eq!(a.drain(), DrainReport::default());
    assert_same_rows(&b.dump("t"), &a.dump("t"), "t");
}

// ---------------------------------------------------------------------------------------
// 9. Parking
// ---------------------------------------------------------------------------------------

#[test]
fn batch_for_a_missing_table_is_parked_whole_then_retried() {
    let mut a = Replica::new(
        1,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE extra(id INTEGER PRIMARY KEY, v);",
    );
    let mut b = Replica::new(2, "CREATE TABLE t(id INTEGER PRIMARY KEY, v);");
    let mut stream = Stream::default();

    a.app
        .execute_batch("INSERT INTO t VALUES (1, 'with extra'); INSERT INTO extra VALUES (1, 'e');")
        .unwrap();
    let received = ship(&mut stream, &mut a, &mut b);
    assert_eq!(received.parked.len(), 1);
    assert_eq!(received.parked[0].kind.as_str(), "unknown_table");
    assert!(received.parked[0].reason.contains("\"extra\""));
    assert_eq!(received.applied.rows_changed(), 0);
    assert_eq!(
        received.cursor,
        StreamSeq::new(1),
        "the cursor moves past it"
    );
    assert!(
        b.dump("t").is_empty(),
        "nothing of a parked batch is applied"
    );
    let parked = b.store.parked().unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].seq, StreamSeq::new(1));
    assert_eq!(parked[0].frame, stream.frames[0]);

    // Later messages still apply.
    a.app
        .execute("INSERT INTO t VALUES (2, 'later')", [])
        .unwrap();
    let received = ship(&mut stream, &mut a, &mut b);
    assert!(received.parked.is_empty());
    assert_eq!(received.applied.new_rows, 1);
    assert_eq!(b.store.cursor(), StreamSeq::new(2));

    // Still missing: a retry keeps it parked and counts the attempt.
    let retry = b.store.retry_parked(now()).unwrap();
    assert_eq!(retry.unparked, 0);
    assert_eq!(retry.parked.len(), 1);
    assert_eq!(b.store.parked().unwrap()[0].attempts, 1);

    b.app
        .execute_batch("CREATE TABLE extra(id INTEGER PRIMARY KEY, v);")
        .unwrap();
    let retry = b.store.retry_parked(now()).unwrap();
    assert_eq!(retry.unparked, 1);
    assert_eq!(retry.applied.new_rows, 2);
    assert_eq!(b.store.parked_count().unwrap(), 0);
    assert_eq!(b.store.cursor(), StreamSeq::new(2));
    for table in ["t", "extra"] {
        assert_same_rows(&b.dump(table), &a.dump(table), table);
    }
    assert_eq!(
        b.store.log_depth().unwrap(),
        0,
        "a retried apply is not echoed"
    );
}

#[test]
fn batch_with_a_missing_column_is_parked_whole_then_retried() {
    let mut a = Replica::new(
        1,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v, added TEXT); CREATE TABLE s(id INTEGER PRIMARY KEY);",
    );
    let mut b = Replica::new(
        2,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE s(id INTEGER PRIMARY KEY);",
    );
    let mut stream = Stream::default();
    a.app
        .execute_batch("INSERT INTO s VALUES (1); INSERT INTO t VALUES (1, 'v', 'new column');")
        .unwrap();
    let received = ship(&mut stream, &mut a, &mut b);
    assert_eq!(received.parked.len(), 1);
    assert_eq!(received.parked[0].kind.as_str(), "unknown_column");
    assert!(received.parked[0].reason.contains("\"added\""));
    assert!(
        b.dump("s").is_empty(),
        "the other table's rows are not applied either"
    );
    assert_eq!(b.store.cursor(), StreamSeq::new(1));

    a.app.execute("INSERT INTO s VALUES (2)", []).unwrap();
    let received = ship(&mut stream, &mut a, &mut b);
    assert_eq!(received.applied.new_rows, 1);
    assert_eq!(b.dump("s").len(), 1);

    b.app
        .execute_batch("ALTER TABLE t ADD COLUMN added TEXT")
        .unwrap();
    let retry = b.store.retry_parked(now()).unwrap();
    assert_eq!(retry.unparked, 1);
    assert!(retry.parked.is_empty());
    assert_eq!(b.store.parked().unwrap(), Vec::new());
    for table in ["t", "s"] {
        assert_same_rows(&b.dump(table), &a.dump(table), table);
    }
}

// ---------------------------------------------------------------------------------------
// 10. Tombstones and duplicates
// ---------------------------------------------------------------------------------------

#[test]
fn a_delete_is_not_undone_by_an_older_update_arriving_later() {
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v)";
    let mut a = Replica::new(1, schema);
    let mut b = Replica::new(2, schema);
    let mut c = Replica::new(3, schema);
    let mut stream = Stream::default();

    a.app
        .execute("INSERT INTO t VALUES (1, 'orig')", [])
        .unwrap();
    a.drain();
    stream.publish(&mut a.store);
    stream.deliver(&mut b.store);
    stream.deliver(&mut c.store);

    // B updates first, A deletes later; the stream carries the delete first, then the
    // older update (B was offline when it wrote).
    b.app
        .execute("UPDATE t SET v = 'stale' WHERE id = 1", [])
        .unwrap();
    b.drain();
    std::thread::sleep(Duration::from_millis(5));
    a.app.execute("DELETE FROM t WHERE id = 1", []).unwrap();
    a.drain();
    stream.publish(&mut a.store);
    stream.publish(&mut b.store);
    let received = stream.deliver(&mut c.store);
    assert_eq!(received.batches, 2);
    assert_eq!(received.applied.remote_won, 1, "the delete");
    assert_eq!(
        received.applied.local_won, 1,
        "the stale update loses to the tombstone"
    );
    assert!(c.dump("t").is_empty(), "the row must stay deleted");
    assert_eq!(
        count(&c.app, "SELECT deleted FROM __hl_v1 WHERE k0 = 1"),
        1,
        "a tombstone is kept"
    );

    // A ignores the stale update too; B loses its update to the newer delete.
    let received = stream.deliver(&mut a.store);
    assert_eq!((received.own, received.applied.local_won), (2, 1));
    assert!(a.dump("t").is_empty());
    let received = stream.deliver(&mut b.store);
    assert_eq!((received.own, received.applied.remote_won), (1, 1));
    assert!(b.dump("t").is_empty());
}

#[test]
fn the_same_batch_twice_changes_nothing_the_second_time() {
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v)";
    let mut a = Replica::new(1, schema);
    let mut b = Replica::new(2, schema);
    let mut stream = Stream::default();
    a.app
        .execute_batch("INSERT INTO t VALUES (1, 'a'), (2, 'b'); DELETE FROM t WHERE id = 2;")
        .unwrap();
    let first = ship(&mut stream, &mut a, &mut b);
    assert_eq!(first.applied.new_rows, 2);
    let after_first = b.dump("t");
    let versions = dump(&b.app, "__hl_v1");

    // Redelivery at the same stream position is ignored by the cursor...
    let again = b
        .store
        .receive(
            now(),
            &[Inbound {
                seq: StreamSeq::new(1),
                frame: stream.frames[0].clone(),
                subject: None,
            }],
        )
        .unwrap();
    assert_eq!(again.already_seen, 1);
    // ...and the same batch published twice (a new position) is all duplicates.
    stream.push(stream.frames[0].clone());
    let dup = stream.deliver(&mut b.store);
    assert_eq!(dup.batches, 1);
    assert_eq!(dup.applied.duplicates, 2);
    assert_eq!(dup.applied.rows_changed(), 0);
    assert_eq!(b.store.cursor(), StreamSeq::new(2));
    assert_same_rows(&b.dump("t"), &after_first, "t");
    assert_same_rows(&dump(&b.app, "__hl_v1"), &versions, "versions");
    assert_eq!(b.store.log_depth().unwrap(), 0);
}

// ---------------------------------------------------------------------------------------
// Keys containing NULL
// ---------------------------------------------------------------------------------------

#[test]
fn rows_with_a_null_key_stay_local_and_do_not_block_replication() {
    // SQLite lets rowid tables store NULL in (non-INTEGER) primary-key columns, and several
    // rows may share such a key; they cannot be matched across replicas.
    let schema = "CREATE TABLE n(a INTEGER, b TEXT, v, PRIMARY KEY(a, b));
                  CREATE TABLE s(code TEXT PRIMARY KEY, v);";
    let mut a = Replica::new(1, schema);
    let mut b = Replica::new(2, schema);
    let mut stream = Stream::default();
    a.app
        .execute_batch(
            "INSERT INTO n VALUES (NULL, 'x', 1), (NULL, 'x', 2), (1, 'x', 3);
             INSERT INTO s VALUES (NULL, 'null key'), ('k', 'v');
             UPDATE s SET code = 'was null' WHERE code IS NULL;
             UPDATE n SET b = NULL WHERE a = 1;",
        )
        .unwrap();
    let drained = a.drain();
    // Entries: 3 + 2 inserts, key change NULL -> 'was null' (2), key change (1,'x') -> (1,NULL)
    // (2); five of them name a key with a NULL.
    assert_eq!(drained.log_entries, 9);
    assert_eq!(drained.null_keys, 5);
    let received = ship(&mut stream, &mut a, &mut b);
    assert!(received.parked.is_empty(), "{:?}", received.parked);
    // 'k' and 'was null' are ordinary rows; (1,'x') left its key, a delete (a tombstone on B).
    assert_eq!(received.applied.new_rows, 3);
    assert!(b.dump("n").is_empty());
    assert_same_rows(&b.dump("s"), &a.dump("s"), "s");

    // Replication goes on; receive (which drains first) works too.
    a.app
        .execute_batch("INSERT INTO n VALUES (2, 'y', 'ok'); INSERT INTO n VALUES (NULL, NULL, 0);")
        .unwrap();
    let received = ship(&mut stream, &mut a, &mut b);
    assert_eq!(received.applied.new_rows, 1);
    assert_eq!(b.dump("n").len(), 1);
    assert_eq!(a.store.log_depth().unwrap(), 0);

    // A peer's batch with a NULL key is parked, not retried forever.
    let bad = Batch {
        tables: vec![TableSchema {
            name: "s".into(),
            fingerprint: 0,
            key_columns: vec!["code".into()],
            value_columns: vec!["v".into()],
        }],
        rows: vec![RowChange {
            table: 0,
            time: now().as_u64(),
            key: vec![Value::Null],
            values: Some(vec![Value::Text("bad".into())]),
        }],
        cells: Vec::new(),
    };
    for frame in
        wire::encode_batch(node(9), BatchSeq::new(1), &bad, Compression::None, 1 << 20).unwrap()
    {
        stream.push(frame);
    }
    a.app
        .execute("INSERT INTO s VALUES ('after', 1)", [])
        .unwrap();
    a.drain();
    stream.publish(&mut a.store);
    let received = stream.deliver(&mut b.store);
    assert_eq!(received.parked.len(), 1);
    assert_eq!(received.parked[0].kind.as_str(), "decode");
    assert_eq!(received.applied.new_rows, 1);
    assert_same_rows(&b.dump("s"), &a.dump("s"), "s");
}
