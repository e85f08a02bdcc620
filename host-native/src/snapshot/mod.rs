//! Taking snapshots: the consistent image, its framing, the upload, when to take one (the
//! `--save-snapshot` command is [`crate::commands::save_snapshot`]).
//!
//! A snapshot is taken on a connection of its own, inside one read transaction (in WAL mode
//! the application and the driver keep writing meanwhile):
//! - Object stores (`nats`, the default, and `s3`): when the WAL can be checkpointed, the
//!   read transaction pins the database file itself (`begin_pinned_read`) and the file is
//!   streamed, framed with [`harmonylite_core::snapshot`] (header + CRC-checked chunks),
//!   straight into the upload ([`pinned`]): no local copy is written. The image keeps this
//!   node's node-local state; its header says so (format version 2) and restores remove it.
//! - The file store, and a database that cannot be pinned: [`make_copy`] writes a copy
//!   (the file's bytes, else SQLite's backup API), core's [`strip_node_local`] removes this
//!   node's outbox, change log and node-local metadata from it and reports the stream
//!   sequence it covers; the copy is read once to checksum it and once more to send it. The
//!   file store keeps that copy as the snapshot: a plain, stripped SQLite file that a person
//!   can restore by hand and that every build reads (format version 1).
//!
//! Periodic snapshots ([`SnapshotSchedule`]): a full replica (`publish` and `replicate`)
//! that has caught up takes one when the newest stored snapshot is older than
//! `snapshot.interval`, or covers `snapshot.every_messages` fewer messages than this node
//! has applied (no snapshot at all: right away). The lease ([`crate::snapshot::lease`]) lets one
//! node at a time do it; the others see the new snapshot and stand down.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::snapshot::{SnapshotHeader, DEFAULT_CHUNK_SIZE};
use harmonylite_core::sqlite::snapshot::strip_node_local;
use rusqlite::{Connection, OpenFlags};

use crate::config::Config;
pub use crate::snapshot::error::{LeaseError, PeerError, SnapshotError, SnapshotStoreError};
pub use crate::snapshot::frame::{read_full, FramedReader, FramedSource};
use crate::snapshot::lease::LeaseBucket;
pub use crate::snapshot::pinned::StreamedImage;
use crate::snapshot::store::{SnapshotInfo, SnapshotStore, StreamingStore};

pub mod catch_up;
pub mod error;
pub mod frame;
pub mod info;
pub mod lease;
pub mod peer;
pub mod pinned;
pub mod responder;
pub mod restore;
pub mod store;

/// Makes the consistent, stripped copy of the database at `db_path` in `dest` (blocking)
/// and returns the stream sequence it covers.
///
/// Fast path (`copy_file_in_read_transaction`): when the WAL is fully checkpointed, a
/// read transaction pins the database file, which is then copied as plain bytes. Otherwise
/// (a steady stream of commits, or not in WAL mode): SQLite's online backup in one step, a
/// page-by-page copy inside one read transaction, about a third faster than `VACUUM INTO`
/// (core's [`harmonylite_core::sqlite::snapshot::vacuum_into`], for the wasm host) but
/// still several times slower than a file copy. Either way the application keeps writing
/// (WAL mode), and the copy ends in rollback-journal mode (one self-contained file),
/// stripped of node-local state.
pub fn make_copy(db_path: &Path, dest: &Path) -> Result<StreamSeq, SnapshotError> {
    remove_if_exists(dest)?;
    let source = Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(database("opening", db_path))?;
    source.busy_timeout(Duration::from_secs(30))?;
    source.execute_batch("PRAGMA mmap_size = 1099511627776")?;
    let t0 = Instant::now();
    let copied = copy_file_in_read_transaction(&source, db_path, dest)?;
    tracing::debug!(fast_path = copied, took = ?t0.elapsed(), "snapshot copy made");
    if !copied {
        tracing::debug!("copying the database page by page (SQLite backup)");
        backup_into(&source, db_path, dest)?;
    }
    drop(source);
    let mut copy = Connection::open(dest).map_err(database("opening the copy", dest))?;
    let mode: String = copy.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    if mode != "delete" {
        return Err(SnapshotError::CopyMode { mode });
    }
    let t0 = Instant::now();
    let covered = strip_node_local(&mut copy).map_err(|source| SnapshotError::Strip {
        db: db_path.to_owned(),
        source,
    })?;
    copy.close().map_err(|(_, e)| e)?;
    tracing::debug!(took = ?t0.elapsed(), "node-local state stripped from the copy");
    Ok(covered)
}

