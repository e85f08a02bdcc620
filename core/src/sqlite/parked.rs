//! Parked messages by table, and discarding the parked changes of a table on purpose.
//!
//! A message naming a table this replica lacks is parked and retried whenever the schema
//! changes ([`super::Store::retry_parked`]). For a table dropped on purpose those changes
//! would wait forever; [`discard`] removes them, in one `BEGIN IMMEDIATE` transaction, so it
//! is safe next to a running sidecar or replica on the same database. What it removes is
//! gone for good: re-creating the table later (by hand or by a migration) does not bring
//! the discarded changes back — the stream cursor is past them. Changes for the table that
//! arrive afterwards (still in flight, or from a node running old code) are parked again.
//!
//! A parked message is one source transaction. When it also holds changes for other tables,
//! only the table's changes are removed: the message stays parked with the rest, and the
//! next retry applies it (or parks it again for another reason).

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::capture::names::{self, quote};
use crate::change::Batch;
use crate::error::{Context, StoreError};
use crate::wire::{self, Message, MessageV1};

use super::install::{column_exists, object_exists};
use super::tables::same_identifier;

/// Parked messages about one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedTable {
    /// The table as the parked messages name it (`""`: messages about no single table —
    /// undecodable frames, clock refusals, migrations).
    pub table: String,
    /// How many messages are parked for it.
    pub messages: u64,
    /// Whether this database has a table of that name (then its parked messages wait for a
    /// column or a key; otherwise for the table itself).
    pub exists: bool,
}

/// Parked message counts by table, with whether each table exists here, sorted by table.
/// Reads only; a database harmonylite never ran on has none.
pub fn tables(conn: &Connection) -> Result<Vec<ParkedTable>, StoreError> {
    super::migrate::parked_by_table(conn)?
        .into_iter()
        .map(|(table, messages)| {
            let exists = !table.is_empty() && table_exists(conn, &table)?;
            Ok(ParkedTable {
                table,
                messages,
                exists,
            })
        })
        .collect()
}

/// What [`discard`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discarded {
    /// Parked messages removed (every change they held was for the table).
    pub messages: u64,
    /// Parked messages that also held changes for other tables: kept, without the table's
    /// changes, for the next retry.
    pub trimmed: u64,
    /// Row changes for the table removed, from both.
    pub changes: u64,
}

impl Discarded {
    /// Parked messages that held changes for the table (removed or trimmed).
    pub fn affected(&self) -> u64 {
        self.messages + self.trimmed
    }
}

/// Why [`discard`] removed nothing.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// No table name was given (`""` stands for messages about no single table, which are
    /// not discarded by table).
    #[error("name the table whose parked changes to discard")]
    NoTable,
    /// The table exists here, so its parked changes wait for a column or a key this
    /// replica lacks: discarding them loses those changes. Pass `force` to do it anyway.
    #[error(
        "table {table:?} exists here: its {messages} parked message(s) wait for a column or a \
         primary key this replica lacks, and discarding them loses those changes (change the \
         schema to apply them, or force the discard)"
    )]
    TableExists {
        /// The table.
        table: String,
        /// Parked messages holding changes for it.
        messages: u64,
    },
    /// Neither the table nor parked changes for it exist here (a misspelt name?).
    #[error("no table {table:?} here and nothing parked for it{}", known_list(.parked))]
    NothingParked {
        /// The name given.
        table: String,
        /// Tables that do have parked messages.
        parked: Vec<String>,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn known_list(parked: &[String]) -> String {
    if parked.is_empty() {
        " (no table has parked messages)".into()
    } else {
        format!(" (tables with parked messages: {})", parked.join(", "))
    }
}

/// Discards the parked changes for `table` in one `BEGIN IMMEDIATE` transaction (waiting
/// for the application's or the sidecar's write lock up to the connection's busy timeout).
/// Refuses when the table exists here unless `force` ([`DiscardError::TableExists`]), and
/// for a name that is neither a table here nor has anything parked
/// ([`DiscardError::NothingParked`]); a table that exists with nothing parked discards
/// nothing. Table names compare as SQLite compares identifiers (ASCII case-insensitive).
pub fn discard(conn: &mut Connection, table: &str, force: bool) -> Result<Discarded, DiscardError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context("starting a discard of parked changes")?;
    let discarded = discard_in(&tx, table, force)?;
    tx.commit()
        .context("committing a discard of parked changes")?;
    Ok(discarded)
}

