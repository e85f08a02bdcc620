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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use harmonylite_core::change::StreamSeq;
use harmonylite_core::engine::{Event, Now};
use harmonylite_core::hlc::{ntp64_from_unix, NodeId};
use harmonylite_core::session::{Session, SessionConfig, SessionInput, SessionOutput};
use harmonylite_core::sqlite::{CatchUpReport, Store};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::nats::server::NatsServer;
use crate::nats::setup::{ensure_stream_until_ready, start_embedded_server, transport_config};
use crate::nats::transport::{self, TransportConfig, TransportEvent};
use crate::ops::health::{SharedStatus, SnapshotStatus};
use crate::ops::metrics::{Hop, Metrics};
use crate::ops::watcher::DbWatcher;
use crate::snapshot::catch_up::{CatchUpJob, FetchContext, Fetched, Turn};
use crate::snapshot::peer::PeerAsk;
use crate::snapshot::responder::{Responder, ResponderEvent};
use crate::snapshot::restore::RestoreReason;
use crate::snapshot::{JobContext, JobOutcome, SnapshotSchedule};
use crate::startup::prepare::{
    inspect_database, prepare_database, restorable, LocalStart, Startup,
};

/// File notifications remembered between captures (for the commit -> notice hop).
const NOTICES_KEPT: usize = 64;
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
/// How often the driver looks whether a periodic snapshot is due (a local check; the store
/// is only asked when one may be).
const SNAPSHOT_CHECK: Duration = Duration::from_secs(5);
/// Pause after a snapshot attempt failed, or found another node taking one.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(60);

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
            subject: &transport_config.subject,
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
struct Clock {
    start: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    fn now(&self) -> Now {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Now {
            monotonic: self.start.elapsed(),
            wall: ntp64_from_unix(wall),
        }
    }
}

struct Driver {
    /// The replication session (core): every replication decision is its.
    session: Session<Store>,
    /// Stream reads and consumer starts the session asked for, carried out at the top of
    /// the next turn (they await the server).
    stream_requests: Vec<SessionOutput>,
    /// For the server's payload limit at every (re)connect.
    client: async_nats::Client,
    clock: Clock,
    publisher: mpsc::UnboundedSender<harmonylite_core::engine::Publish>,
    metrics: Metrics,
    status: SharedStatus,
    stream: jetstream::stream::Stream,
    messages: Option<jetstream::consumer::pull::Ordered>,
    batch_limit: usize,
    /// How to fetch a snapshot to catch up from (None: `[snapshot] enable` is off, so a node
    /// that fell behind waits for an operator).
    fetch: Option<FetchContext>,
    /// A catch-up in place in progress.
    catch_up: Option<CatchUpJob>,
    /// Answers other nodes' snapshot requests (None: this node takes no snapshots).
    responder: Option<Responder>,
    /// Whether the last `feed` captured local writes.
    captured: bool,
    /// When the file notifications since the last capture arrived (Unix ms, the latest
    /// [`NOTICES_KEPT`]): the `notice` of a commit is the first one at or after its write.
    notices: VecDeque<f64>,
    /// When each unacknowledged frame was first handed to the publisher.
    handed_out: HashMap<i64, Instant>,
    /// When the oldest stream message not applied yet was delivered.
    delivered_at: Option<Instant>,
    /// When a write of the application's was last captured.
    app_wrote_at: Option<tokio::time::Instant>,
    /// Periodic snapshots (None: off for this node).
    snapshots: Option<Snapshots>,
    /// Serverless mode (None: `sleep_timeout = 0`).
    sleep: Option<Sleep>,
}

/// Serverless mode: when to sleep, and the snapshot to take first (None: this node does
/// not take snapshots).
struct Sleep {
    timer: crate::run::serverless::IdleTimer,
    snapshot: Option<JobContext>,
}

