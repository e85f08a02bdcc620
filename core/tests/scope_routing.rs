//! Scope routing on real SQLite files: a captured transaction is split by route (each
//! partition's rows on its own subject, shared and hidden tables on theirs), deletes follow
//! the row's partition, and a full replica applies the routed groups of one source batch
//! atomically, only once every frame is here.

use std::path::Path;

use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::{NodeId, NTP64};
use harmonylite_core::report::{Inbound, OutboxFrame};
use harmonylite_core::scope::{PartitionRule, ScopeRules, Subjects};
use harmonylite_core::sqlite::{Store, StoreOptions};
use harmonylite_core::wire::{self, Message};
use rusqlite::Connection;

const SCHEMA: &str = "CREATE TABLE notes(id TEXT PRIMARY KEY, owner_id TEXT, body TEXT);
    CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT);
    CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT);";

fn now() -> NTP64 {
    harmonylite_core::hlc::ntp64_from_unix_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

fn rules() -> ScopeRules {
    ScopeRules::new(
        vec![PartitionRule {
            name: "user".into(),
            claims: vec!["sub".into()],
            tables: [("notes".to_owned(), vec!["owner_id".to_owned()])].into(),
        }],
        ["tags".to_owned()],
        [],
    )
    .unwrap()
}

fn open(path: &Path, node: u128, scopes: ScopeRules, max_frame: usize) -> Store {
    let mut options = StoreOptions::new(NodeId::from_u128(node).unwrap());
    options.scopes = scopes;
    options.max_frame = max_frame;
    options.compression = wire::Compression::None;
    Store::open(Connection::open(path).unwrap(), options).unwrap()
}

fn app(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    conn
}

/// Drains and takes every outbox frame (as if JetStream acked them).
fn publish(store: &mut Store) -> Vec<OutboxFrame> {
    store.drain().unwrap();
    let frames = store.outbox_after(0, 10_000).unwrap();
    let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
    store.outbox_remove(&ids).unwrap();
    frames
}

fn subjects(frames: &[OutboxFrame]) -> Vec<String> {
    let s = Subjects::new("app");
    let mut out: Vec<String> = frames
        .iter()
        .map(|f| s.for_suffix(f.subject.as_deref()))
        .collect();
    out.dedup();
    out
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn one_transaction_is_split_by_route_and_applied_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let a_app = app(&a_path);
    let b_app = app(&b_path);
    let mut a = open(&a_path, 1, rules(), 1 << 20);
    let mut b = open(&b_path, 2, rules(), 1 << 20);

    a_app
        .execute_batch(
            "BEGIN;
             INSERT INTO notes VALUES ('n1', 'u1', 'one'), ('n2', 'u2', 'two'), ('n3', 'a.b c', 'three');
             INSERT INTO tags VALUES (1, 'red');
             INSERT INTO audit VALUES (1, 'created');
             COMMIT;",
        )
        .unwrap();
    let frames = publish(&mut a);
    assert_eq!(
        subjects(&frames),
        [
            "app.p.user.tu1.f.tnotes",
            "app.p.user.tu2.f.tnotes",
            "app.p.user.x612e622063.f.tnotes",
            "app.shared.ttags",
            "app.1"
        ]
    );
    assert!(frames
        .iter()
        .all(|f| matches!(wire::decode_message(&f.frame), Ok(Message::Routed(_)))));

    // Every frame but the last: nothing is applied yet (the source batch stays whole).
    let inbound: Vec<Inbound> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| Inbound {
            seq: StreamSeq::new(i as u64 + 1),
            frame: f.frame.clone(),
        })
        .collect();
    let (last, first) = inbound.split_last().unwrap();
    b.receive(now(), first).unwrap();
    assert_eq!(count(&b_app, "SELECT count(*) FROM notes"), 0);
    assert_eq!(count(&b_app, "SELECT count(*) FROM tags"), 0);
    b.receive(now(), std::slice::from_ref(last)).unwrap();
    assert_eq!(count(&b_app, "SELECT count(*) FROM notes"), 3);
    assert_eq!(count(&b_app, "SELECT count(*) FROM tags"), 1);
    assert_eq!(count(&b_app, "SELECT count(*) FROM audit"), 1);
    assert_eq!(b.cursor(), StreamSeq::new(frames.len() as u64));

    // A delete on b (which learned the row's partition from the stream) and an update that
    // moves a row on a: each travels on the partition of the row's image.
    b_app
        .execute("DELETE FROM notes WHERE id = 'n1'", [])
        .unwrap();
    assert_eq!(subjects(&publish(&mut b)), ["app.p.user.tu1.f.tnotes"]);
    a_app
        .execute("UPDATE notes SET owner_id = 'u9' WHERE id = 'n2'", [])
        .unwrap();
    assert_eq!(subjects(&publish(&mut a)), ["app.p.user.tu9.f.tnotes"]);
    a_app
        .execute("DELETE FROM notes WHERE id = 'n2'", [])
        .unwrap();
    assert_eq!(subjects(&publish(&mut a)), ["app.p.user.tu9.f.tnotes"]);
}