/// [`discard`] inside the caller's write transaction.
pub(super) fn discard_in(
    conn: &Connection,
    table: &str,
    force: bool,
) -> Result<Discarded, DiscardError> {
    if table.is_empty() {
        return Err(DiscardError::NoTable);
    }
    let installed =
        object_exists(conn, "table", names::PARKED)? && column_exists(conn, names::PARKED, "tbl")?;
    let plan = if installed {
        plan(conn, table)?
    } else {
        Vec::new()
    };
    let exists = table_exists(conn, table)?;
    if plan.is_empty() {
        if exists {
            return Ok(Discarded::default());
        }
        let parked = tables(conn)?
            .into_iter()
            .filter(|t| !t.table.is_empty())
            .map(|t| t.table)
            .collect();
        return Err(DiscardError::NothingParked {
            table: table.to_owned(),
            parked,
        });
    }
    if exists && !force {
        return Err(DiscardError::TableExists {
            table: table.to_owned(),
            messages: plan.len() as u64,
        });
    }
    let mut discarded = Discarded::default();
    for step in plan {
        discarded.changes += step.changes;
        match step.rest {
            None => {
                conn.execute(
                    &format!("DELETE FROM {} WHERE stream_seq = ?1", quote(names::PARKED)),
                    [step.seq],
                )
                .context("discarding a parked message")?;
                discarded.messages += 1;
            }
            Some(rest) => {
                conn.execute(
                    &format!(
                        "UPDATE {} SET frame = ?2, tbl = ?3, reason = ?4 WHERE stream_seq = ?1",
                        quote(names::PARKED)
                    ),
                    params![step.seq, rest.frame, rest.tbl, rest.reason],
                )
                .context("trimming a parked message")?;
                discarded.trimmed += 1;
            }
        }
    }
    Ok(discarded)
}

/// What to do with one parked message holding changes for the table.
struct Step {
    seq: i64,
    /// Row changes for the table it holds.
    changes: u64,
    /// `None`: remove it; `Some`: keep it with the other tables' changes.
    rest: Option<Trimmed>,
}

struct Trimmed {
    frame: Vec<u8>,
    tbl: Option<String>,
    reason: String,
}

/// Finds the parked messages holding changes for `table`: those recorded as about it, and
/// batches parked for another table that also carry some of its rows.
fn plan(conn: &Connection, table: &str) -> Result<Vec<Step>, StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT stream_seq, frame, tbl, reason FROM {} ORDER BY stream_seq",
            quote(names::PARKED)
        ))
        .context("reading parked messages")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .context("reading parked messages")?;
    let mut steps = Vec::new();
    for (seq, frame, tbl, reason) in rows {
        let about_table = tbl.as_deref().is_some_and(|t| same_identifier(t, table));
        let Some((message, batch)) = decode_single_batch(&frame) else {
            // Not a batch we can read (a migration, an undecodable frame): only removed when
            // it is recorded as about the table.
            if about_table {
                steps.push(Step {
                    seq,
                    changes: 0,
                    rest: None,
                });
            }
            continue;
        };
        let (kept, removed) = without_table(&batch, table);
        if removed == 0 && !about_table {
            continue;
        }
        let rest = if kept.rows.is_empty() {
            None
        } else {
            let frame = wire::encode_batch(
                message.origin,
                message.batch_seq,
                &kept,
                message.compression,
                usize::MAX,
            )
            .ok()
            .and_then(|mut frames| (frames.len() == 1).then(|| frames.remove(0)))
            .ok_or_else(|| StoreError::Corrupt("re-encoding a trimmed parked batch".into()))?;
            let (tbl, reason) = if about_table {
                let next = kept.tables.first().map(|t| t.name.clone());
                let reason = format!(
                    "{reason} (the changes for {table} were discarded; the rest waits for the \
                     next retry)"
                );
                (next, reason)
            } else {
                (tbl, reason)
            };
            Some(Trimmed { frame, tbl, reason })
        };
        steps.push(Step {
            seq,
            changes: removed,
            rest,
        });
    }
    Ok(steps)
}

