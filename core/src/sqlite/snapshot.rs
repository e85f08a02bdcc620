//! Snapshot files on SQLite: the consistent copy a snapshot is made of, and the node-local
//! state a restored file gets before it replaces a replica's database.
//!
//! A snapshot is a copy of a replica's database that any other replica can adopt: the
//! application's tables, the row versions and tombstones (`__hl_v*`), the table registry,
//! parked messages, stored parts of multi-part batches, the cursor (the stream sequence the
//! copy covers) and the clock. Whatever belongs to the node that took it is removed before
//! the file is used: by the taker ([`strip_node_local`], a copy it writes anyway, format
//! version 1) or, when the taker streamed its live database file without writing a copy
//! (format version 2, `crate::snapshot`), by whoever uses the file ([`install_node_local`]
//! for a restore; a catch-up reads none of it, [`crate::sqlite::catch_up`]). Removing it
//! from a file that has none changes nothing, so both versions restore alike:
//!
//! | node-local state | in the copy | in a restored file |
//! | --- | --- | --- |
//! | `__hl_outbox` rows (frames the taker has yet to publish) | removed (version 1) or kept (2) | empty, or the restoring node's own kept state |
//! | `__hl_log` rows (the taker's writes not drained yet) | removed (1) or kept (2) | empty |
//! | `__hl_applying` rows | removed (1) or kept (2) | empty |
//! | `__hl_partitions_pending` rows (the taker's own partitioned upserts not seen in the stream yet) | removed (1) or kept (2) | empty |
//! | meta `node_id` | removed (1) or kept (2) | the restoring node's id |
//! | meta `incarnation`, `next_batch`, `next_outbox_id` | removed (1) or kept (2) | the restoring node's own values, or a fresh incarnation |
//! | meta `replay_own_until` | removed (1) or kept (2) | the stream's last sequence at restore time |
//! | meta `cursor`, `clock` | kept | cursor = the covered sequence; clock = the later of both |
//!
//! The taker's own writes that the copy holds but the stream does not yet (its outbox and
//! undrained log) reach every replica later as ordinary stream messages after the covered
//! sequence; applying them over the copy is idempotent under LWW.
//!
//! These functions only run SQL, so both hosts share them; files, fsync, renames and
//! transfers are the host's job.

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::meta::{self, keys};
use super::outbox;
use crate::capture::names::{self, quote};
use crate::change::StreamSeq;
use crate::error::{Context, StoreError};
use crate::hlc::NodeId;
use crate::report::OutboxFrame;

/// Meta keys that belong to one node and never travel in a snapshot.
pub const NODE_LOCAL_KEYS: [&str; 5] = [
    keys::NODE_ID,
    keys::NEXT_BATCH,
    keys::NEXT_OUTBOX_ID,
    keys::INCARNATION,
    keys::REPLAY_OWN_UNTIL,
];

/// Tables whose rows belong to one node and never travel in a snapshot.
pub const NODE_LOCAL_TABLES: [&str; 4] = [
    names::OUTBOX,
    names::LOG,
    names::APPLYING,
    names::PARTITIONS_PENDING,
];

/// Writes a consistent copy of `conn`'s main database to the new file `dest` with
/// `VACUUM INTO` (an SQLite filename; it must not exist). The copy is one read transaction:
/// in WAL mode the application keeps writing meanwhile. The copy is compact and in rollback
/// journal mode, so it is self-contained in one file. Call [`strip_node_local`] on it next.
pub fn vacuum_into(conn: &Connection, dest: &str) -> Result<(), StoreError> {
    conn.execute("VACUUM INTO ?1", [dest])
        .context(format!("copying the database into {dest}"))?;
    Ok(())
}

