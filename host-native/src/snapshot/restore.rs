//! Restoring a replica's database from a snapshot, at start.
//!
//! When: the database file is missing (or empty), or `PRAGMA quick_check` finds it damaged.
//! A sound database that fell behind the stream's retention is never replaced: it catches
//! up in place ([`crate::snapshot::catch_up`]). How, in order:
//!
//! 1. Keep this node's unpublished writes: when the old file is sound, capture pending
//!    writes and publish the outbox, waiting for JetStream's acks; when it is damaged,
//!    publish whatever outbox frames can still be read (checksummed frames; broken ones are
//!    skipped and counted). These messages land in the stream before the restore looks at
//!    it, so the replay below applies them.
//! 2. Pick the newest snapshot that reaches the stream (its covered sequence + 1 ≥ the
//!    stream's first sequence); none ⇒ ask a healthy peer to take one
//!    ([`crate::snapshot::peer`]) and wait for it; still none ⇒ an error the caller retries.
//! 3. Download it to `<db_path>.hl-restore` beside the database, verifying every chunk and
//!    the whole file (a damaged download falls back to the next older snapshot), fsync.
//! 4. Install node-local state in it (core's `install_node_local`), after removing the
//!    taker's that a streamed snapshot (format version 2) still holds: this node's id, its
//!    incarnation and counters when the old file's were readable (else a fresh
//!    incarnation), the old clock, and `replay_own_until` = the stream's last sequence, so
//!    this node's own messages after the snapshot are applied rather than skipped.
//! 5. Swap: write the journal `<data_dir>/restore.json` (fsynced), remove the old `-wal`,
//!    `-shm` and `-journal` (a stale WAL or hot journal beside a new file would corrupt
//!    it), rename the new file over the database, fsync the directory, remove the journal.
//!
//! The sidecar then opens the new file and replays the stream from the covered sequence.
//!
//! Crash safety: until step 5 writes the journal the old database is untouched, so the next
//! start decides again and starts over (a leftover partial download is deleted). Once the
//! journal exists the new file is complete and durable; [`finish_interrupted_swap`] at the
//! next start completes the swap (or, if the rename already happened, only removes the
//! journal). `kill -9` at any point therefore ends in the old state or the restored one.
//!
//! Nothing replaces the database file while another connection may have it open (its
//! writes would go into the replaced file): the sidecar reads SQLite's own locks on the
//! `-shm` file and the database ([`crate::util::db_lock`]), which every process, container and PID
//! namespace on the volume shares, and waits — as long as it takes, saying why in its log
//! and health — until none is held, right before downloading and again right before the
//! swap.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::BytesMut;
use futures::future::try_join_all;
use futures::StreamExt;
use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::report::OutboxFrame;
use harmonylite_core::scope::Subjects;
use harmonylite_core::snapshot::{SnapshotDecoder, SnapshotFrame, SnapshotHeader};
use harmonylite_core::sqlite::snapshot::{
    install_node_local, open_read_only, quick_check, salvage, NodeLocal, Salvage,
};
use harmonylite_core::sqlite::Store;
use harmonylite_core::wire;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::config::Config;
use crate::ops::progress::Progress;
use crate::snapshot::file_error;
use crate::snapshot::peer::{usable_snapshots, PeerAsk};
use crate::snapshot::store::{SnapshotInfo, SnapshotStore};
use crate::snapshot::SnapshotError;

/// How often a restore waiting for other connections to close the database says so.
const OPENERS_LOG_EVERY: Duration = Duration::from_secs(30);

/// The state of the database file at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalDb {
    /// No file, or an empty one.
    Missing,
    /// `PRAGMA quick_check` found problems (or the file is not a database).
    Damaged {
        /// What SQLite reported.
        problems: Vec<String>,
    },
    /// Opens and passes `PRAGMA quick_check`.
    Sound,
}

/// Why a restore runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreReason {
    /// The database file is missing: a new node, or a deleted file.
    Missing,
    /// The database is damaged.
    Damaged,
    /// The stream no longer holds messages this node has not applied.
    Behind,
}