/// Copies the database file as bytes while a read transaction guarantees it is a consistent
/// snapshot (`begin_pinned_read`); `Ok(false)` when that could not be arranged (the caller
/// falls back).
fn copy_file_in_read_transaction(
    source: &Connection,
    db_path: &Path,
    dest: &Path,
) -> Result<bool, SnapshotError> {
    let Some(len) = begin_pinned_read(source)? else {
        return Ok(false);
    };
    let copied = copy_prefix(source, db_path, dest, len);
    source.execute_batch("COMMIT")?;
    copied?;
    Ok(true)
}

/// Opens a read transaction on `source` in which the database file itself is a consistent
/// snapshot, and returns the snapshot's length in bytes (page size × page count); the
/// caller reads the file (through [`read_main_db_file`]) and ends the transaction. `Ok(None)`
/// (no transaction open) when that could not be arranged: not in WAL mode, or commits kept
/// arriving between the checkpoint and the transaction.
///
/// Why this is safe (WAL mode): only checkpoints write the database file, and a checkpoint
/// never copies WAL frames past the end of the snapshot of any open read transaction
/// (<https://www.sqlite.org/wal.html>, "Checkpoint starvation"). A passive checkpoint
/// first moves every committed frame into the file (it reports `log == checkpointed`);
/// `PRAGMA data_version` read before the checkpoint and again inside the transaction proves
/// no other connection committed in between, so the transaction's snapshot is exactly the
/// file's content, and
/// no checkpoint can change the file until the transaction ends. The application keeps
/// committing to the WAL meanwhile (which grows until the transaction ends: no checkpoint
/// can reset it).
pub(crate) fn begin_pinned_read(source: &Connection) -> Result<Option<u64>, SnapshotError> {
    let mode: String = source.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if mode != "wal" {
        return Ok(None);
    }
    for _attempt in 0..20 {
        // Order matters: the version first, so that "unchanged" below also covers the
        // commits the checkpoint could have missed.
        let before: i64 = source.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let (busy, log, checkpointed): (i64, i64, i64) =
            source.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        if busy != 0 || log != checkpointed {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        source.execute_batch("BEGIN")?;
        let pinned = (|| -> Result<Option<u64>, SnapshotError> {
            let (page_size, page_count): (i64, i64) = source.query_row(
                "SELECT page_size, page_count FROM pragma_page_size, pragma_page_count",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let after: i64 = source.query_row("PRAGMA data_version", [], |r| r.get(0))?;
            Ok((after == before).then_some((page_size * page_count) as u64))
        })();
        match pinned {
            Ok(Some(len)) => return Ok(Some(len)),
            Ok(None) => source.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = source.execute_batch("COMMIT");
                return Err(e);
            }
        }
    }
    Ok(None)
}

/// Copies the first `len` bytes of the database file under `source` into the new file `to`,
/// marking the copy as a rollback-journal database (header bytes 18 and 19): it has no WAL
/// of its own.
///
/// The bytes are read through the connection's own SQLite file handle, never through a
/// second descriptor: closing any descriptor of a file drops every POSIX lock this process
/// holds on it, and losing the sidecar's shared lock lets an application connection that
/// closes believe it is the last one and delete the WAL under the sidecar.
fn copy_prefix(source: &Connection, from: &Path, to: &Path, len: u64) -> Result<(), SnapshotError> {
    let mut output = std::fs::File::create(to).map_err(file_error("creating", to))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < len {
        let want = (len - offset).min(buffer.len() as u64) as usize;
        read_main_db_file(source, &mut buffer[..want], offset).map_err(|e| {
            SnapshotError::ReadDatabase {
                path: from.to_owned(),
                offset,
                source: Box::new(e),
            }
        })?;
        if offset == 0 {
            mark_rollback_journal(&mut buffer[..want], from)?;
        }
        output.write_all(&buffer[..want])?;
        offset += want as u64;
    }
    Ok(())
}

/// Marks the first bytes of a database file image (`first`, at least its 100-byte header) as
/// a rollback-journal database (header bytes 18 and 19): the copy has no WAL of its own.
/// Errors when they are not an SQLite header (`from` names the file).
pub(crate) fn mark_rollback_journal(first: &mut [u8], from: &Path) -> Result<(), SnapshotError> {
    if first.len() < 100 || !first.starts_with(b"SQLite format 3\0") {
        return Err(SnapshotError::NotSqlite {
            path: from.to_owned(),
        });
    }
    first[18] = 1;
    first[19] = 1;
    Ok(())
}

/// Reads `buffer.len()` bytes at `offset` of the main database file of `connection`,
/// through the `sqlite3_file` SQLite itself uses (`SQLITE_FCNTL_FILE_POINTER` + `xRead`).
pub(crate) fn read_main_db_file(
    connection: &Connection,
    buffer: &mut [u8],
    offset: u64,
) -> Result<(), SnapshotError> {
    use rusqlite::ffi;
    let raw = |why: &str| SnapshotError::RawRead(why.to_owned());
    let amount = i32::try_from(buffer.len()).map_err(|_| raw("read too large"))?;
    let offset = i64::try_from(offset).map_err(|_| raw("offset too large"))?;
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `handle()` is the live connection this borrow keeps open; the file control
    // writes one `sqlite3_file*` into `file`. The file stays open while the connection
    // does, and `xRead` gets a buffer of exactly `amount` bytes.
    unsafe {
        let rc = ffi::sqlite3_file_control(
            connection.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&mut file as *mut *mut ffi::sqlite3_file).cast(),
        );
        if rc != ffi::SQLITE_OK {
            return Err(raw(&format!("SQLite returned no file handle (code {rc})")));
        }
        if file.is_null() || (*file).pMethods.is_null() {
            return Err(raw("the database file is not open"));
        }
        let read = (*(*file).pMethods)
            .xRead
            .ok_or_else(|| raw("the SQLite VFS cannot read"))?;
        let rc = read(file, buffer.as_mut_ptr().cast(), amount, offset);
        if rc != ffi::SQLITE_OK {
            return Err(raw(&format!(
                "the file is shorter than its page count says or unreadable (SQLite code {rc})"
            )));
        }
    }
    Ok(())
}

