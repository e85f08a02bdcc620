//! Catching up in place, the sidecar's side: a node whose database is sound but whose
//! cursor fell behind the stream's retention fetches a covering snapshot (from the store,
//! else from a healthy peer, [`crate::snapshot::peer`]) and merges it into the live database
//! in short transactions (core's `sqlite::catch_up`), while the application keeps its
//! connection and keeps writing. Then it consumes the stream from the snapshot's covered
//! sequence. Nothing restarts and nothing replaces the file, at start or at run time.
//!
//! The driver owns a [`CatchUpJob`]: [`CatchUpJob::Fetching`] runs [`fetch`] as a task;
//! [`CatchUpJob::Merging`] runs one merge step per turn of the driver's loop. While the
//! application writes, a step runs right after each of its writes is captured, so it falls
//! into the application's pause between writes instead of making it wait for the lock; when
//! it is quiet ([`APP_QUIET`]), steps run back to back, each followed by a pause as long as
//! the step took. [`CatchUpJob::Waiting`] retries after a failure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use harmonylite_core::hlc::NTP64;
use harmonylite_core::session::Session;
use harmonylite_core::snapshot::SnapshotHeader;
use harmonylite_core::sqlite::{CatchUp, CatchUpError, CatchUpReport, Store};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::ops::health::CatchUpStatus;
use crate::snapshot::peer::{usable_snapshots, PeerAsk};
use crate::snapshot::store::{SnapshotInfo, SnapshotStore};
use crate::snapshot::{file_error, SnapshotError};

/// Row versions merged per transaction.
pub const ROWS_PER_STEP: usize = 100;
/// Shortest pause after a merge step.
pub const MIN_PAUSE: Duration = Duration::from_millis(1);
/// Pause before retrying a failed fetch or a refused merge.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// While the application wrote within this long, merge steps follow its writes (the driver
/// runs one right after it captured each) instead of the timer.
pub const APP_QUIET: Duration = Duration::from_millis(50);
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
    Fetching(JoinHandle<Result<Fetched, SnapshotError>>),
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

/// What one turn of a catch-up did, for the driver to act on and report.
pub enum Turn {
    /// A merge step committed, or the database was busy (tried again shortly);
    /// `captured`: the step captured local writes, which are now in the outbox.
    Merged {
        /// Local writes went into the outbox.
        captured: bool,
    },
    /// Done: the cursor is at the snapshot's covered sequence.
    Finished {
        /// The merge's totals.
        report: Box<CatchUpReport>,
        /// The snapshot merged (its download is removed).
        fetched: Box<Fetched>,
    },
    /// The snapshot could not be had or merged; tried again after [`RETRY_AFTER`].
    Failed(String),
    /// The wait after a failure is over: look at the stream again, it decides what
    /// snapshot is needed now.
    Restart,
}

impl CatchUpJob {
    /// Starts fetching a snapshot that reaches `first_needed`.
    pub fn start(ctx: FetchContext, first_needed: u64) -> Self {
        CatchUpJob::Fetching(tokio::spawn(fetch(ctx, first_needed)))
    }

    /// When [`CatchUpJob::turn`] is due (None: while fetching; [`fetch_done`] says when
    /// the download ends).
    pub fn due(&self) -> Option<tokio::time::Instant> {
        match self {
            CatchUpJob::Merging { next_step_at, .. } => Some(*next_step_at),
            CatchUpJob::Waiting { retry_at } => Some(*retry_at),
            CatchUpJob::Fetching(_) => None,
        }
    }

    /// The job after its download ended: merging, or waiting to retry (with the reason).
    /// `outcome` is [`fetch_done`]'s.
    pub fn fetched(
        outcome: Result<Result<Fetched, SnapshotError>, tokio::task::JoinError>,
    ) -> (Self, Result<(), String>) {
        let retry = CatchUpJob::Waiting {
            retry_at: tokio::time::Instant::now() + RETRY_AFTER,
        };
        let fetched = match outcome {
            Ok(Ok(fetched)) => fetched,
            Ok(Err(e)) => {
                let why = crate::util::error::report(&e);
                return (retry, Err(format!("catching up: {why}")));
            }
            Err(e) => return (retry, Err(format!("the snapshot download task ended: {e}"))),
        };
        match CatchUp::open(&fetched.path, fetched.header.covered_seq) {
            Ok(merge) => {
                tracing::info!(
                    snapshot = %fetched.info.name,
                    covered_seq = fetched.header.covered_seq.get(),
                    bytes = fetched.header.total_size,
                    "merging the snapshot into the live database"
                );
                let merging = CatchUpJob::Merging {
                    merge: Box::new(merge),
                    fetched,
                    next_step_at: tokio::time::Instant::now(),
                };
                (merging, Ok(()))
            }
            Err(e) => {
                remove_download(&fetched.path);
                (
                    retry,
                    Err(format!(
                        "snapshot {} cannot be merged: {e}",
                        fetched.info.name
                    )),
                )
            }
        }
    }

