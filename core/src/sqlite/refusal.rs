//! Refused writes of scoped replicas, from both sides.
//!
//! **Full replica.** When it refuses a scoped replica's batch ([`super::scope_check`]), it
//! writes a [`RefusedNotice`] to its outbox in the same transaction ([`publish_notice`]),
//! on the writer-`f` subject of the partition the refused frame named: only full nodes may
//! publish there and only that partition's replicas read it. Every full replica reaches the
//! same verdict and gives the notice the same message id, so the stream keeps one copy
//! within its duplicate window.
//!
//! **Scoped replica.** Its writes return to the state the cluster accepted in two ways:
//!
//! - at drain, rows it may not write are refused before they are published
//!   ([`refuse_unwritable`]): a partition its token does not grant (the partitions its feed
//!   named, [`super::StoreOptions::partitions`]), a shared table, a hidden table;
//! - a notice for one of its batches ([`receive_notice`]) refuses every row of it.
//!
//! Either way each row is *forgotten* locally (row, version and registered partition
//! removed without capture: nothing is replicated) and queued in `__hl_refetch`; the host
//! asks a full node for those keys ([`Store::refetch_keys`], the bootstrap service with
//! `keys`) and merges the answer ([`Store::import_refetched`]): a row the replica may see
//! comes back at its accepted version, one it may not see stays gone.
//!
//! **Lost partitions** ([`forget_partition_rows`]): when the replica's token no longer grants
//! a partition, its rows are forgotten the same way (not queued: they are out of scope).

use std::collections::BTreeSet;

use rusqlite::{params, params_from_iter, Connection};

use super::scope_check::encoded_key;
use super::tables::{RegisteredTable, Tables};
use crate::capture::names::{self, quote};
use crate::change::{Batch, BatchSeq};
use crate::error::{Context, StoreError};
use crate::hlc::NodeId;
use crate::report::{Inbound, RefusedWrite};
use crate::scope::{Partition, Route, ScopeRules, TableScope, Writer};
use crate::value::Value;
use crate::wire::{self, Message, RefusedNotice, RefusedRow};

/// Creates the refetch queue and the table of notices already handled, if missing.
pub(super) fn create_tables(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {}(tbl TEXT NOT NULL, key BLOB NOT NULL, \
         PRIMARY KEY(tbl, key)) WITHOUT ROWID; \
         CREATE TABLE IF NOT EXISTS {}(writer BLOB NOT NULL, batch_seq INTEGER NOT NULL, \
         PRIMARY KEY(writer, batch_seq)) WITHOUT ROWID",
        quote(names::REFETCH),
        quote(names::REFUSED_SEEN),
    ))
    .context("creating the refetch queue")
}

/// On a full replica: writes the notice of a refused scoped batch to the outbox, once for
/// each scoped partition subject among `groups` (each group's subject) and `subject` (the
/// frame that completed the batch): every replica of those partitions may hold its rows.
pub(super) fn publish_notice(
    conn: &Connection,
    rules: &ScopeRules,
    subject: Option<&str>,
    writer: NodeId,
    batch_seq: BatchSeq,
    reason: &str,
    groups: &[(Option<String>, Batch)],
) -> Result<(), StoreError> {
    let mut routes = BTreeSet::new();
    for s in groups
        .iter()
        .filter_map(|(s, _)| s.as_deref())
        .chain(subject)
    {
        if let Some((route @ Route::Partition { .. }, Writer::Scoped)) =
            Route::parse_suffix(s, rules)
        {
            routes.insert(route);
        }
    }
    if routes.is_empty() {
        return Ok(());
    }
    let rows = groups
        .iter()
        .flat_map(|(_, batch)| {
            batch.rows.iter().map(|row| RefusedRow {
                table: batch.tables[row.table as usize].name.clone(),
                key: row.key.clone(),
            })
        })
        .collect();
    let notice = RefusedNotice {
        writer,
        batch_seq,
        reason: reason.to_owned(),
        rows,
    };
    let frame = wire::encode_frame(&Message::Refused(notice.clone()));
    for route in routes {
        let Route::Partition { partition, .. } = &route else {
            continue;
        };
        let msg_id = notice.msg_id(&partition.token());
        super::outbox::push_notice(conn, &route.subject_suffix(Writer::Full), &frame, &msg_id)?;
    }
    Ok(())
}

