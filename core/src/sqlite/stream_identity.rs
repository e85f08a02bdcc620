//! Which change stream a replica's cursor counts in.
//!
//! A cursor is a sequence number of one particular stream. If that stream is deleted and
//! created again (an operator's `nats stream rm`, a JetStream store that was wiped, a
//! replica pointed at another NATS), its sequence numbers start over at 1, and a replica
//! that consumed from its old cursor + 1 would silently skip the new stream's first
//! messages. So each replica records the creation time of the stream it consumes, and
//! refuses to consume from a stream that is not that one, or that ends before its cursor.
//! Both hosts use this: the sidecar and the wasm replica.

use rusqlite::Connection;

use crate::capture::names::{self, quote};
use crate::error::{Context, StoreError};
use crate::sqlite::meta::{self, keys};

pub use crate::engine::{StreamFacts, StreamVerdict as Verdict};

/// Compares the stream with the one recorded in `conn`, and records it when none is or when
/// the replica applied nothing yet (`cursor == 0`).
pub fn check(
    conn: &Connection,
    stream_name: &str,
    cursor: u64,
    facts: StreamFacts,
) -> Result<Verdict, StoreError> {
    let recorded = meta::get_i64(conn, keys::STREAM_CREATED)?;
    if cursor == 0 && recorded != Some(facts.created_ns) {
        // Nothing applied yet: consuming any stream from its first message skips nothing.
        meta::set(conn, keys::STREAM_CREATED, facts.created_ns)?;
        return Ok(Verdict::Recorded);
    }
    if let Some(recorded) = recorded.filter(|&r| r != facts.created_ns) {
        return Ok(Verdict::Mismatch(format!(
            "the change stream {stream_name} was created at {} but this replica's cursor ({cursor}) counts in the \
             stream created at {}: it was deleted and created again",
            describe_unix_ns(facts.created_ns),
            describe_unix_ns(recorded),
        )));
    }
    if facts.last_seq < cursor {
        return Ok(Verdict::Mismatch(format!(
            "the change stream {stream_name} ends at sequence {} but this replica has applied up to {cursor}: the \
             stream lost messages or is not the one this replica consumed",
            facts.last_seq
        )));
    }
    if recorded.is_some() {
        return Ok(Verdict::Same);
    }
    meta::set(conn, keys::STREAM_CREATED, facts.created_ns)?;
    Ok(Verdict::Recorded)
}

/// Why this replica must not consume the stream from `cursor`, ending with what to do
/// (`how_to_adopt`: the host's way, e.g. "call adoptStream()"); `None` when it is the stream
/// the cursor counts in ([`check`]).
pub fn refusal(
    conn: &Connection,
    stream_name: &str,
    cursor: u64,
    facts: StreamFacts,
    how_to_adopt: &str,
) -> Result<Option<String>, StoreError> {
    Ok(match check(conn, stream_name, cursor, facts)? {
        Verdict::Same | Verdict::Recorded => None,
        Verdict::Mismatch(why) => Some(crate::session::mismatch_refusal(&why, how_to_adopt)),
    })
}

/// Makes the database apply the change stream from its first message, whatever stream
/// that is: the cursor goes back to 0 and the recorded stream is forgotten, so the next
/// check records the stream it finds (last-writer-wins makes applying a change this
/// replica already has harmless). One savepoint: both or neither. The caller makes sure
/// no consumer of the old cursor is running.
pub fn forget_stream(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("SAVEPOINT hl_forget_stream")
        .context("starting to forget the change stream")?;
    let forgotten = meta::set(conn, keys::CURSOR, 0_i64).and_then(|()| {
        conn.execute(
            &format!("DELETE FROM {} WHERE key = ?1", quote(names::META)),
            [keys::STREAM_CREATED],
        )
        .context(format!("forgetting the change stream in {}", names::META))
        .map(|_| ())
    });
    let end = if forgotten.is_ok() {
        "RELEASE hl_forget_stream"
    } else {
        "ROLLBACK TO hl_forget_stream; RELEASE hl_forget_stream"
    };
    conn.execute_batch(end)
        .context("finishing forgetting the change stream")?;
    forgotten
}

/// A Unix time in nanoseconds as RFC 3339 in UTC (`2026-11-26T19:14:10.123456789Z`).
pub fn describe_unix_ns(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
        assert!(why.contains("2026-11-26T15:21:10.000000001Z"), "{why}");
    }

    #[test]
    fn a_replica_that_applied_nothing_takes_any_stream() {
        let conn = db();
        let old = StreamFacts {
            created_ns: CREATED,
            last_seq: 0,
        };
        assert_eq!(check(&conn, "s", 0, old).unwrap(), Verdict::Recorded);
        let new = StreamFacts {
            created_ns: CREATED + 1,
            last_seq: 3,
        };
        assert_eq!(check(&conn, "s", 0, new).unwrap(), Verdict::Recorded);
        assert_eq!(check(&conn, "s", 3, new).unwrap(), Verdict::Same);
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
        assert_eq!(meta::get_i64(&conn, keys::STREAM_CREATED).unwrap(), None);
    }

    #[test]
    fn forgetting_resets_the_cursor_and_records_the_next_stream() {
        let conn = db();
        meta::set(&conn, keys::CURSOR, 42_i64).unwrap();
        let old = StreamFacts {
            created_ns: CREATED,
            last_seq: 42,
        };
        assert_eq!(check(&conn, "s", 42, old).unwrap(), Verdict::Recorded);
        forget_stream(&conn).unwrap();
        assert_eq!(meta::get_i64(&conn, keys::CURSOR).unwrap(), Some(0));
        let new = StreamFacts {
            created_ns: CREATED + 9,
            last_seq: 2,
        };
        assert_eq!(check(&conn, "s", 0, new).unwrap(), Verdict::Recorded);
    }

    #[test]
    fn forgetting_inside_a_transaction_keeps_it_open() {
        let conn = db();
        conn.execute_batch("BEGIN").unwrap();
        forget_stream(&conn).unwrap();
        assert!(!conn.is_autocommit());
        conn.execute_batch("ROLLBACK").unwrap();
        assert_eq!(meta::get_i64(&conn, keys::CURSOR).unwrap(), None);
    }

    #[test]
    fn describes_times_in_utc() {
        assert_eq!(describe_unix_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            describe_unix_ns(951_782_400_000_000_123),
            "2000-02-29T00:00:00.000000123Z"
        );
        assert_eq!(describe_unix_ns(-1), "1969-12-31T23:59:59.999999999Z");
    }
}
