//! Catching up in place, the sidecar's side: a node whose database is sound but whose
//! cursor fell behind the stream's retention fetches a covering snapshot (from the store,
//! else from a healthy peer, [`crate::peer_snapshot`]) and merges it into the live database
//! in short transactions (core's `sqlite::catch_up`), while the application keeps its
//! connection and keeps writing. Then it consumes the stream from the snapshot's covered
//! sequence. Nothing restarts and nothing replaces the file, at start or at run time.
//!
//! The driver owns a [`CatchUpJob`]: [`CatchUpJob::Fetching`] runs [`fetch`] as a task;
//! [`CatchUpJob::Merging`] runs one merge step per turn of the driver's loop, each followed
//! by a pause as long as the step took, so the application's writers get the write lock at
//! least half of the time; [`CatchUpJob::Waiting`] retries after a failure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use harmonylite_core::snapshot::SnapshotHeader;
use harmonylite_core::sqlite::CatchUp;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::peer_snapshot::{usable_snapshots, PeerAsk};
use crate::snapshot_store::{SnapshotInfo, SnapshotStore};

/// Row versions merged per transaction.
pub const ROWS_PER_STEP: usize = 100;
/// Shortest pause after a merge step.
pub const MIN_PAUSE: Duration = Duration::from_millis(1);
/// Pause before retrying a failed fetch or a refused merge.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Pause before retrying a merge step the database refused for now (busy, locked).
pub const BUSY_RETRY: Duration = Duration::from_millis(50);

/// A snapshot downloaded for a catch-up.
pub struct Fetched {
    /// Where the database copy was written.
    pub path: PathBuf,
    /// The snapshot.
    pub info: SnapshotInfo,
    /// Its header.
    pub header: SnapshotHeader,
    /// Framed bytes downloaded.
    pub downloaded: u64,
    /// When the fetch started.
    pub started: Instant,
}

/// Where a catch-up stands.
pub enum CatchUpJob {
    /// Finding and downloading a covering snapshot.
    Fetching(JoinHandle<anyhow::Result<Fetched>>),
    /// Merging it, one step per turn.
    Merging {
        /// The merge.
        merge: Box<CatchUp>,
        /// The snapshot.
        fetched: Fetched,
        /// When the next step may run.
        next_step_at: tokio::time::Instant,
    },
    /// The last attempt failed; try again then.
    Waiting {
        /// When.
        retry_at: tokio::time::Instant,
    },
}

/// Everything [`fetch`] needs (cheap to clone into a task).
#[derive(Clone)]
pub struct FetchContext {
    /// The configuration.
    pub config: Arc<Config>,
    /// JetStream.
    pub js: jetstream::Context,
    /// The change stream's name.
    pub stream: String,
    /// Where to ask for a snapshot when none covers the stream.
    pub ask: PeerAsk,
}

/// Path of the downloaded copy: in the data directory, never beside the database.
pub fn download_path(config: &Config) -> PathBuf {
    config.effective_data_dir().join("catch-up.db")
}

/// Finds the newest snapshot that reaches `first_needed` (asking a peer when none does),
/// downloads and verifies it, and opens nothing: the driver opens the merge.
pub async fn fetch(ctx: FetchContext, first_needed: u64) -> anyhow::Result<Fetched> {
    let started = Instant::now();
    let store = SnapshotStore::open(&ctx.config, &ctx.js, &ctx.stream)
        .await
        .context("opening the snapshot store")?;
    let usable = usable_snapshots(&store, first_needed, &ctx.ask).await?;
    let path = download_path(&ctx.config);
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut last_error = None;
    for candidate in usable {
        let _ = tokio::fs::remove_file(&path).await;
        match crate::restore::download(&store, &candidate, &path).await {
            Ok((header, downloaded)) => {
                return Ok(Fetched {
                    path,
                    info: candidate,
                    header,
                    downloaded,
                    started,
                })
            }
            Err(e) => {
                tracing::error!(
                    "snapshot {} is unusable, trying an older one: {e:#}",
                    candidate.name
                );
                last_error = Some(e);
            }
        }
    }
    let _ = tokio::fs::remove_file(&path).await;
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no snapshot downloaded intact")))
}

/// Removes a downloaded copy (and its journal files, if SQLite left any).
pub fn remove_download(path: &std::path::Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}
