//! Validating scoped replicas' changes, the same way on every full replica.
//!
//! A change published on a scoped replica's subject (`scope::Writer::Scoped`) is accepted
//! only if, for every row of every route group of its batch:
//!
//! 1. the group's subject names a partition of a partitioned table, and the row is of that
//!    table;
//! 2. an upsert's image belongs to that partition (its partition columns hold the
//!    partition's values);
//! 3. the key was not given to another partition: the *accepted* registry holds no other
//!    partition for it, unless the same batch deletes the key on that partition's own
//!    subject (a move's moved-out marker, `routing::route`: publishing there proves the
//!    writer may write that partition).
//!
//! Otherwise the whole batch is refused: nothing of it is applied, here or anywhere.
//!
//! The accepted registry (`__hl_partitions.accepted`) is a last-writer-wins register per
//! key over the partitioned upserts of every accepted message: full nodes' (trusted) and
//! accepted scoped ones. Being a function of the set of messages before a position, not of
//! the order they were applied in, it is the same on every full replica at the same stream
//! position, so every replica reaches the same verdict. A full replica's own messages are
//! skipped when they come back from the stream, so their upserts wait in
//! `__hl_partitions_pending` from the drain until the message is seen in the stream.

use rusqlite::{params, Connection, OptionalExtension};

use crate::capture::names::{self, quote};
use crate::change::{Batch, BatchSeq, RowChange, TableSchema};
use crate::error::{Context, StoreError};
use crate::hlc::{Hlc, NodeId};
use crate::scope::{Partition, Route, ScopeRules, TableScope, Writer};
use crate::value::Value;

/// Creates the pending table if missing.
pub(super) fn create_pending(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {}(batch_seq INTEGER NOT NULL, tbl INTEGER NOT NULL, \
         key BLOB NOT NULL, part TEXT NOT NULL, hlc BLOB NOT NULL, \
         PRIMARY KEY(batch_seq, tbl, key)) WITHOUT ROWID",
        quote(names::PARTITIONS_PENDING)
    ))
    .context("creating the pending partition table")
}

/// Why a scoped replica's change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Verdict {
    /// The table of the first offending row ("" when the message is not a batch).
    pub table: String,
    /// Its key, as text.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl Verdict {
    pub(super) fn message(reason: impl Into<String>) -> Self {
        Verdict {
            table: String::new(),
            key: String::new(),
            reason: reason.into(),
        }
    }
}

impl Verdict {
    /// The report entry for the message at `seq` from `origin`.
    pub(super) fn into_refused(
        self,
        seq: crate::change::StreamSeq,
        origin: Option<NodeId>,
    ) -> crate::report::Refused {
        crate::report::Refused {
            seq,
            origin,
            table: self.table,
            key: self.key,
            reason: self.reason,
        }
    }
}

/// Whether `subject` (after the prefix) is a scoped replica's.
pub(super) fn is_scoped_subject(subject: Option<&str>, rules: &ScopeRules) -> bool {
    subject
        .and_then(|s| Route::parse_suffix(s, rules))
        .is_some_and(|(_, writer)| writer == Writer::Scoped)
}