/// On a scoped replica: a notice from the stream, acted on when it came on a full node's
/// partition subject and was not handled before. For this replica's own batch, every row is
/// forgotten, queued for a refetch and reported; for another replica's (another device of
/// the same user, a teammate), the rows it holds are forgotten and queued silently: it may
/// have applied the refused batch from their shared subject. Returns this replica's own
/// refused writes and how many rows were queued.
pub(super) fn receive_notice(
    conn: &Connection,
    tables: &Tables,
    options: &super::StoreOptions,
    message: &Inbound,
    notice: &RefusedNotice,
) -> Result<(Vec<RefusedWrite>, u64), StoreError> {
    let from_full_node = message
        .subject
        .as_deref()
        .and_then(|s| Route::parse_suffix(s, &options.scopes))
        .is_some_and(|(route, writer)| {
            writer == Writer::Full && matches!(route, Route::Partition { .. })
        });
    if options.writer != Writer::Scoped || !from_full_node {
        return Ok((Vec::new(), 0));
    }
    let first_time = conn
        .prepare_cached(&format!(
            "INSERT OR IGNORE INTO {}(writer, batch_seq) VALUES (?1, ?2)",
            quote(names::REFUSED_SEEN)
        ))
        .and_then(|mut s| {
            s.execute(params![
                &notice.writer.to_bytes()[..],
                notice.batch_seq.get() as i64
            ])
        })
        .context("recording a refusal notice")?
        == 1;
    if !first_time {
        return Ok((Vec::new(), 0));
    }
    let own = notice.writer == options.node_id;
    let mut refused = Vec::new();
    let mut queued = 0;
    for row in &notice.rows {
        if let Some(table) = tables.by_name(&row.table) {
            if own || has_version(conn, table, &row.key)? {
                forget_row(conn, table, &row.key, true)?;
                queued += 1;
            }
        }
        if own {
            refused.push(RefusedWrite {
                table: row.table.clone(),
                key: row.key.clone(),
                reason: notice.reason.clone(),
            });
        }
    }
    Ok((refused, queued))
}

/// Whether this replica holds a version of the row (live or deleted).
fn has_version(
    conn: &Connection,
    table: &RegisteredTable,
    key: &[Value],
) -> Result<bool, StoreError> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(&table.select_version)
        .and_then(|mut s| s.query_row(params_from_iter(key), |_| Ok(())).optional())
        .map(|found| found.is_some())
        .context("reading a row version")
}

/// A route and the rows that travel on it.
type RouteGroup = (Route, Batch);

/// On a scoped replica that knows its partitions: splits a drained batch's route groups
/// into the ones it may publish and the rows it refuses itself (forgotten and queued for a
/// refetch). Deletes that travel unscoped (a row created and deleted before it was ever
/// published, or a hidden table's) are dropped without a word: nobody has them. A refused
/// move also drops its moved-out marker (see `routing::route`), which would otherwise
/// delete the row from its old partition.
pub(super) fn refuse_unwritable(
    conn: &Connection,
    tables: &Tables,
    partitions: &[Partition],
    groups: Vec<RouteGroup>,
) -> Result<(Vec<RouteGroup>, Vec<RefusedWrite>), StoreError> {
    let mut kept = Vec::new();
    let mut refused = Vec::new();
    let mut refused_keys = BTreeSet::new();
    for (route, group) in groups {
        let reason = match &route {
            Route::Partition { partition, .. } if partitions.contains(partition) => {
                kept.push((route, group));
                continue;
            }
            Route::Partition { partition, .. } => {
                format!("partition {partition} is not one this replica's token grants")
            }
            Route::Shared { table } => {
                format!("table {table:?} is shared: only full nodes write it")
            }
            Route::Unscoped => {
                "the table is not sent to scoped replicas (hidden): list local-only tables in excludeTables"
                    .to_owned()
            }
        };
        for row in &group.rows {
            let name = &group.tables[row.table as usize].name;
            if route == Route::Unscoped && row.values.is_none() {
                continue;
            }
            if let Some(table) = tables.by_name(name) {
                forget_row(conn, table, &row.key, true)?;
            }
            refused_keys.insert((name.to_lowercase(), row.key.clone()));
            refused.push(RefusedWrite {
                table: name.clone(),
                key: row.key.clone(),
                reason: reason.clone(),
            });
        }
    }
    if !refused_keys.is_empty() {
        for (_, group) in &mut kept {
            let tables = &group.tables;
            group.rows.retain(|row| {
                !refused_keys.contains(&(
                    tables[row.table as usize].name.to_lowercase(),
                    row.key.clone(),
                ))
            });
        }
        kept.retain(|(_, group)| !group.rows.is_empty());
    }
    Ok((kept, refused))
}