/// Removes the node-local state from a copy made by [`vacuum_into`] (see the module docs)
/// and returns the stream sequence the copy covers (its cursor). Freed pages are zeroed.
pub fn strip_node_local(copy: &mut Connection) -> Result<StreamSeq, StoreError> {
    copy.execute_batch("PRAGMA secure_delete = ON; PRAGMA synchronous = OFF;")
        .context("preparing the snapshot copy")?;
    let tx = copy
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context("starting to strip the snapshot copy")?;
    if !has_meta_table(&tx)? {
        return Err(StoreError::Corrupt(
            "the database has no harmonylite metadata (has a sidecar ever run on it?)".into(),
        ));
    }
    remove_node_local(&tx, "the snapshot copy")?;
    let covered = covered_seq(&tx)?;
    tx.commit()
        .context("committing the stripped snapshot copy")?;
    Ok(covered)
}

/// The stream sequence a snapshot of `conn` covers: its cursor (0 when it never consumed).
/// Run it inside the read transaction the snapshot is taken in.
pub fn covered_seq(conn: &Connection) -> Result<StreamSeq, StoreError> {
    if !has_meta_table(conn)? {
        return Err(StoreError::Corrupt(
            "the database has no harmonylite metadata (has a sidecar ever run on it?)".into(),
        ));
    }
    Ok(StreamSeq::new(
        meta::get_i64(conn, keys::CURSOR)?.unwrap_or(0) as u64,
    ))
}

/// The node-local state a restored file gets (see [`install_node_local`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLocal {
    /// The restoring node's id.
    pub node_id: NodeId,
    /// Its incarnation: the old one when `next_batch` and `next_outbox_id` are kept too,
    /// else fresh randomness.
    pub incarnation: u64,
    /// Next batch sequence, kept from the old file (None: start at 1).
    pub next_batch: Option<u64>,
    /// Next outbox id, kept from the old file (None: start at 1).
    pub next_outbox_id: Option<i64>,
    /// The old file's clock, if readable: the restored clock never goes back behind it.
    pub clock: Option<u64>,
}

/// Prepares a downloaded snapshot file to become this node's database: removes the taker's
/// node-local state it may carry (outbox, change log, pending partitions, node-local meta:
/// a streamed snapshot, format version 2, has them; a stripped one has none), installs
/// `local`, sets `replay_own_until` (this
/// node's own messages up to that sequence are applied, not skipped: their effects are not
/// in the snapshot), and checks the file's cursor is `covered` (the header's claim).
pub fn install_node_local(
    conn: &mut Connection,
    local: &NodeLocal,
    covered: StreamSeq,
    replay_own_until: StreamSeq,
) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context("starting to install node-local state")?;
    if !has_meta_table(&tx)? {
        return Err(StoreError::Corrupt(
            "the snapshot has no harmonylite metadata".into(),
        ));
    }
    let cursor = StreamSeq::new(meta::get_i64(&tx, keys::CURSOR)?.unwrap_or(0) as u64);
    if cursor != covered {
        return Err(StoreError::Corrupt(format!(
            "the snapshot's header says it covers sequence {} but its cursor is {}",
            covered.get(),
            cursor.get()
        )));
    }
    remove_node_local(&tx, "the restored file")?;
    meta::set(&tx, keys::NODE_ID, &local.node_id.to_bytes()[..])?;
    meta::set(&tx, keys::INCARNATION, local.incarnation as i64)?;
    if let Some(next) = local.next_batch {
        meta::set(&tx, keys::NEXT_BATCH, next as i64)?;
    }
    if let Some(next) = local.next_outbox_id {
        meta::set(&tx, keys::NEXT_OUTBOX_ID, next)?;
    }
    meta::set(
        &tx,
        keys::REPLAY_OWN_UNTIL,
        replay_own_until.get().max(covered.get()) as i64,
    )?;
    let clock = meta::get_i64(&tx, keys::CLOCK)?.unwrap_or(0) as u64;
    let clock = clock.max(local.clock.unwrap_or(0));
    meta::set(&tx, keys::CLOCK, clock as i64)?;
    tx.commit()
        .context("committing the node-local state of the restored file")
}