/// State of periodic snapshots.
struct Snapshots {
    ctx: JobContext,
    /// The newest stored snapshot as last seen: `None` = not known yet, `Some(None)` = none.
    newest: Option<Option<(StreamSeq, u64)>>,
    /// When to look again whether one is due.
    check_at: Instant,
    job: Option<JoinHandle<anyhow::Result<JobOutcome>>>,
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
            net.transport.subject.clone(),
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
                    if self.notices.len() == NOTICES_KEPT {
                        self.notices.pop_front();
                    }
                    self.notices.push_back(unix_ms_f64());
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

    /// Starts a periodic snapshot job when one may be due: this node consumes the stream,
    /// has caught up, and (as far as it knows) the newest stored snapshot is old enough.
    /// Local writes are drained right before, so the copy holds them with their versions.
    fn start_snapshot_if_due(&mut self) {
        let cursor = self.session.applied_cursor();
        let caught_up = self.is_caught_up();
        let Some(s) = self.snapshots.as_mut() else {
            return;
        };
        if s.job.is_some() || Instant::now() < s.check_at {
            return;
        }
        s.check_at = Instant::now() + SNAPSHOT_CHECK;
        if !caught_up {
            return;
        }
        if let Some(newest) = s.newest {
            if !s.ctx.schedule.due(newest, cursor, crate::util::unix_ms()) {
                return;
            }
        }
        let ctx = s.ctx.clone();
        self.feed(vec![SessionInput::LocalWrite]);
        let cursor = self.session.applied_cursor();
        if let Some(s) = self.snapshots.as_mut() {
            s.job = Some(tokio::spawn(crate::snapshot::run_job(ctx, cursor)));
        }
    }

    /// Serverless mode, when the idle timer fires: captures the last local writes, and when
    /// the node is still idle, every frame is acknowledged and no periodic snapshot is being
    /// taken, takes the snapshot before sleeping and returns true (the caller stops).
    async fn ready_to_sleep(&mut self) -> bool {
        self.feed(vec![SessionInput::LocalWrite]);
        let Some(sleep) = self.sleep.as_mut() else {
            return false;
        };
        let now = Instant::now();
        if !sleep.timer.expired(now) {
            return false;
        }
        let (frames, _) = self.session.outbox_depth().unwrap_or((0, 0));
        let snapshotting = self.snapshots.as_ref().is_some_and(|s| s.job.is_some());
        if frames > 0 || snapshotting || self.catch_up.is_some() {
            sleep.timer.postpone(now + crate::run::serverless::RECHECK);
            return false;
        }
        let timeout = sleep.timer.timeout();
        let snapshot = sleep.snapshot.clone();
        tracing::info!(
            idle_ms = timeout.as_millis() as u64,
            "idle for sleep_timeout: sleeping (serverless mode)"
        );
        if let Some(ctx) = snapshot {
            let cursor = self.session.applied_cursor();
            if let Some(taken) = crate::run::serverless::snapshot_before_sleep(ctx, cursor).await {
                let info = &taken.info;
                self.metrics
                    .snapshot_taken(taken.bytes, taken.took, info.covered_seq.get());
            }
        }
        true
    }

