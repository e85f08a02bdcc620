//! Snapshots in a directory (`store = "file"`).

use std::path::{Path, PathBuf};

use harmonylite_core::snapshot::{SnapshotHeader, HEADER_LEN};

use super::{SnapshotInfo, SnapshotStoreError, EXTENSION, ORPHAN_AGE};
use crate::ops::progress::Progress;
use crate::snapshot::frame::FramedSource;

/// Snapshots in a directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    pub(super) dir: PathBuf,
    pub(super) stream: String,
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

    pub(super) async fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotStoreError> {
        let dir = self.stream_dir();
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(SnapshotStoreError::List {
                    place: dir.display().to_string(),
                    source: e.into(),
                })
            }
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
    pub(super) fn source(&self, info: &SnapshotInfo) -> Result<FramedSource, SnapshotStoreError> {
        let index = self.index_path(info);
        let (header, crcs) = read_index(&index).map_err(|e| SnapshotStoreError::ReadIndex {
            path: index.clone(),
            source: Box::new(e),
        })?;
        Ok(FramedSource::from_parts(self.data_path(info), header, crcs))
    }

    /// Copies the stored snapshot `info` to `target`, checking every chunk against the index
    /// and the whole against the header, and fsyncs it (blocking; the restore fast path:
    /// one read and one write of each byte). Returns the header and the framed size.
    pub fn copy_verified(
        &self,
        info: &SnapshotInfo,
        target: &Path,
    ) -> Result<(SnapshotHeader, u64), SnapshotStoreError> {
        let source = self.source(info)?;
        let header = *source.header();
        let data = source.path();
        let mut input = std::fs::File::open(data).map_err(file("opening snapshot data", data))?;
        let mut output = std::fs::File::create(target).map_err(file("creating", target))?;
        let mut progress = Progress::new("restoring snapshot", header.framed_size());
        let mut buffer = vec![0u8; header.chunk_size as usize];
        let mut whole = crc32fast::Hasher::new();
        for (index, expected) in source.chunk_crcs().iter().enumerate() {
            let n = crate::snapshot::frame::read_full(&mut input, &mut buffer)?;
            let want = (header.total_size - index as u64 * header.chunk_size as u64)
                .min(header.chunk_size as u64) as usize;
            let mut chunk = crc32fast::Hasher::new();
            chunk.update(&buffer[..n]);
            if n != want || chunk.clone().finalize() != *expected {
                return Err(SnapshotStoreError::Damaged {
                    name: info.name.clone(),
                    chunk: Some(index),
                });
            }
            whole.combine(&chunk);
            std::io::Write::write_all(&mut output, &buffer[..n])
                .map_err(file("writing", target))?;
            progress.advance(n as u64 + 8);
            if index == 0 && crate::util::failpoint::is_armed("restore-download") {
                output.sync_all()?;
                crate::util::failpoint::pause_blocking("restore-download");
            }
        }
        if crate::snapshot::frame::read_full(&mut input, &mut buffer[..1])? != 0
            || whole.finalize() != header.file_crc
        {
            return Err(SnapshotStoreError::Damaged {
                name: info.name.clone(),
                chunk: None,
            });
        }
        output.sync_all().map_err(file("syncing", target))?;
        progress.finish();
        Ok((header, header.framed_size()))
    }

    pub(super) async fn upload(
        &self,
        info: &SnapshotInfo,
        source: &FramedSource,
    ) -> Result<u64, SnapshotStoreError> {
        let dir = self.stream_dir();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(file("creating", &dir))?;
        let data = self.data_path(info);
        let index = self.index_path(info);
        let index_name = index
            .file_name()
            .ok_or_else(|| SnapshotStoreError::NoFileName {
                path: index.clone(),
            })?
            .to_string_lossy()
            .into_owned();
        let index_partial = dir.join(format!(".{index_name}.partial"));
        let source = source.clone();
        tokio::task::spawn_blocking(move || -> Result<u64, SnapshotStoreError> {
            let copy = source.path();
            if copy.parent() == Some(dir.as_path()) {
                std::fs::File::open(copy)
                    .and_then(|f| f.sync_all())
                    .map_err(file("syncing", copy))?;
                std::fs::rename(copy, &data).map_err(rename(copy))?;
            } else {
                let partial = dir.join(format!(".{index_name}.db.partial"));
                std::fs::copy(copy, &partial).map_err(file("copying", copy))?;
                std::fs::File::open(&partial)
                    .and_then(|f| f.sync_all())
                    .map_err(file("syncing", &partial))?;
                std::fs::rename(&partial, &data).map_err(rename(&partial))?;
            }
            crate::util::sync_dir(&data)?;
            // Data in place, index not yet: the snapshot does not exist yet.
            crate::util::failpoint::pause_blocking("snapshot-upload");
            let mut written =
                std::fs::File::create(&index_partial).map_err(file("creating", &index_partial))?;
            std::io::Write::write_all(&mut written, &source.index_bytes())?;
            written.sync_all()?;
            drop(written);
            std::fs::rename(&index_partial, &index).map_err(rename(&index_partial))?;
            crate::util::sync_dir(&index)?;
            Ok(source.framed_size())
        })
        .await?
    }

    pub(super) async fn delete(&self, info: &SnapshotInfo) -> Result<(), SnapshotStoreError> {
        let index = self.index_path(info);
        tokio::fs::remove_file(&index)
            .await
            .map_err(file("deleting snapshot", &index))?;
        let data = self.data_path(info);
        match tokio::fs::remove_file(&data).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(file("deleting snapshot data", &data)(e))
            }
            _ => Ok(()),
        }
    }

    /// Removes leftovers of interrupted uploads: partial files, and copies without an index,
    /// once they are an hour old.
    pub(super) async fn remove_partials(&self) -> Result<usize, SnapshotStoreError> {
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
fn read_index(path: &Path) -> Result<(SnapshotHeader, Vec<u32>), SnapshotStoreError> {
    let bytes = std::fs::read(path)?;
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotStoreError::IndexTooShort);
    }
    let header = SnapshotHeader::decode(bytes[..HEADER_LEN].try_into().expect("length checked"))?;
    let crcs: Vec<u32> = bytes[HEADER_LEN..]
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
        .collect();
    if crcs.len() as u64 != header.chunk_count() || (bytes.len() - HEADER_LEN) % 4 != 0 {
        return Err(SnapshotStoreError::IndexChunks {
            listed: crcs.len(),
            expected: header.chunk_count(),
        });
    }
    Ok((header, crcs))
}

/// The error of a file operation: `doing` (e.g. "creating") on `path`.
fn file<'a>(
    doing: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotStoreError + 'a {
    move |source| SnapshotStoreError::File {
        doing,
        path: path.to_owned(),
        source,
    }
}

/// The error of renaming `path` into place.
fn rename(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotStoreError + '_ {
    move |source| SnapshotStoreError::Rename {
        path: path.to_owned(),
        source,
    }
}