/// What could be read of a replica's node-local state, without changing the file. Every
/// field is `None` (or empty) when it could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvage {
    /// The node id stored in the file.
    pub node_id: Option<NodeId>,
    /// Its incarnation.
    pub incarnation: Option<u64>,
    /// Its next batch sequence.
    pub next_batch: Option<u64>,
    /// Its next outbox id.
    pub next_outbox_id: Option<i64>,
    /// Its clock.
    pub clock: Option<u64>,
    /// Its cursor.
    pub cursor: Option<StreamSeq>,
    /// Unpublished outbox frames, oldest first, with their message ids (empty when the node
    /// id or incarnation is unknown: their ids could not be rebuilt).
    pub outbox: Vec<OutboxFrame>,
    /// Local writes the sidecar had not captured yet (change-log entries); they cannot be
    /// recovered from a damaged file.
    pub pending_log: Option<u64>,
    /// What could not be read, one line each.
    pub problems: Vec<String>,
}

impl Salvage {
    /// Whether the node-local counters are all known, so the old incarnation may be kept.
    pub fn counters_known(&self) -> bool {
        self.incarnation.is_some() && self.next_batch.is_some() && self.next_outbox_id.is_some()
    }
}

/// Reads whatever node-local state `conn` still yields, item by item: used on a healthy
/// database before it is replaced, and on a damaged one (open it read-only).
pub fn salvage(conn: &Connection) -> Salvage {
    let mut out = Salvage::default();
    match has_meta_table(conn) {
        Ok(true) => {}
        Ok(false) => return out,
        Err(e) => {
            out.problems.push(e.to_string());
            return out;
        }
    }
    let mut note = |r: Result<Option<i64>, StoreError>| match r {
        Ok(v) => v,
        Err(e) => {
            out.problems.push(e.to_string());
            None
        }
    };
    let incarnation = note(meta::get_i64(conn, keys::INCARNATION));
    let next_batch = note(meta::get_i64(conn, keys::NEXT_BATCH));
    let next_outbox_id = note(meta::get_i64(conn, keys::NEXT_OUTBOX_ID));
    let clock = note(meta::get_i64(conn, keys::CLOCK));
    let cursor = note(meta::get_i64(conn, keys::CURSOR));
    out.incarnation = incarnation.map(|v| v as u64);
    // Absent counters mean "never used": their defaults are known.
    out.next_batch = Some(next_batch.unwrap_or(1) as u64);
    out.next_outbox_id = Some(next_outbox_id.unwrap_or(1));
    out.clock = clock.map(|v| v as u64);
    out.cursor = Some(StreamSeq::new(cursor.unwrap_or(0) as u64));
    match meta::get_blob(conn, keys::NODE_ID) {
        Ok(bytes) => {
            out.node_id = bytes
                .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
                .and_then(NodeId::from_bytes)
        }
        Err(e) => out.problems.push(e.to_string()),
    }
    if let (Some(node), Some(incarnation)) = (out.node_id, out.incarnation) {
        if table_exists(conn, names::OUTBOX).unwrap_or(false) {
            match outbox::after(conn, 0, usize::MAX, &format!("{node}-{incarnation:x}")) {
                Ok(frames) => out.outbox = frames,
                Err(e) => out.problems.push(e.to_string()),
            }
        }
    }
    if table_exists(conn, names::LOG).unwrap_or(false) {
        match conn.query_row(
            &format!("SELECT count(*) FROM {}", quote(names::LOG)),
            [],
            |r| r.get::<_, i64>(0),
        ) {
            Ok(n) => out.pending_log = Some(n as u64),
            Err(e) => out.problems.push(format!("counting the change log: {e}")),
        }
    }
    if out.incarnation.is_none() {
        out.next_batch = None;
        out.next_outbox_id = None;
    }
    out
}