impl RestoreReason {
    /// Short name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            RestoreReason::Missing => "missing",
            RestoreReason::Damaged => "damaged",
            RestoreReason::Behind => "behind",
        }
    }

    /// What is wrong with the database, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            RestoreReason::Missing => "the database file is missing",
            RestoreReason::Damaged => "the database is damaged",
            RestoreReason::Behind => "this node fell behind the stream's retention",
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The snapshot used.
    pub snapshot: SnapshotInfo,
    /// Why.
    pub reason: RestoreReason,
    /// Database bytes written.
    pub db_bytes: u64,
    /// Framed bytes downloaded.
    pub downloaded: u64,
    /// From the first download byte to the swap.
    pub took: Duration,
    /// This node's own messages up to here are replayed.
    pub replay_own_until: StreamSeq,
}

/// The journal of a swap in progress (`<data_dir>/restore.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SwapJournal {
    db: PathBuf,
    restored: PathBuf,
    size: u64,
    snapshot: String,
    covered_seq: u64,
}

/// `<db_path>.hl-restore`: where a download is written, beside the database.
pub fn restore_path(db_path: &Path) -> PathBuf {
    with_suffix(db_path, ".hl-restore")
}

fn journal_path(config: &Config) -> PathBuf {
    config.effective_data_dir().join("restore.json")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Checks the database file: missing, damaged or sound. Errors that say nothing about the
/// file's content (permissions, busy) are errors, never "damaged".
pub fn assess(db_path: &Path) -> Result<LocalDb, SnapshotError> {
    match std::fs::metadata(db_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LocalDb::Missing),
        Err(e) => return Err(file_error("reading", db_path)(e)),
        Ok(m) if m.len() == 0 && !with_suffix(db_path, "-wal").exists() => {
            return Ok(LocalDb::Missing)
        }
        Ok(_) => {}
    }
    let conn = match Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(conn) => conn,
        Err(e) if harmonylite_core::sqlite::snapshot::is_corruption(&e) => {
            return Ok(LocalDb::Damaged {
                problems: vec![e.to_string()],
            })
        }
        Err(source) => {
            return Err(SnapshotError::Database {
                doing: "opening",
                path: db_path.to_owned(),
                source,
            })
        }
    };
    conn.busy_timeout(Duration::from_secs(10))?;
    let problems = quick_check(&conn).map_err(|source| SnapshotError::QuickCheck {
        db: db_path.to_owned(),
        source,
    })?;
    Ok(if problems.is_empty() {
        LocalDb::Sound
    } else {
        LocalDb::Damaged { problems }
    })
}

/// Removes the `-wal`, `-shm` and `-journal` files of a database file that is missing: a
/// stale WAL or hot journal would be replayed into the new file SQLite creates there.
pub fn remove_stale_companions(db_path: &Path) -> Result<(), SnapshotError> {
    if db_path.exists() {
        return Ok(());
    }
    for suffix in ["-wal", "-shm", "-journal"] {
        let stale = with_suffix(db_path, suffix);
        match std::fs::remove_file(&stale) {
            Ok(()) => tracing::warn!(
                "removed {}, left behind by the missing database",
                stale.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error("removing", &stale)(e)),
        }
    }
    Ok(())
}

/// Reads what can be read of the old file's node-local state (read-only; nothing for a
/// missing file).
pub fn salvage_local(db_path: &Path, local: &LocalDb) -> Salvage {
    if *local == LocalDb::Missing {
        return Salvage::default();
    }
    let Some(path) = db_path.to_str() else {
        return Salvage::default();
    };
    let opened = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .or_else(|_| open_read_only(path));
    match opened {
        Ok(conn) => {
            let _ = conn.busy_timeout(Duration::from_secs(10));
            salvage(&conn)
        }
        Err(e) => Salvage {
            problems: vec![e.to_string()],
            ..Default::default()
        },
    }
}

