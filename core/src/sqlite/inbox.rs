//! Durable receiving state: parts of multi-part batches and parked messages.

use rusqlite::{params, Connection};

use crate::capture::names::{self, quote};
use crate::change::StreamSeq;
use crate::error::{Context, StoreError};
use crate::report::ParkReason;
use crate::wire::{Compression, MessageV1, RoutedPart};

/// Stores one part of a multi-part batch; returns the whole body once every part is here
/// (and forgets the parts).
pub fn add_part(conn: &Connection, part: &MessageV1) -> Result<Option<Vec<u8>>, StoreError> {
    let origin = part.origin.to_bytes();
    conn.prepare_cached(&format!(
        "INSERT OR IGNORE INTO {}(origin, batch_seq, part, parts, compression, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        quote(names::PARTS)
    ))
    .and_then(|mut s| {
        s.execute(params![
            &origin[..],
            part.batch_seq.get() as i64,
            part.part,
            part.parts,
            compression_code(part.compression),
            part.body
        ])
    })
    .context("storing a message part")?;
    let have: i64 = conn
        .prepare_cached(&format!(
            "SELECT count(*) FROM {} WHERE origin = ?1 AND batch_seq = ?2 AND parts = ?3",
            quote(names::PARTS)
        ))
        .and_then(|mut s| {
            s.query_row(
                params![&origin[..], part.batch_seq.get() as i64, part.parts],
                |r| r.get(0),
            )
        })
        .context("counting message parts")?;
    if have < part.parts as i64 {
        return Ok(None);
    }
    let mut body = Vec::new();
    {
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT body FROM {} WHERE origin = ?1 AND batch_seq = ?2 AND parts = ?3 ORDER BY part",
                quote(names::PARTS)
            ))
            .context("reading message parts")?;
        let mut rows = stmt
            .query(params![
                &origin[..],
                part.batch_seq.get() as i64,
                part.parts
            ])
            .context("reading message parts")?;
        while let Some(row) = rows.next().context("reading message parts")? {
            let bytes: Vec<u8> = row.get(0).context("reading message parts")?;
            body.extend_from_slice(&bytes);
        }
    }
    conn.prepare_cached(&format!(
        "DELETE FROM {} WHERE origin = ?1 AND batch_seq = ?2",
        quote(names::PARTS)
    ))
    .and_then(|mut s| s.execute(params![&origin[..], part.batch_seq.get() as i64]))
    .context("clearing message parts")?;
    Ok(Some(body))
}

/// How many stream messages a scoped replica's incomplete batch may wait for its other
/// frames: a client publishes a batch's frames back to back, so older parts are a batch that
/// will never complete (or a client filling full nodes' databases) and are forgotten. By
/// stream position, not time, so every full replica forgets the same parts.
pub const SCOPED_PART_WINDOW: u64 = 10_000;

/// Each route group's subject (after the prefix), compression and body (its frames
/// concatenated), in group order.
pub type GroupBodies = Vec<(Option<String>, Compression, Vec<u8>)>;

/// Stores one frame of a routed batch, with the subject it arrived on; returns every
/// group, in group order, once every frame of the batch is here (and forgets the frames),
/// or, with `group_only` (a scoped replica, which receives only its routes), this frame's
/// group once its frames are here. A scoped replica's frames (`scoped`) are kept under a
/// different origin key than full nodes' so they can never be joined to a full node's batch.
pub fn add_routed_part(
    conn: &Connection,
    part: &RoutedPart,
    seq: StreamSeq,
    subject: Option<&str>,
    scoped: bool,
    group_only: bool,
) -> Result<Option<GroupBodies>, StoreError> {
    if scoped {
        // Scoped replicas' origins carry one extra byte (see below).
        conn.prepare_cached(&format!(
            "DELETE FROM {} WHERE length(origin) = {} AND seq < ?1",
            quote(names::PARTS),
            crate::hlc::NodeId::LEN + 1
        ))
        .and_then(|mut s| s.execute([seq.get().saturating_sub(SCOPED_PART_WINDOW) as i64]))
        .context("forgetting scoped replicas' incomplete batches")?;
    }
    // Which stored frames make up what is awaited: the whole batch, or one group of it.
    let (group_filter, wanted) = if group_only {
        (
            format!("AND grp = {}", part.group_start),
            i64::from(part.group_frames),
        )
    } else {
        (String::new(), i64::from(part.parts))
    };
    let mut origin = part.origin.to_bytes().to_vec();
    if scoped {
        origin.push(b'c');
    }
    let batch_seq = part.batch_seq.get() as i64;
    conn.prepare_cached(&format!(
        "INSERT OR IGNORE INTO {}(origin, batch_seq, part, parts, compression, body, grp, subject, seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        quote(names::PARTS)
    ))
    .and_then(|mut s| {
        s.execute(params![
            &origin[..],
            batch_seq,
            part.part,
            part.parts,
            compression_code(part.compression),
            part.body,
            part.group_start,
            subject,
            seq.get() as i64
        ])
    })
    .context("storing a message part")?;
    let have: i64 = conn
        .prepare_cached(&format!(
            "SELECT count(*) FROM {} WHERE origin = ?1 AND batch_seq = ?2 AND parts = ?3 \
             AND grp IS NOT NULL {group_filter}",
            quote(names::PARTS)
        ))
        .and_then(|mut s| s.query_row(params![&origin[..], batch_seq, part.parts], |r| r.get(0)))
        .context("counting message parts")?;
    if have < wanted {
        return Ok(None);
    }
    let mut groups: Vec<(i64, Option<String>, Compression, Vec<u8>)> = Vec::new();
    {
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT grp, compression, body, subject FROM {} WHERE origin = ?1 AND batch_seq = ?2 \
                 AND parts = ?3 AND grp IS NOT NULL {group_filter} ORDER BY part",
                quote(names::PARTS)
            ))
            .context("reading message parts")?;
        let mut rows = stmt
            .query(params![&origin[..], batch_seq, part.parts])
            .context("reading message parts")?;
        while let Some(row) = rows.next().context("reading message parts")? {
            let group: i64 = row.get(0).context("reading message parts")?;
            let compression = compression_from_code(row.get(1).context("reading message parts")?);
            let bytes: Vec<u8> = row.get(2).context("reading message parts")?;
            let subject: Option<String> = row.get(3).context("reading message parts")?;
            match groups.last_mut() {
                Some((g, _, _, body)) if *g == group => body.extend_from_slice(&bytes),
                _ => groups.push((group, subject, compression, bytes)),
            }
        }
    }
    conn.prepare_cached(&format!(
        "DELETE FROM {} WHERE origin = ?1 AND batch_seq = ?2 {group_filter}",
        quote(names::PARTS)
    ))
    .and_then(|mut s| s.execute(params![&origin[..], batch_seq]))
    .context("clearing message parts")?;
    Ok(Some(
        groups
            .into_iter()
            .map(|(_, subject, compression, body)| (subject, compression, body))
            .collect(),
    ))
}