/// Copies the database with SQLite's online backup API, in one step.
fn backup_into(source: &Connection, db_path: &Path, dest: &Path) -> Result<(), SnapshotError> {
    remove_if_exists(dest)?;
    let mut copy = Connection::open(dest).map_err(database("creating the copy", dest))?;
    // A temporary file until it is complete: no journal, no fsync.
    copy.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")?;
    let backup = rusqlite::backup::Backup::new(source, &mut copy)?;
    let mut waited = Duration::ZERO;
    loop {
        match backup.step(-1).map_err(database("copying", db_path))? {
            rusqlite::backup::StepResult::Done => return Ok(()),
            _ if waited < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(50));
                waited += Duration::from_millis(50);
            }
            _ => {
                return Err(SnapshotError::Locked {
                    db: db_path.to_owned(),
                })
            }
        }
    }
}

/// The error of a database operation: `doing` (e.g. "opening") on `path`.
fn database<'a>(
    doing: &'static str,
    path: &'a Path,
) -> impl FnOnce(rusqlite::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Database {
        doing,
        path: path.to_owned(),
        source,
    }
}

/// The error of a file operation: `doing` (e.g. "creating") on `path`.
pub(crate) fn file_error<'a>(
    doing: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::File {
        doing,
        path: path.to_owned(),
        source,
    }
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A snapshot that was taken and stored.
#[derive(Debug, Clone)]
pub struct Taken {
    /// Where and what.
    pub info: SnapshotInfo,
    /// Size of the database copy.
    pub db_bytes: u64,
    /// Bytes stored (framed).
    pub bytes: u64,
    /// Time from the start of the copy to the end of the upload.
    pub took: Duration,
}