/// Checks a scoped replica's batch, given each route group with the subject it arrived on.
pub(super) fn check(
    conn: &Connection,
    rules: &ScopeRules,
    groups: &[(Option<String>, Batch)],
) -> Result<Result<(), Verdict>, StoreError> {
    // Keys the batch deletes on a partition's own subject: a move's moved-out marker
    // (`routing::route`), which proves the writer may write the partition the key leaves.
    let mut released: Vec<(String, &[Value], Partition)> = Vec::new();
    for (subject, batch) in groups {
        if let Some((Route::Partition { partition, table }, Writer::Scoped)) = subject
            .as_deref()
            .and_then(|s| Route::parse_suffix(s, rules))
        {
            for row in batch.rows.iter().filter(|r| r.values.is_none()) {
                released.push((table.clone(), &row.key, partition.clone()));
            }
        }
    }
    for (subject, batch) in groups {
        let Some((Route::Partition { partition, table }, Writer::Scoped)) = subject
            .as_deref()
            .and_then(|s| Route::parse_suffix(s, rules))
        else {
            return Ok(Err(Verdict::message(format!(
                "a scoped replica's batch has a part on {:?}, not a scoped partition subject",
                subject.as_deref().unwrap_or("an unknown subject")
            ))));
        };
        let TableScope::Partitioned { columns, .. } = rules.table_scope(&table) else {
            return Ok(Err(Verdict::message(format!(
                "table {table:?} of the subject is not partitioned"
            ))));
        };
        for row in &batch.rows {
            let schema = &batch.tables[row.table as usize];
            let refuse = |reason: String| Verdict {
                table: schema.name.clone(),
                key: format!("{:?}", row.key),
                reason,
            };
            if !schema.name.eq_ignore_ascii_case(&table) {
                return Ok(Err(refuse(format!(
                    "a row of {:?} on the subject of table {table:?}",
                    schema.name
                ))));
            }
            if let Some(values) = &row.values {
                let image: Vec<Value> = columns
                    .iter()
                    .map(|c| column_value(schema, &row.key, values, c))
                    .collect();
                if image != partition.values {
                    return Ok(Err(refuse(format!(
                        "the row belongs to partition {}, the subject names {partition}",
                        Partition {
                            rule: partition.rule.clone(),
                            values: image
                        }
                    ))));
                }
            }
            if let Some((owner, _)) = accepted(conn, &table, &row.key)? {
                let moved_out_of_owner = released
                    .iter()
                    .any(|(t, key, p)| *t == table && *key == row.key.as_slice() && *p == owner);
                if owner != partition && !moved_out_of_owner {
                    return Ok(Err(refuse(format!(
                        "the key belongs to partition {owner}, not {partition}"
                    ))));
                }
            }
        }
    }
    Ok(Ok(()))
}

/// Records the partitioned upserts of an accepted batch in the accepted registry (a
/// last-writer-wins register per key).
pub(super) fn accept(
    conn: &Connection,
    rules: &ScopeRules,
    origin: NodeId,
    batch: &Batch,
) -> Result<(), StoreError> {
    for row in &batch.rows {
        let schema = &batch.tables[row.table as usize];
        if let Some((tbl, partition)) = upsert_partition(rules, schema, row) {
            record(conn, &tbl, &row.key, &partition, row.hlc(origin))?;
        }
    }
    Ok(())
}

/// Remembers a drained batch's partitioned upserts until its message is seen in the
/// stream ([`own_message_seen`]).
pub(super) fn remember_own(
    conn: &Connection,
    rules: &ScopeRules,
    origin: NodeId,
    batch_seq: BatchSeq,
    batch: &Batch,
) -> Result<(), StoreError> {
    let mut insert = conn
        .prepare_cached(&format!(
            "INSERT OR REPLACE INTO {}(batch_seq, tbl, key, part, hlc) VALUES (?1, ?2, ?3, ?4, ?5)",
            quote(names::PARTITIONS_PENDING)
        ))
        .context("remembering a batch's partitions")?;
    for row in &batch.rows {
        let schema = &batch.tables[row.table as usize];
        if let Some((tbl, partition)) = upsert_partition(rules, schema, row) {
            insert
                .execute(params![
                    batch_seq.get() as i64,
                    tbl,
                    encoded_key(&row.key),
                    partition.token(),
                    &row.hlc(origin).to_bytes()[..]
                ])
                .context("remembering a batch's partitions")?;
        }
    }
    Ok(())
}