/// Runs `PRAGMA quick_check`: `Ok(vec![])` when the database is sound, else the problems it
/// reports. SQLite's "database disk image is malformed" and "file is not a database" are
/// problems too; other errors (busy, I/O, permissions) are returned as `Err`.
pub fn quick_check(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let result = conn.prepare("PRAGMA quick_check").and_then(|mut stmt| {
        stmt.query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()
    });
    match result {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(Vec::new()),
        Ok(rows) => Ok(rows),
        Err(e) if is_corruption(&e) => Ok(vec![e.to_string()]),
        Err(e) => Err(StoreError::Sqlite {
            context: "checking the database (PRAGMA quick_check)".into(),
            source: e,
        }),
    }
}

/// Whether an SQLite error means the file is damaged or not a database at all.
pub fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Opens `path` read-only (no file is created), for [`quick_check`] and [`salvage`].
pub fn open_read_only(path: &str) -> Result<Connection, rusqlite::Error> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
}

fn has_meta_table(conn: &Connection) -> Result<bool, StoreError> {
    table_exists(conn, names::META)
}

/// Whether `table` exists in `conn`'s main database.
pub(super) fn table_exists(conn: &Connection, table: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [table],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
    .context(format!("looking for {table}"))
}

/// Empties the node-local tables and deletes the node-local meta keys of `conn` (the
/// snapshot file described by `what`, for errors), inside the caller's transaction.
fn remove_node_local(conn: &Connection, what: &str) -> Result<(), StoreError> {
    for table in NODE_LOCAL_TABLES {
        if table_exists(conn, table)? {
            conn.execute(&format!("DELETE FROM {}", quote(table)), [])
                .context(format!("emptying {table} in {what}"))?;
        }
    }
    delete_meta_keys(conn, &NODE_LOCAL_KEYS)
}