/// Takes a snapshot of the database at `db_path` and stores it: streamed from the live file
/// into an object store ([`pinned`]) when it can be pinned, else through a copy in
/// `work_dir` (or, for the file store, in its directory).
pub async fn take(
    db_path: &Path,
    work_dir: &Path,
    node_id: NodeId,
    stream: &str,
    store: &SnapshotStore,
) -> Result<Taken, SnapshotError> {
    let started = Instant::now();
    if let Some(streaming) = store.streaming() {
        if let Some(image) = StreamedImage::start(db_path, node_id, DEFAULT_CHUNK_SIZE).await? {
            return take_streamed(image, node_id, stream, store, streaming, started).await;
        }
        tracing::debug!(
            "the database file could not be pinned (not in WAL mode, or commits kept coming): \
             taking a copy"
        );
    }
    take_copied(db_path, work_dir, node_id, stream, store, started).await
}

/// Uploads a snapshot streamed from the live database file.
async fn take_streamed(
    image: StreamedImage,
    node_id: NodeId,
    stream: &str,
    store: &SnapshotStore,
    streaming: StreamingStore<'_>,
    started: Instant,
) -> Result<Taken, SnapshotError> {
    let header = *image.header();
    tracing::debug!(took = ?started.elapsed(), "database pinned and checksummed");
    let info = announce(stream, &header, node_id, store);
    let (framed, producer) = image.into_parts();
    let t0 = Instant::now();
    let uploaded = streaming.upload(&info, header.framed_size(), framed).await;
    // The reading thread's error first: it is why an upload that read from it failed.
    producer.await??;
    let bytes = uploaded?;
    tracing::debug!(took = ?t0.elapsed(), "snapshot streamed and stored");
    Ok(taken(info, &header, bytes, started))
}

/// Makes a stripped copy of the database (in `work_dir`, or the file store's directory),
/// frames it and stores it; the copy is removed after.
async fn take_copied(
    db_path: &Path,
    work_dir: &Path,
    node_id: NodeId,
    stream: &str,
    store: &SnapshotStore,
    started: Instant,
) -> Result<Taken, SnapshotError> {
    tokio::fs::create_dir_all(work_dir)
        .await
        .map_err(file_error("creating", work_dir))?;
    let copy = store.new_copy_path(work_dir);
    if let Some(dir) = copy.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(file_error("creating", dir))?;
    }
    let result = async {
        let (db, dest) = (db_path.to_owned(), copy.clone());
        let stored_as_is = matches!(store, SnapshotStore::File(_));
        let source = tokio::task::spawn_blocking(move || -> Result<FramedSource, SnapshotError> {
            let t0 = Instant::now();
            let covered = make_copy(&db, &dest)?;
            tracing::debug!(took = ?t0.elapsed(), "snapshot copy");
            let t0 = Instant::now();
            let r = FramedSource::prepare_and_sync(
                &dest,
                covered,
                node_id,
                DEFAULT_CHUNK_SIZE,
                stored_as_is,
            )?;
            tracing::debug!(took = ?t0.elapsed(), "snapshot framed and checksummed");
            Ok(r)
        })
        .await??;
        let header = *source.header();
        let info = announce(stream, &header, node_id, store);
        let t0 = Instant::now();
        let bytes = store.upload(&info, &source).await?;
        tracing::debug!(took = ?t0.elapsed(), "snapshot stored");
        Ok(taken(info, &header, bytes, started))
    }
    .await;
    let _ = tokio::fs::remove_file(&copy).await;
    result
}

/// The new snapshot's name and description, logged as its upload starts.
fn announce(
    stream: &str,
    header: &SnapshotHeader,
    node_id: NodeId,
    store: &SnapshotStore,
) -> SnapshotInfo {
    let info = SnapshotInfo::new(stream, header.covered_seq, crate::util::unix_ms(), node_id);
    tracing::info!(
        covered_seq = header.covered_seq.get(),
        bytes = header.total_size,
        "uploading snapshot {} to the {}",
        info.name,
        store.describe()
    );
    info
}

