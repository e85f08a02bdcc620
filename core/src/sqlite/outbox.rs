//! The outbox: encoded frames waiting for a JetStream acknowledgement.

use rusqlite::{params, Connection};

use super::{meta, Store};
use crate::capture::names::{self, quote};
use crate::change::BatchSeq;
use crate::error::{Context, StoreError};
use crate::report::OutboxFrame;

/// Appends a batch's frames, each with its subject after the prefix (`None`: unscoped),
/// with ids never used before (see [`meta::keys::NEXT_OUTBOX_ID`]).
pub fn push(
    conn: &Connection,
    batch_seq: BatchSeq,
    rows: usize,
    frames: &[(Option<String>, Vec<u8>)],
) -> Result<(), StoreError> {
    let first_id = next_ids(conn, frames.len())?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "INSERT INTO {}(id, batch_seq, part, parts, rows, frame, subject) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            quote(names::OUTBOX)
        ))
        .context("writing the outbox")?;
    for (i, (subject, frame)) in frames.iter().enumerate() {
        // The row count is carried by part 0 only, so sums count each batch once.
        let part_rows = if i == 0 { rows as i64 } else { 0 };
        let id = first_id + i as i64;
        stmt.execute(params![
            id,
            batch_seq.get() as i64,
            i as i64,
            frames.len() as i64,
            part_rows,
            frame,
            subject
        ])
        .context("writing the outbox")?;
    }
    Ok(())
}

/// Reserves `count` outbox ids never used before; returns the first: the stored next id,
/// or one past the highest id waiting if that is higher (read in one cached statement: a
/// drain runs this after every commit).
fn next_ids(conn: &Connection, count: usize) -> Result<i64, StoreError> {
    let first_id: i64 = conn
        .prepare_cached(&format!(
            "SELECT max(coalesce((SELECT value FROM {} WHERE key = ?1), 1), \
             (SELECT coalesce(max(id), 0) + 1 FROM {}))",
            quote(names::META),
            quote(names::OUTBOX)
        ))
        .and_then(|mut s| s.query_row([meta::keys::NEXT_OUTBOX_ID], |r| r.get(0)))
        .context("reading the next outbox id")?;
    meta::set(conn, meta::keys::NEXT_OUTBOX_ID, first_id + count as i64)?;
    Ok(first_id)
}

/// Appends one frame that is not a batch of this replica's (a refusal notice) with its own
/// message id: batch 0, no rows.
pub fn push_notice(
    conn: &Connection,
    subject: &str,
    frame: &[u8],
    msg_id: &str,
) -> Result<(), StoreError> {
    let id = next_ids(conn, 1)?;
    conn.prepare_cached(&format!(
        "INSERT INTO {}(id, batch_seq, part, parts, rows, frame, subject, msg_id) \
         VALUES (?1, 0, 0, 1, 0, ?2, ?3, ?4)",
        quote(names::OUTBOX)
    ))
    .and_then(|mut s| s.execute(params![id, frame, subject, msg_id]))
    .context("writing the outbox")?;
    Ok(())
}

/// Frames with an id greater than `after`, oldest first, at most `limit`; `id_prefix` (node
/// and incarnation) starts each message id.
pub fn after(
    conn: &Connection,
    after: i64,
    limit: usize,
    id_prefix: &str,
) -> Result<Vec<OutboxFrame>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT id, batch_seq, part, parts, rows, frame, subject, msg_id FROM {} WHERE id > ?1 ORDER BY id LIMIT ?2",
        quote(names::OUTBOX)
    ))
    .and_then(|mut s| {
        s.query_map(params![after, limit as i64], |r| {
            let batch_seq = BatchSeq::new(r.get::<_, i64>(1)? as u64);
            let part: u32 = r.get(2)?;
            Ok(OutboxFrame {
                id: r.get(0)?,
                batch_seq,
                part,
                parts: r.get(3)?,
                rows: r.get::<_, i64>(4)? as u64,
                frame: r.get(5)?,
                subject: r.get(6)?,
                msg_id: r
                    .get::<_, Option<String>>(7)?
                    .unwrap_or_else(|| format!("{id_prefix}-{batch_seq}-{part}")),
            })
        })?
        .collect()
    })
    .context("reading the outbox")
}

/// Removes acknowledged frames.
pub fn remove(conn: &Connection, ids: &[i64]) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "DELETE FROM {} WHERE id = ?1",
            quote(names::OUTBOX)
        ))
        .context("removing acknowledged frames")?;
    for id in ids {
        stmt.execute([id]).context("removing acknowledged frames")?;
    }
    Ok(())
}

/// Number of frames and of row changes waiting.
pub fn depth(conn: &Connection) -> Result<(u64, u64), StoreError> {
    conn.prepare_cached(&format!(
        "SELECT count(*), coalesce(sum(rows), 0) FROM {}",
        quote(names::OUTBOX)
    ))
    .and_then(|mut s| {
        s.query_row([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
    })
    .context("measuring the outbox")
}

/// Lowest and highest id waiting for an acknowledgement; `(0, 0)` when the outbox is empty.
pub fn id_range(conn: &Connection) -> Result<(i64, i64), StoreError> {
    conn.prepare_cached(&format!(
        "SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM {}",
        quote(names::OUTBOX)
    ))
    .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
    .context("reading the outbox")
}

impl Store {
    /// Lowest and highest outbox id waiting for an acknowledgement; `(0, 0)` when the outbox
    /// is empty (a host waiting for its writes to reach the stream compares them).
    pub fn outbox_id_range(&self) -> Result<(i64, i64), StoreError> {
        id_range(self.connection())
    }
}
