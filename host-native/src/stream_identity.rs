//! Which change stream a node's cursor counts in.
//!
//! A cursor is a sequence number of one particular stream. If that stream is deleted and
//! created again (an operator's `nats stream rm`, a JetStream store that was wiped, a node
//! pointed at another NATS), its sequence numbers start over at 1 and a node that consumed
//! from its old cursor + 1 would silently skip the new stream's first messages. So each
//! node records the creation time of the stream it consumes, and refuses to consume from a
//! stream that is not that one, or that ends before its cursor.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use harmonylite_core::sqlite::meta;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// `__hl_meta` key: creation time (Unix nanoseconds) of the stream the cursor counts in.
pub const STREAM_CREATED_KEY: &str = "stream_created_ns";

/// What a node knows about the stream it is about to consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFacts {
    /// The stream's creation time, Unix nanoseconds.
    pub created_ns: i64,
    /// Its last sequence.
    pub last_seq: u64,
}

/// Whether a node may consume the stream from its cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The stream is the one the cursor counts in.
    Same,
    /// No stream was recorded yet (a new node, or a database from before this check): the
    /// stream is recorded now.
    Recorded,
    /// The stream is not the one the cursor counts in; the text says why and what to do.
    Mismatch(String),
}

/// Compares the stream with the one recorded in `conn` and records it when none is.
pub fn check(
    conn: &Connection,
    stream_name: &str,
    cursor: u64,
    facts: StreamFacts,
) -> anyhow::Result<Verdict> {
    let recorded = meta::get_i64(conn, STREAM_CREATED_KEY)?;
    let advice = "Nothing more is applied here, so nothing is skipped. If the stream was re-created on \
                  purpose, stop the application and this node and run `harmonylite --config <file> \
                  --adopt-stream` to apply the new stream from its first message (docs/operations.md, \
                  \"The change stream was re-created\")";
    if let Some(recorded) = recorded.filter(|&r| r != facts.created_ns) {
        return Ok(Verdict::Mismatch(format!(
            "the change stream {stream_name} was created at {} but this node's cursor ({cursor}) counts in the \
             stream created at {}: it was deleted and created again. {advice}",
            describe(facts.created_ns),
            describe(recorded),
        )));
    }
    if facts.last_seq < cursor {
        return Ok(Verdict::Mismatch(format!(
            "the change stream {stream_name} ends at sequence {} but this node has applied up to {cursor}: the \
             stream lost messages or is not the one this node consumed. {advice}",
            facts.last_seq
        )));
    }
    if recorded.is_some() {
        return Ok(Verdict::Same);
    }
    meta::set(conn, STREAM_CREATED_KEY, facts.created_ns)?;
    Ok(Verdict::Recorded)
}