/// What a take reports once `bytes` framed bytes of `info` are stored.
fn taken(info: SnapshotInfo, header: &SnapshotHeader, bytes: u64, started: Instant) -> Taken {
    Taken {
        info: SnapshotInfo {
            size: bytes,
            ..info
        },
        db_bytes: header.total_size,
        bytes,
        took: started.elapsed(),
    }
}

/// Removes snapshot copies left in `work_dir` by processes that are gone (crashed).
pub fn remove_stale_copies(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("snapshot-")
            .and_then(|rest| rest.split(['-', '.']).next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// When periodic snapshots are due: `snapshot.interval` and `snapshot.every_messages`
/// (`None`: that trigger is off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSchedule {
    /// Take one when the newest is older than this.
    pub interval: Option<Duration>,
    /// Take one when this node applied this many messages past the newest.
    pub every_messages: Option<u64>,
}

impl SnapshotSchedule {
    /// The schedule `config` asks for (`None` when periodic snapshots are off).
    pub fn from_config(config: &Config) -> Option<Self> {
        let s = &config.snapshot;
        let schedule = SnapshotSchedule {
            interval: (!s.interval.is_zero()).then_some(s.interval),
            every_messages: (s.every_messages > 0).then_some(s.every_messages),
        };
        let on = s.enable
            && config.publish
            && config.replicate
            && (schedule.interval.is_some() || schedule.every_messages.is_some());
        on.then_some(schedule)
    }

    /// The schedule of a snapshot another node asked for: due whenever it would cover
    /// something the newest stored one does not.
    pub fn on_request() -> Self {
        SnapshotSchedule {
            interval: Some(Duration::ZERO),
            every_messages: None,
        }
    }

    /// Whether a node whose cursor is `cursor` should take a snapshot now (`now_ms`), given
    /// the newest stored one (`newest`: covered sequence and time taken). Never when it
    /// would cover nothing new.
    pub fn due(&self, newest: Option<(StreamSeq, u64)>, cursor: StreamSeq, now_ms: u64) -> bool {
        match newest {
            None => cursor.get() > 0,
            Some((covered, taken_at_ms)) => {
                cursor > covered
                    && (self.interval.is_some_and(|i| {
                        now_ms >= taken_at_ms.saturating_add(i.as_millis() as u64)
                    }) || self
                        .every_messages
                        .is_some_and(|n| cursor.get() - covered.get() >= n))
            }
        }
    }
}

/// What a periodic snapshot job did.
#[derive(Debug)]
pub enum JobOutcome {
    /// Took and stored one.
    Taken(Taken),
    /// Not due after all (another node took one): the newest one.
    NotDue(Option<SnapshotInfo>),
    /// Another node holds the lease.
    LeaseHeld(Option<String>),
}

/// Everything a periodic snapshot job needs (cheap to clone into a task).
#[derive(Clone)]
pub struct JobContext {
    /// The configuration.
    pub config: Arc<Config>,
    /// JetStream.
    pub js: jetstream::Context,
    /// This node.
    pub node_id: NodeId,
    /// The change stream's name (prefix of snapshot names, lease key).
    pub stream: String,
    /// When snapshots are due.
    pub schedule: SnapshotSchedule,
}

/// One periodic snapshot attempt: re-reads the newest stored snapshot, and if one is still
/// due for `cursor`, takes the lease, takes and stores a snapshot, prunes old ones and gives
/// the lease back.
pub async fn run_job(ctx: JobContext, cursor: StreamSeq) -> Result<JobOutcome, SnapshotError> {
    let config = &ctx.config;
    let store = SnapshotStore::open(config, &ctx.js, &ctx.stream).await?;
    let newest = store.newest().await?;
    let key = newest.as_ref().map(|n| (n.covered_seq, n.taken_at_ms));
    if !ctx.schedule.due(key, cursor, crate::util::unix_ms()) {
        return Ok(JobOutcome::NotDue(newest));
    }
    let bucket = LeaseBucket::open(
        &ctx.js,
        &lease_bucket_name(config),
        config.snapshot_replicas(),
        lease::TTL,
    )
    .await?;
    let Some(mut lease) = bucket.try_acquire(&ctx.stream, ctx.node_id).await? else {
        let holder = bucket.holder(&ctx.stream).await.unwrap_or(None);
        return Ok(JobOutcome::LeaseHeld(holder));
    };
    let work_dir = config.effective_data_dir();
    let work = take(&config.db_path, &work_dir, ctx.node_id, &ctx.stream, &store);
    tokio::pin!(work);
    let mut renew = tokio::time::interval(lease::RENEW_EVERY);
    renew.tick().await;
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = renew.tick() => {
                if let Err(e) = lease.renew().await {
                    tracing::warn!("snapshot lease: {e:#}");
                }
            }
        }
    };
    if result.is_ok() {
        prune(&store, config.snapshot.keep).await;
    }
    lease.release().await;
    result.map(JobOutcome::Taken)
}