#[test]
fn large_routed_batches_are_chunked_and_reassembled() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let a_app = app(&a_path);
    let b_app = app(&b_path);
    let mut a = open(&a_path, 1, rules(), 2048);
    let mut b = open(&b_path, 2, rules(), 2048);
    a_app.execute_batch("BEGIN").unwrap();
    for i in 0..300 {
        a_app
            .execute(
                "INSERT INTO notes VALUES (?1, ?2, ?3)",
                rusqlite::params![format!("n{i}"), format!("u{}", i % 3), "x".repeat(60)],
            )
            .unwrap();
    }
    a_app.execute_batch("COMMIT").unwrap();
    let frames = publish(&mut a);
    assert!(frames.len() > 6, "{} frames", frames.len());
    assert_eq!(subjects(&frames).len(), 3);
    // Delivered in reverse: the batch still applies once, when the last frame arrives.
    let inbound: Vec<Inbound> = frames
        .iter()
        .rev()
        .enumerate()
        .map(|(i, f)| Inbound {
            seq: StreamSeq::new(i as u64 + 1),
            frame: f.frame.clone(),
        })
        .collect();
    for (i, message) in inbound.iter().enumerate() {
        b.receive(now(), std::slice::from_ref(message)).unwrap();
        let expected = if i + 1 == inbound.len() { 300 } else { 0 };
        assert_eq!(count(&b_app, "SELECT count(*) FROM notes"), expected);
    }
}

#[test]
fn rows_written_before_scopes_were_on_route_their_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let a_app = app(&path);
    {
        let mut before = open(&path, 1, ScopeRules::default(), 1 << 20);
        a_app
            .execute("INSERT INTO notes VALUES ('n1', 'u1', 'old')", [])
            .unwrap();
        let frames = publish(&mut before);
        assert_eq!(subjects(&frames), ["app.1"]);
        assert!(frames
            .iter()
            .all(|f| matches!(wire::decode_message(&f.frame), Ok(Message::V1(_)))));
    }
    let mut after = open(&path, 1, rules(), 1 << 20);
    a_app
        .execute("DELETE FROM notes WHERE id = 'n1'", [])
        .unwrap();
    assert_eq!(subjects(&publish(&mut after)), ["app.p.user.tu1.f.tnotes"]);
    // Only hidden tables: a plain unscoped batch, readable by builds without scopes.
    a_app
        .execute("INSERT INTO audit VALUES (2, 'x')", [])
        .unwrap();
    let frames = publish(&mut after);
    assert_eq!(subjects(&frames), ["app.1"]);
    assert!(matches!(
        wire::decode_message(&frames[0].frame),
        Ok(Message::V1(_))
    ));
}
