//! Scoped bootstrap on real SQLite files: a full store exports one user's partition (its
//! rows, row versions and tombstones, the shared tables, the covered sequence) in pages, and
//! a scoped store imports them by the LWW rule: exactly that partition, its own newer writes
//! kept, the cursor at the smallest covered sequence, nothing changed when repeated.

use std::path::Path;

use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::report::Inbound;
use harmonylite_core::scope::{Partition, Writer};
use harmonylite_core::sqlite::scope_bootstrap::{BootstrapReply, ExportPosition, PartitionExport};
use harmonylite_core::sqlite::{Store, StoreOptions};
use harmonylite_core::wire;
use rusqlite::Connection;

#[path = "common/scopes.rs"]
mod scopes;
use scopes::{now, rules, user};

const SCHEMA: &str = "CREATE TABLE notes(id TEXT PRIMARY KEY, owner_id TEXT, body TEXT);
    CREATE INDEX notes_owner ON notes(owner_id);
    CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT);
    CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT);";

fn open(path: &Path, node: u128, writer: Writer) -> Store {
    let mut options = StoreOptions::new(NodeId::from_u128(node).unwrap());
    options.scopes = rules();
    options.writer = writer;
    options.compression = wire::Compression::None;
    Store::open(Connection::open(path).unwrap(), options).unwrap()
}

fn app(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    conn
}

/// A full store whose own batches came back from the stream: drains, then receives its
/// outbox frames at the next sequences (the cursor moves, the accepted registry fills).
fn publish_and_see(store: &mut Store) {
    store.drain().unwrap();
    let frames = store.outbox_after(0, 100_000).unwrap();
    let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
    let first = store.cursor().get() + 1;
    let inbound: Vec<Inbound> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| Inbound {
            seq: StreamSeq::new(first + i as u64),
            frame: f.frame.clone(),
            subject: f.subject.clone(),
        })
        .collect();
    store.receive(now(), &inbound).unwrap();
    store.outbox_remove(&ids).unwrap();
}