/// Deletes snapshots beyond `keep`, logging the outcome.
pub async fn prune(store: &SnapshotStore, keep: usize) {
    match store.prune(keep).await {
        Ok(deleted) => {
            for info in deleted {
                tracing::info!("deleted old snapshot {}", info.name);
            }
        }
        Err(e) => tracing::warn!("could not delete old snapshots: {e:#}"),
    }
}

/// Name of the lease bucket: `<snapshot.nats_bucket>-lease`.
pub fn lease_bucket_name(config: &Config) -> String {
    format!("{}-lease", config.snapshot.nats_bucket)
}

/// A thread committing to `db` all the time until `stop` (tables `c(n)` and
/// `rows(n, pad)`: each commit adds 1 to `n` and a row numbered `n`, so a torn copy shows as
/// `n` != the row count); returns its number of commits.
#[cfg(test)]
pub(crate) fn spawn_busy_writer(
    db: std::path::PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut conn = Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let mut commits = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let tx = conn.transaction().unwrap();
            tx.execute_batch(
                "UPDATE c SET n = n + 1;
                 INSERT INTO rows SELECT n, randomblob(3000) FROM c;",
            )
            .unwrap();
            tx.commit().unwrap();
            commits += 1;
            if commits % 8 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        commits
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::progress::Progress;
    use harmonylite_core::snapshot::{encode_chunk, unframe_bytes};
    use tokio::io::AsyncReadExt;

    fn node() -> NodeId {
        NodeId::from_u128(7).unwrap()
    }

    #[test]
    fn schedule_triggers() {
        let s = SnapshotSchedule {
            interval: Some(Duration::from_secs(60)),
            every_messages: Some(100),
        };
        let seq = StreamSeq::new;
        assert!(s.due(None, seq(1), 0), "no snapshot yet");
        assert!(!s.due(None, seq(0), 0), "nothing to cover");
        assert!(!s.due(Some((seq(10), 1_000)), seq(50), 30_000));
        assert!(s.due(Some((seq(10), 1_000)), seq(50), 61_000), "interval");
        assert!(s.due(Some((seq(10), 1_000)), seq(110), 2_000), "messages");
        assert!(
            !s.due(Some((seq(10), 1_000)), seq(10), 999_999),
            "nothing new to cover"
        );
        let messages_only = SnapshotSchedule {
            interval: None,
            every_messages: Some(100),
        };
        assert!(!messages_only.due(Some((seq(10), 0)), seq(50), u64::MAX));
    }

    #[tokio::test]
    async fn the_framed_reader_and_writer_produce_the_core_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let source = FramedSource::prepare(&path, StreamSeq::new(42), node(), 65_536).unwrap();
        assert_eq!(source.header().total_size, data.len() as u64);

        let mut written = Vec::new();
        let n = source
            .write_to(&mut written, &mut Progress::silent(), None)
            .unwrap();
        assert_eq!(n, source.framed_size());
        let (header, back) = unframe_bytes(&written).unwrap();
        assert_eq!(header.covered_seq, StreamSeq::new(42));
        assert_eq!(back, data);

        let mut read = Vec::new();
        source.reader().read_to_end(&mut read).await.unwrap();
        assert_eq!(read, written);

        // A copy that changes after it was checksummed is refused.
        std::fs::write(&path, vec![1u8; data.len()]).unwrap();
        let error = source
            .write_to(&mut Vec::new(), &mut Progress::silent(), None)
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
        assert!(error.to_string().contains("damaged or changed"), "{error}");
        let mut reader = source.reader();
        assert!(reader.read_to_end(&mut Vec::new()).await.is_err());
    }

    /// Copies taken while another connection commits all the time are consistent
    /// snapshots: every commit moves one counter and adds one row, so a torn copy shows.
    #[test]
    fn copies_taken_under_concurrent_writes_are_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("busy.db");
        let setup = Connection::open(&db).unwrap();
        setup
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE c(n INTEGER); INSERT INTO c VALUES (0);
                 CREATE TABLE rows(n INTEGER PRIMARY KEY, pad BLOB);",
            )
            .unwrap();
        drop(setup);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = spawn_busy_writer(db.clone(), stop.clone());
        let check = |copy: &Path| -> i64 {
            let conn = Connection::open(copy).unwrap();
            let (n, rows): (i64, i64) = conn
                .query_row(
                    "SELECT (SELECT n FROM c), (SELECT count(*) FROM rows)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(n, rows, "a torn copy");
            let ok: String = conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok");
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "delete", "the copy has no WAL of its own");
            n
        };
        let source = Connection::open(&db).unwrap();
        source.busy_timeout(Duration::from_secs(10)).unwrap();
        let copy = dir.path().join("copy.db");
        let (mut fast, mut last) = (0, -1);
        for _ in 0..30 {
            if copy_file_in_read_transaction(&source, &db, &copy).unwrap() {
                fast += 1;
                let n = check(&copy);
                assert!(n >= last, "snapshots go forward");
                last = n;
            }
            backup_into(&source, &db, &copy).unwrap();
            let conn = Connection::open(&copy).unwrap();
            let _: String = conn
                .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
                .unwrap();
            drop(conn);
            check(&copy);
            std::thread::sleep(Duration::from_millis(3));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let commits = writer.join().unwrap();
        assert!(commits > 30, "the writer kept committing ({commits})");
        assert!(fast > 0, "the file copy never found a checkpointed WAL");
    }

    /// Regression: taking a copy must not drop this process's POSIX locks on the database
    /// file. If it did, an application process that opens, writes and closes the database
    /// afterwards would believe it was the last connection and delete the WAL that this
    /// process's connection still uses.
    #[test]
    fn a_copy_keeps_this_process_locks_so_apps_never_delete_the_wal_under_us() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let held = Connection::open(&db).unwrap();
        held.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t(n INTEGER PRIMARY KEY);
             INSERT INTO t VALUES (1);",
        )
        .unwrap();
        let copy = dir.path().join("copy.db");
        let source = Connection::open(&db).unwrap();
        assert!(
            copy_file_in_read_transaction(&source, &db, &copy).unwrap(),
            "an idle database takes the file-copy path"
        );
        drop(source);
        let app = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1])\n\
                 c.execute('INSERT INTO t VALUES (2)')\n\
                 c.commit()\n\
                 c.close()",
            )
            .arg(&db)
            .status()
            .expect("python3 (the application process of this test) must be installed");
        assert!(app.success());
        let wal = dir.path().join("app.db-wal");
        assert!(
            wal.exists(),
            "the application deleted the WAL while this process still had it open"
        );
        let n: i64 = held
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn encode_chunk_matches_the_writer() {
        // The writer frames chunks exactly like core's encoder.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello snapshot").unwrap();
        let source = FramedSource::prepare(&path, StreamSeq::new(1), node(), 1024).unwrap();
        let mut written = Vec::new();
        source
            .write_to(&mut written, &mut Progress::silent(), None)
            .unwrap();
        let mut expected = source.header().encode().to_vec();
        expected.extend_from_slice(&encode_chunk(b"hello snapshot"));
        assert_eq!(written, expected);
    }
}
