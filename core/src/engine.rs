//! The sans-IO replication engine: decides when to drain, what to publish, when to apply,
//! and when to retry. It owns a [`Database`] (the SQLite store) but no sockets, clocks or
//! threads.
//!
//! Contract for hosts: after every [`Engine::handle_input`] call, take outputs with
//! [`Engine::poll_output`] until it returns `None`, then wait for the next transport event or
//! until [`Engine::poll_timeout`], and feed [`Input::Timeout`] when that passes.
//!
//! Publishing: the engine hands out each outbox frame once as [`Output::Publish`], keeping at
//! most `publish_window` unacknowledged. The host publishes it with the given message id and
//! reports [`Input::Acked`] or [`Input::PublishFailed`]. A failure or a reconnect makes the
//! engine hand out every unacknowledged frame again, in order (JetStream's duplicate window
//! drops the copies it already stored; receivers ignore the rest). A frame leaves the outbox
//! only after its ack.
//!
//! Receiving: the host feeds stream messages in stream order ([`Input::Message`]), starting
//! after [`Engine::cursor`]. The engine applies them in batches of up to `apply_batch`
//! messages per transaction; a database failure keeps them queued and retries with backoff.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use crate::change::StreamSeq;
use crate::error::DatabaseErrorKind;
use crate::hlc::{NodeId, NTP64};
use crate::report::{DrainReport, Inbound, OutboxFrame, Parked, ReceiveReport};

/// The host's reading of time, passed to every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since an arbitrary origin chosen by the host (timers).
    pub monotonic: Duration,
    /// Wall-clock time (clock-skew checks on remote timestamps).
    pub wall: NTP64,
}

/// What a replica knows about the stream it is about to consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFacts {
    /// The stream's creation time, Unix nanoseconds.
    pub created_ns: i64,
    /// Its last sequence.
    pub last_seq: u64,
}

/// Whether a replica may consume the stream from its cursor (decided by the database, which
/// records the stream it consumes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamVerdict {
    /// The stream is the one the cursor counts in.
    Same,
    /// No stream was recorded yet (a new replica, or a database from before this check):
    /// the stream is recorded now.
    Recorded,
    /// The stream is not the one the cursor counts in. The text says why, as a sentence
    /// without its final period; the session adds what to do
    /// (`session::mismatch_refusal`).
    Mismatch(String),
}

/// What the engine needs from a database; implemented by `sqlite::Store`.
pub trait Database {
    /// The database's error type.
    type Error: std::error::Error + 'static;
    /// Captures pending local writes into the outbox.
    fn drain(&mut self) -> Result<DrainReport, Self::Error>;
    /// Applies stream messages in order in one transaction and advances the cursor.
    fn receive(&mut self, now: NTP64, messages: &[Inbound]) -> Result<ReceiveReport, Self::Error>;
    /// Retries parked messages.
    fn retry_parked(&mut self, now: NTP64) -> Result<ReceiveReport, Self::Error>;
    /// Outbox frames after `after`, oldest first.
    fn outbox_after(&self, after: i64, limit: usize) -> Result<Vec<OutboxFrame>, Self::Error>;
    /// Removes acknowledged frames.
    fn outbox_remove(&mut self, ids: &[i64]) -> Result<(), Self::Error>;
    /// Number of parked messages.
    fn parked_count(&self) -> Result<u64, Self::Error>;
    /// Last applied stream sequence.
    fn cursor(&self) -> StreamSeq;
    /// This replica's id.
    fn node_id(&self) -> NodeId;
    /// Whether `facts` describe the stream the cursor counts in; records the stream when
    /// none is recorded or nothing was applied yet (see `sqlite::stream_identity`).
    fn check_stream(
        &mut self,
        stream_name: &str,
        cursor: u64,
        facts: StreamFacts,
    ) -> Result<StreamVerdict, Self::Error>;
    /// Largest frame to publish, in bytes (the server's payload limit minus header room).
    fn set_max_frame(&mut self, bytes: usize);
    /// The kind of one of this database's errors.
    fn error_kind(error: &Self::Error) -> DatabaseErrorKind;
}