fn rows(conn: &Connection, sql: &str) -> Vec<(String, String)> {
    conn.prepare(sql)
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn notes(conn: &Connection, owner: Option<&str>) -> Vec<(String, String)> {
    let filter = owner.map_or(String::new(), |o| format!(" WHERE owner_id = '{o}'"));
    rows(
        conn,
        &format!("SELECT id, owner_id || ':' || body FROM notes{filter} ORDER BY id"),
    )
}

fn tags(conn: &Connection) -> Vec<(String, String)> {
    rows(conn, "SELECT CAST(id AS TEXT), name FROM tags ORDER BY id")
}

/// Keys of `table`'s tombstones, as text.
fn tombstones(conn: &Connection, table: &str) -> Vec<String> {
    let id: i64 = conn
        .query_row("SELECT id FROM __hl_tables WHERE name = ?1", [table], |r| {
            r.get(0)
        })
        .unwrap();
    conn.prepare(&format!(
        "SELECT CAST(k0 AS TEXT) FROM __hl_v{id} WHERE deleted ORDER BY k0"
    ))
    .unwrap()
    .query_map([], |r| r.get(0))
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Every page of `partitions`, each at most `max_bytes` encoded.
fn export_all(store: &Store, partitions: &[Partition], max_bytes: usize) -> Vec<PartitionExport> {
    let mut pages: Vec<PartitionExport> = Vec::new();
    let mut after: Option<ExportPosition> = None;
    loop {
        let page = store
            .export_partitions(&rules(), partitions, after.as_ref(), max_bytes)
            .unwrap();
        let encoded = BootstrapReply::Page(page.clone()).encode();
        assert!(
            encoded.len() <= max_bytes,
            "{} > {max_bytes}",
            encoded.len()
        );
        assert!(pages.len() < 1000, "the export does not end");
        after = page.next.clone();
        // The position survives its text form (the request carries it as text).
        if let Some(next) = &after {
            assert_eq!(
                ExportPosition::from_token(&next.to_token()).as_ref(),
                Some(next)
            );
        }
        pages.push(page);
        if after.is_none() {
            return pages;
        }
    }
}

/// A full store with notes of u1, u2 and u3 (some deleted), tags (one deleted) and a hidden
/// table, all published and seen in the stream.
fn full_store(path: &Path) -> (Store, Connection) {
    let conn = app(path);
    let mut full = open(path, 1, Writer::Full);
    for owner in ["u1", "u2", "u3"] {
        for i in 0..150 {
            conn.execute(
                "INSERT INTO notes VALUES (?1, ?2, ?3)",
                [
                    format!("{owner}-{i:03}"),
                    owner.to_owned(),
                    format!("note {i} of {owner}, with some text to fill pages"),
                ],
            )
            .unwrap();
        }
    }
    conn.execute_batch(
        "INSERT INTO tags VALUES (1, 'red'), (2, 'green'), (3, 'blue');
         INSERT INTO audit VALUES (1, 'secret');",
    )
    .unwrap();
    publish_and_see(&mut full);
    conn.execute_batch(
        "DELETE FROM notes WHERE id IN ('u1-003', 'u1-077', 'u2-005');
         DELETE FROM tags WHERE id = 2;
         UPDATE notes SET body = 'edited' WHERE id = 'u1-010';",
    )
    .unwrap();
    publish_and_see(&mut full);
    (full, conn)
}

#[test]
fn a_scoped_store_imports_exactly_its_partition_shared_rows_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let (full, full_app) = full_store(&dir.path().join("full.db"));
    let covered = full.cursor();
    assert!(covered > StreamSeq::ZERO);

    let pages = export_all(&full, &[user("u1")], 4 * 1024);
    assert!(pages.len() > 2, "small pages: {}", pages.len());
    assert!(pages.iter().all(|p| p.covered == covered.get()));
    assert!(pages
        .iter()
        .flat_map(|p| &p.tables)
        .all(|t| t.schema.name != "audit"));

    let scoped_path = dir.path().join("scoped.db");
    let scoped_app = app(&scoped_path);
    let mut scoped = open(&scoped_path, 9, Writer::Scoped);
    for (i, page) in pages.iter().enumerate() {
        let report = scoped.import_partitions(page, now()).unwrap();
        assert_eq!(report.finished, i + 1 == pages.len());
        assert!(report.skipped_tables.is_empty());
    }
    assert_eq!(scoped.cursor(), covered);
    assert_eq!(notes(&scoped_app, None), notes(&full_app, Some("u1")));
    assert_eq!(notes(&scoped_app, None).len(), 148);
    assert_eq!(tags(&scoped_app), tags(&full_app));
    let hidden: i64 = scoped_app
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(hidden, 0);
    assert_eq!(tombstones(&scoped_app, "notes"), ["u1-003", "u1-077"]);
    assert_eq!(tombstones(&scoped_app, "tags"), ["2"]);
    // Merged rows are not captured again: nothing to publish.
    let drained = scoped.drain().unwrap();
    assert_eq!(drained.rows, 0);
    assert_eq!(scoped.outbox_depth().unwrap().0, 0);

    // Repeated: nothing changes.
    for page in &pages {
        let report = scoped.import_partitions(page, now()).unwrap();
        assert_eq!(report.remote_won, 0);
        assert_eq!(report.unchanged, report.rows);
    }
    assert_eq!(notes(&scoped_app, None), notes(&full_app, Some("u1")));
    assert_eq!(scoped.cursor(), covered);

    // An older export never moves the cursor back.
    let mut old = pages.last().unwrap().clone();
    old.start = None;
    old.covered = 1;
    old.tables.clear();
    let report = scoped.import_partitions(&old, now()).unwrap();
    assert!(report.finished);
    assert_eq!(scoped.cursor(), covered);

    // Two partitions at once, and the full store's own view is unchanged by exporting.
    let both = export_all(&full, &[user("u2"), user("u3")], 1 << 20);
    assert_eq!(both.len(), 1);
    let exported: usize = both[0]
        .tables
        .iter()
        .filter(|t| t.schema.name == "notes")
        .map(|t| t.rows.len())
        .sum();
    assert_eq!(exported, 300, "299 rows and one tombstone");
}

#[test]
fn a_scoped_stores_own_newer_writes_survive_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let (full, full_app) = full_store(&dir.path().join("full.db"));
    let pages = export_all(&full, &[user("u1")], 1 << 20);

    let scoped_path = dir.path().join("scoped.db");
    let scoped_app = app(&scoped_path);
    let mut scoped = open(&scoped_path, 9, Writer::Scoped);
    // Written after the full store's writes (newer versions): one captured, one not yet,
    // one new row; and a delete of a row the export still has.
    std::thread::sleep(std::time::Duration::from_millis(5));
    scoped_app
        .execute_batch(
            "INSERT INTO notes VALUES ('u1-001', 'u1', 'mine, captured');
             INSERT INTO notes VALUES ('u1-020', 'u1', 'gone soon');",
        )
        .unwrap();
    scoped.drain().unwrap();
    scoped_app
        .execute_batch(
            "INSERT INTO notes VALUES ('u1-002', 'u1', 'mine, not captured yet');
             INSERT INTO notes VALUES ('u1-new', 'u1', 'brand new');
             DELETE FROM notes WHERE id = 'u1-020';",
        )
        .unwrap();
    let mut captured = 0;
    for page in &pages {
        captured += scoped
            .import_partitions(page, now())
            .unwrap()
            .local_rows_captured;
    }
    assert_eq!(captured, 3, "pending writes are captured before merging");

    let mut expected = notes(&full_app, Some("u1"));
    expected.retain(|(id, _)| id != "u1-020");
    for (id, body) in &mut expected {
        match id.as_str() {
            "u1-001" => *body = "u1:mine, captured".into(),
            "u1-002" => *body = "u1:mine, not captured yet".into(),
            _ => {}
        }
    }
    expected.push(("u1-new".into(), "u1:brand new".into()));
    expected.sort();
    assert_eq!(notes(&scoped_app, None), expected);
    assert_eq!(scoped.cursor(), full.cursor());
    // The own writes are still waiting to be published.
    assert!(scoped.outbox_depth().unwrap().0 > 0);
}