fn compression_from_code(code: i64) -> Compression {
    if code == 1 {
        Compression::Lz4
    } else {
        Compression::None
    }
}

fn compression_code(c: Compression) -> i64 {
    match c {
        Compression::None => 0,
        Compression::Lz4 => 1,
    }
}

/// Records a message that could not be applied (replacing an earlier record of it), with
/// the table it is about when it is about one.
pub fn park(
    conn: &Connection,
    seq: StreamSeq,
    frame: &[u8],
    kind: ParkReason,
    reason: &str,
    table: Option<&str>,
    now_millis: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO {}(stream_seq, frame, kind, reason, tbl, parked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT(stream_seq) DO UPDATE SET kind = excluded.kind, reason = excluded.reason, \
         tbl = excluded.tbl, attempts = attempts + 1",
        quote(names::PARKED)
    ))
    .and_then(|mut s| {
        s.execute(params![
            seq.get() as i64,
            frame,
            kind.as_str(),
            reason,
            table,
            now_millis
        ])
    })
    .context("parking a message")?;
    Ok(())
}

/// Parked message counts by the table they are about (`""` for messages about no single
/// table: undecodable frames, clock refusals, migrations), sorted by table.
pub fn parked_by_table(conn: &Connection) -> Result<Vec<(String, u64)>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT coalesce(tbl, ''), count(*) FROM {} GROUP BY 1 ORDER BY 1",
        quote(names::PARKED)
    ))
    .and_then(|mut s| {
        s.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect()
    })
    .context("counting parked messages by table")
}

/// A parked message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedMessage {
    /// Stream position it arrived at.
    pub seq: StreamSeq,
    /// The frame (for multi-part batches, the reassembled single-part frame).
    pub frame: Vec<u8>,
    /// Kind of failure.
    pub kind: ParkReason,
    /// Why it was parked.
    pub reason: String,
    /// When it was first parked (Unix ms).
    pub parked_at: i64,
    /// How many retries failed.
    pub attempts: i64,
}

/// Lists parked messages in stream order.
pub fn parked(conn: &Connection) -> Result<Vec<ParkedMessage>, StoreError> {
    conn.prepare(&format!(
        "SELECT stream_seq, frame, kind, reason, parked_at, attempts FROM {} ORDER BY stream_seq",
        quote(names::PARKED)
    ))
    .and_then(|mut s| {
        s.query_map([], |r| {
            Ok(ParkedMessage {
                seq: StreamSeq::new(r.get::<_, i64>(0)? as u64),
                frame: r.get(1)?,
                kind: ParkReason::from_name(&r.get::<_, String>(2)?),
                reason: r.get(3)?,
                parked_at: r.get(4)?,
                attempts: r.get(5)?,
            })
        })?
        .collect()
    })
    .context("listing parked messages")
}

/// Number of parked messages.
pub fn parked_count(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached(&format!("SELECT count(*) FROM {}", quote(names::PARKED)))
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .map(|n| n as u64)
        .context("counting parked messages")
}

/// Deletes a parked message (after it was applied).
pub fn unpark(conn: &Connection, seq: StreamSeq) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "DELETE FROM {} WHERE stream_seq = ?1",
        quote(names::PARKED)
    ))
    .and_then(|mut s| s.execute([seq.get() as i64]))
    .context("removing a parked message")?;
    Ok(())
}
