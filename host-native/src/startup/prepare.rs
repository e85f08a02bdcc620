//! Carrying out the start-up plan ([`crate::startup::plan`]): the database inspected before
//! anything connects, then opened, or restored from a snapshot first, retrying every step
//! until it succeeds. The run loop ([`crate::run::driver`]) calls these, then takes over.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::sqlite::snapshot::Salvage;
use harmonylite_core::sqlite::Store;
use rusqlite::Connection;

use crate::config::Config;
use crate::nats::transport;
use crate::ops::health::{SharedStatus, SnapshotStatus};
use crate::ops::metrics::Metrics;
use crate::snapshot::peer::PeerAsk;
use crate::snapshot::restore::{self, LocalDb, RestoreReason};
use crate::snapshot::store::SnapshotStore;
use crate::startup::{self, Plan, StartupError};

/// What the database looked like at start, read before anything connects.
pub(crate) struct LocalStart {
    pub(crate) local: LocalDb,
    pub(crate) salvage: Salvage,
    pub(crate) node_id: NodeId,
    /// The database, opened right away when start-up needs nothing from NATS to decide
    /// (capture is then installed even while NATS is unreachable).
    pub(crate) early_store: Option<Store>,
}

/// Completes an interrupted swap, assesses the database, settles the node id and logs the
/// node's mode; opens the database at once when the start-up plan allows.
pub(crate) fn inspect_database(config: &Config) -> Result<LocalStart, StartupError> {
    restore::finish_interrupted_swap(config)?;
    let local = restore::assess(&config.db_path)?;
    let salvage = restore::salvage_local(&config.db_path, &local);
    let node_id = resolve_node_id(config, salvage.node_id)?;
    if config.node_id.is_none() {
        tracing::Span::current().record("node_id", tracing::field::display(node_id));
    }
    tracing::info!(node = %node_id, db = %config.db_path.display(), "starting harmonylite {}", env!("CARGO_PKG_VERSION"));
    if let LocalDb::Damaged { problems } = &local {
        tracing::error!(
            problems = %problems.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
            "the database {} is damaged (PRAGMA quick_check)",
            config.db_path.display()
        );
    }
    if !config.publish {
        tracing::warn!("publish = false: this node is a read-only replica; local writes stay local and are never sent");
    }
    if !config.replicate {
        tracing::warn!(
            "replicate = false: this node publishes its writes but never applies remote changes"
        );
    }
    crate::snapshot::remove_stale_copies(&config.effective_data_dir());
    // A catch-up's download left by a process that was killed: the next one starts over.
    crate::snapshot::catch_up::remove_download(&crate::snapshot::catch_up::download_path(config));
    let early_store = match startup::plan(&local, restorable(config), None) {
        Plan::Open => Some(open_store(config, node_id)?),
        Plan::OpenNew => {
            restore::remove_stale_companions(&config.db_path)?;
            Some(open_store(config, node_id)?)
        }
        _ => None,
    };
    let snap = &config.snapshot;
    if snap.enable && snap.every_messages >= config.replication_log.max_entries {
        tracing::warn!(
            every_messages = snap.every_messages,
            max_entries = config.replication_log.max_entries,
            "[snapshot] every_messages is not below [replication_log] max_entries: the stream may drop messages \
             before the next snapshot covers them, and a node that falls behind then waits for a healthy node to \
             take a newer snapshot"
        );
    }
    Ok(LocalStart {
        local,
        salvage,
        node_id,
        early_store,
    })
}

/// Whether snapshots can restore or catch up this node.
pub(crate) fn restorable(config: &Config) -> bool {
    config.snapshot.enable && config.replicate
}

/// What start-up needs besides the database's state.
pub(crate) struct Startup<'a> {
    pub(crate) config: &'a Config,
    pub(crate) node_id: NodeId,
    pub(crate) js: &'a jetstream::Context,
    pub(crate) subjects: &'a harmonylite_core::scope::Subjects,
    pub(crate) metrics: &'a Metrics,
    pub(crate) status: &'a SharedStatus,
    pub(crate) ask: &'a PeerAsk,
}

impl Startup<'_> {
    /// Records why start-up waits (None: it no longer does) for the health endpoint.
    fn waiting(&self, why: Option<String>) {
        self.status.lock().expect("status lock").waiting = why;
    }

    /// A start-up step failed: says so in the log and the health endpoint (`waiting`),
    /// sleeps `delay`, and doubles it for the next failure (at most 30 s).
    async fn retry_after(&self, delay: &mut Duration, what: &str, error: &dyn fmt::Display) {
        tracing::warn!(retry_in_ms = delay.as_millis() as u64, "{what}: {error:#}");
        self.waiting(Some(format!("{what}: {error:#}")));
        tokio::time::sleep(*delay).await;
        *delay = (*delay * 2).min(Duration::from_secs(30));
    }
}

