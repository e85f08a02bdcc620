//! Where snapshots live: a JetStream object store bucket (`store = "nats"`, the default),
//! a directory (`store = "file"`) or an S3 bucket (`store = "s3"`, [`crate::s3_store`]).
//!
//! Names sort by the stream sequence a snapshot covers:
//! `<stream>/<covered_seq, 20 digits>-<taken at, Unix ms, 13 digits>-<node id>.hlsnap`.
//! The `<stream>/` prefix keeps clusters that share a bucket or directory apart (`keep` and
//! restores only look at their own stream's snapshots).
//!
//! A snapshot counts only once it is complete:
//! - Object store: a `put` publishes the chunks under a fresh id first and the object's
//!   metadata last, so an interrupted upload never becomes visible; the previous snapshots
//!   stay as they were. Its orphaned chunks are purged by a later [`SnapshotStore::prune`]
//!   once they are an hour old (an upload in progress keeps adding chunks, so it is never
//!   mistaken for an orphan).
//! - Directory: each snapshot is two files, the database copy `<name>.db` and its index
//!   `<name>.hlsnap` (the snapshot header followed by each chunk's CRC-32); reading produces
//!   exactly the framed snapshot, checked chunk by chunk. The copy is made inside the
//!   directory under a partial name, fsynced and renamed; the index is written last
//!   (partial name, fsync, rename, directory fsync) and is what makes the snapshot exist.
//!   Storing the copy unframed saves writing every byte twice, and a stored copy is a
//!   plain SQLite file for restores by hand. Leftovers (partial files, copies without an
//!   index) older than an hour are removed by [`SnapshotStore::prune`].
//! - S3: one object per snapshot, visible only once its `PUT` or multipart upload completes
//!   (see [`crate::s3_store`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use futures::StreamExt;
use harmonylite_core::snapshot::{SnapshotHeader, HEADER_LEN};
use tokio::io::AsyncRead;

use crate::config::{Config, SnapshotStoreKind};
use crate::progress::{Progress, ProgressReader};
use crate::s3_store::S3Store;
use crate::snapshot_frame::FramedSource;
pub use crate::snapshot_info::{SnapshotInfo, EXTENSION};

/// Leftovers of interrupted uploads older than this are removed by a prune.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);
/// Object store chunk size: large chunks keep the per-message overhead low; well under the
/// default 1 MiB NATS payload limit.
const OBJECT_CHUNK: usize = 512 * 1024;

/// A snapshot store.
pub enum SnapshotStore {
    /// A JetStream object store bucket.
    Nats(Box<NatsStore>),
    /// A directory.
    File(FileStore),
    /// An S3 bucket.
    S3(Box<S3Store>),
}

/// Snapshots in a JetStream object store bucket.
pub struct NatsStore {
    js: jetstream::Context,
    bucket: String,
    store: object_store::ObjectStore,
    stream: String,
}

/// Snapshots in a directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    stream: String,
}

impl SnapshotStore {
    /// The store `config` names, for the change stream `stream`: the bucket is created when
    /// missing (with `snapshot.nats_replicas`).
    pub async fn open(
        config: &Config,
        js: &jetstream::Context,
        stream: &str,
    ) -> anyhow::Result<Self> {
        crate::failpoint::inject("snapshot-store")?;
        match config.snapshot.store {
            SnapshotStoreKind::Nats => Ok(SnapshotStore::Nats(Box::new(
                NatsStore::open(
                    js,
                    &config.snapshot.nats_bucket,
                    config.snapshot_replicas(),
                    stream,
                )
                .await?,
            ))),
            SnapshotStoreKind::File => {
                let dir = config
                    .snapshot
                    .file_dir
                    .clone()
                    .context("snapshot.file_dir is required with store = \"file\"")?;
                Ok(SnapshotStore::File(FileStore::new(dir, stream)))
            }
            SnapshotStoreKind::S3 => Ok(SnapshotStore::S3(Box::new(S3Store::open(
                &config.snapshot.s3,
                stream,
            )?))),
        }
    }

    /// Where the snapshots are, for messages.
    pub fn describe(&self) -> String {
        match self {
            SnapshotStore::Nats(s) => format!("JetStream object store bucket {:?}", s.bucket),
            SnapshotStore::File(s) => format!("directory {}", s.dir.join(&s.stream).display()),
            SnapshotStore::S3(s) => s.describe(),
        }
    }