#[test]
fn pages_from_replicas_at_different_positions_cover_the_smallest() {
    let dir = tempfile::tempdir().unwrap();
    let (mut full, full_app) = full_store(&dir.path().join("full.db"));
    let first = full
        .export_partitions(&rules(), &[user("u1")], None, 4 * 1024)
        .unwrap();
    let early = first.covered;
    // The replica moves on between two pages: a new note of u1 sorted after the first
    // page, and a change to one the first page held.
    full_app
        .execute_batch(
            "INSERT INTO notes VALUES ('u1-999', 'u1', 'late');
             UPDATE notes SET body = 'late edit' WHERE id = 'u1-000';",
        )
        .unwrap();
    publish_and_see(&mut full);
    assert!(full.cursor().get() > early);
    let mut pages = vec![first];
    loop {
        let after = pages.last().unwrap().next.clone();
        let Some(after) = after else { break };
        pages.push(
            full.export_partitions(&rules(), &[user("u1")], Some(&after), 4 * 1024)
                .unwrap(),
        );
    }
    assert!(pages.len() > 2);

    let scoped_path = dir.path().join("scoped.db");
    let scoped_app = app(&scoped_path);
    let mut scoped = open(&scoped_path, 9, Writer::Scoped);
    for page in &pages {
        scoped.import_partitions(page, now()).unwrap();
    }
    // The cursor is the first page's: the stream from there brings the edit of u1-000.
    assert_eq!(scoped.cursor(), StreamSeq::new(early));
    let ids: Vec<String> = notes(&scoped_app, None).into_iter().map(|n| n.0).collect();
    assert!(ids.contains(&"u1-999".to_owned()));
}