/// Opens the database, restoring it from a snapshot first when it is missing or damaged
/// (see [`crate::snapshot::restore`]), as [`startup::plan`] decides. A sound database is always
/// opened as it is, also when it fell behind the stream's retention: the run loop catches
/// it up in place ([`crate::snapshot::catch_up`]), with the application running.
pub(crate) async fn prepare_database(
    ctx: &Startup<'_>,
    local: LocalDb,
    opened: Option<Store>,
    salvage: &Salvage,
    stream: &mut jetstream::stream::Stream,
) -> Result<Store, StartupError> {
    let config = ctx.config;
    if let Some(store) = opened {
        return Ok(store);
    }
    let restorable = restorable(config);
    let stream_last = match startup::plan(&local, restorable, None) {
        Plan::ReadStream => {
            // A missing file: nothing may be created at its path while an application still
            // holds the old one (its `-shm` lock says so).
            restore::wait_until_unopened(&config.db_path, |why| ctx.waiting(why)).await?;
            Some(stream_last_until_ready(ctx, stream).await)
        }
        _ => None,
    };
    let reason = match startup::plan(&local, restorable, stream_last) {
        Plan::Open => return open_store(config, ctx.node_id),
        Plan::OpenNew => {
            if stream_last == Some(0) {
                tracing::info!(
                    "no database yet and the change stream is empty (a new cluster): starting with an empty database"
                );
            }
            restore::remove_stale_companions(&config.db_path)?;
            return open_store(config, ctx.node_id);
        }
        Plan::Refuse(why) => {
            return Err(StartupError::Refused {
                db: config.db_path.clone(),
                why,
            })
        }
        Plan::ReadStream => return Err(StartupError::Undecided),
        Plan::Restore(reason) => reason,
    };
    let kept = match reason {
        RestoreReason::Damaged => {
            restore::wait_until_unopened(&config.db_path, |why| ctx.waiting(why)).await?;
            let (published, skipped) =
                restore::publish_salvaged(ctx.js, ctx.subjects, &salvage.outbox).await;
            if published > 0 || skipped > 0 {
                tracing::warn!(
                    published,
                    skipped,
                    "published the unpublished writes that could still be read from the damaged database"
                );
            }
            if let Some(n) = salvage.pending_log.filter(|n| *n > 0) {
                tracing::warn!(
                    count = n,
                    "local writes the sidecar had not captured yet are lost with the damaged database"
                );
            }
            salvage.clone()
        }
        _ => {
            restore::remove_stale_companions(&config.db_path)?;
            Salvage::default()
        }
    };
    restore_until_done(ctx, stream, reason, &kept).await;
    open_store(config, ctx.node_id)
}

/// The stream's last sequence, retrying every error with backoff (JetStream 503s, "no
/// responders", leader elections and timeouts pass) and saying why in the log and the
/// health endpoint meanwhile.
async fn stream_last_until_ready(ctx: &Startup<'_>, stream: &mut jetstream::stream::Stream) -> u64 {
    let mut delay = Duration::from_millis(200);
    loop {
        match transport::stream_bounds(stream).await {
            Ok((_, last)) => {
                ctx.waiting(None);
                return last;
            }
            Err(e) => {
                ctx.retry_after(&mut delay, "reading the change stream", &e)
                    .await
            }
        }
    }
}

/// Restores the database from a snapshot, retrying until it succeeds: every step (the
/// store, the stream, a peer's snapshot, the download) may fail for a while in a cluster
/// that is starting or electing leaders, and none of that is a reason to exit.
async fn restore_until_done(
    ctx: &Startup<'_>,
    stream: &mut jetstream::stream::Stream,
    reason: RestoreReason,
    kept: &Salvage,
) {
    ctx.status.lock().expect("status lock").restoring = true;
    let stream_name = stream.cached_info().config.name.clone();
    let mut delay = Duration::from_secs(1);
    let restored = loop {
        let store = open_snapshot_store_until_ready(ctx.config, ctx.js, &stream_name).await;
        let result = restore::restore(
            ctx.config,
            ctx.node_id,
            stream,
            &store,
            reason,
            kept,
            ctx.ask,
            |why| ctx.waiting(why),
        )
        .await;
        match result {
            Ok(restored) => break restored,
            Err(e) => {
                ctx.metrics.snapshot_failed("restore");
                ctx.retry_after(&mut delay, "restoring the database", &e)
                    .await;
            }
        }
    };
    ctx.waiting(None);
    ctx.metrics.restored(
        reason.as_str(),
        restored.downloaded,
        restored.took,
        restored.snapshot.covered_seq.get(),
    );
    let mut s = ctx.status.lock().expect("status lock");
    s.restoring = false;
    s.last_restore = Some(SnapshotStatus {
        name: restored.snapshot.name.clone(),
        covered_seq: restored.snapshot.covered_seq.get(),
        bytes: restored.downloaded,
        duration_ms: restored.took.as_millis() as u64,
        at_unix_ms: crate::util::unix_ms(),
        reason: Some(reason.as_str().to_owned()),
    });
}

/// Opens the snapshot store, retrying while it cannot be created yet (a cluster that is
/// still forming cannot place a replicated bucket).
async fn open_snapshot_store_until_ready(
    config: &Config,
    js: &jetstream::Context,
    stream: &str,
) -> SnapshotStore {
    let mut delay = Duration::from_millis(200);
    loop {
        match SnapshotStore::open(config, js, stream).await {
            Ok(store) => return store,
            Err(e) => {
                tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "snapshot store not ready: {e:#}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The configured node id, else the one stored in the database (`stored`), else a new
/// random one.
fn resolve_node_id(config: &Config, stored: Option<NodeId>) -> Result<NodeId, StartupError> {
    Ok(match (config.node_id, stored) {
        (Some(configured), Some(stored)) if configured != stored => {
            tracing::warn!(%configured, %stored, "node_id differs from the id stored in the database; using the configured one");
            configured
        }
        (Some(configured), _) => configured,
        (None, Some(stored)) => stored,
        (None, None) => crate::util::random_node_id()?,
    })
}

fn open_store(config: &Config, node_id: NodeId) -> Result<Store, StartupError> {
    let conn = Connection::open(&config.db_path).map_err(|source| StartupError::OpenDatabase {
        db: config.db_path.clone(),
        source,
    })?;
    let mut options = config.store_options(node_id);
    options.incarnation = crate::util::random_u64()?;
    let store = Store::open(conn, options).map_err(|source| StartupError::InstallCapture {
        db: config.db_path.clone(),
        source,
    })?;
    Ok(store)
}