/// Completes a swap that a crash interrupted (see the module docs), and removes a partial
/// download left by one. Runs at every start, before the database is looked at.
pub fn finish_interrupted_swap(config: &Config) -> Result<(), SnapshotError> {
    let journal = journal_path(config);
    let _ = std::fs::remove_file(with_suffix(&journal, ".tmp"));
    let restored = restore_path(&config.db_path);
    let text = match std::fs::read_to_string(&journal) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if restored.exists() {
                tracing::info!(
                    "removing {} left by an interrupted restore",
                    restored.display()
                );
                std::fs::remove_file(&restored).map_err(file_error("removing", &restored))?;
            }
            return Ok(());
        }
        Err(e) => return Err(file_error("reading", &journal)(e)),
    };
    let entry: SwapJournal =
        serde_json::from_str(&text).map_err(|source| SnapshotError::Journal {
            path: journal.clone(),
            source,
        })?;
    if entry.db != config.db_path {
        return Err(SnapshotError::JournalElsewhere {
            journal,
            db: entry.db,
            db_path: config.db_path.clone(),
        });
    }
    match std::fs::metadata(&entry.restored) {
        Ok(m) => {
            if m.len() != entry.size {
                return Err(SnapshotError::RestoredSize {
                    path: entry.restored,
                    len: m.len(),
                    expected: entry.size,
                });
            }
            tracing::warn!(
                snapshot = %entry.snapshot,
                covered_seq = entry.covered_seq,
                "completing a restore that was interrupted while swapping the database in"
            );
            swap(&entry, &journal, false)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The rename happened; only the journal is left.
            remove_journal(&journal)?;
        }
        Err(e) => return Err(file_error("reading", &entry.restored)(e)),
    }
    Ok(())
}

/// The swap itself (blocking): journal, old WAL/SHM/journal gone, rename, fsyncs.
fn swap(entry: &SwapJournal, journal: &Path, write_journal: bool) -> Result<(), SnapshotError> {
    if write_journal {
        let dir = journal
            .parent()
            .ok_or_else(|| SnapshotError::NoJournalDir {
                journal: journal.to_owned(),
            })?;
        std::fs::create_dir_all(dir).map_err(file_error("creating", dir))?;
        let tmp = with_suffix(journal, ".tmp");
        let mut file = std::fs::File::create(&tmp).map_err(file_error("creating", &tmp))?;
        std::io::Write::write_all(&mut file, serde_json::to_string_pretty(entry)?.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, journal)
            .map_err(file_error("writing the restore journal", journal))?;
        crate::util::sync_dir(journal)?;
    }
    for suffix in ["-wal", "-shm", "-journal"] {
        let stale = with_suffix(&entry.db, suffix);
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(file_error("removing", &stale)(e))
            }
            _ => {}
        }
    }
    crate::util::failpoint::pause_blocking("restore-swap");
    std::fs::rename(&entry.restored, &entry.db).map_err(|source| SnapshotError::Rename {
        from: entry.restored.clone(),
        to: entry.db.clone(),
        source,
    })?;
    crate::util::sync_dir(&entry.db)?;
    remove_journal(journal)
}

fn remove_journal(journal: &Path) -> Result<(), SnapshotError> {
    match std::fs::remove_file(journal) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(file_error("removing", journal)(e))
        }
        _ => Ok(crate::util::sync_dir(journal)?),
    }
}