/// Engine tuning. Every field has a documented default ([`EngineConfig::default`]).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Drain at least this often even without a change notification (default 1 s).
    pub polling_interval: Duration,
    /// Most unacknowledged frames in flight (default 512).
    pub publish_window: usize,
    /// Most stream messages applied per transaction (default 256).
    pub apply_batch: usize,
    /// First retry delay after a failure (default 50 ms); doubles up to `retry_max`.
    pub retry_min: Duration,
    /// Longest retry delay (default 5 s).
    pub retry_max: Duration,
    /// How often parked messages are retried while any exist (default 30 s).
    pub parked_retry_interval: Duration,
    /// Whether local writes are published (default true).
    pub publish: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            polling_interval: Duration::from_secs(1),
            publish_window: 512,
            apply_batch: 256,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            parked_retry_interval: Duration::from_secs(30),
            publish: true,
        }
    }
}

/// An event from the host's transport or the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The application may have written (file notification, explicit call): drain soon.
    LocalWrite,
    /// The next message of the stream.
    Message(Inbound),
    /// JetStream stored outbox frame `id`.
    Acked {
        /// Outbox id of the frame.
        id: i64,
    },
    /// Publishing outbox frame `id` failed; it will be handed out again.
    PublishFailed {
        /// Outbox id of the frame.
        id: i64,
    },
    /// The transport is connected (first time or again): (re)send the outbox.
    Connected,
    /// The transport lost its connection.
    Disconnected,
    /// The time from `poll_timeout` passed.
    Timeout,
}

/// Something the host must do or may report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Publish `frame` to the stream with `Nats-Msg-Id: msg_id`, then report the outcome.
    Publish(Publish),
    /// Something happened worth logging or counting.
    Event(Event),
}

/// A frame to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Outbox id, to report back in `Acked`/`PublishFailed`.
    pub id: i64,
    /// JetStream de-duplication id (see `report::OutboxFrame::msg_id`).
    pub msg_id: String,
    /// The encoded frame.
    pub frame: Vec<u8>,
    /// Row changes the frame's batch carries (0 on later parts).
    pub rows: u64,
    /// Where it goes: the subject after the prefix (`scope::Route::subject_suffix`), `None`
    /// for the unscoped subject (every frame, with scopes off).
    pub subject: Option<String>,
}

/// What the engine did, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Local writes were captured.
    Drained(DrainReport),
    /// Stream messages were applied (the report includes parked ones).
    Received(Box<ReceiveSummary>),
    /// Frames were acknowledged and removed from the outbox.
    Acked {
        /// Number of frames.
        frames: usize,
    },
    /// A database operation failed; it is retried after `retry_in`.
    DatabaseError {
        /// What was attempted.
        operation: &'static str,
        /// The kind of failure.
        kind: DatabaseErrorKind,
        /// The error, rendered.
        error: String,
        /// Delay before the retry.
        retry_in: Duration,
    },
}

/// A [`ReceiveReport`] with equality for events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveSummary {
    /// Messages taken from the stream in this transaction.
    pub messages: usize,
    /// Batches applied.
    pub batches: u64,
    /// Rows whose content changed.
    pub rows_changed: u64,
    /// Conflicts won by the remote write.
    pub remote_won: u64,
    /// Conflicts won by the local write.
    pub local_won: u64,
    /// Own messages skipped.
    pub own: u64,
    /// Parked messages.
    pub parked: Vec<Parked>,
    /// Scoped replicas' messages refused for breaking their scope.
    pub refused: Vec<crate::report::Refused>,
    /// On a scoped replica: its own writes the full replicas refused, returned to the
    /// accepted state.
    pub reverted: Vec<crate::report::RefusedWrite>,
    /// On a scoped replica: rows queued to be fetched again.
    pub refetch_queued: u64,
    /// Previously parked messages that applied now.
    pub unparked: u64,
    /// Replicated migrations applied.
    pub migrations: u64,
    /// Tables whose rows changed.
    pub tables: BTreeSet<String>,
    /// Local changes drained first.
    pub drained: DrainReport,
    /// Cursor afterwards.
    pub cursor: StreamSeq,
}

