//! The application side of a chaos run: one thread per node writing random transactions
//! through an ordinary SQLite connection on the node's database file — inserts, updates,
//! deletes, primary-key changes, and upserts of a few hot rows that every node writes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use harmonylite_core::value::Value;
use rusqlite::{Connection, OptionalExtension};

use super::history::{now_ms, Commit, History, Outcome, RowWrite};
use super::Rng;

/// The replicated schema every node starts with.
pub const SCHEMA: &str =
    "CREATE TABLE items(id TEXT PRIMARY KEY, owner TEXT NOT NULL, val INTEGER, note TEXT);
CREATE TABLE hot(id INTEGER PRIMARY KEY, val TEXT NOT NULL, n INTEGER NOT NULL);";

/// The replicated tables, compared by the checker.
pub const TABLES: [&str; 2] = ["items", "hot"];

/// Number of hot rows every node writes.
const HOT_ROWS: i64 = 5;

/// Starts node `node`'s writer on `db`; it stops when `stop` is set.
pub fn spawn_writer(
    node: usize,
    db: PathBuf,
    seed: u64,
    stop: Arc<AtomicBool>,
    history: History,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("writer-{node}"))
        .spawn(move || {
            let mut rng = Rng::new(seed ^ ((node as u64 + 1) << 32));
            let mut counter = 0u64;
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = open(&db);
                }
                if let Some(c) = conn.as_mut() {
                    if !one_transaction(c, node, &mut rng, &mut counter, &history) {
                        conn = None;
                    }
                }
                std::thread::sleep(Duration::from_millis(5 + rng.below(25)));
            }
        })
        .expect("spawning a writer thread")
}

fn open(db: &PathBuf) -> Option<Connection> {
    let conn = Connection::open(db).ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    Some(conn)
}

/// Runs one random transaction; returns false when the connection should be reopened.
fn one_transaction(
    conn: &mut Connection,
    node: usize,
    rng: &mut Rng,
    counter: &mut u64,
    history: &History,
) -> bool {
    let begin_ms = now_ms();
    if conn.execute_batch("BEGIN IMMEDIATE").is_err() {
        history.failed();
        return false;
    }
    let mut writes: Vec<RowWrite> = Vec::new();
    let ops = 1 + rng.below(3);
    for _ in 0..ops {
        if let Err(_e) = one_write(conn, node, rng, counter, &mut writes) {
            let _ = conn.execute_batch("ROLLBACK");
            history.failed();
            return true;
        }
    }
    let outcome = match conn.execute_batch("COMMIT") {
        Ok(()) => Outcome::Acknowledged,
        Err(_) => {
            let _ = conn.execute_batch("ROLLBACK");
            Outcome::Uncertain
        }
    };
    history.commit(Commit {
        node,
        begin_ms,
        end_ms: now_ms(),
        writes,
        outcome,
    });
    true
}

fn record(writes: &mut Vec<RowWrite>, write: RowWrite) {
    writes.retain(|w| !(w.table == write.table && w.key == write.key));
    writes.push(write);
}

fn item_image(conn: &Connection, id: &str) -> rusqlite::Result<Option<BTreeMap<String, Value>>> {
    conn.query_row(
        "SELECT id, owner, val, note FROM items WHERE id = ?1",
        [id],
        |r| {
            let mut m = BTreeMap::new();
            for (i, name) in ["id", "owner", "val", "note"].iter().enumerate() {
                m.insert(name.to_string(), r.get::<_, Value>(i)?);
            }
            Ok(m)
        },
    )
    .optional()
}

fn random_item(conn: &Connection, rng: &mut Rng) -> rusqlite::Result<Option<String>> {
    let count: i64 = conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0))?;
    if count == 0 {
        return Ok(None);
    }
    conn.query_row(
        "SELECT id FROM items ORDER BY id LIMIT 1 OFFSET ?1",
        [rng.below(count as u64) as i64],
        |r| r.get(0),
    )
    .optional()
}

fn one_write(
    conn: &Connection,
    node: usize,
    rng: &mut Rng,
    counter: &mut u64,
    writes: &mut Vec<RowWrite>,
) -> rusqlite::Result<()> {
    *counter += 1;
    let tag = format!("n{node}-{counter}");
    let roll = rng.below(100);
    let item = |id: &str, image| RowWrite {
        table: "items".into(),
        key: Value::Text(id.into()),
        image,
    };
    if roll < 30 {
        conn.execute(
            "INSERT INTO items(id, owner, val, note) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![tag, format!("n{node}"), rng.below(1000) as i64, tag],
        )?;
        let image = item_image(conn, &tag)?;
        record(writes, item(&tag, image));
    } else if roll < 50 {
        if let Some(id) = random_item(conn, rng)? {
            conn.execute(
                "UPDATE items SET val = ?2, note = ?3 WHERE id = ?1",
                rusqlite::params![id, rng.below(1000) as i64, tag],
            )?;
            let image = item_image(conn, &id)?;
            record(writes, item(&id, image));
        }
    } else if roll < 60 {
        if let Some(id) = random_item(conn, rng)? {
            conn.execute("DELETE FROM items WHERE id = ?1", [&id])?;
            record(writes, item(&id, None));
        }
    } else if roll < 70 {
        if let Some(id) = random_item(conn, rng)? {
            conn.execute("UPDATE items SET id = ?2 WHERE id = ?1", [&id, &tag])?;
            record(writes, item(&id, None));
            let image = item_image(conn, &tag)?;
            record(writes, item(&tag, image));
        }
    } else {
        let id = rng.below(HOT_ROWS as u64) as i64;
        conn.execute(
            "INSERT INTO hot(id, val, n) VALUES (?1, ?2, 1)
             ON CONFLICT(id) DO UPDATE SET val = excluded.val, n = n + 1",
            rusqlite::params![id, tag],
        )?;
        let image = conn.query_row("SELECT id, val, n FROM hot WHERE id = ?1", [id], |r| {
            let mut m = BTreeMap::new();
            for (i, name) in ["id", "val", "n"].iter().enumerate() {
                m.insert(name.to_string(), r.get::<_, Value>(i)?);
            }
            Ok(m)
        })?;
        record(
            writes,
            RowWrite {
                table: "hot".into(),
                key: Value::Integer(id),
                image: Some(image),
            },
        );
    }
    Ok(())
}