fn delete_meta_keys(conn: &Connection, keys: &[&str]) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "DELETE FROM {} WHERE key = ?1",
            quote(names::META)
        ))
        .context("removing node-local metadata")?;
    for key in keys {
        stmt.execute([key])
            .context(format!("removing {key} from {}", names::META))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::StreamSeq;
    use crate::hlc::NTP64;
    use crate::report::Inbound;
    use crate::sqlite::{Store, StoreOptions};

    const SCHEMA: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);";

    fn node(n: u128) -> NodeId {
        NodeId::from_u128(n).unwrap()
    }

    fn store_at(path: &std::path::Path, id: u128) -> Store {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            SCHEMA
                .replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS")
                .as_str(),
        )
        .unwrap();
        Store::open(conn, StoreOptions::new(node(id))).unwrap()
    }

    fn now() -> NTP64 {
        crate::hlc::ntp64_from_unix(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap(),
        )
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// A store with applied remote history, an unpublished local write and an undrained one.
    fn busy_store(dir: &std::path::Path) -> (Store, Vec<Inbound>) {
        let mut a = store_at(&dir.join("a.db"), 1);
        let mut b = store_at(&dir.join("b.db"), 2);
        b.connection()
            .execute("INSERT INTO notes VALUES (1, 'from b')", [])
            .unwrap();
        b.drain().unwrap();
        let published = b.outbox_after(0, 10).unwrap();
        let ids: Vec<i64> = published.iter().map(|f| f.id).collect();
        b.outbox_remove(&ids).unwrap();
        let frames: Vec<Inbound> = published
            .into_iter()
            .enumerate()
            .map(|(i, f)| Inbound {
                seq: StreamSeq::new(i as u64 + 1),
                frame: f.frame,
                subject: None,
            })
            .collect();
        a.receive(now(), &frames).unwrap();
        a.connection()
            .execute("INSERT INTO notes VALUES (2, 'from a')", [])
            .unwrap();
        a.drain().unwrap();
        a.connection()
            .execute("INSERT INTO notes VALUES (3, 'undrained')", [])
            .unwrap();
        (a, frames)
    }

    #[test]
    fn the_copy_keeps_data_versions_and_cursor_but_no_node_local_state() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = busy_store(dir.path());
        assert_eq!(a.outbox_depth().unwrap().0, 1);
        let copy_path = dir.path().join("copy.db");
        vacuum_into(a.connection(), copy_path.to_str().unwrap()).unwrap();
        let mut copy = Connection::open(&copy_path).unwrap();
        let covered = strip_node_local(&mut copy).unwrap();
        assert_eq!(covered, StreamSeq::new(1));
        assert_eq!(count(&copy, "SELECT count(*) FROM notes"), 3);
        assert_eq!(count(&copy, "SELECT count(*) FROM __hl_outbox"), 0);
        assert_eq!(count(&copy, "SELECT count(*) FROM __hl_log"), 0);
        assert_eq!(
            count(&copy, "SELECT count(*) FROM __hl_v1"),
            2,
            "versions of rows 1 and 2"
        );
        for key in NODE_LOCAL_KEYS {
            assert_eq!(meta::get_i64(&copy, key).ok().flatten(), None, "{key}");
        }
        assert_eq!(meta::get_i64(&copy, keys::CURSOR).unwrap(), Some(1));
        assert!(meta::get_i64(&copy, keys::CLOCK).unwrap().is_some());
        let mode: String = copy
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_ne!(mode, "wal", "the copy is one self-contained file");
        assert_eq!(quick_check(&copy).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_restored_file_gets_this_nodes_state_and_replays_its_own_messages() {
        let dir = tempfile::tempdir().unwrap();
        let (a, frames) = busy_store(dir.path());
        let copy_path = dir.path().join("copy.db");
        vacuum_into(a.connection(), copy_path.to_str().unwrap()).unwrap();
        let covered = strip_node_local(&mut Connection::open(&copy_path).unwrap()).unwrap();

        // Node 2 (b) restores from a's snapshot; its own message at seq 2 (published after the
        // snapshot) must be applied, not skipped.
        let mut b_old = store_at(&dir.path().join("b.db"), 2);
        b_old
            .connection()
            .execute("INSERT INTO notes VALUES (9, 'b after the snapshot')", [])
            .unwrap();
        b_old.drain().unwrap();
        let own = Inbound {
            seq: StreamSeq::new(2),
            frame: b_old.outbox_after(0, 10).unwrap()[0].frame.clone(),
            subject: None,
        };
        let kept = salvage(b_old.connection());
        assert_eq!(kept.node_id, Some(node(2)));
        assert!(kept.counters_known());
        assert_eq!(kept.outbox.len(), 1);

        let mut conn = Connection::open(&copy_path).unwrap();
        let wrong = install_node_local(
            &mut conn,
            &NodeLocal {
                node_id: node(2),
                incarnation: 7,
                next_batch: None,
                next_outbox_id: None,
                clock: None,
            },
            StreamSeq::new(5),
            StreamSeq::new(2),
        );
        assert!(matches!(wrong, Err(StoreError::Corrupt(_))), "{wrong:?}");
        install_node_local(
            &mut conn,
            &NodeLocal {
                node_id: node(2),
                incarnation: kept.incarnation.unwrap(),
                next_batch: kept.next_batch,
                next_outbox_id: kept.next_outbox_id,
                clock: kept.clock,
            },
            covered,
            StreamSeq::new(2),
        )
        .unwrap();
        drop(conn);

        let mut restored = Store::open(
            Connection::open(&copy_path).unwrap(),
            StoreOptions::new(node(2)),
        )
        .unwrap();
        assert_eq!(restored.cursor(), covered);
        assert_eq!(
            Store::stored_node_id(restored.connection()).unwrap(),
            Some(node(2))
        );
        assert_eq!(restored.outbox_depth().unwrap().0, 0);
        let report = restored.receive(now(), &[frames[0].clone(), own]).unwrap();
        assert_eq!(
            report.own, 0,
            "own messages up to replay_own_until are applied"
        );
        assert_eq!(report.cursor, StreamSeq::new(2));
        assert_eq!(
            count(
                restored.connection(),
                "SELECT count(*) FROM notes WHERE id = 9"
            ),
            1
        );
        // The next batch continues the old numbering under the old incarnation.
        restored
            .connection()
            .execute("INSERT INTO notes VALUES (10, 'later')", [])
            .unwrap();
        restored.drain().unwrap();
        let next = &restored.outbox_after(0, 10).unwrap()[0];
        assert_eq!(next.batch_seq.get(), kept.next_batch.unwrap());
    }

    /// A streamed snapshot (format version 2) is the taker's live file, node-local state
    /// and all: installing this node's state removes every trace of the taker's.
    #[test]
    fn a_restored_unstripped_copy_keeps_none_of_the_takers_node_local_state() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = busy_store(dir.path());
        assert_eq!(
            a.outbox_depth().unwrap().0,
            1,
            "the taker has an unpublished write"
        );
        let copy_path = dir.path().join("copy.db");
        vacuum_into(a.connection(), copy_path.to_str().unwrap()).unwrap();
        let mut conn = Connection::open(&copy_path).unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM __hl_log"), 1);
        let local = NodeLocal {
            node_id: node(2),
            incarnation: 7,
            next_batch: None,
            next_outbox_id: None,
            clock: None,
        };
        install_node_local(&mut conn, &local, StreamSeq::new(1), StreamSeq::new(4)).unwrap();
        for table in NODE_LOCAL_TABLES {
            assert_eq!(
                count(&conn, &format!("SELECT count(*) FROM {table}")),
                0,
                "{table}"
            );
        }
        assert_eq!(meta::get_i64(&conn, keys::NEXT_BATCH).unwrap(), None);
        assert_eq!(meta::get_i64(&conn, keys::NEXT_OUTBOX_ID).unwrap(), None);
        assert_eq!(meta::get_i64(&conn, keys::INCARNATION).unwrap(), Some(7));
        assert_eq!(
            meta::get_i64(&conn, keys::REPLAY_OWN_UNTIL).unwrap(),
            Some(4)
        );
        assert_eq!(
            count(&conn, "SELECT count(*) FROM notes"),
            3,
            "the data stays"
        );
        drop(conn);
        let restored = Store::open(
            Connection::open(&copy_path).unwrap(),
            StoreOptions::new(node(2)),
        )
        .unwrap();
        assert_eq!(
            Store::stored_node_id(restored.connection()).unwrap(),
            Some(node(2))
        );
        assert_eq!(restored.outbox_depth().unwrap().0, 0);
    }

    #[test]
    fn quick_check_reports_overwritten_pages_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "PRAGMA page_size = 4096; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 2000)
                 INSERT INTO t SELECT i, hex(randomblob(64)) FROM r;",
            )
            .unwrap();
        }
        let conn = open_read_only(path.to_str().unwrap()).unwrap();
        assert!(quick_check(&conn).unwrap().is_empty());
        drop(conn);
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096 * 5;
        bytes[page..page + 4096 * 2].fill(0xA5);
        std::fs::write(&path, &bytes).unwrap();
        let conn = open_read_only(path.to_str().unwrap()).unwrap();
        assert!(!quick_check(&conn).unwrap().is_empty());
        drop(conn);

        std::fs::write(&path, b"definitely not an SQLite database, just text").unwrap();
        let conn = open_read_only(path.to_str().unwrap()).unwrap();
        assert!(!quick_check(&conn).unwrap().is_empty());
    }

    #[test]
    fn salvage_of_a_plain_database_finds_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let s = salvage(&conn);
        assert_eq!(s, Salvage::default());
        let mut conn = conn;
        assert!(matches!(
            strip_node_local(&mut conn),
            Err(StoreError::Corrupt(_))
        ));
    }
}
