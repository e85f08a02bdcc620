//! The snapshot layer's errors: [`SnapshotError`] for taking, restoring and catching up
//! from snapshots, which wraps the errors of the parts that fail in ways of their own: the
//! store ([`SnapshotStoreError`]), the lease ([`LeaseError`]) and asking a peer for a
//! snapshot ([`PeerError`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use harmonylite_core::error::StoreError;
use harmonylite_core::snapshot::SnapshotError as FrameError;

pub use crate::snapshot::store::SnapshotStoreError;
use crate::util::UtilError;

/// Why taking a snapshot, restoring the database from one or catching up from one failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A database operation on a path failed (opening, copying).
    Database {
        /// What was done ("opening", "opening the copy", "copying", …).
        doing: &'static str,
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A file operation failed.
    File {
        /// What was done ("creating", "removing", "syncing", …).
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Renaming the restored file over the database failed.
    Rename {
        /// The restored file.
        from: PathBuf,
        /// The database file.
        to: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading the database file through SQLite's own file handle failed.
    ReadDatabase {
        /// The database file.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// The cause.
        #[source]
        source: Box<SnapshotError>,
    },
    /// SQLite's file handle cannot do the raw read (the message says why).
    RawRead(String),
    /// A chunk of the pinned database image read differently the second time: the read
    /// transaction did not pin it after all; nothing was stored.
    ImageChanged {
        /// The database file.
        path: PathBuf,
        /// The chunk.
        chunk: u64,
    },
    /// The database file does not start with an SQLite header.
    NotSqlite {
        /// The file.
        path: PathBuf,
    },
    /// The snapshot copy could not leave WAL mode.
    CopyMode {
        /// The journal mode it stayed in.
        mode: String,
    },
    /// Removing node-local state from the snapshot copy failed.
    Strip {
        /// The database the copy is of.
        db: PathBuf,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// SQLite's online backup could not copy the database: another connection kept it
    /// locked for a minute.
    Locked {
        /// The database.
        db: PathBuf,
    },
    /// `PRAGMA quick_check` could not run.
    QuickCheck {
        /// The database.
        db: PathBuf,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// Capturing the database's pending local writes before a restore failed.
    Capture(#[source] StoreError),
    /// Writing this node's node-local state into a restored file failed.
    InstallNodeLocal {
        /// The restored file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// The restore journal could not be read.
    Journal {
        /// The journal.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The restore journal is about another database file.
    JournalElsewhere {
        /// The journal.
        journal: PathBuf,
        /// The database it names.
        db: PathBuf,
        /// The configured database.
        db_path: PathBuf,
    },
    /// The restore journal's path has no directory.
    NoJournalDir {
        /// The journal.
        journal: PathBuf,
    },
    /// The restored file an interrupted swap left is not the size its journal says.
    RestoredSize {
        /// The restored file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The size the journal expects.
        expected: u64,
    },
    /// Reading the change stream's bounds before a restore failed.
    ReadStream(#[source] async_nats::jetstream::stream::InfoError),
    /// No snapshot covers the stream's first retained message, and none could be had from
    /// a peer.
    NoCoveringSnapshot {
        /// The database to restore.
        db: PathBuf,
        /// Why it is restored
        /// ([`RestoreReason::describe`](crate::snapshot::restore::RestoreReason::describe)).
        reason: &'static str,
        /// The change stream.
        stream: String,
        /// Its first retained sequence.
        first: u64,
        /// Why none could be had.
        #[source]
        source: Box<PeerError>,
    },
    /// Every usable snapshot failed to download intact (each was logged).
    NoIntactSnapshot {
        /// The database to restore.
        db: PathBuf,
        /// The store, as [`crate::snapshot::store::SnapshotStore::describe`] says.
        store: String,
    },
    /// No snapshot was downloaded for a catch-up, and no download failed.
    NothingDownloaded,
    /// Reading a snapshot during a download failed.
    Download {
        /// The snapshot.
        name: String,
        /// The cause.
        #[source]
        source: Box<SnapshotError>,
    },
    /// A downloaded snapshot does not decode: a bad header, a chunk that does not match its
    /// checksum.
    Damaged {
        /// The snapshot.
        name: String,
        /// The cause.
        #[source]
        source: FrameError,
    },
    /// A downloaded snapshot ended early.
    Incomplete {
        /// The snapshot.
        name: String,
        /// The cause.
        #[source]
        source: FrameError,
    },
    /// A downloaded snapshot's header covers another sequence than its name says.
    CoveredMismatch {
        /// The snapshot.
        name: String,
        /// What the header says.
        header: u64,
        /// What the name says.
        named: u64,
    },
    /// A downloaded snapshot without a header.
    NoHeader {
        /// The snapshot.
        name: String,
    },
    /// A download wrote another number of bytes than the snapshot's header announces.
    WrittenSize {
        /// The snapshot.
        name: String,
        /// Bytes written.
        written: u64,
        /// Bytes the header announces.
        expected: u64,
    },
    /// The snapshot store could not be opened for a catch-up.
    OpenStore(#[source] SnapshotStoreError),
    /// The snapshot store failed.
    #[error(transparent)]
    Store(#[from] SnapshotStoreError),
    /// The snapshot lease failed.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// No snapshot could be had from a peer.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The database failed (harmonylite-core's store).
    #[error(transparent)]
    Core(#[from] StoreError),
    /// SQLite failed (its own message says how).
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// Reading or writing a file failed (its own message says how).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Encoding the restore journal failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A blocking task ended without an answer (it panicked).
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// A util-layer step failed (randomness, a directory fsync).
    #[error(transparent)]
    Util(#[from] UtilError),
}

impl SnapshotError {
    /// Whether a snapshot's bytes do not match their checksums or end early (the restore
    /// then tries an older one).
    pub fn is_damaged(&self) -> bool {
        match self {
            SnapshotError::Damaged { .. } | SnapshotError::Incomplete { .. } => true,
            SnapshotError::Store(e) => e.is_damaged(),
            SnapshotError::Download { source, .. } => source.is_damaged(),
            _ => false,
        }
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SnapshotError::*;
        let head = match self {
            Database { doing, path, .. } | SnapshotError::File { doing, path, .. } => {
                format!("{doing} {}", path.display())
            }
            Rename { from, to, .. } => {
                format!("renaming {} to {}", from.display(), to.display())
            }
            ReadDatabase { path, offset, .. } => {
                format!("reading {} at byte {offset}", path.display())
            }
            RawRead(why) => why.clone(),
            ImageChanged { path, chunk } => format!(
                "the image of {} changed while it was streamed (chunk {chunk}): its read \
                 transaction did not pin it",
                path.display()
            ),
            NotSqlite { path } => format!("{} does not start with an SQLite header", path.display()),
            CopyMode { mode } => format!("the snapshot copy stayed in {mode} mode"),
            Strip { db, .. } => format!("preparing the snapshot copy of {}", db.display()),
            Locked { db } => format!("copying {}: the database stayed locked", db.display()),
            QuickCheck { db, .. } => {
                format!("checking {} (PRAGMA quick_check)", db.display())
            }
            Capture(_) => "capturing local writes".to_owned(),
            InstallNodeLocal { path, .. } => {
                format!("installing node-local state in {}", path.display())
            }
            Journal { path, .. } => format!("reading the restore journal {}", path.display()),
            JournalElsewhere {
                journal,
                db,
                db_path,
            } => format!(
                "the restore journal {} is about {}, not db_path {}; remove it if that restore no longer matters",
                journal.display(),
                db.display(),
                db_path.display()
            ),
            NoJournalDir { journal } => {
                format!("the restore journal {} has no directory", journal.display())
            }
            RestoredSize {
                path,
                len,
                expected,
            } => format!(
                "{} has {len} bytes, the restore journal expects {expected}",
                path.display()
            ),
            ReadStream(_) => "reading the change stream".to_owned(),
            NoCoveringSnapshot {
                db,
                reason,
                stream,
                first,
                ..
            } => format!(
                "cannot restore {} ({}) yet: no snapshot of stream {stream} covers its first retained message {first}",
                db.display(),
                reason
            ),
            NoIntactSnapshot { db, store } => format!(
                "cannot restore {}: no snapshot in the {store} downloaded intact (see the errors above). Take a new one on a \
                 healthy node with `harmonylite --config <its config> --save-snapshot`",
                db.display()
            ),
            NothingDownloaded => "no snapshot downloaded intact".to_owned(),
            Download { name, .. } => format!("downloading snapshot {name}"),
            Damaged { name, .. } => format!("snapshot {name} is damaged"),
            Incomplete { name, .. } => format!("snapshot {name} is incomplete"),
            CoveredMismatch {
                name,
                header,
                named,
            } => format!("snapshot {name} says it covers sequence {header}, its name says {named}"),
            NoHeader { name } => format!("snapshot {name} has no header"),
            WrittenSize {
                name,
                written,
                expected,
            } => format!("wrote {written} bytes of snapshot {name}, expected {expected}"),
            OpenStore(_) => "opening the snapshot store".to_owned(),
            Store(e) => e.to_string(),
            Lease(e) => e.to_string(),
            Peer(e) => e.to_string(),
            Core(e) => e.to_string(),
            Sqlite(e) => e.to_string(),
            Io(e) => e.to_string(),
            Json(e) => e.to_string(),
            Task(e) => e.to_string(),
            Util(e) => e.to_string(),
        };
        crate::util::error::write_error(f, &head, self)
    }
}

/// Why the snapshot lease could not be taken, read or renewed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease's key-value bucket could not be created.
    CreateBucket {
        /// The bucket.
        bucket: String,
        /// The cause.
        #[source]
        source: async_nats::jetstream::context::CreateKeyValueError,
    },
    /// Taking the lease failed (not: someone holds it, which is no error).
    Take {
        /// The lease's key.
        key: String,
        /// The bucket.
        bucket: String,
        /// The cause.
        #[source]
        source: async_nats::jetstream::kv::CreateError,
    },
    /// Reading the lease failed.
    Read {
        /// The lease's key.
        key: String,
        /// The cause.
        #[source]
        source: async_nats::jetstream::kv::EntryError,
    },
    /// The lease expired before it was renewed.
    Expired,
    /// Another node took the lease over.
    TakenOver(#[source] async_nats::jetstream::kv::UpdateError),
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = match self {
            LeaseError::CreateBucket { bucket, .. } => {
                format!("creating the lease bucket {bucket:?}")
            }
            LeaseError::Take { key, bucket, .. } => {
                format!("taking lease {key:?} in bucket {bucket:?}")
            }
            LeaseError::Read { key, .. } => format!("reading lease {key:?}"),
            LeaseError::Expired => "the snapshot lease expired".to_owned(),
            LeaseError::TakenOver(_) => "the snapshot lease was taken over".to_owned(),
        };
        crate::util::error::write_error(f, &head, self)
    }
}

/// Why no snapshot could be had from a peer, or this node cannot answer peers' requests.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No node answered the request in time.
    NoAnswer {
        /// How long the request waited.
        waited: Duration,
    },
    /// No node listens for snapshot requests.
    NoResponders,
    /// Sending the request failed.
    Ask(#[source] async_nats::RequestError),
    /// The answer does not decode.
    MalformedAnswer(#[source] serde_json::Error),
    /// The node that answered declined (it is not caught up).
    Declined {
        /// The node.
        node: String,
        /// Its reason.
        reason: Option<String>,
    },
    /// A node accepted, but no covering snapshot appeared in time.
    NotAppeared {
        /// The node.
        node: String,
        /// The store, as [`crate::snapshot::store::SnapshotStore::describe`] says.
        store: String,
        /// How long it was watched.
        waited: Duration,
    },
    /// Subscribing to other nodes' requests failed.
    Subscribe {
        /// The subject.
        subject: String,
        /// The cause.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// Encoding the request failed.
    #[error(transparent)]
    Encode(serde_json::Error),
    /// Looking for a covering snapshot in the store failed.
    #[error(transparent)]
    Store(#[from] SnapshotStoreError),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = match self {
            PeerError::NoAnswer { waited } => {
                format!("no answer to the snapshot request within {waited:?}")
            }
            PeerError::NoResponders => "no node answers snapshot requests (none runs with [snapshot] enable, \
                                        publish and replicate on, or none is connected)"
                .to_owned(),
            PeerError::Ask(_) => "asking the cluster for a snapshot".to_owned(),
            PeerError::MalformedAnswer(_) => "a malformed answer to the snapshot request".to_owned(),
            PeerError::Declined { node, reason } => format!(
                "node {node} declined to take a snapshot: {}",
                reason.as_deref().unwrap_or("no reason given")
            ),
            PeerError::NotAppeared {
                node,
                store,
                waited,
            } => format!(
                "node {node} accepted the snapshot request, but no covering snapshot appeared in the {store} within {waited:?}"
            ),
            PeerError::Subscribe { subject, .. } => {
                format!("subscribing to snapshot requests on {subject}")
            }
            PeerError::Encode(e) => e.to_string(),
            PeerError::Store(e) => e.to_string(),
        };
        crate::util::error::write_error(f, &head, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_print_once_through_transparent_variants() {
        let injected = UtilError::Injected {
            name: "snapshot-list".into(),
            done: 1,
            count: 3,
        };
        let error = SnapshotError::NoCoveringSnapshot {
            db: "/d/app.db".into(),
            reason: "the database file is missing",
            stream: "s-1".into(),
            first: 7,
            source: Box::new(PeerError::Store(SnapshotStoreError::Util(injected))),
        };
        assert_eq!(
            error.to_string(),
            "cannot restore /d/app.db (the database file is missing) yet: no snapshot of stream s-1 \
             covers its first retained message 7"
        );
        assert_eq!(
            format!("{error:#}"),
            "cannot restore /d/app.db (the database file is missing) yet: no snapshot of stream s-1 \
             covers its first retained message 7: injected failure 1/3 at snapshot-list \
             (HARMONYLITE_FAIL_AT): JetStream error 503, no responders available"
        );
        assert!(!error.is_damaged());
    }

    #[test]
    fn damaged_snapshots_are_told_apart() {
        let damaged = SnapshotError::Store(SnapshotStoreError::Damaged {
            name: "s-1/x.hlsnap".into(),
            chunk: Some(2),
        });
        assert!(damaged.is_damaged());
        assert_eq!(
            format!("{damaged:#}"),
            "snapshot s-1/x.hlsnap is damaged: chunk 2 does not match its checksum"
        );
        let download = SnapshotError::Download {
            name: "s-1/x.hlsnap".into(),
            source: Box::new(SnapshotError::Io(std::io::Error::other("reset"))),
        };
        assert!(!download.is_damaged());
        assert_eq!(
            format!("{download:#}"),
            "downloading snapshot s-1/x.hlsnap: reset"
        );
    }
}