    /// Every complete snapshot of this stream, oldest first.
    pub async fn list(&self) -> anyhow::Result<Vec<SnapshotInfo>> {
        crate::failpoint::inject("snapshot-list")?;
        let mut list = match self {
            SnapshotStore::Nats(s) => s.list().await?,
            SnapshotStore::File(s) => s.list().await?,
            SnapshotStore::S3(s) => s.list().await?,
        };
        list.sort_by_key(SnapshotInfo::key);
        Ok(list)
    }

    /// The snapshot covering the most, if any.
    pub async fn newest(&self) -> anyhow::Result<Option<SnapshotInfo>> {
        Ok(self.list().await?.pop())
    }

    /// Where to make the copy for a new snapshot: a temporary file in `work_dir`, or (file
    /// store) a partial file in the store's directory, which storing renames.
    pub fn new_copy_path(&self, work_dir: &Path) -> PathBuf {
        match self {
            SnapshotStore::Nats(_) | SnapshotStore::S3(_) => work_dir.join(format!(
                "snapshot-{}-{}.tmp.db",
                std::process::id(),
                crate::util::unix_ms()
            )),
            SnapshotStore::File(s) => s.new_copy_path(),
        }
    }

    /// Stores `source` under `info.name`; visible only once complete. Returns the bytes
    /// stored.
    pub async fn upload(&self, info: &SnapshotInfo, source: &FramedSource) -> anyhow::Result<u64> {
        match self {
            SnapshotStore::Nats(s) => s.upload(info, source).await,
            SnapshotStore::File(s) => s.upload(info, source).await,
            SnapshotStore::S3(s) => s.upload(info, source).await,
        }
    }

    /// Reads a stored snapshot (framed bytes).
    pub async fn open_reader(
        &self,
        info: &SnapshotInfo,
    ) -> anyhow::Result<Box<dyn AsyncRead + Send + Unpin>> {
        match self {
            SnapshotStore::Nats(s) => {
                Ok(Box::new(s.store.get(&info.name).await.with_context(
                    || format!("opening snapshot {}", info.name),
                )?))
            }
            SnapshotStore::File(s) => Ok(Box::new(s.source(info)?.reader())),
            SnapshotStore::S3(s) => s.open_reader(info).await,
        }
    }

    /// Deletes one snapshot.
    pub async fn delete(&self, info: &SnapshotInfo) -> anyhow::Result<()> {
        match self {
            SnapshotStore::Nats(s) => s
                .store
                .delete(&info.name)
                .await
                .with_context(|| format!("deleting snapshot {}", info.name)),
            SnapshotStore::File(s) => s.delete(info).await,
            SnapshotStore::S3(s) => s.delete(info).await,
        }
    }

    /// Deletes all but the newest `keep` snapshots, and leftovers of interrupted uploads;
    /// returns the snapshots deleted.
    pub async fn prune(&self, keep: usize) -> anyhow::Result<Vec<SnapshotInfo>> {
        let list = self.list().await?;
        let excess = list.len().saturating_sub(keep.max(1));
        let mut deleted = Vec::new();
        for info in list.into_iter().take(excess) {
            self.delete(&info).await?;
            deleted.push(info);
        }
        let orphans = match self {
            SnapshotStore::Nats(s) => s.purge_orphans().await,
            SnapshotStore::File(s) => s.remove_partials().await,
            // Failed uploads are aborted; crashed ones are the bucket lifecycle rule's.
            SnapshotStore::S3(_) => Ok(0),
        };
        match orphans {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                count = n,
                "removed leftovers of interrupted snapshot uploads"
            ),
            Err(e) => tracing::warn!("could not clean up interrupted snapshot uploads: {e:#}"),
        }
        Ok(deleted)
    }
}

/// How long one object-store request or chunk ack may take. async-nats waits 5 s for a
/// publish ack by default; one slow fsync on a busy disk outlasted that and failed a whole
/// 1 GiB upload (a benchmark run did). A snapshot is background work: waiting is better.
const OBJECT_STORE_TIMEOUT: Duration = Duration::from_secs(60);

