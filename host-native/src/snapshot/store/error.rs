//! Why a snapshot store operation failed.

use std::fmt;
use std::path::PathBuf;

use crate::util::error::BoxError;
use crate::util::UtilError;

/// Why listing, storing, reading or deleting snapshots in a store failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotStoreError {
    /// The configuration lacks a key this store needs.
    NotConfigured {
        /// The dotted key (`snapshot.file_dir`).
        key: &'static str,
        /// The `store` value that needs it.
        store: &'static str,
    },
    /// The S3 client could not be configured (bad endpoint, credentials, region).
    ConfigureS3 {
        /// The bucket.
        bucket: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// The JetStream object store bucket could not be created.
    CreateBucket {
        /// The bucket.
        bucket: String,
        /// Its replicas.
        replicas: usize,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// Listing the stored snapshots failed.
    List {
        /// What was listed (`snapshot bucket "…"`, a directory, `the S3 bucket …`).
        place: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// Storing a snapshot failed.
    Upload {
        /// The snapshot.
        name: String,
        /// The store, as [`crate::snapshot::store::SnapshotStore::describe`] says.
        store: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// An S3 multipart upload could not be started.
    StartUpload {
        /// The snapshot.
        name: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// An S3 multipart upload could not be completed.
    CompleteUpload {
        /// The snapshot.
        name: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// The size of an uploaded snapshot could not be read back.
    CheckUpload {
        /// The snapshot.
        name: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// The store holds a different number of bytes than were sent.
    StoredSize {
        /// The snapshot.
        name: String,
        /// Bytes the store holds.
        stored: u64,
        /// Bytes sent.
        expected: u64,
    },
    /// Reading the framed snapshot to send it produced a different number of bytes than
    /// its header announces.
    ProducedSize {
        /// The snapshot (None: not known where it was counted).
        name: Option<String>,
        /// Bytes produced.
        produced: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// A stored snapshot could not be opened for reading.
    Open {
        /// The snapshot.
        name: String,
        /// The store, as [`crate::snapshot::store::SnapshotStore::describe`] says.
        store: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The object store entry of a snapshot is a deleted object or a link.
    NotAnObject {
        /// The snapshot.
        name: String,
    },
    /// Reading a stored snapshot's bytes failed.
    Read {
        /// The snapshot.
        name: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The object store's chunk subscription ended before the last chunk.
    ChunksEnded,
    /// The object store's chunk subscription failed.
    Chunk {
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The chunks read do not add up to the object's metadata.
    ChunkCount {
        /// The snapshot.
        name: String,
        /// Bytes read.
        size: u64,
        /// Chunks read.
        chunks: usize,
        /// Bytes the metadata lists.
        expected_size: u64,
        /// Chunks the metadata lists.
        expected_chunks: usize,
    },
    /// Deleting a stored snapshot failed.
    Delete {
        /// The snapshot.
        name: String,
        /// The store, as [`crate::snapshot::store::SnapshotStore::describe`] says.
        store: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// A file operation of the directory store failed.
    File {
        /// What was done to the file ("creating", "syncing", "deleting snapshot", …).
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file of the directory store could not be renamed into place.
    Rename {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot's index file (directory store) could not be read.
    ReadIndex {
        /// The index file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<SnapshotStoreError>,
    },
    /// An index file shorter than a snapshot header.
    IndexTooShort,
    /// An index file whose chunk checksums do not match its header's chunk count.
    IndexChunks {
        /// Checksums listed.
        listed: usize,
        /// Chunks the header says.
        expected: u64,
    },
    /// A snapshot's stored bytes do not match their checksums (directory store).
    Damaged {
        /// The snapshot.
        name: String,
        /// The chunk that does not match (None: the whole file does not).
        chunk: Option<usize>,
    },
    /// A snapshot name without a file name.
    NoFileName {
        /// The path made of it.
        path: PathBuf,
    },
    /// A snapshot header that does not decode.
    #[error(transparent)]
    Header(#[from] harmonylite_core::snapshot::SnapshotError),
    /// A request to the JetStream object store or to S3 failed (its own message says which).
    #[error(transparent)]
    Request(BoxError),
    /// Reading or writing a file failed (its own message says how).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A blocking task of the store ended without an answer (it panicked).
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// A util-layer step failed (an injected failure, a directory fsync).
    #[error(transparent)]
    Util(#[from] UtilError),
}

impl SnapshotStoreError {
    /// A failed request to the object store or to S3, with its own message.
    pub(crate) fn request(error: impl Into<BoxError>) -> Self {
        SnapshotStoreError::Request(error.into())
    }

    /// Whether the stored bytes of a snapshot do not match their checksums.
    pub fn is_damaged(&self) -> bool {
        matches!(self, SnapshotStoreError::Damaged { .. })
    }
}

impl fmt::Display for SnapshotStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SnapshotStoreError::*;
        let head = match self {
            NotConfigured { key, store } => format!("{key} is required with store = \"{store}\""),
            ConfigureS3 { bucket, .. } => {
                format!("configuring the S3 snapshot store (bucket {bucket:?})")
            }
            CreateBucket {
                bucket, replicas, ..
            } => format!("creating the snapshot bucket {bucket:?} with {replicas} replicas"),
            List { place, .. } => format!("listing {place}"),
            Upload { name, store, .. } => format!("uploading snapshot {name} to the {store}"),
            StartUpload { name, .. } => format!("starting the upload of snapshot {name}"),
            CompleteUpload { name, .. } => format!("completing the upload of snapshot {name}"),
            CheckUpload { name, .. } => format!("checking the uploaded snapshot {name}"),
            StoredSize {
                name,
                stored,
                expected,
            } => format!("snapshot {name} stored {stored} bytes, expected {expected}"),
            ProducedSize {
                name,
                produced,
                expected,
            } => match name {
                Some(name) => {
                    format!("snapshot {name} produced {produced} bytes, expected {expected}")
                }
                None => format!("the snapshot produced {produced} bytes, expected {expected}"),
            },
            Open { name, store, .. } => format!("opening snapshot {name} in the {store}"),
            NotAnObject { name } => format!("snapshot {name} is deleted or a link"),
            Read { name, .. } => format!("reading snapshot {name}"),
            ChunksEnded => "the chunk subscription ended".to_owned(),
            Chunk { .. } => "reading a chunk".to_owned(),
            ChunkCount {
                name,
                size,
                chunks,
                expected_size,
                expected_chunks,
            } => format!(
                "snapshot {name}: read {size} bytes in {chunks} chunks, its metadata says {expected_size} in {expected_chunks}"
            ),
            Delete { name, store, .. } => format!("deleting snapshot {name} from the {store}"),
            File { doing, path, .. } => format!("{doing} {}", path.display()),
            Rename { path, .. } => format!("renaming {} into place", path.display()),
            ReadIndex { path, .. } => format!("reading {}", path.display()),
            IndexTooShort => "index too short".to_owned(),
            IndexChunks { listed, expected } => format!(
                "index lists {listed} chunk checksums, the header says {expected} chunks"
            ),
            Damaged {
                name,
                chunk: Some(index),
            } => format!("snapshot {name} is damaged: chunk {index} does not match its checksum"),
            Damaged { name, chunk: None } => {
                format!("snapshot {name} is damaged: the file does not match its checksum")
            }
            NoFileName { path } => format!("snapshot path {} has no file name", path.display()),
            Header(e) => e.to_string(),
            Request(e) => e.to_string(),
            Io(e) => e.to_string(),
            Task(e) => e.to_string(),
            Util(e) => e.to_string(),
        };
        crate::util::error::write_error(f, &head, self)
    }
}