/// Removes a row, its version and its registered partition without capturing anything,
/// and (`refetch`) queues its key to be fetched again from a full node.
fn forget_row(
    conn: &Connection,
    table: &RegisteredTable,
    key: &[Value],
    refetch: bool,
) -> Result<(), StoreError> {
    super::set_applying(conn, true)?;
    let result = (|| {
        conn.prepare_cached(&table.delete_row)
            .and_then(|mut s| s.execute(params_from_iter(key)))
            .context("removing a refused row")?;
        conn.prepare_cached(&delete_version_sql(table))
            .and_then(|mut s| s.execute(params_from_iter(key)))
            .context("removing a refused row's version")?;
        let folded = table.info.name.to_lowercase();
        conn.prepare_cached(&format!(
            "DELETE FROM {} WHERE tbl = ?1 AND key = ?2",
            quote(names::PARTITIONS)
        ))
        .and_then(|mut s| s.execute(params![folded, encoded_key(key)]))
        .context("removing a refused row's partition")?;
        if refetch {
            conn.prepare_cached(&format!(
                "INSERT OR IGNORE INTO {}(tbl, key) VALUES (?1, ?2)",
                quote(names::REFETCH)
            ))
            .and_then(|mut s| s.execute(params![table.info.name, encoded_key(key)]))
            .context("queueing a refused row for a refetch")?;
        }
        Ok(())
    })();
    super::set_applying(conn, false)?;
    result
}

fn delete_version_sql(table: &RegisteredTable) -> String {
    let matches: Vec<String> = (0..table.info.key_columns.len())
        .map(|i| format!("{} = ?{}", names::key_slot(i), i + 1))
        .collect();
    format!(
        "DELETE FROM {} WHERE {}",
        quote(&names::version_table(table.id)),
        matches.join(" AND ")
    )
}

/// The keys waiting for a refetch, as (table, key).
pub(super) fn queued(conn: &Connection) -> Result<Vec<(String, Vec<Value>)>, StoreError> {
    let rows: Vec<(String, Vec<u8>)> = conn
        .prepare_cached(&format!(
            "SELECT tbl, key FROM {} ORDER BY tbl, key",
            quote(names::REFETCH)
        ))
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()
        })
        .context("reading the refetch queue")?;
    rows.into_iter()
        .map(|(table, key)| {
            postcard::from_bytes(&key)
                .map(|key| (table, key))
                .map_err(|e| StoreError::Corrupt(format!("refetch queue key: {e}")))
        })
        .collect()
}

/// Removes keys from the refetch queue (their answer was merged).
pub(super) fn dequeue(conn: &Connection, keys: &[(String, Vec<Value>)]) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "DELETE FROM {} WHERE tbl = ?1 AND key = ?2",
            quote(names::REFETCH)
        ))
        .context("clearing the refetch queue")?;
    for (table, key) in keys {
        stmt.execute(params![table, encoded_key(key)])
            .context("clearing the refetch queue")?;
    }
    Ok(())
}