impl NatsStore {
    async fn open(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
        stream: &str,
    ) -> anyhow::Result<Self> {
        // The bucket handle keeps the timeout of the context it came from.
        let mut js = js.clone();
        js.set_timeout(OBJECT_STORE_TIMEOUT);
        let store = match js.get_object_store(bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.to_owned(),
                    description: Some("harmonylite snapshots".into()),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .with_context(|| {
                    format!("creating the snapshot bucket {bucket:?} with {replicas} replicas")
                })?,
        };
        Ok(NatsStore {
            js,
            bucket: bucket.to_owned(),
            store,
            stream: stream.to_owned(),
        })
    }

    async fn list(&self) -> anyhow::Result<Vec<SnapshotInfo>> {
        let mut out = Vec::new();
        let mut objects = self
            .store
            .list()
            .await
            .with_context(|| format!("listing snapshot bucket {:?}", self.bucket))?;
        while let Some(object) = objects.next().await {
            let object =
                object.with_context(|| format!("listing snapshot bucket {:?}", self.bucket))?;
            if let Some(mut info) = SnapshotInfo::parse(&self.stream, &object.name) {
                info.size = object.size as u64;
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn upload(&self, info: &SnapshotInfo, source: &FramedSource) -> anyhow::Result<u64> {
        let meta = object_store::ObjectMetadata {
            name: info.name.clone(),
            description: Some(format!(
                "harmonylite snapshot covering stream sequence {} taken by node {}",
                info.covered_seq.get(),
                info.taken_by
            )),
            chunk_size: Some(OBJECT_CHUNK),
            metadata: [
                ("covered_seq".to_owned(), info.covered_seq.get().to_string()),
                ("taken_by".to_owned(), info.taken_by.to_string()),
                ("taken_at_ms".to_owned(), info.taken_at_ms.to_string()),
            ]
            .into(),
            headers: None,
        };
        let progress = Progress::new("uploading snapshot", source.framed_size());
        let mut reader = ProgressReader::new(source.reader(), progress);
        let stored = self
            .store
            .put(meta, &mut reader)
            .await
            .with_context(|| format!("uploading snapshot {}", info.name))?;
        anyhow::ensure!(
            stored.size as u64 == source.framed_size(),
            "snapshot {} stored {} bytes, expected {}",
            info.name,
            stored.size,
            source.framed_size()
        );
        Ok(stored.size as u64)
    }

    /// The chunks of the stored snapshot `info`, in order, as the server sends them (an
    /// ordered push consumer on the object's chunk subject, like `ObjectStore::get`, but
    /// handing over each chunk as it arrives instead of copying it through a reader and
    /// hashing it: the snapshot's own checksums verify every byte).
    pub async fn chunks(
        &self,
        info: &SnapshotInfo,
    ) -> anyhow::Result<futures::stream::BoxStream<'static, anyhow::Result<Bytes>>> {
        let object = self
            .store
            .info(&info.name)
            .await
            .with_context(|| format!("opening snapshot {}", info.name))?;
        anyhow::ensure!(
            !object.deleted && object.options.as_ref().is_none_or(|o| o.link.is_none()),
            "snapshot {} is deleted or a link",
            info.name
        );
        if object.chunks == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let stream = self.js.get_stream(format!("OBJ_{}", self.bucket)).await?;
        let messages = stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: format!("$O.{}.C.{}", self.bucket, object.nuid),
                ..Default::default()
            })
            .await
            .with_context(|| format!("reading snapshot {}", info.name))?
            .messages()
            .await
            .with_context(|| format!("reading snapshot {}", info.name))?;
        let (expected_size, expected_chunks) = (object.size as u64, object.chunks);
        let name = info.name.clone();
        let state = (messages, 0u64, 0usize, false);
        Ok(futures::stream::unfold(state, move |(mut messages, size, chunks, done)| {
            let name = name.clone();
            async move {
                if done {
                    return None;
                }
                let result = async {
                    let message = messages
                        .next()
                        .await
                        .context("the chunk subscription ended")?
                        .context("reading a chunk")?;
                    let pending = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending;
                    Ok::<_, anyhow::Error>((message.payload.clone(), pending))
                }
                .await;
                match result {
                    Err(e) => Some((
                        Err(e.context(format!("reading snapshot {name}"))),
                        (messages, size, chunks, true),
                    )),
                    Ok((payload, pending)) => {
                        let (size, chunks) = (size + payload.len() as u64, chunks + 1);
                        let last = pending == 0;
                        let item = if last && (size, chunks) != (expected_size, expected_chunks) {
                            Err(anyhow::anyhow!(
                                "snapshot {name}: read {size} bytes in {chunks} chunks, its metadata says {expected_size} in {expected_chunks}"
                            ))
                        } else {
                            Ok(payload)
                        };
                        Some((item, (messages, size, chunks, last)))
                    }
                }
            }
        })
        .boxed())
    }