    fn snapshot_finished(
        &mut self,
        outcome: Result<anyhow::Result<JobOutcome>, tokio::task::JoinError>,
    ) {
        let Some(s) = self.snapshots.as_mut() else {
            return;
        };
        s.job = None;
        match outcome {
            Ok(Ok(JobOutcome::Taken(taken))) => {
                let info = &taken.info;
                tracing::info!(
                    covered_seq = info.covered_seq.get(),
                    bytes = taken.bytes,
                    took_ms = taken.took.as_millis() as u64,
                    "took snapshot {}",
                    info.name
                );
                s.newest = Some(Some((info.covered_seq, info.taken_at_ms)));
                self.metrics
                    .snapshot_taken(taken.bytes, taken.took, info.covered_seq.get());
                self.status.lock().expect("status lock").last_snapshot = Some(SnapshotStatus {
                    name: info.name.clone(),
                    covered_seq: info.covered_seq.get(),
                    bytes: taken.bytes,
                    duration_ms: taken.took.as_millis() as u64,
                    at_unix_ms: crate::util::unix_ms(),
                    reason: None,
                });
            }
            Ok(Ok(JobOutcome::NotDue(newest))) => {
                s.newest = Some(newest.map(|n| (n.covered_seq, n.taken_at_ms)));
            }
            Ok(Ok(JobOutcome::LeaseHeld(holder))) => {
                tracing::debug!(holder = ?holder, "another node is taking a snapshot");
                s.newest = None;
                s.check_at = Instant::now() + SNAPSHOT_RETRY;
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    "taking a snapshot failed, retrying in {}s: {e:#}",
                    SNAPSHOT_RETRY.as_secs()
                );
                self.metrics.snapshot_failed("take");
                s.newest = None;
                s.check_at = Instant::now() + SNAPSHOT_RETRY;
            }
            Err(e) => {
                tracing::warn!("the snapshot task ended: {e}");
                self.metrics.snapshot_failed("take");
                s.newest = None;
                s.check_at = Instant::now() + SNAPSHOT_RETRY;
            }
        }
    }

    /// Feeds inputs to the session and carries out everything it asks for (stream reads and
    /// consumer starts wait for the top of the next turn: they await the server).
    fn feed(&mut self, inputs: Vec<SessionInput>) {
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

    /// Records commit -> notice and notice -> captured for a capture whose oldest write was
    /// made at `oldest_write_unix_ms`. Its notice is the first file notification at or after
    /// that write (earlier ones were this node's own applies or earlier commits); a capture
    /// no notification announced (the polling timer) counts from the start of its feed.
    fn record_capture_hops(&mut self, oldest_write_unix_ms: Option<i64>, took: Duration) {
        let now = unix_ms_f64();
        let notices = std::mem::take(&mut self.notices);
        let Some(written) = oldest_write_unix_ms.map(|ms| ms as f64) else {
            return;
        };
        // The trigger's clock has millisecond steps: a notification in the same
        // millisecond as the write counts.
        let noticed = notices
            .into_iter()
            .find(|&t| t >= written - 1.0)
            .unwrap_or(now - took.as_secs_f64() * 1000.0);
        self.metrics
            .hop(Hop::CommitToNotice, (noticed - written).max(0.0) / 1000.0);
        self.metrics
            .hop(Hop::NoticeToCaptured, (now - noticed).max(0.0) / 1000.0);
    }

    /// The session's input for a (re)connect, with the server's payload limit.
    fn connected_input(&self) -> SessionInput {
        SessionInput::Connected {
            max_payload: self.client.server_info().max_payload,
        }
    }

    /// Reads the stream and starts consumers as the session asked, feeding back each outcome
    /// (which may ask for the next: a read is followed by a start).
    async fn carry_out_stream_requests(&mut self) {
        while !self.stream_requests.is_empty() {
            let requests = std::mem::take(&mut self.stream_requests);
            for request in requests {
                let outcome = match request {
                    SessionOutput::ReadStreamInfo => {
                        match crate::nats::transport::stream_info(&mut self.stream).await {
                            Ok(info) => SessionInput::StreamInfo(info),
                            Err(e) => {
                                tracing::warn!("cannot read the change stream yet: {e:#}");
                                SessionInput::StreamInfoFailed {
                                    error: format!("{e:#}"),
                                }
                            }
                        }
                    }
                    SessionOutput::StartConsumer { from } => {
                        match crate::nats::transport::consume_from(&self.stream, from).await {
                            Ok(messages) => {
                                self.messages = Some(messages);
                                tracing::info!(from = from.get(), "consuming the change stream");
                                SessionInput::ConsumerStarted
                            }
                            Err(e) => {
                                tracing::warn!("cannot start the stream consumer yet: {e:#}");
                                SessionInput::ConsumerFailed {
                                    error: format!("{e:#}"),
                                }
                            }
                        }
                    }
                    _ => continue,
                };
                self.feed(vec![outcome]);
            }
        }
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

    fn transport_inputs(
        &mut self,
        first: TransportEvent,
        events: &mut mpsc::UnboundedReceiver<TransportEvent>,
    ) -> Vec<SessionInput> {
        let mut inputs = Vec::new();
        let mut next = Some(first);
        while let Some(event) = next {
            match event {
                TransportEvent::Connected => {
                    if !self.session.status().connected {
                        tracing::info!("connected to NATS");
                    }
                    inputs.push(self.connected_input());
                }
                TransportEvent::Disconnected => {
                    tracing::warn!("disconnected from NATS; reconnecting");
                    inputs.push(SessionInput::Disconnected);
                }
                TransportEvent::Acked(id) => {
                    if let Some(at) = self.handed_out.remove(&id) {
                        self.metrics
                            .hop(Hop::CapturedToAcked, at.elapsed().as_secs_f64());
                    }
                    inputs.push(SessionInput::Acked { id })
                }
                TransportEvent::PublishFailed(id, error) => {
                    tracing::warn!(frame = id, "publish failed, will retry: {error}");
                    inputs.push(SessionInput::PublishFailed { id });
                }
            }
            next = events.try_recv().ok();
            if inputs.len() >= 4096 {
                break;
            }
        }
        inputs
    }

    /// The consumer's deliveries (up to one batch) as session inputs; a failed or ended
    /// consumer is dropped and reported.
    fn message_inputs(
        &mut self,
        first: Option<Result<jetstream::Message, String>>,
    ) -> Vec<SessionInput> {
        let mut inputs = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Some(Ok(message)) => {
                    let (seq, pending) = match message.info() {
                        Ok(info) => {
                            let stored_ms = info.published.unix_timestamp_nanos() as f64 / 1e6;
                            self.metrics.hop(
                                Hop::StoredToDelivered,
                                ((unix_ms_f64() - stored_ms) / 1000.0).max(0.0),
                            );
                            (info.stream_sequence, info.pending)
                        }
                        Err(e) => {
                            tracing::warn!("stream message without JetStream metadata: {e}");
                            break;
                        }
                    };
                    tracing::trace!(seq, pending, "stream message received");
                    self.delivered_at.get_or_insert_with(Instant::now);
                    inputs.push(SessionInput::Message {
                        seq: StreamSeq::new(seq),
                        pending,
                        frame: message.payload.to_vec(),
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!("stream consumer failed ({e}); recreating it");
                    self.messages = None;
                    inputs.push(SessionInput::ConsumerFailed { error: e });
                    break;
                }
                None => {
                    tracing::warn!("stream consumer ended; recreating it");
                    self.messages = None;
                    inputs.push(SessionInput::ConsumerEnded);
                    break;
                }
            }
            if inputs.len() >= self.batch_limit {
                break;
            }
            next = match self.messages.as_mut() {
                Some(messages) => messages
                    .next()
                    .now_or_never()
                    .map(|m| m.map(|r| r.map_err(|e| e.to_string()))),
                None => None,
            };
        }
        inputs
    }

    /// The session found the stream no longer holds messages this node has not applied:
    /// catch up in place from a snapshot (when snapshots are on), else wait for an operator.
    fn fell_behind(&mut self, cursor: StreamSeq, first: u64, last: u64, first_time: bool) {
        let Some(fetch) = self.fetch.clone() else {
            if first_time {
                tracing::error!(
                    cursor = cursor.get(),
                    stream_first = first,
                    stream_last = last,
                    "this node fell behind: the stream no longer holds messages {}..{} it has not applied. \
                     It keeps serving and publishing but applies nothing more until it is rebuilt: turn on \
                     [snapshot] enable (it then catches up in place from a snapshot), or stop it and the \
                     application, replace its database file with a copy from a healthy node, and restart",
                    cursor.get() + 1,
                    first - 1
                );
            }
            return;
        };
        if self.catch_up.is_none() {
            tracing::warn!(
                cursor = cursor.get(),
                stream_first = first,
                stream_last = last,
                "this node fell behind: the stream no longer holds messages {}..{} it has not applied; \
                 catching up in place from a snapshot while the application keeps running",
                cursor.get() + 1,
                first - 1
            );
            self.catch_up = Some(CatchUpJob::start(fetch, first));
        }
    }

    /// A snapshot for the catch-up was downloaded (or could not be had).
    fn snapshot_fetched(
        &mut self,
        outcome: Result<anyhow::Result<Fetched>, tokio::task::JoinError>,
    ) {
        let (job, result) = CatchUpJob::fetched(outcome);
        self.catch_up = Some(job);
        if let Err(why) = &result {
            tracing::warn!(
                retry_in_s = crate::snapshot::catch_up::RETRY_AFTER.as_secs(),
                "{why}"
            );
            self.metrics.snapshot_failed("restore");
        }
        self.status.lock().expect("status lock").waiting = result.err();
        self.refresh_status();
    }

    /// When the catch-up's next turn is due. While the application writes, merge steps run
    /// right after its writes are captured (see `run`), not on the timer: a step then falls
    /// between its writes instead of at a random moment, where the application would wait
    /// for the write lock (and SQLite's busy handler sleeps at least 1 ms). Once it has been
    /// quiet for [`crate::snapshot::catch_up::APP_QUIET`], steps run on the timer again.
    fn catch_up_at(&self) -> Option<tokio::time::Instant> {
        let due = self.catch_up.as_ref()?.due()?;
        let merging = matches!(self.catch_up, Some(CatchUpJob::Merging { .. }));
        match self
            .app_wrote_at
            .map(|at| at + crate::snapshot::catch_up::APP_QUIET)
        {
            Some(quiet_at) if merging && quiet_at > due => Some(quiet_at),
            _ => Some(due),
        }
    }

    /// One turn of the catch-up: a merge step, or after a failure a fresh look at the
    /// stream.
    fn catch_up_turn(&mut self) {
        let Some(job) = self.catch_up.take() else {
            return;
        };
        let (next, turn) = job.turn(&mut self.session, self.clock.now().wall);
        self.catch_up = next;
        match turn {
            // Local writes the step captured are in the outbox: publish them as usual.
            Turn::Merged { captured: true } => self.feed(vec![SessionInput::LocalWrite]),
            Turn::Merged { captured: false } => {}
            Turn::Finished { report, fetched } => self.caught_up(*fetched, *report),
            Turn::Failed(why) => {
                tracing::error!("catching up: {why}");
                self.metrics.snapshot_failed("restore");
                self.status.lock().expect("status lock").waiting = Some(why);
            }
            Turn::Restart => self.feed(vec![SessionInput::Recheck]),
        }
        self.refresh_status();
    }

    /// The merge finished: the cursor is at the snapshot's covered sequence.
    fn caught_up(&mut self, fetched: Fetched, report: CatchUpReport) {
        let took = fetched.started.elapsed();
        for (table, rows) in &report.skipped_tables {
            tracing::warn!(
                table,
                rows,
                "the snapshot's rows of a table this database does not have were not merged"
            );
        }
        tracing::info!(
            snapshot = %fetched.info.name,
            covered_seq = report.covered.get(),
            rows = report.rows_read,
            remote_won = report.remote_won,
            local_won = report.local_won,
            unchanged = report.unchanged,
            migrations = report.migrations,
            took_ms = took.as_millis() as u64,
            "caught up in place; consuming the stream from sequence {}",
            report.covered.get() + 1
        );
        self.metrics.restored(
            RestoreReason::Behind.as_str(),
            fetched.downloaded,
            took,
            report.covered.get(),
        );
        {
            let mut s = self.status.lock().expect("status lock");
            s.waiting = None;
            s.last_restore = Some(SnapshotStatus {
                name: fetched.info.name.clone(),
                covered_seq: report.covered.get(),
                bytes: fetched.downloaded,
                duration_ms: took.as_millis() as u64,
                at_unix_ms: crate::util::unix_ms(),
                reason: Some(RestoreReason::Behind.as_str().to_owned()),
            });
        }
        self.feed(vec![SessionInput::Reopened]);
    }

    /// Another node asks for a snapshot, or the one taken for it is done.
    async fn responder_event(&mut self, event: ResponderEvent) {
        let caught_up = self.is_caught_up();
        let cursor = self.session.applied_cursor();
        let Some(responder) = self.responder.as_mut() else {
            return;
        };
        let outcome = match event {
            ResponderEvent::Request(request) => {
                return responder.answer(request, caught_up, cursor).await
            }
            ResponderEvent::JobDone(outcome) => outcome,
        };
        responder.job_done();
        match outcome {
            Ok(Ok(JobOutcome::Taken(taken))) => {
                let info = &taken.info;
                tracing::info!(
                    covered_seq = info.covered_seq.get(),
                    bytes = taken.bytes,
                    "took snapshot {} another node asked for",
                    info.name
                );
                self.metrics
                    .snapshot_taken(taken.bytes, taken.took, info.covered_seq.get());
                if let Some(s) = self.snapshots.as_mut() {
                    s.newest = Some(Some((info.covered_seq, info.taken_at_ms)));
                }
            }
            Ok(Ok(other)) => tracing::info!("no snapshot taken for another node: {other:?}"),
            Ok(Err(e)) => {
                self.metrics.snapshot_failed("take");
                tracing::warn!("taking the snapshot another node asked for failed: {e:#}");
            }
            Err(e) => tracing::warn!("the requested snapshot task ended: {e}"),
        }
    }

    /// Consuming the stream, not behind it, and within one batch of its end.
    fn is_caught_up(&self) -> bool {
        self.session.status().caught_up(self.batch_limit as u64)
    }

    fn deadline(&self) -> tokio::time::Instant {
        let now = self.clock.now().monotonic;
        let mut wait = match self.session.poll_timeout() {
            Some(t) => t.saturating_sub(now),
            None => Duration::from_secs(3600),
        };
        if let Some(s) = self.snapshots.as_ref().filter(|s| s.job.is_none()) {
            wait = wait.min(s.check_at.saturating_duration_since(Instant::now()));
        }
        tokio::time::Instant::now() + wait
    }

    fn refresh_status(&mut self) {
        let session = &self.session;
        let replication = session.status();
        let (outbox_frames, outbox_rows) = session.outbox_depth().unwrap_or((0, 0));
        let parked = session.parked_count().unwrap_or(0);
        let schema = session.schema_status().ok();
        let parked_by_table = if parked > 0 {
            session.parked_by_table().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut s = self.status.lock().expect("status lock");
        if let Some(schema) = schema {
            s.schema_fingerprint = schema.fingerprint;
            s.migration_version = schema.migration_version;
            s.parked_migrations = schema.parked_migrations;
        }
        s.parked_by_table = parked_by_table.iter().cloned().collect();
        self.metrics
            .schema(&parked_by_table, s.migration_version, s.parked_migrations);
        s.cursor = replication.cursor;
        s.stream_last_seq = replication.stream_last_seq;
        s.lag = replication.lag;
        s.outbox_depth = outbox_frames;
        s.outbox_rows = outbox_rows;
        s.parked = parked;
        s.nats_connected = replication.connected;
        s.fell_behind = replication.fell_behind;
        s.catching_up = self.catch_up.as_ref().map(CatchUpJob::status);
        s.healthy = replication.healthy() && !s.restoring;
        s.consumer_error = replication.consumer_error;
        self.metrics
            .gauges(outbox_frames, s.lag, parked, replication.connected);
    }

    /// Captures the last local writes and waits (bounded) until the outbox is acknowledged.
    async fn finish(&mut self, limit: Duration) {
        self.messages = None;
        self.feed(vec![SessionInput::LocalWrite]);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (frames, _) = self.session.outbox_depth().unwrap_or((0, 0));
            let replication = self.session.status();
            if frames == 0 || !replication.connected && replication.in_flight == 0 {
                if frames > 0 {
                    tracing::warn!(
                        frames,
                        "stopping with unacknowledged frames; they are sent at the next start"
                    );
                }
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(frames, "stopping before JetStream acknowledged every frame; they are sent at the next start");
                    return;
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => self.feed(vec![SessionInput::Timeout]),
            }
        }
    }
}

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
) -> Result<anyhow::Result<JobOutcome>, tokio::task::JoinError> {
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

/// Wall-clock time now, Unix milliseconds with a fraction.
fn unix_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}