impl ReceiveSummary {
    fn new(messages: usize, r: ReceiveReport) -> Self {
        ReceiveSummary {
            messages,
            batches: r.batches,
            rows_changed: r.applied.rows_changed(),
            remote_won: r.applied.remote_won,
            local_won: r.applied.local_won,
            own: r.own,
            parked: r.parked,
            refused: r.refused,
            reverted: r.reverted,
            refetch_queued: r.refetch_queued,
            unparked: r.unparked,
            migrations: r.migrations,
            tables: r.applied.tables,
            drained: r.drained,
            cursor: r.cursor,
        }
    }
}

/// Exponential backoff state for one kind of operation.
#[derive(Debug, Clone, Default)]
struct Backoff {
    failures: u32,
    until: Option<Duration>,
}

impl Backoff {
    fn ready(&self, now: Duration) -> bool {
        self.until.is_none_or(|t| now >= t)
    }

    fn fail(&mut self, now: Duration, config: &EngineConfig) -> Duration {
        let delay = config
            .retry_min
            .saturating_mul(1u32 << self.failures.min(16))
            .min(config.retry_max);
        self.failures += 1;
        self.until = Some(now + delay);
        delay
    }

    fn succeed(&mut self) {
        self.failures = 0;
        self.until = None;
    }
}

/// The replication engine over a database `D`.
pub struct Engine<D: Database> {
    db: D,
    config: EngineConfig,
    outputs: VecDeque<Output>,
    inbox: VecDeque<Inbound>,
    drain_at: Duration,
    drain_backoff: Backoff,
    apply_backoff: Backoff,
    publish_backoff: Backoff,
    connected: bool,
    /// Highest outbox id handed out since the last (re)send from the start.
    last_handed_out: i64,
    in_flight: BTreeSet<i64>,
    outbox_may_have_more: bool,
    acked: Vec<i64>,
    parked_retry_at: Option<Duration>,
}

impl<D: Database> Engine<D> {
    /// An engine over `db`; the first drain is due immediately.
    pub fn new(db: D, config: EngineConfig) -> Self {
        Engine {
            db,
            config,
            outputs: VecDeque::new(),
            inbox: VecDeque::new(),
            drain_at: Duration::ZERO,
            drain_backoff: Backoff::default(),
            apply_backoff: Backoff::default(),
            publish_backoff: Backoff::default(),
            connected: false,
            last_handed_out: 0,
            in_flight: BTreeSet::new(),
            outbox_may_have_more: true,
            acked: Vec::new(),
            parked_retry_at: Some(Duration::ZERO),
        }
    }