/// `--adopt-stream`: makes this database apply the change stream from its first message at
/// the next start, whatever stream that is. The cursor goes back to 0 and the recorded
/// stream is forgotten, so the next start records the stream it finds (last-writer-wins
/// makes applying a change this node already has harmless). Refuses while another process
/// (the application, a running sidecar) has the database open: a running sidecar would
/// write its own cursor back.
pub fn adopt_stream(db_path: &Path) -> anyhow::Result<u64> {
    anyhow::ensure!(
        db_path.is_file(),
        "--adopt-stream: the database {} does not exist",
        db_path.display()
    );
    let openers = crate::restore::other_openers(db_path);
    anyhow::ensure!(
        openers.is_empty(),
        "--adopt-stream: {} is open in process {}: stop the application and harmonylite first",
        db_path.display(),
        openers.join(", ")
    );
    let mut conn = Connection::open_with_flags(
        db_path,
        OpenFlags::default().difference(OpenFlags::SQLITE_OPEN_CREATE),
    )
    .with_context(|| format!("opening {}", db_path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let cursor = meta::get_i64(&tx, meta::keys::CURSOR)
        .ok()
        .flatten()
        .with_context(|| {
            format!(
                "--adopt-stream: {} has no harmonylite metadata; nothing to adopt",
                db_path.display()
            )
        })?;
    forget_stream(&tx)?;
    tx.commit()
        .with_context(|| format!("committing --adopt-stream on {}", db_path.display()))?;
    Ok(cursor.max(0) as u64)
}

/// Sets the cursor to 0 and forgets the recorded stream.
fn forget_stream(conn: &Connection) -> anyhow::Result<()> {
    meta::set(conn, meta::keys::CURSOR, 0_i64)?;
    conn.execute(
        &format!(
            "DELETE FROM \"{}\" WHERE key = ?1",
            harmonylite_core::capture::names::META
        ),
        [STREAM_CREATED_KEY],
    )?;
    Ok(())
}

/// A creation time for messages: RFC 3339 in UTC, or the raw number if out of range.
fn describe(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ns} ns after the Unix epoch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE __hl_meta(key TEXT PRIMARY KEY, value)")
            .unwrap();
        conn
    }

    const CREATED: i64 = 1_795_706_470_000_000_000;

    #[test]
    fn records_the_first_stream_then_accepts_it() {
        let conn = db();
        let facts = StreamFacts {
            created_ns: CREATED,
            last_seq: 10,
        };
        assert_eq!(check(&conn, "s", 5, facts).unwrap(), Verdict::Recorded);
        assert_eq!(check(&conn, "s", 10, facts).unwrap(), Verdict::Same);
    }

    #[test]
    fn refuses_a_re_created_stream_even_when_it_is_long_enough() {
        let conn = db();
        let old = StreamFacts {
            created_ns: CREATED,
            last_seq: 10,
        };
        check(&conn, "s", 10, old).unwrap();
        let new = StreamFacts {
            created_ns: CREATED + 1,
            last_seq: 50,
        };
        let Verdict::Mismatch(why) = check(&conn, "s", 10, new).unwrap() else {
            panic!("a re-created stream was accepted");
        };
        assert!(why.contains("deleted and created again"), "{why}");
        assert!(why.contains("--adopt-stream"), "{why}");
    }

    #[test]
    fn refuses_a_stream_that_ends_before_the_cursor() {
        let conn = db();
        let facts = StreamFacts {
            created_ns: CREATED,
            last_seq: 3,
        };
        let Verdict::Mismatch(why) = check(&conn, "s", 7, facts).unwrap() else {
            panic!("a stream shorter than the cursor was accepted");
        };
        assert!(why.contains("ends at sequence 3"), "{why}");
        // Nothing was recorded for a stream that was refused.
        assert_eq!(meta::get_i64(&conn, STREAM_CREATED_KEY).unwrap(), None);
    }

    #[test]
    fn adopting_resets_the_cursor_and_records_the_next_stream() {
        let dir = std::env::temp_dir().join(format!("hl-adopt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.db");
        let _ = std::fs::remove_file(&path);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE __hl_meta(key TEXT PRIMARY KEY, value)")
                .unwrap();
            meta::set(&conn, meta::keys::CURSOR, 42_i64).unwrap();
            let old = StreamFacts {
                created_ns: CREATED,
                last_seq: 42,
            };
            assert_eq!(check(&conn, "s", 42, old).unwrap(), Verdict::Recorded);
        }
        assert_eq!(adopt_stream(&path).unwrap(), 42);
        let conn = Connection::open(&path).unwrap();
        assert_eq!(meta::get_i64(&conn, meta::keys::CURSOR).unwrap(), Some(0));
        let new = StreamFacts {
            created_ns: CREATED + 9,
            last_seq: 2,
        };
        assert_eq!(check(&conn, "s", 0, new).unwrap(), Verdict::Recorded);
        drop(conn);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn adopting_needs_a_harmonylite_database() {
        let missing = std::env::temp_dir().join("hl-adopt-missing/app.db");
        let err = adopt_stream(&missing).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
