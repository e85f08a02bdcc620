//! Taking a snapshot without writing a copy: the live database file, pinned by a read
//! transaction (`begin_pinned_read`), framed and streamed straight into an object store's
//! upload (`store = "nats"` and `"s3"`).
//!
//! A blocking thread holds a connection of its own and, inside one read transaction:
//! 1. reads the covered stream sequence (the cursor) and the image's size (page size ×
//!    page count);
//! 2. reads the image once to checksum each chunk (the header, sent first, needs the whole
//!    file's CRC);
//! 3. reads it again chunk by chunk, checks each against its checksum and hands it, framed,
//!    to the upload ([`FramedReader`]).
//!
//! Every read goes through SQLite's own file handle (`read_main_db_file`), never a second
//! descriptor (closing one would drop this process's POSIX locks on the database). Nothing is
//! written locally: the reads mostly hit the page cache, where a copy on disk cost a full
//! write of the database (about two thirds of a take on a slow disk) and made the
//! application's commits wait behind it.
//!
//! The image still holds this node's node-local state (outbox, change log, node id and
//! counters): its header says so (format version 2, [`SnapshotHeader::carries_node_local`])
//! and whoever uses it removes that state first (core's `install_node_local`; a catch-up
//! reads none of it). Builds that predate version 2 refuse such a snapshot.
//!
//! The read transaction lasts until the last chunk is handed over, the upload fails or the
//! take is dropped (the thread sees its reader gone and ends it): meanwhile no checkpoint
//! can move the WAL past it, so the WAL grows by what the application commits during the
//! upload and is checkpointed after. A take interrupted anywhere leaves no snapshot: an
//! object store upload only becomes one once complete
//! ([`crate::snapshot::store`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::snapshot::SnapshotHeader;
use harmonylite_core::sqlite::snapshot::covered_seq;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::snapshot::frame::FramedReader;
use crate::snapshot::{begin_pinned_read, mark_rollback_journal, read_main_db_file, SnapshotError};

/// Framed chunks queued between the reading thread and the upload.
const QUEUED_FRAMES: usize = 4;

/// A snapshot being streamed from the live database: its header, known before the upload
/// starts, and the framed bytes.
pub struct StreamedImage {
    header: SnapshotHeader,
    framed: FramedReader,
    producer: JoinHandle<Result<(), SnapshotError>>,
}

impl StreamedImage {
    /// Pins the database at `db_path` in a read transaction and checksums it (on a blocking
    /// thread that then produces the frames). `Ok(None)` when no consistent image of the
    /// file could be pinned (not in WAL mode, or commits kept arriving): take a copy instead.
    pub async fn start(
        db_path: &Path,
        taken_by: NodeId,
        chunk_size: u32,
    ) -> Result<Option<Self>, SnapshotError> {
        let (header_tx, header_rx) = oneshot::channel();
        let (frames_tx, frames_rx) = mpsc::channel(QUEUED_FRAMES);
        let db_path = db_path.to_owned();
        let producer = tokio::task::spawn_blocking(move || {
            produce(&db_path, taken_by, chunk_size, header_tx, frames_tx)
        });
        match header_rx.await {
            Ok(Some(header)) => Ok(Some(StreamedImage {
                header,
                framed: FramedReader::from_frames(frames_rx),
                producer,
            })),
            Ok(None) => Ok(None),
            // The thread ended before the header: it failed.
            Err(_) => match producer.await? {
                Err(e) => Err(e),
                Ok(()) => Err(SnapshotError::RawRead(
                    "the snapshot's reading thread ended without a header".into(),
                )),
            },
        }
    }

    /// The snapshot's header.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The framed bytes, and the thread producing them: it ends (and with it the read
    /// transaction) once every frame was read or the reader is dropped; its error, if any,
    /// is why the framed bytes failed.
    pub fn into_parts(self) -> (FramedReader, JoinHandle<Result<(), SnapshotError>>) {
        (self.framed, self.producer)
    }
}

