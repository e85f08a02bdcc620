//! Where snapshots live: a JetStream object store bucket (`store = "nats"`, the default),
//! a directory (`store = "file"`) or an S3 bucket (`store = "s3"`, [`crate::snapshot::store::s3`]).
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
//!   (see [`crate::snapshot::store::s3`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use tokio::io::AsyncRead;

use crate::config::{Config, SnapshotStoreKind};
use crate::snapshot::frame::{FramedReader, FramedSource};
pub use crate::snapshot::info::{SnapshotInfo, EXTENSION};
use crate::snapshot::store::s3::S3Store;

pub mod error;
mod file;
mod nats;
mod object_put;
pub mod s3;

pub use error::SnapshotStoreError;
pub use file::FileStore;
pub use nats::NatsStore;

/// Leftovers of interrupted uploads older than this are removed by a prune.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// A snapshot store.
pub enum SnapshotStore {
    /// A JetStream object store bucket.
    Nats(Box<NatsStore>),
    /// A directory.
    File(FileStore),
    /// An S3 bucket.
    S3(Box<S3Store>),
}

impl SnapshotStore {
    /// The store `config` names, for the change stream `stream`: the bucket is created when
    /// missing (with `snapshot.nats_replicas`).
    pub async fn open(
        config: &Config,
        js: &jetstream::Context,
        stream: &str,
    ) -> Result<Self, SnapshotStoreError> {
        crate::util::failpoint::inject("snapshot-store")?;
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
                let dir =
                    config
                        .snapshot
                        .file_dir
                        .clone()
                        .ok_or(SnapshotStoreError::NotConfigured {
                            key: "snapshot.file_dir",
                            store: "file",
                        })?;
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
            SnapshotStore::Nats(s) => s.describe(),
            SnapshotStore::File(s) => format!("directory {}", s.dir.join(&s.stream).display()),
            SnapshotStore::S3(s) => s.describe(),
        }
    }

    /// Every complete snapshot of this stream, oldest first.
    pub async fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotStoreError> {
        crate::util::failpoint::inject("snapshot-list")?;
        let mut list = match self {
            SnapshotStore::Nats(s) => s.list().await?,
            SnapshotStore::File(s) => s.list().await?,
            SnapshotStore::S3(s) => s.list().await?,
        };
        list.sort_by_key(SnapshotInfo::key);
        Ok(list)
    }

    /// The snapshot covering the most, if any.
    pub async fn newest(&self) -> Result<Option<SnapshotInfo>, SnapshotStoreError> {
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
    pub async fn upload(
        &self,
        info: &SnapshotInfo,
        source: &FramedSource,
    ) -> Result<u64, SnapshotStoreError> {
        match self.streaming_or_file() {
            Ok(streaming) => {
                streaming
                    .upload(info, source.framed_size(), source.reader())
                    .await
            }
            Err(file) => file.upload(info, source).await,
        }
    }

    /// This store as one that takes a snapshot as a stream of framed bytes (the object
    /// stores); `None` for the file store, which keeps a copy on disk.
    pub fn streaming(&self) -> Option<StreamingStore<'_>> {
        self.streaming_or_file().ok()
    }

    /// This store as a [`StreamingStore`], or the file store it is.
    fn streaming_or_file(&self) -> Result<StreamingStore<'_>, &FileStore> {
        match self {
            SnapshotStore::Nats(s) => Ok(StreamingStore::Nats(s)),
            SnapshotStore::S3(s) => Ok(StreamingStore::S3(s)),
            SnapshotStore::File(s) => Err(s),
        }
    }

    /// Reads a stored snapshot (framed bytes).
    pub async fn open_reader(
        &self,
        info: &SnapshotInfo,
    ) -> Result<Box<dyn AsyncRead + Send + Unpin>, SnapshotStoreError> {
        match self {
            SnapshotStore::Nats(s) => match s.store.get(&info.name).await {
                Ok(object) => Ok(Box::new(object)),
                Err(e) => Err(SnapshotStoreError::Open {
                    name: info.name.clone(),
                    store: self.describe(),
                    source: e.into(),
                }),
            },
            SnapshotStore::File(s) => Ok(Box::new(s.source(info)?.reader())),
            SnapshotStore::S3(s) => s.open_reader(info).await,
        }
    }

    /// Deletes one snapshot.
    pub async fn delete(&self, info: &SnapshotInfo) -> Result<(), SnapshotStoreError> {
        match self {
            SnapshotStore::Nats(s) => {
                s.store
                    .delete(&info.name)
                    .await
                    .map_err(|e| SnapshotStoreError::Delete {
                        name: info.name.clone(),
                        store: self.describe(),
                        source: e.into(),
                    })
            }
            SnapshotStore::File(s) => s.delete(info).await,
            SnapshotStore::S3(s) => s.delete(info).await,
        }
    }

    /// Deletes all but the newest `keep` snapshots, and leftovers of interrupted uploads;
    /// returns the snapshots deleted.
    pub async fn prune(&self, keep: usize) -> Result<Vec<SnapshotInfo>, SnapshotStoreError> {
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

/// A store that takes a snapshot as a stream of framed bytes, never needing a file of it:
/// a snapshot can be streamed from the live database (`crate::snapshot::pinned`).
pub enum StreamingStore<'a> {
    /// A JetStream object store bucket.
    Nats(&'a NatsStore),
    /// An S3 bucket.
    S3(&'a S3Store),
}

impl StreamingStore<'_> {
    /// Stores the `size` framed bytes `framed` reads under `info.name`; visible only once
    /// complete. Returns the bytes stored.
    pub async fn upload(
        &self,
        info: &SnapshotInfo,
        size: u64,
        framed: FramedReader,
    ) -> Result<u64, SnapshotStoreError> {
        match self {
            StreamingStore::Nats(s) => s.upload(info, size, framed).await,
            StreamingStore::S3(s) => s.upload(info, size, framed).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmonylite_core::change::StreamSeq;
    use harmonylite_core::hlc::NodeId;

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
