//! A snapshot copy on disk, framed for a store: the header, the per-chunk CRCs, and the
//! framed bytes as a reader ([`harmonylite_core::snapshot`] is the format).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::snapshot::SnapshotHeader;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::ops::progress::Progress;

/// A snapshot copy on disk with its checksums, ready to be framed and sent.
#[derive(Clone)]
pub struct FramedSource {
    path: PathBuf,
    header: SnapshotHeader,
    chunk_crcs: Arc<Vec<u32>>,
}

impl FramedSource {
    /// Reads the file at `path` once to checksum each chunk and the whole (blocking).
    pub fn prepare(
        path: &Path,
        covered_seq: StreamSeq,
        taken_by: NodeId,
        chunk_size: u32,
    ) -> std::io::Result<Self> {
        Self::prepare_and_sync(path, covered_seq, taken_by, chunk_size, false)
    }

    /// [`FramedSource::prepare`], and when `sync` also fsyncs the file meanwhile (a
    /// snapshot that is stored as it is).
    pub fn prepare_and_sync(
        path: &Path,
        covered_seq: StreamSeq,
        taken_by: NodeId,
        chunk_size: u32,
        sync: bool,
    ) -> std::io::Result<Self> {
        if sync {
            return std::thread::scope(|scope| {
                let syncing = scope.spawn(|| std::fs::File::open(path)?.sync_all());
                let prepared =
                    Self::prepare_and_sync(path, covered_seq, taken_by, chunk_size, false);
                syncing
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("fsync thread panicked")))?;
                prepared
            });
        }
        let mut file = std::fs::File::open(path)?;
        let mut buffer = vec![0u8; chunk_size as usize];
        let mut chunk_crcs = Vec::new();
        let mut whole = crc32fast::Hasher::new();
        let mut total = 0u64;
        loop {
            let n = read_full(&mut file, &mut buffer)?;
            if n == 0 {
                break;
            }
            let mut chunk = crc32fast::Hasher::new();
            chunk.update(&buffer[..n]);
            whole.combine(&chunk);
            chunk_crcs.push(chunk.finalize());
            total += n as u64;
        }
        Ok(FramedSource {
            path: path.to_owned(),
            header: SnapshotHeader {
                chunk_size,
                covered_seq,
                total_size: total,
                file_crc: whole.finalize(),
                taken_by,
                carries_node_local: false,
            },
            chunk_crcs: Arc::new(chunk_crcs),
        })
    }

    /// A source from its parts: the file, its header and its chunk checksums (a stored
    /// index).
    pub fn from_parts(path: PathBuf, header: SnapshotHeader, chunk_crcs: Vec<u32>) -> Self {
        FramedSource {
            path,
            header,
            chunk_crcs: Arc::new(chunk_crcs),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The CRC-32 of each chunk.
    pub fn chunk_crcs(&self) -> &[u32] {
        &self.chunk_crcs
    }

    /// The header followed by every chunk's CRC-32 (a file store's index).
    pub fn index_bytes(&self) -> Vec<u8> {
        let mut out = self.header.encode().to_vec();
        for crc in self.chunk_crcs.iter() {
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// The snapshot's header.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// Size of the framed snapshot.
    pub fn framed_size(&self) -> u64 {
        self.header.framed_size()
    }

    /// Writes the framed snapshot to `out` (blocking), re-checking each chunk against the
    /// checksum taken by [`FramedSource::prepare`]; `after_first_chunk` runs once. Returns
    /// the bytes written.
    pub fn write_to(
        &self,
        out: &mut impl Write,
        progress: &mut Progress,
        mut after_first_chunk: Option<&mut dyn FnMut()>,
    ) -> std::io::Result<u64> {
        let mut file = std::fs::File::open(&self.path)?;
        let mut buffer = vec![0u8; self.header.chunk_size as usize];
        out.write_all(&self.header.encode())?;
        let mut written = self.header.encode().len() as u64;
        progress.advance(written);
        for (index, expected) in self.chunk_crcs.iter().enumerate() {
            let n = read_full(&mut file, &mut buffer)?;
            let data = &buffer[..n];
            if n == 0 || crc32fast::hash(data) != *expected {
                return Err(damaged(&self.path, index));
            }
            out.write_all(&(n as u32).to_le_bytes())?;
            out.write_all(&expected.to_le_bytes())?;
            out.write_all(data)?;
            written += 8 + n as u64;
            progress.advance(8 + n as u64);
            if let Some(hook) = after_first_chunk.take() {
                hook();
            }
        }
        Ok(written)
    }

    /// The framed snapshot as an [`AsyncRead`], produced by a blocking thread one frame at
    /// a time (each chunk read straight into its frame, checked against its checksum); a
    /// read fills the caller's buffer from as many frames as are ready.
    pub fn reader(&self) -> FramedReader {
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let source = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = source.send_frames(&tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        FramedReader::from_frames(rx)
    }

    fn send_frames(&self, tx: &mpsc::Sender<std::io::Result<Bytes>>) -> std::io::Result<()> {
        let stopped = || std::io::Error::other("snapshot reader dropped");
        let mut file = std::fs::File::open(&self.path)?;
        tx.blocking_send(Ok(Bytes::copy_from_slice(&self.header.encode())))
            .map_err(|_| stopped())?;
        let chunk_size = self.header.chunk_size as usize;
        for (index, expected) in self.chunk_crcs.iter().enumerate() {
            let mut frame = vec![0u8; 8 + chunk_size];
            let n = read_full(&mut file, &mut frame[8..])?;
            frame.truncate(8 + n);
            if n == 0 || crc32fast::hash(&frame[8..]) != *expected {
                return Err(damaged(&self.path, index));
            }
            frame[0..4].copy_from_slice(&(n as u32).to_le_bytes());
            frame[4..8].copy_from_slice(&expected.to_le_bytes());
            tx.blocking_send(Ok(Bytes::from(frame)))
                .map_err(|_| stopped())?;
        }
        Ok(())
    }
}

fn damaged(path: &Path, index: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "{} is damaged or changed: chunk {index} does not match its checksum",
            path.display()
        ),
    )
}

/// Reads until `buffer` is full or the file ends; returns the bytes read.
pub fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The framed bytes of a [`FramedSource`] (see [`FramedSource::reader`]).
pub struct FramedReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    frames: u64,
    failed: Option<std::io::Error>,
}

impl FramedReader {
    /// The bytes of the frames `rx` receives, in order (the header's first), ending when
    /// every sender is gone; an `Err` frame fails the read.
    pub fn from_frames(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> Self {
        FramedReader {
            rx,
            current: Bytes::new(),
            frames: 0,
            failed: None,
        }
    }
}

impl AsyncRead for FramedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Err(e));
        }
        let mut copied = false;
        while buf.remaining() > 0 {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                let piece = self.current.split_to(n);
                buf.put_slice(&piece);
                copied = true;
                continue;
            }
            if self.frames == 2 && crate::util::failpoint::is_armed("snapshot-upload") {
                // The header and the first chunk went out: stall mid-upload (crash test).
                if !copied {
                    tracing::warn!("paused at failpoint snapshot-upload");
                    return Poll::Pending;
                }
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.frames += 1;
                    self.current = frame;
                }
                // A read that returns data must not also fail: report it next time.
                Poll::Ready(Some(Err(e))) if copied => {
                    self.failed = Some(e);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending if copied => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}