    /// Runs one merge step on the session's database (a short transaction) and schedules
    /// the next one a pause as long as the step later; returns the job that goes on (None:
    /// finished).
    pub fn turn(self, session: &mut Session<Store>, now: NTP64) -> (Option<Self>, Turn) {
        let (mut merge, fetched) = match self {
            CatchUpJob::Merging { merge, fetched, .. } => (merge, fetched),
            CatchUpJob::Waiting { .. } => return (None, Turn::Restart),
            fetching => return (Some(fetching), Turn::Merged { captured: false }),
        };
        let captured_before = merge.report().local_rows_captured;
        let started = Instant::now();
        let result = session.catch_up_step(&mut merge, now, ROWS_PER_STEP);
        let pause = started.elapsed().max(MIN_PAUSE);
        let at = tokio::time::Instant::now();
        match result {
            Ok(report) if report.finished => {
                drop(merge.into_source());
                remove_download(&fetched.path);
                (
                    None,
                    Turn::Finished {
                        report: Box::new(report),
                        fetched: Box::new(fetched),
                    },
                )
            }
            Ok(report) => {
                let captured = report.local_rows_captured > captured_before;
                let next = CatchUpJob::Merging {
                    merge,
                    fetched,
                    next_step_at: at + pause,
                };
                (Some(next), Turn::Merged { captured })
            }
            Err(CatchUpError::Store(e)) if e.is_transient() => {
                tracing::debug!("a catch-up step must wait: {e}");
                let next = CatchUpJob::Merging {
                    merge,
                    fetched,
                    next_step_at: at + BUSY_RETRY,
                };
                (Some(next), Turn::Merged { captured: false })
            }
            Err(e) => {
                drop(merge);
                remove_download(&fetched.path);
                let next = CatchUpJob::Waiting {
                    retry_at: at + RETRY_AFTER,
                };
                (
                    Some(next),
                    Turn::Failed(format!("merging snapshot {}: {e}", fetched.info.name)),
                )
            }
        }
    }

    /// The job as the health endpoint reports it.
    pub fn status(&self) -> CatchUpStatus {
        match self {
            CatchUpJob::Fetching(_) => CatchUpStatus {
                stage: "fetching".into(),
                ..Default::default()
            },
            CatchUpJob::Merging { merge, fetched, .. } => CatchUpStatus {
                stage: "merging".into(),
                snapshot: Some(fetched.info.name.clone()),
                covered_seq: Some(fetched.header.covered_seq.get()),
                rows_read: merge.report().rows_read,
                rows_total: merge.report().rows_total,
            },
            CatchUpJob::Waiting { .. } => CatchUpStatus {
                stage: "waiting".into(),
                ..Default::default()
            },
        }
    }
}

/// Resolves when the job's snapshot download ends (never while none runs).
pub async fn fetch_done(
    job: &mut Option<CatchUpJob>,
) -> Result<Result<Fetched, SnapshotError>, tokio::task::JoinError> {
    match job {
        Some(CatchUpJob::Fetching(task)) => task.await,
        _ => std::future::pending().await,
    }
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
pub async fn fetch(ctx: FetchContext, first_needed: u64) -> Result<Fetched, SnapshotError> {
    let started = Instant::now();
    let store = SnapshotStore::open(&ctx.config, &ctx.js, &ctx.stream)
        .await
        .map_err(SnapshotError::OpenStore)?;
    let usable = usable_snapshots(&store, first_needed, &ctx.ask).await?;
    let path = download_path(&ctx.config);
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(file_error("creating", dir))?;
    }
    let mut last_error = None;
    for candidate in usable {
        let _ = tokio::fs::remove_file(&path).await;
        match crate::snapshot::restore::download(&store, &candidate, &path).await {
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
    Err(last_error.unwrap_or(SnapshotError::NothingDownloaded))
}

/// Removes a downloaded copy (and its journal files, if SQLite left any).
pub fn remove_download(path: &std::path::Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}