    /// The database.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn db(&self) -> &D {
        &self.db
    }

    /// The database, mutably (hosts use it for reads between inputs).
    pub(crate) fn db_mut(&mut self) -> &mut D {
        &mut self.db
    }

    /// Gives the database back.
    pub fn into_db(self) -> D {
        self.db
    }

    /// Last stream sequence applied or queued: consume from the one after it.
    pub fn cursor(&self) -> StreamSeq {
        self.inbox
            .back()
            .map(|m| m.seq)
            .unwrap_or_else(|| self.db.cursor())
    }

    /// Last stream sequence durably applied.
    pub fn applied_cursor(&self) -> StreamSeq {
        self.db.cursor()
    }

    /// Messages received but not applied yet (hosts stop pulling above a limit).
    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }

    /// Frames handed out and not acknowledged yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether the transport is connected.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Feeds one input, then does all the work that is due.
    pub fn handle_input(&mut self, now: Now, input: Input) {
        self.absorb(now, input);
        self.process(now);
    }

    /// Feeds several inputs (e.g. every stream message already received), then does the
    /// work once: messages fed together are applied in as few transactions as possible.
    pub fn handle_inputs(&mut self, now: Now, inputs: impl IntoIterator<Item = Input>) {
        for input in inputs {
            self.absorb(now, input);
        }
        self.process(now);
    }

    fn absorb(&mut self, now: Now, input: Input) {
        match input {
            Input::LocalWrite => self.drain_at = now.monotonic,
            Input::Message(message) => {
                if message.seq > self.cursor() {
                    self.inbox.push_back(message);
                }
            }
            Input::Acked { id } => {
                if self.in_flight.remove(&id) {
                    self.acked.push(id);
                }
                self.publish_backoff.succeed();
            }
            Input::PublishFailed { id } => {
                if self.in_flight.contains(&id) {
                    self.resend_from_start();
                    self.publish_backoff.fail(now.monotonic, &self.config);
                }
            }
            Input::Connected => {
                self.connected = true;
                self.resend_from_start();
                self.publish_backoff.succeed();
            }
            Input::Disconnected => {
                self.connected = false;
                self.resend_from_start();
            }
            Input::Timeout => {}
        }
    }

    /// The next thing for the host to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the engine next needs [`Input::Timeout`] (monotonic), if ever.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let mut next = self
            .drain_backoff
            .until
            .unwrap_or(Duration::ZERO)
            .max(self.drain_at);
        let mut consider = |t: Option<Duration>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        if !self.inbox.is_empty() {
            consider(Some(self.apply_backoff.until.unwrap_or(Duration::ZERO)));
        }
        if self.connected && self.outbox_may_have_more {
            consider(Some(self.publish_backoff.until.unwrap_or(Duration::ZERO)));
        }
        consider(self.parked_retry_at);
        Some(next)
    }

    fn resend_from_start(&mut self) {
        self.in_flight.clear();
        self.last_handed_out = 0;
        self.outbox_may_have_more = true;
    }

    fn process(&mut self, now: Now) {
        self.remove_acked(now);
        self.apply_inbox(now);
        self.drain_if_due(now);
        self.retry_parked_if_due(now);
        self.hand_out_frames(now);
    }

    fn remove_acked(&mut self, now: Now) {
        if self.acked.is_empty() {
            return;
        }
        match self.db.outbox_remove(&self.acked) {
            Ok(()) => {
                let frames = self.acked.len();
                self.acked.clear();
                self.outputs
                    .push_back(Output::Event(Event::Acked { frames }));
            }
            Err(e) => {
                // Keep the ids: removal is retried with the next input.
                let retry_in = self.config.retry_min;
                self.report_error("removing acknowledged frames", &e, retry_in);
                let _ = now;
            }
        }
    }

    fn apply_inbox(&mut self, now: Now) {
        while !self.inbox.is_empty() && self.apply_backoff.ready(now.monotonic) {
            let take = self.inbox.len().min(self.config.apply_batch.max(1));
            let messages: Vec<Inbound> = self.inbox.iter().take(take).cloned().collect();
            match self.db.receive(now.wall, &messages) {
                Ok(report) => {
                    self.apply_backoff.succeed();
                    self.inbox.drain(..take);
                    if report.drained.frames > 0 || report.drained.outbox_grew {
                        self.outbox_may_have_more = true;
                    }
                    if report.drained.schema_changed {
                        // New tables or columns: parked messages may apply now.
                        self.retry_parked_soon();
                    }
                    if !report.parked.is_empty() {
                        self.parked_retry_at
                            .get_or_insert(now.monotonic + self.config.parked_retry_interval);
                    }
                    self.outputs
                        .push_back(Output::Event(Event::Received(Box::new(
                            ReceiveSummary::new(take, report),
                        ))));
                }
                Err(e) => {
                    let retry_in = self.apply_backoff.fail(now.monotonic, &self.config);
                    self.report_error("applying stream messages", &e, retry_in);
                }
            }
        }
    }

    fn drain_if_due(&mut self, now: Now) {
        if now.monotonic < self.drain_at || !self.drain_backoff.ready(now.monotonic) {
            return;
        }
        match self.db.drain() {
            Ok(report) => {
                self.drain_backoff.succeed();
                self.drain_at = now.monotonic + self.config.polling_interval;
                if report.frames > 0 || report.outbox_grew {
                    self.outbox_may_have_more = true;
                }
                if report.schema_changed {
                    // The application changed the schema: parked messages may apply now.
                    self.retry_parked_soon();
                }
                if report.log_entries > 0 {
                    self.outputs
                        .push_back(Output::Event(Event::Drained(report)));
                }
            }
            Err(e) => {
                let retry_in = self.drain_backoff.fail(now.monotonic, &self.config);
                self.report_error("capturing local writes", &e, retry_in);
            }
        }
    }

    fn retry_parked_if_due(&mut self, now: Now) {
        let Some(at) = self.parked_retry_at else {
            return;
        };
        if now.monotonic < at {
            return;
        }
        self.parked_retry_at = None;
        match self.db.parked_count() {
            Ok(0) => {}
            Ok(_) => match self.db.retry_parked(now.wall) {
                Ok(report) => {
                    if !report.parked.is_empty() {
                        self.parked_retry_at =
                            Some(now.monotonic + self.config.parked_retry_interval);
                    }
                    if report.drained.frames > 0 {
                        self.outbox_may_have_more = true;
                    }
                    self.outputs
                        .push_back(Output::Event(Event::Received(Box::new(
                            ReceiveSummary::new(0, report),
                        ))));
                }
                Err(e) => {
                    self.parked_retry_at = Some(now.monotonic + self.config.parked_retry_interval);
                    self.report_error(
                        "retrying parked messages",
                        &e,
                        self.config.parked_retry_interval,
                    );
                }
            },
            Err(e) => {
                self.parked_retry_at = Some(now.monotonic + self.config.parked_retry_interval);
                self.report_error(
                    "counting parked messages",
                    &e,
                    self.config.parked_retry_interval,
                );
            }
        }
    }

    /// Retries parked messages at the next input (e.g. after a schema change).
    pub fn retry_parked_soon(&mut self) {
        self.parked_retry_at = Some(Duration::ZERO);
    }

    fn hand_out_frames(&mut self, now: Now) {
        if !self.config.publish || !self.connected || !self.outbox_may_have_more {
            return;
        }
        if !self.publish_backoff.ready(now.monotonic) {
            return;
        }
        let room = self
            .config
            .publish_window
            .saturating_sub(self.in_flight.len());
        if room == 0 {
            return;
        }
        match self.db.outbox_after(self.last_handed_out, room) {
            Ok(frames) => {
                if frames.len() < room {
                    self.outbox_may_have_more = false;
                }
                for f in frames {
                    self.last_handed_out = f.id;
                    self.in_flight.insert(f.id);
                    self.outputs.push_back(Output::Publish(Publish {
                        id: f.id,
                        msg_id: f.msg_id,
                        frame: f.frame,
                        rows: f.rows,
                        subject: f.subject,
                    }));
                }
            }
            Err(e) => {
                let retry_in = self.publish_backoff.fail(now.monotonic, &self.config);
                self.report_error("reading the outbox", &e, retry_in);
            }
        }
    }

    fn report_error(&mut self, operation: &'static str, error: &D::Error, retry_in: Duration) {
        self.outputs.push_back(Output::Event(Event::DatabaseError {
            operation,
            kind: D::error_kind(error),
            error: error.to_string(),
            retry_in,
        }));
    }
}