    /// Purges chunks that no object refers to (interrupted uploads) once they are old enough
    /// not to belong to an upload in progress.
    async fn purge_orphans(&self) -> anyhow::Result<usize> {
        let mut live = std::collections::HashSet::new();
        let mut objects = self.store.list().await?;
        while let Some(object) = objects.next().await {
            live.insert(object?.nuid);
        }
        let stream = self.js.get_stream(format!("OBJ_{}", self.bucket)).await?;
        let prefix = format!("$O.{}.C.", self.bucket);
        let mut subjects = stream.info_with_subjects(format!("{prefix}>")).await?;
        let mut orphans = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _count) = entry?;
            if let Some(nuid) = subject.strip_prefix(&prefix) {
                if !live.contains(nuid) {
                    orphans.push(subject.clone());
                }
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let mut purged = 0;
        for subject in orphans {
            let last = stream.direct_get_last_for_subject(subject.as_str()).await?;
            if now - last.time.unix_timestamp() >= ORPHAN_AGE.as_secs() as i64 {
                stream.purge().filter(&subject).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }
}

impl FileStore {
    /// Snapshots of `stream` under `dir`.
    pub fn new(dir: PathBuf, stream: &str) -> Self {
        FileStore {
            dir,
            stream: stream.to_owned(),
        }
    }

    fn stream_dir(&self) -> PathBuf {
        self.dir.join(&self.stream)
    }

    /// The database copy of `info`: `<name without .hlsnap>.db`.
    fn data_path(&self, info: &SnapshotInfo) -> PathBuf {
        self.dir
            .join(info.name.trim_end_matches(EXTENSION).to_owned() + "db")
    }

    /// The index (header and chunk checksums) of `info`: its name, `.hlsnap`.
    fn index_path(&self, info: &SnapshotInfo) -> PathBuf {
        self.dir.join(&info.name)
    }

    /// Where a new snapshot copy should be made: inside the store's directory, so that
    /// storing it is a rename.
    pub fn new_copy_path(&self) -> PathBuf {
        self.stream_dir().join(format!(
            ".snapshot-{}-{}.db.partial",
            std::process::id(),
            crate::util::unix_ms()
        ))
    }

    async fn list(&self) -> anyhow::Result<Vec<SnapshotInfo>> {
        let dir = self.stream_dir();
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        while let Some(entry) = entries.next_entry().await? {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let name = format!("{}/{file_name}", self.stream);
            if let Some(mut info) = SnapshotInfo::parse(&self.stream, &name) {
                if !self.data_path(&info).exists() {
                    continue;
                }
                info.size = match read_index(&self.index_path(&info)) {
                    Ok((header, _)) => header.framed_size(),
                    Err(_) => 0,
                };
                out.push(info);
            }
        }
        Ok(out)
    }

    /// The framed snapshot, produced from the stored copy and its index.
    fn source(&self, info: &SnapshotInfo) -> anyhow::Result<FramedSource> {
        let index = self.index_path(info);
        let (header, crcs) =
            read_index(&index).with_context(|| format!("reading {}", index.display()))?;
        Ok(FramedSource::from_parts(self.data_path(info), header, crcs))
    }

    /// Copies the stored snapshot `info` to `target`, checking every chunk against the index
    /// and the whole against the header, and fsyncs it (blocking; the restore fast path:
    /// one read and one write of each byte). Returns the header and the framed size.
    pub fn copy_verified(
        &self,
        info: &SnapshotInfo,
        target: &Path,
    ) -> anyhow::Result<(SnapshotHeader, u64)> {
        let source = self.source(info)?;
        let header = *source.header();
        let data = source.path();
        let mut input = std::fs::File::open(data)
            .with_context(|| format!("opening snapshot data {}", data.display()))?;
        let mut output = std::fs::File::create(target)
            .with_context(|| format!("creating {}", target.display()))?;
        let mut progress = Progress::new("restoring snapshot", header.framed_size());
        let mut buffer = vec![0u8; header.chunk_size as usize];
        let mut whole = crc32fast::Hasher::new();
        for (index, expected) in source.chunk_crcs().iter().enumerate() {
            let n = crate::snapshot_frame::read_full(&mut input, &mut buffer)?;
            let want = (header.total_size - index as u64 * header.chunk_size as u64)
                .min(header.chunk_size as u64) as usize;
            let mut chunk = crc32fast::Hasher::new();
            chunk.update(&buffer[..n]);
            anyhow::ensure!(
                n == want && chunk.clone().finalize() == *expected,
                "snapshot {} is damaged: chunk {index} does not match its checksum",
                info.name
            );
            whole.combine(&chunk);
            std::io::Write::write_all(&mut output, &buffer[..n])
                .with_context(|| format!("writing {}", target.display()))?;
            progress.advance(n as u64 + 8);
            if index == 0 && crate::failpoint::is_armed("restore-download") {
                output.sync_all()?;
                crate::failpoint::pause_blocking("restore-download");
            }
        }
        anyhow::ensure!(
            crate::snapshot_frame::read_full(&mut input, &mut buffer[..1])? == 0
                && whole.finalize() == header.file_crc,
            "snapshot {} is damaged: the file does not match its checksum",
            info.name
        );
        output
            .sync_all()
            .with_context(|| format!("syncing {}", target.display()))?;
        progress.finish();
        Ok((header, header.framed_size()))
    }

    async fn upload(&self, info: &SnapshotInfo, source: &FramedSource) -> anyhow::Result<u64> {
        let dir = self.stream_dir();
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let data = self.data_path(info);
        let index = self.index_path(info);
        let index_name = index
            .file_name()
            .context("snapshot name")?
            .to_string_lossy()
            .into_owned();
        let index_partial = dir.join(format!(".{index_name}.partial"));
        let source = source.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let copy = source.path();
            if copy.parent() == Some(dir.as_path()) {
                std::fs::File::open(copy)
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("syncing {}", copy.display()))?;
                std::fs::rename(copy, &data)
                    .with_context(|| format!("renaming {} into place", copy.display()))?;
            } else {
                let partial = dir.join(format!(".{index_name}.db.partial"));
                std::fs::copy(copy, &partial)
                    .with_context(|| format!("copying {}", copy.display()))?;
                std::fs::File::open(&partial)
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("syncing {}", partial.display()))?;
                std::fs::rename(&partial, &data)
                    .with_context(|| format!("renaming {} into place", partial.display()))?;
            }
            crate::util::sync_dir(&data)?;
            // Data in place, index not yet: the snapshot does not exist yet.
            crate::failpoint::pause_blocking("snapshot-upload");
            let mut file = std::fs::File::create(&index_partial)
                .with_context(|| format!("creating {}", index_partial.display()))?;
            std::io::Write::write_all(&mut file, &source.index_bytes())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&index_partial, &index)
                .with_context(|| format!("renaming {} into place", index_partial.display()))?;
            crate::util::sync_dir(&index)?;
            Ok(source.framed_size())
        })
        .await?
    }

    async fn delete(&self, info: &SnapshotInfo) -> anyhow::Result<()> {
        let index = self.index_path(info);
        tokio::fs::remove_file(&index)
            .await
            .with_context(|| format!("deleting snapshot {}", index.display()))?;
        let data = self.data_path(info);
        match tokio::fs::remove_file(&data).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("deleting snapshot data {}", data.display()))
            }
            _ => Ok(()),
        }
    }

    /// Removes leftovers of interrupted uploads: partial files, and copies without an index,
    /// once they are an hour old.
    async fn remove_partials(&self) -> anyhow::Result<usize> {
        let dir = self.stream_dir();
        let mut removed = 0;
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let leftover = if name.starts_with('.')
                && (name.ends_with(".partial") || name.contains(".partial-"))
            {
                true
            } else if let Some(stem) = name.strip_suffix(".db") {
                !dir.join(format!("{stem}.{EXTENSION}")).exists()
            } else {
                false
            };
            if !leftover {
                continue;
            }
            let age = entry
                .metadata()
                .await?
                .modified()?
                .elapsed()
                .unwrap_or_default();
            if age >= ORPHAN_AGE {
                tokio::fs::remove_file(entry.path()).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Reads a file store index: the snapshot header, then one CRC-32 per chunk.
fn read_index(path: &Path) -> anyhow::Result<(SnapshotHeader, Vec<u32>)> {
    let bytes = std::fs::read(path)?;
    anyhow::ensure!(bytes.len() >= HEADER_LEN, "index too short");
    let header = SnapshotHeader::decode(bytes[..HEADER_LEN].try_into().expect("length checked"))?;
    let crcs: Vec<u32> = bytes[HEADER_LEN..]
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
        .collect();
    anyhow::ensure!(
        crcs.len() as u64 == header.chunk_count() && (bytes.len() - HEADER_LEN) % 4 == 0,
        "index lists {} chunk checksums, the header says {} chunks",
        crcs.len(),
        header.chunk_count()
    );
    Ok((header, crcs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmonylite_core::change::StreamSeq;
    use harmonylite_core::hlc::NodeId;

    /// Restores read an object's chunks as they arrive ([`NatsStore::chunks`]) instead of
    /// through async-nats' `get`: both read the same bytes, whatever the chunk size.
    #[tokio::test]
    async fn chunks_read_what_async_nats_get_reads() {
        use crate::nats_server::{EmbeddedServerConfig, NatsServer};
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(EmbeddedServerConfig::new(dir.path().join("nats"), "t"))
            .await
            .unwrap();
        let client = async_nats::connect(server.client_url()).await.unwrap();
        let js = jetstream::new(client);
        let store = NatsStore::open(&js, "snaps", 1, "s-1").await.unwrap();
        let path = dir.path().join("copy.db");
        let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let node = NodeId::from_u128(5).unwrap();
        let source = FramedSource::prepare(&path, StreamSeq::new(9), node, 1 << 20).unwrap();
        let mut framed = Vec::new();
        source
            .write_to(&mut framed, &mut Progress::silent(), None)
            .unwrap();

        let info = SnapshotInfo::new("s-1", StreamSeq::new(9), 1, node);
        assert_eq!(
            store.upload(&info, &source).await.unwrap(),
            framed.len() as u64
        );
        let mut object = store.store.get(&info.name).await.unwrap();
        let mut read = Vec::new();
        object.read_to_end(&mut read).await.unwrap();
        assert!(
            read == framed,
            "async-nats reads our object, digest checked"
        );
        let meta = store.store.info(&info.name).await.unwrap();
        assert_eq!(meta.metadata["covered_seq"], "9");
        // async-nats cuts a chunk per read of the source, so the count is not fixed; at
        // least as many as full chunks need.
        assert!(meta.chunks >= framed.len().div_ceil(OBJECT_CHUNK));

        let old = SnapshotInfo::new("s-1", StreamSeq::new(8), 1, node);
        let meta = object_store::ObjectMetadata {
            name: old.name.clone(),
            chunk_size: Some(512 * 1024),
            ..Default::default()
        };
        store.store.put(meta, &mut &framed[..]).await.unwrap();
        let mut chunks = store.chunks(&old).await.unwrap();
        let mut back = Vec::new();
        while let Some(chunk) = chunks.next().await {
            back.extend_from_slice(&chunk.unwrap());
        }
        assert!(
            back == framed,
            "an object stored by async-nats' put reads back"
        );
        assert_eq!(store.list().await.unwrap().len(), 2);
        drop(chunks);
        server.shutdown().await;
    }

    #[test]
    fn names_sort_by_covered_sequence_and_parse_back() {
        let node = NodeId::from_u128(0xab).unwrap();
        let a = SnapshotInfo::new("s-1", StreamSeq::new(9), 1_700_000_000_000, node);
        let b = SnapshotInfo::new("s-1", StreamSeq::new(10), 1_600_000_000_000, node);
        assert_eq!(a.name, "s-1/00000000000000000009-1700000000000-ab.hlsnap");
        assert!(a.name < b.name, "names sort by covered sequence");
        assert_eq!(SnapshotInfo::parse("s-1", &a.name), Some(a.clone()));
        assert_eq!(
            SnapshotInfo::parse("s-2", &a.name),
            None,
            "another stream's"
        );
        assert_eq!(SnapshotInfo::parse("s", &a.name), None);
        for bad in [
            "s-1/x.hlsnap",
            "s-1/00000000000000000009-1700000000000-ab.db",
            "s-1/9-1700000000000-ab.hlsnap",
            "s-1/00000000000000000009-1700000000000-00.hlsnap",
        ] {
            assert_eq!(SnapshotInfo::parse("s-1", bad), None, "{bad}");
        }
    }
}
