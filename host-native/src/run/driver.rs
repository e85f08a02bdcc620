//! The sidecar's one loop: set everything up, then feed the engine until shutdown.
//!
//! The engine (core) decides; this loop only moves data. Each turn it carries out the
//! engine's outputs (publish frames, record events), then waits for whichever comes first:
//! stream messages, publish acks or connection changes, a file-change notification, the
//! engine's next deadline, or a shutdown signal — and feeds that to the engine.
//!
//! SQLite is synchronous. The engine and its connection live in this task and are called
//! directly: one engine call is one short transaction, and the NATS client and the HTTP
//! endpoints keep running on the runtime's other worker thread meanwhile.
//!
//! This file holds the loop itself: start-up, the `Driver`'s state, the wait for the next
//! input, and `feed`/`record` (handing inputs to the session and carrying out its outputs).
//! The driver's other work is in `impl Driver` blocks of its sibling modules, one job
//! each: `stream` (the stream consumer's IO), `snapshots` (periodic snapshots and the
//! responder), `catching_up` (catching up in place), `status` (health, deadline, shutdown
//! flush), `hops` (per-hop timing) and `sleep` (serverless mode's stop).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::StreamExt;
use harmonylite_core::change::StreamSeq;
use harmonylite_core::engine::{Event, Now};
use harmonylite_core::hlc::{ntp64_from_unix, NodeId};
use harmonylite_core::session::{Session, SessionConfig, SessionInput, SessionOutput};
use harmonylite_core::sqlite::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::nats::server::NatsServer;
use crate::nats::setup::{ensure_stream_until_ready, start_embedded_server, transport_config};
use crate::nats::transport::{self, TransportConfig, TransportEvent};
use crate::ops::health::SharedStatus;
use crate::ops::metrics::{Hop, Metrics};
use crate::ops::watcher::DbWatcher;
use crate::snapshot::catch_up::{CatchUpJob, FetchContext};
use crate::snapshot::peer::PeerAsk;
use crate::snapshot::responder::Responder;
use crate::snapshot::{JobContext, JobOutcome, SnapshotError, SnapshotSchedule};
use crate::startup::prepare::{
    inspect_database, prepare_database, restorable, LocalStart, Startup,
};

/// How long shutdown waits for the outbox to be acknowledged.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);
/// Delays of the follow-up looks for a commit after a file notification (see
/// `Driver::run`); the ladder stops at the first look that captures something.
const RECHECKS_AFTER_CHANGE: [Duration; 6] = [
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
    Duration::from_millis(16),
    Duration::from_millis(32),
];

/// Runs the sidecar until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    run_until(config, shutdown).await
}

/// Runs the sidecar until `shutdown` resolves (tests pass their own future).
pub async fn run_until(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let start = inspect_database(&config)?;
    let server = match config.nats.embedded() {
        true => Some(start_embedded_server(&config, start.node_id).await?),
        false => None,
    };
    // The one teardown path: whatever `serve` returns, the embedded server stops after it.
    let outcome = serve(&config, start, server.as_ref(), shutdown.as_mut()).await;
    if let Some(server) = server {
        server.shutdown().await;
    }
    tracing::info!("stopped");
    outcome
}