/// Waits until no other connection has the database open (read from SQLite's own locks,
/// [`crate::util::db_lock`], so a connection in another container counts), calling `waiting` with
/// the reason while it waits and with `None` when it is done. Waits as long as it takes:
/// replacing a file an application holds would send its writes into the replaced file.
/// This process must have no connection to the database meanwhile.
pub async fn wait_until_unopened(
    db_path: &Path,
    mut waiting: impl FnMut(Option<String>),
) -> Result<(), SnapshotError> {
    let mut logged = Instant::now() - OPENERS_LOG_EVERY;
    loop {
        let holder = crate::util::db_lock::other_connection(db_path)
            .map_err(file_error("reading the locks on", db_path))?;
        let Some(holder) = holder else {
            waiting(None);
            return Ok(());
        };
        let why = format!(
            "waiting for every other connection to close {} before replacing it ({holder}); stop the application \
             (harmonylite never replaces a database file an application has open)",
            db_path.display()
        );
        if logged.elapsed() >= OPENERS_LOG_EVERY {
            tracing::warn!("{why}");
            logged = Instant::now();
        }
        waiting(Some(why));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Captures pending local writes and publishes the whole outbox, waiting for JetStream's
/// acks and removing acknowledged frames; returns the frames published.
pub async fn publish_outbox(
    store: &mut Store,
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<u64, SnapshotError> {
    let mut total = 0;
    loop {
        store.drain().map_err(SnapshotError::Capture)?;
        let frames = store.outbox_after(0, 512)?;
        if frames.is_empty() {
            return Ok(total);
        }
        publish_frames(js, subjects, &frames).await;
        let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
        store.outbox_remove(&ids)?;
        total += frames.len() as u64;
    }
}

/// Publishes salvaged outbox frames of a damaged database; frames that fail their checksum
/// are skipped. Returns (published, skipped).
pub async fn publish_salvaged(
    js: &jetstream::Context,
    subjects: &Subjects,
    frames: &[OutboxFrame],
) -> (u64, u64) {
    let (good, bad): (Vec<&OutboxFrame>, Vec<&OutboxFrame>) = frames
        .iter()
        .partition(|f| wire::decode_message(&f.frame).is_ok());
    for chunk in good.chunks(512) {
        let owned: Vec<OutboxFrame> = chunk.iter().map(|f| (*f).clone()).collect();
        publish_frames(js, subjects, &owned).await;
    }
    (good.len() as u64, bad.len() as u64)
}

/// Publishes frames with their de-duplication ids and waits for every ack, retrying until
/// all are stored (JetStream drops the copies it already has).
async fn publish_frames(js: &jetstream::Context, subjects: &Subjects, frames: &[OutboxFrame]) {
    let mut delay = Duration::from_millis(200);
    loop {
        let result = async {
            let mut acks = Vec::with_capacity(frames.len());
            for f in frames {
                let message = jetstream::message::PublishMessage::build()
                    .payload(f.frame.clone().into())
                    .message_id(&f.msg_id);
                acks.push(
                    js.send_publish(subjects.for_suffix(f.subject.as_deref()), message)
                        .await?
                        .into_future(),
                );
            }
            try_join_all(acks).await.map(|_| ())
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "publishing this node's unpublished writes before the restore failed: {e}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Restores the database from the newest usable snapshot in `store` (steps 2 to 5 of the
/// module docs). `kept` is the old file's node-local state (see [`salvage_local`]); the
/// caller has published its outbox and closed its connections.
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    config: &Config,
    node_id: NodeId,
    stream: &mut jetstream::stream::Stream,
    store: &SnapshotStore,
    reason: RestoreReason,
    kept: &Salvage,
    ask: &PeerAsk,
    mut waiting: impl FnMut(Option<String>),
) -> Result<Restored, SnapshotError> {
    wait_until_unopened(&config.db_path, &mut waiting).await?;
    let info = stream.info().await.map_err(SnapshotError::ReadStream)?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let stream_name = info.config.name.clone();
    let usable = usable_snapshots(store, first, ask)
        .await
        .map_err(|source| SnapshotError::NoCoveringSnapshot {
            db: config.db_path.clone(),
            reason: reason.describe(),
            stream: stream_name,
            first,
            source: Box::new(source),
        })?;
    tracing::warn!(
        reason = reason.as_str(),
        stream_first = first,
        stream_last = last,
        "restoring {} from a snapshot in the {}",
        config.db_path.display(),
        store.describe()
    );
    let target = restore_path(&config.db_path);
    let started = Instant::now();
    let mut chosen = None;
    for candidate in &usable {
        match download(store, candidate, &target).await {
            Ok((header, downloaded)) => {
                chosen = Some((candidate.clone(), header, downloaded));
                break;
            }
            Err(e) => {
                tracing::error!(
                    "snapshot {} is unusable, trying an older one: {e:#}",
                    candidate.name
                );
                let _ = tokio::fs::remove_file(&target).await;
            }
        }
    }
    let Some((snapshot, header, downloaded)) = chosen else {
        return Err(SnapshotError::NoIntactSnapshot {
            db: config.db_path.clone(),
            store: store.describe(),
        });
    };

    let local = NodeLocal {
        node_id,
        incarnation: match kept.incarnation {
            Some(old) if kept.counters_known() => old,
            _ => crate::util::random_u64()?,
        },
        next_batch: kept.next_batch.filter(|_| kept.counters_known()),
        next_outbox_id: kept.next_outbox_id.filter(|_| kept.counters_known()),
        clock: kept.clock,
    };
    let replay_own_until = StreamSeq::new(last);
    let size = prepare_restored_file(&target, local, header.covered_seq, replay_own_until).await?;

    wait_until_unopened(&config.db_path, &mut waiting).await?;
    let entry = SwapJournal {
        db: config.db_path.clone(),
        restored: target,
        size,
        snapshot: snapshot.name.clone(),
        covered_seq: header.covered_seq.get(),
    };
    let journal = journal_path(config);
    tokio::task::spawn_blocking(move || swap(&entry, &journal, true)).await??;
    let took = started.elapsed();
    tracing::info!(
        snapshot = %snapshot.name,
        covered_seq = header.covered_seq.get(),
        bytes = header.total_size,
        took_ms = took.as_millis() as u64,
        replay_own_until = last,
        "restored {} from a snapshot; replaying the stream from sequence {}",
        config.db_path.display(),
        header.covered_seq.get() + 1
    );
    Ok(Restored {
        snapshot,
        reason,
        db_bytes: header.total_size,
        downloaded,
        took,
        replay_own_until,
    })
}

/// Step 4 of a restore: removes the taker's node-local state from the downloaded file at
/// `path` (a streamed snapshot carries it), installs this node's and fsyncs the file;
/// returns its size.
pub async fn prepare_restored_file(
    path: &Path,
    local: NodeLocal,
    covered: StreamSeq,
    replay_own_until: StreamSeq,
) -> Result<u64, SnapshotError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || -> Result<u64, SnapshotError> {
        let mut conn = Connection::open(&path).map_err(|source| SnapshotError::Database {
            doing: "opening",
            path: path.clone(),
            source,
        })?;
        install_node_local(&mut conn, &local, covered, replay_own_until).map_err(|source| {
            SnapshotError::InstallNodeLocal {
                path: path.clone(),
                source,
            }
        })?;
        conn.close().map_err(|(_, e)| e)?;
        let file = std::fs::File::open(&path)?;
        file.sync_all()?;
        Ok(file.metadata()?.len())
    })
    .await?
}

/// Downloads `info` into `target`, verifying every chunk and the whole file, and fsyncs
/// it. Returns the header and the framed bytes read. The file is written by a blocking
/// thread of its own while the next chunks arrive.
pub async fn download(
    store: &SnapshotStore,
    info: &SnapshotInfo,
    target: &Path,
) -> Result<(SnapshotHeader, u64), SnapshotError> {
    if let SnapshotStore::File(files) = store {
        let (files, info, target) = (files.clone(), info.clone(), target.to_owned());
        return Ok(
            tokio::task::spawn_blocking(move || files.copy_verified(&info, &target)).await??,
        );
    }
    let mut source = match store {
        SnapshotStore::Nats(nats) => Download::Chunks(nats.chunks(info).await?),
        _ => Download::Reader(store.open_reader(info).await?),
    };
    let mut progress = Progress::new("downloading snapshot", info.size);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let path = target.to_owned();
    let writer = tokio::task::spawn_blocking(move || write_download(&path, &mut rx));
    let decoded = async {
        let mut decoder = SnapshotDecoder::new();
        let mut buffer = BytesMut::with_capacity(4 << 20);
        let mut header = None;
        loop {
            if buffer.capacity() - buffer.len() < (1 << 20) {
                buffer.reserve(2 << 20);
            }
            let read = source
                .read(&mut buffer)
                .await
                .map_err(|e| SnapshotError::Download {
                    name: info.name.clone(),
                    source: Box::new(e),
                })?;
            progress.advance(read as u64);
            let no_header = || SnapshotError::NoHeader {
                name: info.name.clone(),
            };
            while let Some(frame) =
                decoder
                    .decode(&mut buffer)
                    .map_err(|source| SnapshotError::Damaged {
                        name: info.name.clone(),
                        source,
                    })?
            {
                match frame {
                    SnapshotFrame::Header(h) => {
                        if h.covered_seq != info.covered_seq {
                            return Err(SnapshotError::CoveredMismatch {
                                name: info.name.clone(),
                                header: h.covered_seq.get(),
                                named: info.covered_seq.get(),
                            });
                        }
                        header = Some(h);
                    }
                    SnapshotFrame::Chunk(data) => {
                        if tx.send(data).await.is_err() {
                            // The writer failed; its error is reported below.
                            return header.ok_or_else(no_header);
                        }
                    }
                    SnapshotFrame::End => return header.ok_or_else(no_header),
                }
            }
            if read == 0 {
                decoder
                    .finish()
                    .map_err(|source| SnapshotError::Incomplete {
                        name: info.name.clone(),
                        source,
                    })?;
            }
        }
    }
    .await;
    drop(tx);
    let written = writer.await??;
    let header = decoded?;
    if written != header.total_size {
        return Err(SnapshotError::WrittenSize {
            name: info.name.clone(),
            written,
            expected: header.total_size,
        });
    }
    let downloaded = progress.done();
    progress.finish();
    Ok((header, downloaded))
}

/// Bytes a download writes between two fsyncs started behind it.
const SYNC_EVERY: u64 = 64 << 20;

/// Writes the chunks `rx` receives into a new file at `path` and fsyncs it; returns the
/// bytes written. A second thread fsyncs what was written so far every [`SYNC_EVERY`]
/// bytes, so the disk writes overlap the download instead of all waiting for the last
/// fsync.
fn write_download(
    path: &Path,
    rx: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> Result<u64, SnapshotError> {
    let mut file = std::fs::File::create(path).map_err(file_error("creating", path))?;
    let syncing = file.try_clone().map_err(file_error("opening", path))?;
    let (sync_tx, sync_rx) = std::sync::mpsc::channel::<()>();
    let syncer = std::thread::spawn(move || -> std::io::Result<()> {
        while sync_rx.recv().is_ok() {
            while sync_rx.try_recv().is_ok() {}
            syncing.sync_data()?;
        }
        Ok(())
    });
    let mut written = 0u64;
    let mut synced_at = 0u64;
    let result = (|| -> Result<(), SnapshotError> {
        while let Some(chunk) = rx.blocking_recv() {
            std::io::Write::write_all(&mut file, &chunk).map_err(file_error("writing", path))?;
            if written == 0 && crate::util::failpoint::is_armed("restore-download") {
                file.sync_all()?;
                crate::util::failpoint::pause_blocking("restore-download");
            }
            written += chunk.len() as u64;
            if written - synced_at >= SYNC_EVERY {
                synced_at = written;
                let _ = sync_tx.send(());
            }
        }
        Ok(())
    })();
    drop(sync_tx);
    let synced = syncer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the fsync thread panicked")));
    result?;
    synced.map_err(file_error("syncing", path))?;
    file.sync_all().map_err(file_error("syncing", path))?;
    Ok(written)
}

/// Where a download's framed bytes come from.
enum Download {
    /// The object store's chunks, as they arrive.
    Chunks(
        futures::stream::BoxStream<
            'static,
            Result<bytes::Bytes, crate::snapshot::store::SnapshotStoreError>,
        >,
    ),
    /// Any other store.
    Reader(Box<dyn tokio::io::AsyncRead + Send + Unpin>),
}

impl Download {
    /// Appends the next bytes to `buffer`; 0 at the end.
    async fn read(&mut self, buffer: &mut BytesMut) -> Result<usize, SnapshotError> {
        match self {
            Download::Chunks(chunks) => match chunks.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    buffer.extend_from_slice(&chunk);
                    Ok(chunk.len())
                }
                None => Ok(0),
            },
            Download::Reader(reader) => Ok(reader.read_buf(buffer).await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        Config::from_toml_str(
            &format!("db_path = {:?}\n", dir.join("app.db").display().to_string()),
            "test.toml",
        )
        .unwrap()
    }

    #[test]
    fn assess_tells_missing_damaged_and_sound_apart() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        assert_eq!(assess(&db).unwrap(), LocalDb::Missing);
        std::fs::write(&db, b"").unwrap();
        assert_eq!(assess(&db).unwrap(), LocalDb::Missing, "an empty file");
        std::fs::write(&db, b"this is not a database at all, not even close....").unwrap();
        assert!(matches!(assess(&db).unwrap(), LocalDb::Damaged { .. }));
        std::fs::remove_file(&db).unwrap();
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(conn);
        assert_eq!(assess(&db).unwrap(), LocalDb::Sound);
    }

    #[test]
    fn an_interrupted_swap_is_completed_and_a_partial_download_removed() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let db = config.db_path.clone();
        let restored = restore_path(&db);

        // A partial download without a journal: removed, the database untouched.
        std::fs::write(&db, b"old").unwrap();
        std::fs::write(&restored, b"partial").unwrap();
        finish_interrupted_swap(&config).unwrap();
        assert!(!restored.exists());
        assert_eq!(std::fs::read(&db).unwrap(), b"old");

        // A journaled swap interrupted before the rename: completed, stale WAL gone.
        std::fs::write(&restored, b"new file").unwrap();
        std::fs::write(with_suffix(&db, "-wal"), b"stale wal").unwrap();
        let entry = SwapJournal {
            db: db.clone(),
            restored: restored.clone(),
            size: 8,
            snapshot: "s".into(),
            covered_seq: 3,
        };
        let journal = journal_path(&config);
        std::fs::create_dir_all(journal.parent().unwrap()).unwrap();
        std::fs::write(&journal, serde_json::to_string(&entry).unwrap()).unwrap();
        finish_interrupted_swap(&config).unwrap();
        assert_eq!(std::fs::read(&db).unwrap(), b"new file");
        assert!(!with_suffix(&db, "-wal").exists());
        assert!(!journal.exists() && !restored.exists());

        // Interrupted after the rename: only the journal is left, and the WAL that belongs
        // to the new file is kept.
        std::fs::write(with_suffix(&db, "-wal"), b"new wal").unwrap();
        std::fs::write(&journal, serde_json::to_string(&entry).unwrap()).unwrap();
        finish_interrupted_swap(&config).unwrap();
        assert!(!journal.exists());
        assert_eq!(std::fs::read(with_suffix(&db, "-wal")).unwrap(), b"new wal");
        assert_eq!(std::fs::read(&db).unwrap(), b"new file");
    }

    #[tokio::test]
    async fn waiting_for_exclusive_use_ends_when_the_other_connection_closes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t(x)")
            .unwrap();
        drop(conn);
        let script = format!(
            "import sqlite3, time\nc = sqlite3.connect({:?})\nc.execute('SELECT * FROM t').fetchall()\nprint('open', flush=True)\ntime.sleep(1.5)\n",
            db.display().to_string()
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut buf).unwrap();
        let mut reasons = Vec::new();
        let started = Instant::now();
        wait_until_unopened(&db, |why| reasons.push(why))
            .await
            .unwrap();
        let _ = child.wait();
        assert!(started.elapsed() >= Duration::from_millis(500), "it waited");
        assert!(
            reasons
                .first()
                .unwrap()
                .as_ref()
                .unwrap()
                .contains("holds a lock"),
            "{reasons:?}"
        );
        assert_eq!(reasons.last().unwrap(), &None);
    }
}