/// The reading thread (see the module docs): sends the header (`None`: the database could
/// not be pinned), then every frame. Stops quietly when the receiving side is gone.
fn produce(
    db_path: &Path,
    taken_by: NodeId,
    chunk_size: u32,
    header_tx: oneshot::Sender<Option<SnapshotHeader>>,
    frames: mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<(), SnapshotError> {
    let Some(image) = PinnedImage::open(db_path)? else {
        let _ = header_tx.send(None);
        return Ok(());
    };
    let Some((crcs, file_crc)) = image.checksums(chunk_size, || frames.is_closed())? else {
        return Ok(());
    };
    let header = SnapshotHeader {
        chunk_size,
        covered_seq: image.covered,
        total_size: image.len,
        file_crc,
        taken_by,
        carries_node_local: true,
    };
    if header_tx.send(Some(header)).is_err() {
        return Ok(());
    }
    let header_frame = Bytes::copy_from_slice(&header.encode());
    if frames.blocking_send(Ok(header_frame)).is_err() {
        return Ok(());
    }
    for (index, expected) in crcs.into_iter().enumerate() {
        let frame = match image.frame(index as u64, chunk_size, expected) {
            Ok(frame) => frame,
            Err(e) => {
                let _ = frames.blocking_send(Err(std::io::Error::other(e.to_string())));
                return Err(e);
            }
        };
        if frames.blocking_send(Ok(frame)).is_err() {
            return Ok(());
        }
    }
    // The transaction ends before the reader sees the end of the frames.
    drop(image);
    Ok(())
}

/// The database file pinned by a read transaction on a connection of its own; dropping it
/// ends the transaction.
struct PinnedImage {
    conn: Connection,
    path: PathBuf,
    /// Bytes of the image: page size × page count.
    len: u64,
    /// The stream sequence the image covers (its cursor).
    covered: StreamSeq,
}

impl PinnedImage {
    /// Opens a connection to `db_path` and pins its file (`begin_pinned_read`); `None`
    /// when it could not be pinned.
    fn open(db_path: &Path) -> Result<Option<Self>, SnapshotError> {
        let conn = Connection::open_with_flags(
            db_path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| SnapshotError::Database {
            doing: "opening",
            path: db_path.to_owned(),
            source,
        })?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.execute_batch("PRAGMA mmap_size = 1099511627776")?;
        let Some(len) = begin_pinned_read(&conn)? else {
            return Ok(None);
        };
        let mut image = PinnedImage {
            conn,
            path: db_path.to_owned(),
            len,
            covered: StreamSeq::new(0),
        };
        image.covered = covered_seq(&image.conn).map_err(|source| SnapshotError::Strip {
            db: db_path.to_owned(),
            source,
        })?;
        Ok(Some(image))
    }

    /// Reads chunk `index` (`chunk_size` bytes, the last one shorter) into `buffer`, the
    /// first one marked as a rollback-journal database; returns its length.
    fn read_chunk(
        &self,
        index: u64,
        chunk_size: u32,
        buffer: &mut [u8],
    ) -> Result<usize, SnapshotError> {
        let offset = index * chunk_size as u64;
        let n = (self.len - offset).min(chunk_size as u64) as usize;
        read_main_db_file(&self.conn, &mut buffer[..n], offset).map_err(|e| {
            SnapshotError::ReadDatabase {
                path: self.path.clone(),
                offset,
                source: Box::new(e),
            }
        })?;
        if index == 0 {
            mark_rollback_journal(&mut buffer[..n], &self.path)?;
        }
        Ok(n)
    }

    /// The CRC-32 of every chunk and of the whole image, or `None` when `stopped` says no
    /// one waits for them any more.
    fn checksums(
        &self,
        chunk_size: u32,
        stopped: impl Fn() -> bool,
    ) -> Result<Option<(Vec<u32>, u32)>, SnapshotError> {
        let chunks = self.len.div_ceil(chunk_size as u64);
        let mut buffer = vec![0u8; chunk_size as usize];
        let mut crcs = Vec::with_capacity(chunks as usize);
        let mut whole = crc32fast::Hasher::new();
        for index in 0..chunks {
            if stopped() {
                return Ok(None);
            }
            let n = self.read_chunk(index, chunk_size, &mut buffer)?;
            let mut chunk = crc32fast::Hasher::new();
            chunk.update(&buffer[..n]);
            whole.combine(&chunk);
            crcs.push(chunk.finalize());
        }
        Ok(Some((crcs, whole.finalize())))
    }

    /// Chunk `index` framed (length, CRC, data), read again and checked against `expected`,
    /// its CRC from the first pass.
    fn frame(&self, index: u64, chunk_size: u32, expected: u32) -> Result<Bytes, SnapshotError> {
        let mut frame = vec![0u8; 8 + chunk_size as usize];
        let n = self.read_chunk(index, chunk_size, &mut frame[8..])?;
        frame.truncate(8 + n);
        if crc32fast::hash(&frame[8..]) != expected {
            return Err(SnapshotError::ImageChanged {
                path: self.path.clone(),
                chunk: index,
            });
        }
        frame[0..4].copy_from_slice(&(n as u32).to_le_bytes());
        frame[4..8].copy_from_slice(&expected.to_le_bytes());
        Ok(Bytes::from(frame))
    }
}

impl Drop for PinnedImage {
    fn drop(&mut self) {
        // A read transaction: nothing to commit, only the snapshot to let go of.
        let _ = self.conn.execute_batch("COMMIT");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmonylite_core::snapshot::unframe_bytes;
    use harmonylite_core::sqlite::{Store, StoreOptions};
    use tokio::io::AsyncReadExt;

    /// A replicated database in WAL mode with one unpublished write (an outbox frame) and a
    /// counter that moves with the rows of `rows`, so a torn image shows.
    fn database(dir: &Path) -> PathBuf {
        let path = dir.join("app.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);",
        )
        .unwrap();
        let mut store =
            Store::open(conn, StoreOptions::new(NodeId::from_u128(1).unwrap())).unwrap();
        store
            .connection()
            .execute_batch(
                "INSERT INTO notes VALUES (1, 'unpublished');
                 CREATE TABLE c(id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO c VALUES (1, 0);
                 CREATE TABLE rows(n INTEGER PRIMARY KEY, pad BLOB);",
            )
            .unwrap();
        store.drain().unwrap();
        assert_eq!(store.outbox_depth().unwrap().0, 1);
        path
    }

    async fn read_all(image: StreamedImage) -> Vec<u8> {
        let (mut framed, producer) = image.into_parts();
        let mut bytes = Vec::new();
        framed.read_to_end(&mut bytes).await.unwrap();
        producer.await.unwrap().unwrap();
        bytes
    }

    /// Images streamed while another connection commits all the time are consistent
    /// databases in rollback-journal mode that still hold the taker's outbox, and say so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streamed_images_are_consistent_and_carry_node_local_state() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = crate::snapshot::spawn_busy_writer(db.clone(), stop.clone());
        let (mut streamed, mut last) = (0, -1);
        for _ in 0..30 {
            let Some(image) = StreamedImage::start(&db, NodeId::from_u128(1).unwrap(), 65_536)
                .await
                .unwrap()
            else {
                continue;
            };
            let header = *image.header();
            assert!(header.carries_node_local);
            let (decoded, file) = unframe_bytes(&read_all(image).await).unwrap();
            assert_eq!(decoded, header);
            let copy = dir.path().join("image.db");
            std::fs::write(&copy, &file).unwrap();
            let conn = Connection::open(&copy).unwrap();
            let (n, rows, outbox, mode): (i64, i64, i64, String) = conn
                .query_row(
                    "SELECT (SELECT n FROM c), (SELECT count(*) FROM rows),
                            (SELECT count(*) FROM __hl_outbox), (SELECT journal_mode FROM pragma_journal_mode)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .unwrap();
            assert_eq!(n, rows, "a torn image");
            assert!(n >= last, "images go forward");
            last = n;
            assert_eq!(outbox, 1, "the taker's outbox travels in the image");
            assert_eq!(mode, "delete", "the image has no WAL of its own");
            let ok: String = conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ok, "ok");
            streamed += 1;
            if streamed == 3 {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(streamed > 0, "the file was never pinned");
    }

    /// A take dropped mid-upload (its reader gone) ends the read transaction: the WAL can be
    /// checkpointed and truncated right after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_reader_ends_the_read_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path());
        let app = Connection::open(&db).unwrap();
        app.execute_batch(
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 500)
             INSERT INTO rows SELECT i, randomblob(4000) FROM r;",
        )
        .unwrap();
        let image = StreamedImage::start(&db, NodeId::from_u128(1).unwrap(), 16_384)
            .await
            .unwrap()
            .expect("an idle database is pinned");
        let (mut framed, producer) = image.into_parts();
        let mut first = [0u8; 100];
        framed.read_exact(&mut first).await.unwrap();
        app.execute("INSERT INTO rows VALUES (100000, x'00')", [])
            .unwrap();
        let (busy, _, _): (i64, i64, i64) = app
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 1, "the image's read transaction holds the WAL back");
        drop(framed);
        producer.await.unwrap().unwrap();
        let (busy, log, _): (i64, i64, i64) = app
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((busy, log), (0, 0), "the read transaction ended");
    }
}