/// Forgets every local row of `lost` partitions (the replica's token no longer grants
/// them): rows, versions and registered partitions, nothing captured. Returns the number of
/// rows removed.
pub(super) fn forget_partition_rows(
    conn: &Connection,
    tables: &Tables,
    rules: &ScopeRules,
    lost: &[Partition],
) -> Result<u64, StoreError> {
    let mut removed = 0;
    for table in tables.iter() {
        let TableScope::Partitioned { rule, columns } = rules.table_scope(&table.info.name) else {
            continue;
        };
        let lost_here: BTreeSet<&Partition> = lost.iter().filter(|p| p.rule == rule.name).collect();
        if lost_here.is_empty() {
            continue;
        }
        let keys = rows_of(conn, table, columns, &lost_here)?;
        for key in keys {
            forget_row(conn, table, &key, false)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes from the outbox every batch with a frame on a `lost` partition's subject (the
/// token no longer allows publishing there) and refuses its rows: forgotten and queued for a
/// refetch, as any refused write.
fn drop_unpublishable(
    conn: &Connection,
    tables: &Tables,
    rules: &ScopeRules,
    lost: &[Partition],
) -> Result<Vec<RefusedWrite>, StoreError> {
    if lost.is_empty() {
        return Ok(Vec::new());
    }
    let frames: Vec<(i64, i64, Option<String>, Vec<u8>)> = conn
        .prepare(&format!(
            "SELECT id, batch_seq, subject, frame FROM {} ORDER BY id",
            quote(names::OUTBOX)
        ))
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
        .context("reading the outbox")?;
    let lost_partition = |subject: &Option<String>| {
        subject
            .as_deref()
            .and_then(|s| Route::parse_suffix(s, rules))
            .and_then(|(route, _)| match route {
                Route::Partition { partition, .. } => {
                    lost.contains(&partition).then_some(partition)
                }
                _ => None,
            })
    };
    let mut doomed: std::collections::BTreeMap<i64, String> = Default::default();
    for (_, batch, subject, _) in &frames {
        if let Some(partition) = lost_partition(subject) {
            doomed
                .entry(*batch)
                .or_insert_with(|| partition.to_string());
        }
    }
    let mut refused = Vec::new();
    let mut ids = Vec::new();
    for (batch_seq, partition) in &doomed {
        let reason = format!("the token no longer grants partition {partition}");
        let mut groups: Vec<(u32, wire::Compression, Vec<u8>)> = Vec::new();
        for (id, _, _, frame) in frames.iter().filter(|f| f.1 == *batch_seq) {
            ids.push(*id);
            if let Ok(Message::Routed(part)) = wire::decode_message(frame) {
                match groups.iter_mut().find(|g| g.0 == part.group_start) {
                    Some(group) => group.2.extend_from_slice(&part.body),
                    None => groups.push((part.group_start, part.compression, part.body)),
                }
            }
        }
        for (_, compression, body) in groups {
            let Ok(batch) = wire::decode_batch(compression, &body) else {
                continue;
            };
            for row in &batch.rows {
                let name = &batch.tables[row.table as usize].name;
                if let Some(table) = tables.by_name(name) {
                    forget_row(conn, table, &row.key, true)?;
                }
                refused.push(RefusedWrite {
                    table: name.clone(),
                    key: row.key.clone(),
                    reason: reason.clone(),
                });
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    super::outbox::remove(conn, &ids)?;
    Ok(refused)
}

/// Keys of `table`'s live rows whose partition columns name one of `partitions`, plus the
/// keys of tombstones registered to one of them.
fn rows_of(
    conn: &Connection,
    table: &RegisteredTable,
    columns: &[String],
    partitions: &BTreeSet<&Partition>,
) -> Result<Vec<Vec<Value>>, StoreError> {
    let key_names: Vec<String> = table
        .info
        .key_columns
        .iter()
        .map(|c| quote(&c.name))
        .collect();
    let column_list: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let sql = format!(
        "SELECT {}, {} FROM {}",
        key_names.join(", "),
        column_list.join(", "),
        quote(&table.info.name)
    );
    let width = key_names.len();
    let mut keys = Vec::new();
    let mut stmt = conn
        .prepare(&sql)
        .context("reading a lost partition's rows")?;
    let mut rows = stmt.query([]).context("reading a lost partition's rows")?;
    while let Some(row) = rows.next().context("reading a lost partition's rows")? {
        let key = (0..width)
            .map(|i| row.get::<_, Value>(i))
            .collect::<Result<Vec<_>, _>>()
            .context("reading a lost partition's rows")?;
        let values = (0..columns.len())
            .map(|i| row.get::<_, Value>(width + i))
            .collect::<Result<Vec<_>, _>>()
            .context("reading a lost partition's rows")?;
        if partitions.iter().any(|p| p.values == values) {
            keys.push(key);
        }
    }
    // Tombstones keep their partition only in the registry.
    let tokens: Vec<String> = partitions.iter().map(|p| p.token()).collect();
    let mut registered = conn
        .prepare(&format!(
            "SELECT key, part FROM {} WHERE tbl = ?1",
            quote(names::PARTITIONS)
        ))
        .context("reading a lost partition's registry")?;
    let found: Vec<(Vec<u8>, Option<String>)> = registered
        .query_map([table.info.name.to_lowercase()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .and_then(|rows| rows.collect())
        .context("reading a lost partition's registry")?;
    for (key, part) in found {
        if part.is_some_and(|p| tokens.contains(&p)) {
            let key: Vec<Value> = postcard::from_bytes(&key)
                .map_err(|e| StoreError::Corrupt(format!("partition registry key: {e}")))?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

/// What [`super::Store::adopt_partitions`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionChange {
    /// Partitions granted now and not before (all of them when none were known).
    pub gained: Vec<Partition>,
    /// Partitions granted before and not now: their rows were forgotten here.
    pub lost: Vec<Partition>,
    /// Rows (and tombstones) of lost partitions forgotten.
    pub rows_forgotten: u64,
    /// The partitions were known before (a bootstrap of the gained ones is needed to see
    /// their rows; on a replica that never knew any, its first bootstrap brings them).
    pub known_before: bool,
    /// Local writes captured first that the old partitions did not allow.
    pub refused_writes: Vec<RefusedWrite>,
}

impl super::Store {
    /// A scoped replica's partitions, as its feed last named them (`None`: never learned).
    pub fn scope_partitions(&self) -> Option<&[Partition]> {
        self.options.partitions.as_deref()
    }

    /// Takes the partitions a full node says this scoped replica's token grants: stored
    /// (writes outside them are refused from now on), and the rows of partitions it no
    /// longer has are forgotten locally (not deletes to replicate). Local writes are
    /// captured first, so none is lost.
    pub fn adopt_partitions(
        &mut self,
        partitions: Vec<Partition>,
    ) -> Result<PartitionChange, StoreError> {
        let mut partitions = partitions;
        partitions.sort();
        partitions.dedup();
        let before = self.options.partitions.clone();
        if before.as_ref() == Some(&partitions) {
            return Ok(PartitionChange {
                known_before: true,
                ..Default::default()
            });
        }
        let before_list = before.clone().unwrap_or_default();
        let change = PartitionChange {
            gained: partitions
                .iter()
                .filter(|p| !before_list.contains(p))
                .cloned()
                .collect(),
            lost: before_list
                .iter()
                .filter(|p| !partitions.contains(p))
                .cloned()
                .collect(),
            rows_forgotten: 0,
            known_before: before.is_some(),
            refused_writes: Vec::new(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context("starting to adopt scope partitions")?;
        self.schema.sync(&tx, &self.options, true)?;
        // Writes made under known partitions are judged by them; writes made before any
        // were known are judged by the new ones, at the next drain.
        let mut refused_writes = Vec::new();
        if before.is_some() {
            let drained = super::drain_in(
                &tx,
                &self.schema,
                &mut self.clock,
                &self.options,
                &mut self.next_batch,
            )?;
            if drained.outbox_grew || drained.batch_seq.is_some() {
                self.outbox_grew = true;
            }
            refused_writes = drained.refused_writes;
        }
        let rows_forgotten =
            forget_partition_rows(&tx, &self.schema.tables, &self.options.scopes, &change.lost)?;
        // Batches waiting to be published that write a lost partition: NATS would refuse
        // them now, and a batch stays whole, so each is refused as a whole here.
        refused_writes.extend(drop_unpublishable(
            &tx,
            &self.schema.tables,
            &self.options.scopes,
            &change.lost,
        )?);
        super::store_partitions(&tx, &partitions)?;
        tx.commit().context("committing the scope partitions")?;
        self.options.partitions = Some(partitions);
        Ok(PartitionChange {
            rows_forgotten,
            refused_writes,
            ..change
        })
    }
}