/// Moves the remembered upserts of own batch `batch_seq` into the accepted registry: its
/// message is now in the stream, at the position every replica sees it.
pub(super) fn own_message_seen(conn: &Connection, batch_seq: BatchSeq) -> Result<(), StoreError> {
    let pending: Vec<(String, Vec<u8>, String, Vec<u8>)> = conn
        .prepare_cached(&format!(
            "SELECT tbl, key, part, hlc FROM {} WHERE batch_seq = ?1",
            quote(names::PARTITIONS_PENDING)
        ))
        .and_then(|mut s| {
            s.query_map([batch_seq.get() as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })
        .context("reading a batch's partitions")?;
    for (tbl, key, part, hlc) in pending {
        record_encoded(conn, &tbl, &key, &part, &hlc)?;
    }
    conn.prepare_cached(&format!(
        "DELETE FROM {} WHERE batch_seq = ?1",
        quote(names::PARTITIONS_PENDING)
    ))
    .and_then(|mut s| s.execute([batch_seq.get() as i64]))
    .context("forgetting a batch's partitions")?;
    Ok(())
}

/// The registry's table name and the partition of a partitioned upsert (by the rules and
/// the sender's schema only, never this replica's tables: every replica must agree).
fn upsert_partition(
    rules: &ScopeRules,
    schema: &TableSchema,
    row: &RowChange,
) -> Option<(String, Partition)> {
    let values = row.values.as_ref()?;
    let TableScope::Partitioned { rule, columns } = rules.table_scope(&schema.name) else {
        return None;
    };
    Some((
        schema.name.to_lowercase(),
        Partition {
            rule: rule.name.clone(),
            values: columns
                .iter()
                .map(|c| column_value(schema, &row.key, values, c))
                .collect(),
        },
    ))
}

/// The value of `column` in a row image (a key column or a value column; NULL when the
/// sender's table lacks it).
pub(super) fn column_value(
    schema: &TableSchema,
    key: &[Value],
    values: &[Value],
    column: &str,
) -> Value {
    let named = |c: &String| c.eq_ignore_ascii_case(column);
    if let Some(i) = schema.key_columns.iter().position(named) {
        return key[i].clone();
    }
    schema
        .value_columns
        .iter()
        .position(named)
        .map_or(Value::Null, |i| values[i].clone())
}

/// A key as the registries store it.
pub(super) fn encoded_key(key: &[Value]) -> Vec<u8> {
    postcard::to_allocvec(key).expect("encoding values into a Vec cannot fail")
}

fn record(
    conn: &Connection,
    tbl: &str,
    key: &[Value],
    partition: &Partition,
    hlc: Hlc,
) -> Result<(), StoreError> {
    record_encoded(
        conn,
        tbl,
        &encoded_key(key),
        &partition.token(),
        &hlc.to_bytes(),
    )
}

fn record_encoded(
    conn: &Connection,
    tbl: &str,
    key: &[u8],
    part: &str,
    hlc: &[u8],
) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO {t}(tbl, key, accepted, accepted_hlc) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT(tbl, key) DO UPDATE SET accepted = excluded.accepted, \
         accepted_hlc = excluded.accepted_hlc \
         WHERE {t}.accepted_hlc IS NULL OR excluded.accepted_hlc > {t}.accepted_hlc",
        t = quote(names::PARTITIONS)
    ))
    .and_then(|mut s| s.execute(params![tbl, key, part, hlc]))
    .context("recording a key's accepted partition")?;
    Ok(())
}

/// The accepted partition of a key and the HLC that gave it.
fn accepted(
    conn: &Connection,
    tbl: &str,
    key: &[Value],
) -> Result<Option<(Partition, Vec<u8>)>, StoreError> {
    let row: Option<(Option<String>, Option<Vec<u8>>)> = conn
        .prepare_cached(&format!(
            "SELECT accepted, accepted_hlc FROM {} WHERE tbl = ?1 AND key = ?2",
            quote(names::PARTITIONS)
        ))
        .and_then(|mut s| {
            s.query_row(params![tbl, encoded_key(key)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .context("reading a key's accepted partition")?;
    match row {
        Some((Some(token), Some(hlc))) => {
            let partition = Partition::from_token(&token).ok_or_else(|| {
                StoreError::Corrupt(format!("partition registry holds {token:?}"))
            })?;
            Ok(Some((partition, hlc)))
        }
        _ => Ok(None),
    }
}