/// Everything after the embedded server: endpoints, the NATS connection, the database
/// (restored first when it must be), then the driver's loop until `shutdown`.
async fn serve(
    config: &Config,
    start: LocalStart,
    server: Option<&NatsServer>,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<()> {
    let LocalStart {
        local,
        salvage,
        node_id,
        early_store,
    } = start;
    let metrics = Metrics::new(&config.prometheus.namespace);
    if config.prometheus.enable {
        let handle = crate::ops::metrics::install_recorder(&config.prometheus.namespace)?;
        crate::ops::metrics::serve(config.prometheus.bind, handle).await?;
    }
    let status = SharedStatus::default();
    {
        let mut s = status.lock().expect("status lock");
        s.node_id = node_id.to_string();
        s.publish = config.publish;
        s.replicate = config.replicate;
        s.cursor = salvage.cursor.map(StreamSeq::get).unwrap_or(0);
    }
    if config.health_check.enable {
        crate::ops::health::serve(
            config.health_check.bind,
            &config.health_check.path,
            status.clone(),
        )
        .await?;
    }
    let transport_config = transport_config(config, node_id, server);
    let (events_tx, events) = mpsc::unbounded_channel();
    let client = transport::connect(&transport_config, events_tx.clone()).await?;
    // Scoped clients' NATS auth callout and feeds (scopes on): answer until `serve` returns.
    let _scoped_services = crate::auth::start(config, &client).await?;
    // Scoped bootstrap (scopes on, full replicas): answers until `serve` returns.
    let _scoped_bootstrap = crate::auth::bootstrap::start(config, &client).await?;
    let js = jetstream::new(client.clone());
    let ask = PeerAsk {
        client: client.clone(),
        subject: crate::snapshot::peer::request_subject(&config.nats.subject_prefix),
        node: node_id.to_string(),
    };
    let startup = async {
        let applied = salvage.cursor.map(StreamSeq::get).unwrap_or(0);
        let mut stream = ensure_stream_until_ready(&js, &transport_config, applied).await;
        let ctx = Startup {
            config,
            node_id,
            js: &js,
            subjects: &transport_config.subjects,
            metrics: &metrics,
            status: &status,
            ask: &ask,
        };
        let store = prepare_database(&ctx, local, early_store, &salvage, &mut stream).await?;
        anyhow::Ok((stream, store))
    };
    let (stream, store) = tokio::select! {
        result = startup => result?,
        _ = shutdown.as_mut() => {
            tracing::info!("shutting down during start-up");
            return Ok(());
        }
    };
    let net = Net {
        client: client.clone(),
        js,
        transport: transport_config,
        ask,
        events: events_tx,
    };
    let (mut driver, watcher) =
        Driver::start(config, node_id, store, stream, &net, metrics, status).await?;
    let outcome = driver.run(events, watcher, shutdown).await;
    if let Some(job) = driver.snapshots.as_mut().and_then(|s| s.job.take()) {
        job.abort();
    }
    driver.finish(SHUTDOWN_FLUSH).await;
    drop(driver);
    client.flush().await.ok();
    outcome
}

/// The NATS side of a running node.
struct Net {
    client: async_nats::Client,
    js: jetstream::Context,
    transport: TransportConfig,
    ask: PeerAsk,
    events: mpsc::UnboundedSender<TransportEvent>,
}

/// Monotonic and wall time, as the engine wants them.
pub(super) struct Clock {
    start: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    pub(super) fn now(&self) -> Now {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Now {
            monotonic: self.start.elapsed(),
            wall: ntp64_from_unix(wall),
        }
    }
}

/// The run loop's state: the session, and what the loop moves between it and NATS.
pub(super) struct Driver {
    /// The replication session (core): every replication decision is its.
    pub(super) session: Session<Store>,
    /// Stream reads and consumer starts the session asked for, carried out at the top of
    /// the next turn (they await the server).
    pub(super) stream_requests: Vec<SessionOutput>,
    /// For the server's payload limit at every (re)connect.
    pub(super) client: async_nats::Client,
    pub(super) clock: Clock,
    pub(super) publisher: mpsc::UnboundedSender<harmonylite_core::engine::Publish>,
    pub(super) metrics: Metrics,
    pub(super) status: SharedStatus,
    pub(super) stream: jetstream::stream::Stream,
    pub(super) messages: Option<jetstream::consumer::pull::Ordered>,
    pub(super) batch_limit: usize,
    /// The change stream's subjects: a delivered message's subject is passed to the session
    /// after the prefix.
    pub(super) subjects: harmonylite_core::scope::Subjects,
    /// How to fetch a snapshot to catch up from (None: `[snapshot] enable` is off, so a node
    /// that fell behind waits for an operator).
    pub(super) fetch: Option<FetchContext>,
    /// A catch-up in place in progress.
    pub(super) catch_up: Option<CatchUpJob>,
    /// Answers other nodes' snapshot requests (None: this node takes no snapshots).
    pub(super) responder: Option<Responder>,
    /// Whether the last `feed` captured local writes.
    pub(super) captured: bool,
    /// When the file notifications since the last capture arrived (Unix ms, the latest
    /// [`NOTICES_KEPT`](crate::run::hops::NOTICES_KEPT)): the `notice` of a commit is the
    /// first one at or after its write.
    pub(super) notices: VecDeque<f64>,
    /// When each unacknowledged frame was first handed to the publisher.
    pub(super) handed_out: HashMap<i64, Instant>,
    /// When the oldest stream message not applied yet was delivered.
    pub(super) delivered_at: Option<Instant>,
    /// When a write of the application's was last captured.
    pub(super) app_wrote_at: Option<tokio::time::Instant>,
    /// Periodic snapshots (None: off for this node).
    pub(super) snapshots: Option<Snapshots>,
    /// Serverless mode (None: `sleep_timeout = 0`).
    pub(super) sleep: Option<Sleep>,
}

/// Serverless mode: when to sleep, and the snapshot to take first (None: this node does
/// not take snapshots).
pub(super) struct Sleep {
    pub(super) timer: crate::run::serverless::IdleTimer,
    pub(super) snapshot: Option<JobContext>,
}

/// State of periodic snapshots.
pub(super) struct Snapshots {
    pub(super) ctx: JobContext,
    /// The newest stored snapshot as last seen: `None` = not known yet, `Some(None)` = none.
    pub(super) newest: Option<Option<(StreamSeq, u64)>>,
    /// When to look again whether one is due.
    pub(super) check_at: Instant,
    pub(super) job: Option<JoinHandle<Result<JobOutcome, SnapshotError>>>,
}

impl Driver {
    /// The driver of an opened database and stream: publisher, file watcher, snapshot
    /// schedule, snapshot-request responder, catch-up context and serverless timer; the
    /// engine is told it is connected.
    async fn start(
        config: &Config,
        node_id: NodeId,
        store: Store,
        stream: jetstream::stream::Stream,
        net: &Net,
        metrics: Metrics,
        status: SharedStatus,
    ) -> anyhow::Result<(Driver, Option<DbWatcher>)> {
        report_install(&store);
        let publisher = transport::spawn_publisher(
            net.js.clone(),
            net.transport.stream_name.clone(),
            net.transport.subjects.clone(),
            net.events.clone(),
        );
        let watcher = DbWatcher::new(&config.db_path)
            .map_err(|e| {
                tracing::warn!("file notifications unavailable ({e}); relying on polling_interval")
            })
            .ok();
        let job_context = |schedule| JobContext {
            config: Arc::new(config.clone()),
            js: net.js.clone(),
            node_id,
            stream: net.transport.stream_name.clone(),
            schedule,
        };
        // Periodic snapshots, answers to other nodes' requests and the snapshot before a
        // serverless sleep all need a full replica.
        let full_replica = config.snapshot.enable && config.publish && config.replicate;
        let responder = match full_replica {
            true => Some(
                Responder::subscribe(
                    &net.client,
                    &net.ask.subject,
                    job_context(SnapshotSchedule::on_request()),
                )
                .await?,
            ),
            false => None,
        };
        let fetch = restorable(config).then(|| FetchContext {
            config: Arc::new(config.clone()),
            js: net.js.clone(),
            stream: net.transport.stream_name.clone(),
            ask: net.ask.clone(),
        });
        let snapshots = SnapshotSchedule::from_config(config).map(|schedule| Snapshots {
            ctx: job_context(schedule),
            newest: None,
            check_at: Instant::now(),
            job: None,
        });
        let sleep = crate::run::serverless::IdleTimer::new(config.sleep_timeout, Instant::now())
            .map(|timer| Sleep {
                timer,
                snapshot: full_replica.then(|| job_context(crate::run::serverless::schedule())),
            });
        let session_config = SessionConfig {
            replicate: config.replicate,
            ..SessionConfig::new(
                config.engine_config(),
                &net.transport.stream_name,
                crate::nats::stream_identity::HOW_TO_ADOPT,
            )
        };
        let mut driver = Driver {
            session: Session::new(store, session_config),
            stream_requests: Vec::new(),
            client: net.client.clone(),
            clock: Clock::new(),
            publisher,
            metrics,
            status,
            stream,
            messages: None,
            batch_limit: config.scan_max_changes.max(1),
            subjects: net.transport.subjects.clone(),
            fetch,
            catch_up: None,
            responder,
            notices: VecDeque::new(),
            handed_out: HashMap::new(),
            delivered_at: None,
            captured: false,
            app_wrote_at: None,
            snapshots,
            sleep,
        };
        let connected = driver.connected_input();
        driver.feed(vec![connected]);
        Ok((driver, watcher))
    }

    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<TransportEvent>,
        watcher: Option<DbWatcher>,
        mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> anyhow::Result<()> {
        // The application's WAL write raises the notification before its commit becomes
        // visible (the commit lands in the mmap'ed -shm, which raises none), so after each
        // notification the log is looked at again on a short ladder of delays.
        let mut recheck: Option<(tokio::time::Instant, usize)> = None;
        loop {
            self.carry_out_stream_requests().await;
            let deadline = self.deadline();
            let catch_up_at = self.catch_up_at();
            let pulling = self.messages.is_some() && self.session.wants_messages();
            let inputs = tokio::select! {
                biased;
                _ = shutdown.as_mut() => {
                    tracing::info!("shutting down");
                    return Ok(());
                }
                Some(event) = events.recv() => self.transport_inputs(event, &mut events),
                next = next_message(&mut self.messages), if pulling => self.message_inputs(next),
                _ = changed(&watcher) => {
                    self.notice_arrived();
                    recheck = Some((tokio::time::Instant::now() + RECHECKS_AFTER_CHANGE[0], 0));
                    vec![SessionInput::LocalWrite]
                }
                _ = sleep_until_opt(recheck.map(|(at, _)| at)), if recheck.is_some() => {
                    let step = recheck.map(|(_, step)| step + 1).unwrap_or(0);
                    recheck = RECHECKS_AFTER_CHANGE
                        .get(step)
                        .map(|delay| (tokio::time::Instant::now() + *delay, step));
                    vec![SessionInput::LocalWrite]
                }
                outcome = snapshot_job(&mut self.snapshots) => {
                    self.snapshot_finished(outcome);
                    Vec::new()
                }
                event = crate::snapshot::responder::next_event(&mut self.responder) => {
                    self.responder_event(event).await;
                    Vec::new()
                }
                outcome = crate::snapshot::catch_up::fetch_done(&mut self.catch_up) => {
                    self.snapshot_fetched(outcome);
                    Vec::new()
                }
                _ = sleep_until_opt(catch_up_at) => {
                    self.catch_up_turn();
                    Vec::new()
                }
                _ = sleep_until_opt(self.sleep.as_ref().map(|s| s.timer.deadline().into())) => {
                    if self.ready_to_sleep().await {
                        return Ok(());
                    }
                    Vec::new()
                }
                _ = tokio::time::sleep_until(deadline) => vec![SessionInput::Timeout],
            };
            self.captured = false;
            self.feed(inputs);
            if self.captured {
                recheck = None;
            }
            if self.captured {
                // The application wrote (only its writes reach the change log), and that
                // write was just captured: it is likely between writes now, the moment a
                // catch-up step least gets in its way.
                self.app_wrote_at = Some(tokio::time::Instant::now());
                if matches!(self.catch_up, Some(CatchUpJob::Merging { .. })) {
                    self.catch_up_turn();
                }
            }
            self.start_snapshot_if_due();
        }
    }

    /// Feeds inputs to the session and carries out everything it asks for (stream reads and
    /// consumer starts wait for the top of the next turn: they await the server).
    pub(super) fn feed(&mut self, inputs: Vec<SessionInput>) {
        let now = self.clock.now();
        let started = Instant::now();
        self.session.handle_inputs(now, inputs);
        let took = started.elapsed();
        while let Some(output) = self.session.poll_output() {
            match output {
                SessionOutput::Publish(p) => {
                    self.handed_out.entry(p.id).or_insert_with(Instant::now);
                    if self.publisher.send(p).is_err() {
                        tracing::error!("publisher stopped");
                    }
                }
                SessionOutput::Event(event) => self.record(event, took),
                request @ (SessionOutput::ReadStreamInfo | SessionOutput::StartConsumer { .. }) => {
                    self.stream_requests.push(request)
                }
                SessionOutput::StopConsumer => self.messages = None,
                SessionOutput::Gap { expected, got } => tracing::warn!(
                    expected = expected.get(),
                    got = got.get(),
                    "gap in the stream; consuming again from the cursor"
                ),
                SessionOutput::Refused { why } => {
                    tracing::error!(cursor = self.session.applied_cursor().get(), "{why}")
                }
                SessionOutput::FellBehind {
                    cursor,
                    first,
                    last,
                    first_time,
                } => self.fell_behind(cursor, first, last, first_time),
                SessionOutput::Consuming { from } => {
                    tracing::info!(from = from.get(), "the change stream is consumed again")
                }
            }
        }
        self.refresh_status();
    }

    fn record(&mut self, event: Event, took: Duration) {
        match event {
            Event::Drained(report) => {
                self.captured = true;
                self.record_capture_hops(report.oldest_write_unix_ms, took);
                if report.rows > 0 {
                    if let Some(sleep) = self.sleep.as_mut() {
                        sleep.timer.touch(Instant::now());
                    }
                }
                self.metrics.drained(report.rows);
                if report.null_keys > 0 {
                    tracing::warn!(
                        count = report.null_keys,
                        "changes to rows with a NULL primary-key value are not replicated"
                    );
                }
                if report.rows > 0 && report.batch_seq.is_none() {
                    tracing::info!(
                        rows = report.rows,
                        "captured local changes kept local (publish = false)"
                    );
                } else {
                    tracing::debug!(rows = report.rows, batch = ?report.batch_seq, frames = report.frames, "captured local changes");
                }
            }
            Event::Received(summary) => {
                self.metrics.received(&summary, took);
                if summary.messages > 0 {
                    if let Some(delivered) = self.delivered_at.take() {
                        self.metrics
                            .hop(Hop::DeliveredToApplied, delivered.elapsed().as_secs_f64());
                    }
                }
                for parked in &summary.parked {
                    tracing::warn!(
                        seq = parked.seq.get(),
                        kind = parked.kind.as_str(),
                        "parked a message that cannot be applied here: {}",
                        parked.reason
                    );
                }
                for refused in &summary.refused {
                    tracing::warn!(
                        seq = refused.seq.get(),
                        table = %refused.table,
                        key = %refused.key,
                        client = ?refused.origin.map(|n| n.to_string()),
                        "refused a scoped replica's change (dropped on every full node): {}",
                        refused.reason
                    );
                }
                if summary.unparked > 0 {
                    tracing::info!(
                        count = summary.unparked,
                        "applied previously parked messages"
                    );
                }
                if summary.migrations > 0 {
                    tracing::info!(
                        count = summary.migrations,
                        "applied replicated schema migrations"
                    );
                }
                if summary.batches > 0 {
                    if let Some(sleep) = self.sleep.as_mut() {
                        sleep.timer.touch(Instant::now());
                    }
                    let mut s = self.status.lock().expect("status lock");
                    s.last_apply_unix_ms = Some(
                        SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis() as u64,
                    );
                }
                tracing::debug!(
                    batches = summary.batches,
                    rows = summary.rows_changed,
                    remote_won = summary.remote_won,
                    local_won = summary.local_won,
                    cursor = summary.cursor.get(),
                    "applied stream messages"
                );
            }
            Event::Acked { frames } => self.metrics.published(frames),
            Event::DatabaseError {
                operation,
                kind,
                error,
                retry_in,
            } => {
                self.metrics.database_error(operation, kind);
                tracing::error!(
                    retry_in_ms = retry_in.as_millis() as u64,
                    kind = kind.as_str(),
                    "{operation} failed: {error}"
                );
            }
        }
    }
}

// What the loop waits on: each future borrows only the field it waits on, so all of them
// can be pending at once in the `select!`.

async fn next_message(
    messages: &mut Option<jetstream::consumer::pull::Ordered>,
) -> Option<Result<jetstream::Message, String>> {
    match messages.as_mut() {
        Some(m) => m.next().await.map(|r| r.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

/// Resolves when the running snapshot job ends (never while none runs).
async fn snapshot_job(
    snapshots: &mut Option<Snapshots>,
) -> Result<Result<JobOutcome, SnapshotError>, tokio::task::JoinError> {
    match snapshots.as_mut().and_then(|s| s.job.as_mut()) {
        Some(job) => job.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn changed(watcher: &Option<DbWatcher>) {
    match watcher {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

fn report_install(store: &Store) {
    let report = store.install_report();
    tracing::info!(tables = ?report.replicated, "replicating {} tables", report.replicated.len());
    for (table, reason) in &report.skipped {
        tracing::warn!(table, "not replicated: {reason}");
    }
    if !report.triggers_rebuilt.is_empty() {
        tracing::info!(tables = ?report.triggers_rebuilt, "installed capture triggers");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