/// The frame's message and batch, when it is a whole (single-part) batch that decodes.
fn decode_single_batch(frame: &[u8]) -> Option<(MessageV1, Batch)> {
    match wire::decode_message(frame) {
        Ok(Message::V1(message)) if message.parts == 1 => {
            let batch = wire::decode_batch(message.compression, &message.body).ok()?;
            Some((message, batch))
        }
        _ => None,
    }
}

/// `batch` without the rows (and schema entries) of `table`, and how many rows that removed.
fn without_table(batch: &Batch, table: &str) -> (Batch, u64) {
    let mut index = Vec::with_capacity(batch.tables.len());
    let mut kept = Batch::default();
    for schema in &batch.tables {
        if same_identifier(&schema.name, table) {
            index.push(None);
        } else {
            index.push(Some(kept.tables.len() as u32));
            kept.tables.push(schema.clone());
        }
    }
    let mut removed = 0;
    for row in &batch.rows {
        match index.get(row.table as usize).copied().flatten() {
            Some(new_index) => {
                let mut row = row.clone();
                row.table = new_index;
                kept.rows.push(row);
            }
            None => removed += 1,
        }
    }
    (kept, removed)
}

/// Whether this database has a table named `name` (ASCII case-insensitive, as SQLite).
fn table_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
    .context(format!("looking for table {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::StreamSeq;
    use crate::hlc::{NodeId, NTP64};
    use crate::report::Inbound;
    use crate::sqlite::{Store, StoreOptions};

    fn now() -> NTP64 {
        crate::hlc::ntp64_from_unix(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap(),
        )
    }

    fn store(path: &std::path::Path, id: u128, schema: &str) -> Store {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(schema).unwrap();
        Store::open(conn, StoreOptions::new(NodeId::from_u128(id).unwrap())).unwrap()
    }

    /// Drains `from` and returns its outbox as stream messages numbered after `seq`.
    fn publish(from: &mut Store, seq: &mut u64) -> Vec<Inbound> {
        from.drain().unwrap();
        let frames = from.outbox_after(0, 100).unwrap();
        let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
        from.outbox_remove(&ids).unwrap();
        frames
            .into_iter()
            .map(|f| {
                *seq += 1;
                Inbound {
                    seq: StreamSeq::new(*seq),
                    frame: f.frame,
                    subject: None,
                }
            })
            .collect()
    }

    fn ids(store: &Store, table: &str) -> Vec<i64> {
        let mut stmt = store
            .connection()
            .prepare(&format!("SELECT id FROM {table} ORDER BY id"))
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn discarding_a_tables_parked_changes_keeps_the_other_tables_and_never_resurrects_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = store(
            &dir.path().join("a.db"),
            1,
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE keep(id INTEGER PRIMARY KEY); \
             CREATE TABLE other(id INTEGER PRIMARY KEY, v);",
        );
        let mut b = store(
            &dir.path().join("b.db"),
            2,
            "CREATE TABLE keep(id INTEGER PRIMARY KEY);",
        );
        let mut seq = 0;
        let mut stream = Vec::new();
        // Three source transactions: t alone; t with keep; t with other (B lacks t and other).
        for sql in [
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
            "INSERT INTO t VALUES (3, 'c'); INSERT INTO keep VALUES (1)",
            "INSERT INTO other VALUES (1, 'o'); INSERT INTO t VALUES (4, 'd')",
        ] {
            a.connection().execute_batch(sql).unwrap();
            stream.extend(publish(&mut a, &mut seq));
        }
        assert_eq!(b.receive(now(), &stream).unwrap().parked.len(), 3);
        let by_table = |b: &Store| b.parked_by_table().unwrap();
        let parked_t = by_table(&b)
            .into_iter()
            .find(|(t, _)| t == "t")
            .map(|(_, n)| n);
        assert!(parked_t >= Some(2), "{:?}", by_table(&b));

        // A name that is neither a table here nor parked: refused, naming what is parked.
        match b.discard_parked("tt", false) {
            Err(DiscardError::NothingParked { table, parked }) => {
                assert_eq!(table, "tt");
                assert!(parked.contains(&"t".to_owned()), "{parked:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            b.discard_parked("", true),
            Err(DiscardError::NoTable)
        ));
        // `keep` exists here: discarding its parked changes (in the second message) needs force.
        match b.discard_parked("keep", false) {
            Err(DiscardError::TableExists { table, messages }) => {
                assert_eq!((table.as_str(), messages), ("keep", 1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.parked_count().unwrap(), 3, "a refusal changes nothing");

        // Discarding t (names compare like SQLite's, case-insensitively): the first message
        // goes, the two others lose t's rows and stay for keep and other.
        let discarded = b.discard_parked("T", false).unwrap();
        assert_eq!(
            discarded,
            Discarded {
                messages: 1,
                trimmed: 2,
                changes: 4
            }
        );
        assert_eq!(discarded.affected(), 3);
        assert!(
            by_table(&b).iter().all(|(t, _)| t != "t"),
            "{:?}",
            by_table(&b)
        );
        assert_eq!(b.parked_count().unwrap(), 2);
        let listed = b.parked_tables().unwrap();
        assert!(listed.iter().all(|p| p.table != "t"), "{listed:?}");
        assert!(
            matches!(
                b.discard_parked("t", false),
                Err(DiscardError::NothingParked { .. })
            ),
            "a second discard finds nothing"
        );

        // The next retry applies the rest of the message for keep; other's still waits.
        let retry = b.retry_parked(now()).unwrap();
        assert_eq!(retry.unparked, 1, "{:?}", retry.parked);
        assert_eq!(ids(&b, "keep"), vec![1]);
        assert_eq!(
            by_table(&b),
            vec![("other".to_owned(), 1)],
            "parked again under the table it waits for"
        );

        // Creating t later (a migration or the application) brings nothing discarded back.
        b.connection()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
            .unwrap();
        b.drain().unwrap();
        b.retry_parked(now()).unwrap();
        assert!(ids(&b, "t").is_empty());

        // other exists here without column v: its message waits for the column, so a
        // discard needs force.
        b.connection()
            .execute_batch("CREATE TABLE other(id INTEGER PRIMARY KEY)")
            .unwrap();
        b.drain().unwrap();
        let retry = b.retry_parked(now()).unwrap();
        assert_eq!(
            retry.parked[0].kind,
            crate::report::ParkReason::UnknownColumn
        );
        assert!(matches!(
            b.discard_parked("other", false),
            Err(DiscardError::TableExists { messages: 1, .. })
        ));
        let forced = b.discard_parked("other", true).unwrap();
        assert_eq!((forced.messages, forced.trimmed, forced.changes), (1, 0, 1));
        assert_eq!(b.parked_count().unwrap(), 0);
        assert!(ids(&b, "t").is_empty() && ids(&b, "other").is_empty());
        // An existing table with nothing parked: nothing to do, no error.
        assert_eq!(
            b.discard_parked("keep", false).unwrap(),
            Discarded::default()
        );
    }

    #[test]
    fn a_database_harmonylite_never_ran_on_has_nothing_parked() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
            .unwrap();
        assert!(tables(&conn).unwrap().is_empty());
        assert_eq!(
            discard(&mut conn, "t", false).unwrap(),
            Discarded::default()
        );
        assert!(matches!(
            discard(&mut conn, "u", false),
            Err(DiscardError::NothingParked { .. })
        ));
    }
}
