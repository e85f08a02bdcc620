//! The sans-IO replication session: the [`Engine`] plus every rule about the change stream
//! that both hosts share.
//!
//! The engine decides capture, publishing and applying. The session adds the consumer's
//! rules, which used to be written twice (in the sidecar's driver and in the JavaScript
//! transport):
//!
//! - when to read the stream's bounds ([`SessionOutput::ReadStreamInfo`]);
//! - whether this replica may consume that stream at all: it must be the stream the cursor
//!   counts in (stream identity, [`StreamVerdict`]) — otherwise [`SessionOutput::Refused`];
//! - whether the stream still holds the first message this replica needs — otherwise
//!   [`SessionOutput::FellBehind`];
//! - consuming from cursor + 1 ([`SessionOutput::StartConsumer`]), restarting on a gap in
//!   the delivered sequences, after the consumer failed or ended, and after a reconnect;
//! - looking again every [`SessionConfig::recheck_interval`] while refused or behind, and
//!   when a consumer delivered nothing for that long although the stream holds more than
//!   it delivered (retention may have dropped the next message while no newer one arrives
//!   to show a gap);
//! - pausing consumption while [`SessionConfig::max_inbox`] messages wait to be applied;
//! - the largest frame, from the server's payload limit minus [`SessionConfig::header_room`];
//! - the replica's lag and health ([`SessionStatus`]).
//!
//! A host moves bytes and time only: it reports what its transport did
//! ([`SessionInput`]) and carries out [`SessionOutput`]s, exactly like the engine's
//! contract — after every input, take outputs with [`Session::poll_output`] until `None`,
//! then wait for the next event or [`Session::poll_timeout`].

use std::collections::VecDeque;
use std::time::Duration;

use crate::change::StreamSeq;
use crate::engine::{Database, Engine, EngineConfig, Event, Input, Now, Output, Publish};
use crate::report::Inbound;

pub use crate::engine::{StreamFacts, StreamVerdict};

/// The stream's bounds and identity, as the host's transport read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// First sequence the stream still holds (retention drops older ones).
    pub first_seq: u64,
    /// Last sequence stored.
    pub last_seq: u64,
    /// Creation time, Unix nanoseconds.
    pub created_ns: i64,
}

/// Session settings. Every field has a default ([`SessionConfig::new`]).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The engine's settings.
    pub engine: EngineConfig,
    /// The change stream's name (in refusals).
    pub stream_name: String,
    /// Whether the stream is consumed at all (`false`: publish only).
    pub replicate: bool,
    /// What an operator does to adopt a re-created stream, in this host's terms (ends a
    /// refusal: "…, {how_to_adopt} to apply the new stream from its first message").
    pub how_to_adopt: String,
    /// Stop taking messages while this many wait to be applied (default 4096).
    pub max_inbox: usize,
    /// Room left in each frame for NATS headers (default 4096 bytes).
    pub header_room: usize,
    /// How often a refused or fallen-behind replica looks at the stream again (default 30 s).
    pub recheck_interval: Duration,
    /// Delay before a new consumer after one failed or ended (default 1 s).
    pub consumer_retry: Duration,
    /// Delay before reading the stream's bounds again after that failed (default 2 s).
    pub stream_info_retry: Duration,
    /// The consumer delivers a filtered part of the stream (a scoped replica's feed): stream
    /// sequences skip what the filter leaves out, so a jump is no gap (the host watches the
    /// consumer's own sequence and reports a lost delivery as `ConsumerFailed`), and the lag
    /// is the consumer's `pending` count (default `false`).
    pub filtered: bool,
}

impl SessionConfig {
    /// Defaults for consuming `stream_name`; `how_to_adopt` as in [`SessionConfig::how_to_adopt`].
    pub fn new(engine: EngineConfig, stream_name: &str, how_to_adopt: &str) -> Self {
        SessionConfig {
            engine,
            stream_name: stream_name.to_owned(),
            replicate: true,
            how_to_adopt: how_to_adopt.to_owned(),
            max_inbox: 4096,
            header_room: 4096,
            recheck_interval: Duration::from_secs(30),
            consumer_retry: Duration::from_secs(1),
            stream_info_retry: Duration::from_secs(2),
            filtered: false,
        }
    }
}

/// What the host's transport did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionInput {
    /// Connected (first time or again) with the stream ready; `max_payload` is the server's
    /// payload limit in bytes.
    Connected {
        /// The server's `max_payload`.
        max_payload: usize,
    },
    /// The connection is gone; the host keeps reconnecting. Any consumer is stopped.
    Disconnected,
    /// The answer to [`SessionOutput::ReadStreamInfo`].
    StreamInfo(StreamInfo),
    /// Reading the stream's bounds failed (it is tried again).
    StreamInfoFailed {
        /// The transport's error, rendered.
        error: String,
    },
    /// The consumer asked for by [`SessionOutput::StartConsumer`] runs.
    ConsumerStarted,
    /// Starting the consumer failed, or the running one failed.
    ConsumerFailed {
        /// The transport's error, rendered.
        error: String,
    },
    /// The running consumer ended without an error.
    ConsumerEnded,
    /// A stream message delivered by the consumer.
    Message {
        /// Its stream sequence.
        seq: StreamSeq,
        /// Messages the stream holds after it (JetStream's `pending`).
        pending: u64,
        /// The frame.
        frame: Vec<u8>,
        /// The subject it arrived on, after `<prefix>.` (see `report::Inbound::subject`).
        subject: Option<String>,
    },
    /// JetStream stored outbox frame `id`.
    Acked {
        /// Outbox id of the frame.
        id: i64,
    },
    /// Publishing outbox frame `id` failed; it is handed out again.
    PublishFailed {
        /// Outbox id of the frame.
        id: i64,
    },
    /// The application may have written.
    LocalWrite,
    /// The time from [`Session::poll_timeout`] passed.
    Timeout,
    /// Look at the stream now instead of at the next re-check (e.g. the operator asked).
    Recheck,
    /// The database's cursor moved under the session (restored from, or caught up in place
    /// from, a snapshot): consume again from the new cursor.
    Reopened,
}

/// What the host must do, or may log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutput {
    /// Publish a frame (the engine's [`Publish`]) and report [`SessionInput::Acked`] or
    /// [`SessionInput::PublishFailed`].
    Publish(Publish),
    /// What the engine did ([`Event`]).
    Event(Event),
    /// Read the stream's bounds and creation time; report [`SessionInput::StreamInfo`] or
    /// [`SessionInput::StreamInfoFailed`].
    ReadStreamInfo,
    /// Start an ordered consumer delivering from stream sequence `from`; report
    /// [`SessionInput::ConsumerStarted`] or [`SessionInput::ConsumerFailed`].
    StartConsumer {
        /// First sequence to deliver.
        from: StreamSeq,
    },
    /// Stop the running consumer (and drop what it still delivers).
    StopConsumer,
    /// Delivered sequences jumped: the consumer is restarted from the cursor.
    Gap {
        /// The sequence the session waited for.
        expected: StreamSeq,
        /// The one delivered.
        got: StreamSeq,
    },
    /// This replica must not consume the stream (it is not the one its cursor counts in);
    /// emitted when the reason first appears or changes. Nothing is applied meanwhile.
    Refused {
        /// Why, and what to do.
        why: String,
    },
    /// The stream no longer holds messages this replica has not applied: it needs a
    /// snapshot to go on. Emitted at every look while it lasts (`first_time` on the first).
    FellBehind {
        /// The last sequence this replica applied.
        cursor: StreamSeq,
        /// The first sequence the stream still holds.
        first: u64,
        /// The stream's last sequence.
        last: u64,
        /// Whether this look found it first.
        first_time: bool,
    },
    /// A consumer runs again after a refusal, a fall behind or a failure.
    Consuming {
        /// First sequence it delivers.
        from: StreamSeq,
    },
}

/// The consumer as the session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consumer {
    /// Nothing runs; the stream is looked at `at` (None: not before a connection).
    Idle { at: Option<Duration> },
    /// Waiting for [`SessionInput::StreamInfo`].
    ReadingInfo,
    /// Waiting for [`SessionInput::ConsumerStarted`].
    Starting { from: StreamSeq },
    /// Delivering; `expected` is the next sequence.
    Running { expected: StreamSeq },
}

/// Lag, health and the reasons behind them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStatus {
    /// Connected to NATS.
    pub connected: bool,
    /// A consumer delivers the stream.
    pub consuming: bool,
    /// Last sequence durably applied.
    pub cursor: u64,
    /// The stream's last sequence as last learned (never below `cursor`).
    pub stream_last_seq: u64,
    /// `stream_last_seq - cursor`.
    pub lag: u64,
    /// The stream no longer holds messages this replica has not applied.
    pub fell_behind: bool,
    /// Why the stream is refused, if it is.
    pub refused: Option<String>,
    /// Why the consumer does not run: the refusal, or the last failure to start it.
    pub consumer_error: Option<String>,
    /// Why this replica's scope rules are believed to differ from another node's (a message
    /// was parked for it and none has applied since).
    pub scope_rules: Option<String>,
    /// Messages received and not applied yet.
    pub inbox: usize,
    /// Frames published and not acknowledged yet.
    pub in_flight: usize,
}

impl SessionStatus {
    /// Healthy: connected, consuming whatever the stream holds, not behind, not refused.
    /// A publish-only replica (`replicate = false`) only needs the connection.
    pub fn healthy(&self) -> bool {
        self.connected
            && !self.fell_behind
            && self.consumer_error.is_none()
            && self.scope_rules.is_none()
    }

    /// Why the replica is not healthy, one sentence per reason (empty when healthy).
    pub fn reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.connected {
            reasons.push("not connected to NATS".to_owned());
        }
        if self.fell_behind {
            reasons.push(format!(
                "fell behind: the stream no longer holds messages after {}",
                self.cursor
            ));
        }
        if let Some(why) = &self.consumer_error {
            reasons.push(why.clone());
        }
        if let Some(why) = &self.scope_rules {
            reasons.push(why.clone());
        }
        reasons
    }

    /// Consuming, not behind, and within `within` messages of the stream's end.
    pub fn caught_up(&self, within: u64) -> bool {
        self.consuming && !self.fell_behind && self.lag <= within
    }
}

/// Why a replica whose cursor is past 0 must not create the missing stream `stream_name`
/// (a new, empty stream would restart its sequence numbers under every replica's cursor);
/// `None` when it may (`cursor == 0`). Ends with `how_to_adopt`.
pub fn missing_stream_refusal(
    stream_name: &str,
    cursor: u64,
    how_to_adopt: &str,
) -> Option<String> {
    (cursor > 0).then(|| {
        format!(
            "the change stream {stream_name} does not exist, but this replica has applied its messages up to \
             {cursor}: JetStream lost it or it was deleted. Not creating a new, empty one, whose first {cursor} \
             messages every replica would skip. If starting a new stream is intended, {how_to_adopt} to apply \
             the new stream from its first message"
        )
    })
}

/// The refusal for a stream that is not the one the cursor counts in: `why` (from
/// [`StreamVerdict::Mismatch`]) and what to do (`how_to_adopt`).
pub fn mismatch_refusal(why: &str, how_to_adopt: &str) -> String {
    format!(
        "{why}. Nothing more is applied here, so nothing is skipped. If the stream was re-created on purpose, \
         {how_to_adopt} to apply the new stream from its first message"
    )
}

/// The engine and the consumer's rules; see the module docs.
pub struct Session<D: Database> {
    engine: Engine<D>,
    config: SessionConfig,
    outputs: VecDeque<SessionOutput>,
    consumer: Consumer,
    connected: bool,
    stream_last_seq: u64,
    fell_behind: bool,
    refused: Option<String>,
    consumer_error: Option<String>,
    /// The sequence the last gap skipped, until it is delivered.
    last_gap: Option<StreamSeq>,
    /// The last scope-rules refusal, until a parked message applies again.
    scope_rules: Option<String>,
    /// A filtered consumer's last `pending` count (its lag; see [`SessionConfig::filtered`]).
    filtered_pending: u64,
    /// When the running consumer started or last delivered (monotonic).
    quiet_since: Duration,
}

impl<D: Database> Session<D> {
    /// A session over `db`; nothing is consumed before [`SessionInput::Connected`].
    pub fn new(db: D, config: SessionConfig) -> Self {
        Session {
            engine: Engine::new(db, config.engine.clone()),
            config,
            outputs: VecDeque::new(),
            consumer: Consumer::Idle { at: None },
            quiet_since: Duration::ZERO,
            connected: false,
            stream_last_seq: 0,
            fell_behind: false,
            refused: None,
            consumer_error: None,
            last_gap: None,
            scope_rules: None,
            filtered_pending: 0,
        }
    }

    /// The engine (cursor, inbox, in-flight frames).
    pub fn engine(&self) -> &Engine<D> {
        &self.engine
    }

    /// The engine, mutably, for this crate's database-specific methods (`sqlite::session`).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn engine_mut(&mut self) -> &mut Engine<D> {
        &mut self.engine
    }

    /// Gives the database back.
    pub fn into_db(self) -> D {
        self.engine.into_db()
    }

    /// Last stream sequence applied or queued.
    pub fn cursor(&self) -> StreamSeq {
        self.engine.cursor()
    }

    /// Last stream sequence durably applied.
    pub fn applied_cursor(&self) -> StreamSeq {
        self.engine.applied_cursor()
    }

    /// Whether the host should hand over more stream messages now (a consumer runs and the
    /// inbox is below [`SessionConfig::max_inbox`]); otherwise it leaves them in the
    /// consumer until the next input.
    pub fn wants_messages(&self) -> bool {
        matches!(self.consumer, Consumer::Running { .. })
            && self.engine.inbox_len() < self.config.max_inbox
    }

    /// Lag, health and reasons.
    pub fn status(&self) -> SessionStatus {
        let cursor = self.engine.applied_cursor().get();
        let stream_last_seq = self.stream_last_seq.max(cursor);
        SessionStatus {
            connected: self.connected,
            consuming: matches!(self.consumer, Consumer::Running { .. }),
            cursor,
            stream_last_seq,
            lag: if self.config.filtered {
                self.filtered_pending + self.engine.inbox_len() as u64
            } else {
                stream_last_seq - cursor
            },
            fell_behind: self.fell_behind,
            refused: self.refused.clone(),
            consumer_error: self.consumer_error.clone(),
            scope_rules: self.scope_rules.clone(),
            inbox: self.engine.inbox_len(),
            in_flight: self.engine.in_flight(),
        }
    }

    /// Feeds one input, then does all the work that is due.
    pub fn handle_input(&mut self, now: Now, input: SessionInput) {
        self.handle_inputs(now, [input]);
    }

    /// Feeds several inputs, then does the work once (messages fed together are applied in
    /// as few transactions as possible).
    pub fn handle_inputs(&mut self, now: Now, inputs: impl IntoIterator<Item = SessionInput>) {
        let mut engine_inputs = Vec::new();
        for input in inputs {
            if let Some(input) = self.absorb(now, input) {
                engine_inputs.push(input);
            }
        }
        self.engine.handle_inputs(now, engine_inputs);
        while let Some(output) = self.engine.poll_output() {
            if let Output::Event(crate::engine::Event::Received(summary)) = &output {
                self.note_scope_rules(summary);
            }
            self.outputs.push_back(match output {
                Output::Publish(p) => SessionOutput::Publish(p),
                Output::Event(e) => SessionOutput::Event(e),
            });
        }
        if self.stall_deadline().is_some_and(|at| at <= now.monotonic) {
            // Look at the stream again: a fresh consumer, or `FellBehind` if it lost the
            // next message.
            self.stop_consumer();
            self.consumer = Consumer::Idle {
                at: Some(now.monotonic),
            };
        }
        if self.consumer_due(now) {
            self.consumer = Consumer::ReadingInfo;
            self.outputs.push_back(SessionOutput::ReadStreamInfo);
        }
    }

    /// The next thing for the host to do, if any.
    pub fn poll_output(&mut self) -> Option<SessionOutput> {
        self.outputs.pop_front()
    }

    /// When the session next needs [`SessionInput::Timeout`] (monotonic), if ever.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let consumer = match self.consumer {
            Consumer::Idle { at } if self.connected && self.config.replicate => at,
            _ => self.stall_deadline(),
        };
        match (self.engine.poll_timeout(), consumer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A message parked because another node's scope rules differ makes this replica
    /// unhealthy (loudly, rather than judging scoped changes by different rules) until a
    /// parked message applies again with none parked for that reason.
    fn note_scope_rules(&mut self, summary: &crate::engine::ReceiveSummary) {
        let mismatch = summary
            .parked
            .iter()
            .find(|p| p.kind == crate::report::ParkReason::ScopeRules);
        if let Some(parked) = mismatch {
            self.scope_rules = Some(parked.reason.clone());
        } else if summary.unparked > 0 {
            self.scope_rules = None;
        }
    }

    /// When a running consumer counts as stalled: it delivered nothing for
    /// [`SessionConfig::recheck_interval`] while everything it delivered is applied and the
    /// stream holds messages after them (never for a filtered consumer, whose lag the
    /// stream's end does not show).
    fn stall_deadline(&self) -> Option<Duration> {
        match self.consumer {
            Consumer::Running { expected }
                if !self.config.filtered
                    && expected.get() <= self.stream_last_seq
                    && self.engine.inbox_len() == 0 =>
            {
                Some(self.quiet_since + self.config.recheck_interval)
            }
            _ => None,
        }
    }

    fn consumer_due(&self, now: Now) -> bool {
        self.connected
            && self.config.replicate
            && matches!(self.consumer, Consumer::Idle { at: Some(at) } if at <= now.monotonic)
    }

    /// Updates the consumer's state for one input; returns what the engine must hear.
    fn absorb(&mut self, now: Now, input: SessionInput) -> Option<Input> {
        let soon = |delay: Duration| Consumer::Idle {
            at: Some(now.monotonic + delay),
        };
        match input {
            SessionInput::Connected { max_payload } => {
                if max_payload > self.config.header_room * 2 {
                    self.engine
                        .db_mut()
                        .set_max_frame(max_payload - self.config.header_room);
                }
                if !self.connected {
                    // After an outage the old consumer may be gone with its server: start a
                    // new one from the cursor now (nothing applied is fetched again).
                    self.stop_consumer();
                    self.consumer = soon(Duration::ZERO);
                }
                self.connected = true;
                Some(Input::Connected)
            }
            SessionInput::Disconnected => {
                self.stop_consumer();
                self.consumer = Consumer::Idle { at: None };
                self.connected = false;
                Some(Input::Disconnected)
            }
            SessionInput::StreamInfo(info) => {
                if self.consumer == Consumer::ReadingInfo {
                    self.consumer = self.decide(now, info);
                }
                None
            }
            SessionInput::StreamInfoFailed { error } => {
                if self.consumer == Consumer::ReadingInfo {
                    self.consumer_error = Some(error);
                    self.consumer = soon(self.config.stream_info_retry);
                }
                None
            }
            SessionInput::ConsumerStarted => {
                if let Consumer::Starting { from } = self.consumer {
                    self.consumer = Consumer::Running { expected: from };
                    self.quiet_since = now.monotonic;
                    if self.consumer_error.take().is_some() || self.fell_behind {
                        self.outputs.push_back(SessionOutput::Consuming { from });
                    }
                    self.fell_behind = false;
                    self.refused = None;
                }
                None
            }
            SessionInput::ConsumerFailed { error } => {
                if matches!(
                    self.consumer,
                    Consumer::Starting { .. } | Consumer::Running { .. }
                ) {
                    self.consumer_error = Some(error);
                    self.consumer = soon(self.config.consumer_retry);
                }
                None
            }
            SessionInput::ConsumerEnded => {
                if matches!(self.consumer, Consumer::Running { .. }) {
                    self.consumer = soon(self.config.consumer_retry);
                }
                None
            }
            SessionInput::Message {
                seq,
                pending,
                frame,
                subject,
            } => {
                let Consumer::Running { expected } = self.consumer else {
                    return None;
                };
                if seq < expected {
                    return None;
                }
                self.quiet_since = now.monotonic;
                if self.config.filtered {
                    self.consumer = Consumer::Running {
                        expected: seq.next(),
                    };
                    self.stream_last_seq = self.stream_last_seq.max(seq.get());
                    self.filtered_pending = pending;
                    return Some(Input::Message(Inbound {
                        seq,
                        frame,
                        subject,
                    }));
                }
                if seq > expected {
                    self.outputs
                        .push_back(SessionOutput::Gap { expected, got: seq });
                    self.stop_consumer();
                    if self.last_gap == Some(expected) {
                        // A new consumer from the same sequence skipped it again: the stream
                        // no longer holds it (deleted from the middle), so only a snapshot
                        // gets this replica past it. Restarting at once would loop forever.
                        self.outputs.push_back(SessionOutput::FellBehind {
                            cursor: self.engine.cursor(),
                            first: seq.get(),
                            last: self.stream_last_seq.max(seq.get() + pending),
                            first_time: !self.fell_behind,
                        });
                        self.fell_behind = true;
                        self.consumer = soon(self.config.recheck_interval);
                    } else {
                        self.last_gap = Some(expected);
                        self.consumer = soon(Duration::ZERO);
                    }
                    return None;
                }
                if self.last_gap == Some(seq) {
                    self.last_gap = None;
                }
                self.consumer = Consumer::Running {
                    expected: seq.next(),
                };
                self.stream_last_seq = self.stream_last_seq.max(seq.get() + pending);
                Some(Input::Message(Inbound {
                    seq,
                    frame,
                    subject,
                }))
            }
            SessionInput::Acked { id } => Some(Input::Acked { id }),
            SessionInput::PublishFailed { id } => Some(Input::PublishFailed { id }),
            SessionInput::LocalWrite => Some(Input::LocalWrite),
            SessionInput::Timeout => Some(Input::Timeout),
            SessionInput::Recheck => {
                if matches!(self.consumer, Consumer::Idle { .. }) {
                    self.consumer = Consumer::Idle {
                        at: Some(now.monotonic),
                    };
                }
                None
            }
            SessionInput::Reopened => {
                self.stop_consumer();
                self.fell_behind = false;
                self.last_gap = None;
                self.consumer = Consumer::Idle {
                    at: Some(now.monotonic),
                };
                // The cursor moved: parked messages and the outbox are the database's now.
                self.engine.retry_parked_soon();
                Some(Input::Timeout)
            }
        }
    }

    fn stop_consumer(&mut self) {
        if matches!(
            self.consumer,
            Consumer::Starting { .. } | Consumer::Running { .. }
        ) {
            self.outputs.push_back(SessionOutput::StopConsumer);
        }
    }

    /// What to do with the stream as read: refuse it, report falling behind, or consume.
    fn decide(&mut self, now: Now, info: StreamInfo) -> Consumer {
        let cursor = self.engine.cursor();
        let recheck = Consumer::Idle {
            at: Some(now.monotonic + self.config.recheck_interval),
        };
        let facts = StreamFacts {
            created_ns: info.created_ns,
            last_seq: info.last_seq,
        };
        let verdict =
            self.engine
                .db_mut()
                .check_stream(&self.config.stream_name, cursor.get(), facts);
        match verdict {
            Err(e) => {
                self.consumer_error = Some(format!("checking the change stream's identity: {e}"));
                return Consumer::Idle {
                    at: Some(now.monotonic + self.config.stream_info_retry),
                };
            }
            Ok(StreamVerdict::Mismatch(why)) => {
                let why = mismatch_refusal(&why, &self.config.how_to_adopt);
                if self.refused.as_deref() != Some(why.as_str()) {
                    self.outputs
                        .push_back(SessionOutput::Refused { why: why.clone() });
                }
                self.refused = Some(why.clone());
                self.consumer_error = Some(why);
                return recheck;
            }
            Ok(StreamVerdict::Same | StreamVerdict::Recorded) => {}
        }
        if self.refused.take().is_some() {
            self.consumer_error = None;
        }
        // Another stream's sequence numbers mean nothing to this replica: only now is the
        // stream's end this replica's.
        self.stream_last_seq = self.stream_last_seq.max(info.last_seq);
        // Messages cursor + 1 ..= min(first - 1, last) are gone; that includes a stream
        // that dropped everything it held (JetStream reports first = last + 1), where no
        // message would ever arrive to show a gap.
        if info.first_seq > cursor.get() + 1 && info.last_seq > cursor.get() {
            self.outputs.push_back(SessionOutput::FellBehind {
                cursor,
                first: info.first_seq,
                last: info.last_seq,
                first_time: !self.fell_behind,
            });
            self.fell_behind = true;
            return recheck;
        }
        let from = cursor.next();
        self.outputs
            .push_back(SessionOutput::StartConsumer { from });
        Consumer::Starting { from }
    }
}

/// What a host does to the session beside its inputs: a database changed under it, a stream
/// found missing. Generic over the database: the store-specific methods live in the `sqlite`
/// module, so this module does not import it.
impl<D: Database> Session<D> {
    /// Rebuilds the engine over the database `reopen` makes of this one, after the database
    /// changed under the session (replaced by a snapshot, its stream adopted): frames in
    /// flight are handed out again (their message ids make a second publish harmless), the
    /// connection and any refusal are kept, and the stream's end is learned again. Feed
    /// [`SessionInput::Reopened`] next. On an error the session is gone with the database.
    pub fn reopen<E>(self, now: Now, reopen: impl FnOnce(D) -> Result<D, E>) -> Result<Self, E> {
        let db = reopen(self.engine.into_db())?;
        let mut engine = Engine::new(db, self.config.engine.clone());
        if self.connected {
            engine.handle_input(now, Input::Connected);
        }
        Ok(Session {
            engine,
            stream_last_seq: 0,
            last_gap: None,
            ..self
        })
    }

    /// The change stream is missing: `None` when this replica may create it (it applied
    /// nothing), else why not ([`missing_stream_refusal`]), kept as the status's refusal
    /// until the stream is read again, and emitted as [`SessionOutput::Refused`] when new.
    pub fn refuse_missing_stream(&mut self) -> Option<String> {
        let why = missing_stream_refusal(
            &self.config.stream_name,
            self.engine.cursor().get(),
            &self.config.how_to_adopt,
        )?;
        if self.refused.as_deref() != Some(why.as_str()) {
            self.outputs
                .push_back(SessionOutput::Refused { why: why.clone() });
        }
        self.refused = Some(why.clone());
        self.consumer_error = Some(why.clone());
        Some(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::{NodeId, NTP64};
    use crate::report::{DrainReport, OutboxFrame, ReceiveReport};

    /// A database that applies every message by moving its cursor, fails `receive` on
    /// demand, and records one stream creation time.
    #[derive(Default)]
    struct FakeDb {
        cursor: u64,
        applied: Vec<u64>,
        fail_receive: bool,
        stream_created: Option<i64>,
        max_frame: usize,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("disk I/O error")]
    struct FakeError;

    impl Database for FakeDb {
        type Error = FakeError;
        fn drain(&mut self) -> Result<DrainReport, FakeError> {
            Ok(DrainReport::default())
        }
        fn receive(&mut self, _: NTP64, messages: &[Inbound]) -> Result<ReceiveReport, FakeError> {
            if self.fail_receive {
                return Err(FakeError);
            }
            for m in messages {
                self.applied.push(m.seq.get());
                self.cursor = m.seq.get();
            }
            Ok(ReceiveReport {
                cursor: StreamSeq::new(self.cursor),
                ..ReceiveReport::default()
            })
        }
        fn retry_parked(&mut self, _: NTP64) -> Result<ReceiveReport, FakeError> {
            Ok(ReceiveReport::default())
        }
        fn outbox_after(&self, _: i64, _: usize) -> Result<Vec<OutboxFrame>, FakeError> {
            Ok(Vec::new())
        }
        fn outbox_remove(&mut self, _: &[i64]) -> Result<(), FakeError> {
            Ok(())
        }
        fn parked_count(&self) -> Result<u64, FakeError> {
            Ok(0)
        }
        fn cursor(&self) -> StreamSeq {
            StreamSeq::new(self.cursor)
        }
        fn node_id(&self) -> NodeId {
            NodeId::from_u128(1).unwrap()
        }
        fn check_stream(
            &mut self,
            _: &str,
            cursor: u64,
            facts: StreamFacts,
        ) -> Result<StreamVerdict, FakeError> {
            match self.stream_created {
                Some(c) if c != facts.created_ns && cursor > 0 => {
                    Ok(StreamVerdict::Mismatch("another stream".into()))
                }
                Some(_) if cursor > 0 => Ok(StreamVerdict::Same),
                _ => {
                    self.stream_created = Some(facts.created_ns);
                    Ok(StreamVerdict::Recorded)
                }
            }
        }
        fn set_max_frame(&mut self, bytes: usize) {
            self.max_frame = bytes;
        }
        fn error_kind(_: &FakeError) -> crate::error::DatabaseErrorKind {
            crate::error::DatabaseErrorKind::Io
        }
    }

    fn at(ms: u64) -> Now {
        Now {
            monotonic: Duration::from_millis(ms),
            wall: NTP64(0),
        }
    }

    fn session(db: FakeDb) -> Session<FakeDb> {
        Session::new(
            db,
            SessionConfig::new(EngineConfig::default(), "S-1", "adopt it"),
        )
    }

    /// Feeds inputs and returns the consumer-related outputs (engine events dropped).
    fn feed(s: &mut Session<FakeDb>, ms: u64, inputs: Vec<SessionInput>) -> Vec<SessionOutput> {
        s.handle_inputs(at(ms), inputs);
        std::iter::from_fn(|| s.poll_output())
            .filter(|o| !matches!(o, SessionOutput::Event(_)))
            .collect()
    }

    fn info(first: u64, last: u64, created: i64) -> SessionInput {
        SessionInput::StreamInfo(StreamInfo {
            first_seq: first,
            last_seq: last,
            created_ns: created,
        })
    }

    fn message(seq: u64, pending: u64) -> SessionInput {
        SessionInput::Message {
            seq: StreamSeq::new(seq),
            pending,
            frame: vec![seq as u8],
            subject: None,
        }
    }

    fn connected() -> SessionInput {
        SessionInput::Connected {
            max_payload: 1 << 20,
        }
    }

    /// Connects and starts a consumer on a stream holding 1..=last.
    fn consuming(s: &mut Session<FakeDb>, last: u64) {
        assert_eq!(
            feed(s, 0, vec![connected()]),
            vec![SessionOutput::ReadStreamInfo]
        );
        let from = s.cursor().next();
        assert_eq!(
            feed(s, 0, vec![info(1, last, 7)]),
            vec![SessionOutput::StartConsumer { from }]
        );
        assert!(feed(s, 0, vec![SessionInput::ConsumerStarted]).is_empty());
        assert!(s.wants_messages());
    }

    #[test]
    fn consumes_from_the_cursor_and_reports_lag() {
        let mut s = session(FakeDb {
            cursor: 3,
            stream_created: Some(7),
            ..FakeDb::default()
        });
        consuming(&mut s, 10);
        assert_eq!(s.engine.db().max_frame, (1 << 20) - 4096);
        // A duplicate below the cursor is dropped; 4 and 5 apply.
        feed(&mut s, 1, vec![message(3, 7), message(4, 6), message(5, 5)]);
        assert_eq!(s.engine.db().applied, vec![4, 5]);
        let status = s.status();
        assert_eq!(
            (status.cursor, status.stream_last_seq, status.lag),
            (5, 10, 5)
        );
        assert!(status.healthy() && status.caught_up(5) && !status.caught_up(4));
    }

    #[test]
    fn a_gap_restarts_the_consumer_from_the_cursor() {
        let mut s = session(FakeDb::default());
        consuming(&mut s, 10);
        let out = feed(&mut s, 1, vec![message(1, 9), message(3, 7)]);
        assert_eq!(
            out,
            vec![
                SessionOutput::Gap {
                    expected: StreamSeq::new(2),
                    got: StreamSeq::new(3)
                },
                SessionOutput::StopConsumer,
                SessionOutput::ReadStreamInfo,
            ]
        );
        assert_eq!(s.engine.db().applied, vec![1]);
        assert_eq!(
            feed(&mut s, 2, vec![info(1, 10, 7)]),
            vec![SessionOutput::StartConsumer {
                from: StreamSeq::new(2)
            }]
        );
    }

    #[test]
    fn falling_behind_is_reported_at_every_look_until_reopened() {
        let mut s = session(FakeDb {
            cursor: 5,
            stream_created: Some(7),
            ..FakeDb::default()
        });
        feed(&mut s, 0, vec![connected()]);
        let behind = |first_time| SessionOutput::FellBehind {
            cursor: StreamSeq::new(5),
            first: 9,
            last: 20,
            first_time,
        };
        assert_eq!(feed(&mut s, 0, vec![info(9, 20, 7)]), vec![behind(true)]);
        assert!(!s.status().healthy() && s.status().fell_behind);
        // Nothing before the re-check; at it, the stream is read again.
        assert!(feed(&mut s, 29_999, vec![SessionInput::Timeout]).is_empty());
        assert_eq!(
            feed(&mut s, 30_000, vec![SessionInput::Timeout]),
            vec![SessionOutput::ReadStreamInfo]
        );
        assert_eq!(
            feed(&mut s, 30_000, vec![info(9, 20, 7)]),
            vec![behind(false)]
        );
        // Caught up in place from a snapshot covering 12: consume from 13.
        s.engine.db_mut().cursor = 12;
        assert_eq!(
            feed(&mut s, 30_001, vec![SessionInput::Reopened]),
            vec![SessionOutput::ReadStreamInfo]
        );
        assert!(!s.status().fell_behind);
        assert_eq!(
            feed(&mut s, 30_001, vec![info(9, 20, 7)]),
            vec![SessionOutput::StartConsumer {
                from: StreamSeq::new(13)
            }]
        );
    }

    #[test]
    fn a_stream_that_dropped_everything_the_replica_lacks_is_behind() {
        let mut s = session(FakeDb {
            cursor: 3,
            stream_created: Some(7),
            ..FakeDb::default()
        });
        feed(&mut s, 0, vec![connected()]);
        // 4..=10 were stored and all dropped (an idle stream past its max age): nothing
        // will be delivered to show a gap, so this read must say so.
        assert_eq!(
            feed(&mut s, 0, vec![info(11, 10, 7)]),
            vec![SessionOutput::FellBehind {
                cursor: StreamSeq::new(3),
                first: 11,
                last: 10,
                first_time: true,
            }]
        );
        assert!(!s.status().healthy());
        // A replica that applied everything the emptied stream held consumes on.
        s.engine.db_mut().cursor = 10;
        assert_eq!(
            feed(&mut s, 1, vec![SessionInput::Reopened]),
            vec![SessionOutput::ReadStreamInfo]
        );
        assert_eq!(
            feed(&mut s, 1, vec![info(11, 10, 7)]),
            vec![SessionOutput::StartConsumer {
                from: StreamSeq::new(11)
            }]
        );
    }

    #[test]
    fn a_consumer_that_stays_quiet_while_the_stream_holds_more_is_looked_at_again() {
        let mut s = session(FakeDb::default());
        consuming(&mut s, 10);
        feed(&mut s, 5, vec![message(1, 9), message(2, 8)]);
        // 3..=10 exist but nothing comes (retention dropped 3 while no newer message
        // arrives to show a gap): the stream is read again after the recheck interval.
        assert!(s
            .poll_timeout()
            .is_some_and(|t| t <= Duration::from_millis(30_005)));
        assert!(feed(&mut s, 30_004, vec![SessionInput::Timeout]).is_empty());
        assert_eq!(
            feed(&mut s, 30_005, vec![SessionInput::Timeout]),
            vec![SessionOutput::StopConsumer, SessionOutput::ReadStreamInfo]
        );
        assert_eq!(
            feed(&mut s, 30_006, vec![info(4, 10, 7)]),
            vec![SessionOutput::FellBehind {
                cursor: StreamSeq::new(2),
                first: 4,
                last: 10,
                first_time: true,
            }]
        );
        // A consumer that delivered everything the stream holds waits quietly.
        let mut s = session(FakeDb::default());
        consuming(&mut s, 2);
        feed(&mut s, 5, vec![message(1, 1), message(2, 0)]);
        assert!(feed(&mut s, 90_000, vec![SessionInput::Timeout]).is_empty());
    }

    #[test]
    fn a_message_deleted_from_the_middle_is_falling_behind_not_a_restart_loop() {
        let mut s = session(FakeDb::default());
        consuming(&mut s, 10);
        feed(&mut s, 1, vec![message(1, 9), message(3, 7)]);
        feed(
            &mut s,
            1,
            vec![info(1, 10, 7), SessionInput::ConsumerStarted],
        );
        // The new consumer from 2 skips it again: 2 is gone for good.
        let out = feed(&mut s, 2, vec![message(3, 7)]);
        assert_eq!(
            out,
            vec![
                SessionOutput::Gap {
                    expected: StreamSeq::new(2),
                    got: StreamSeq::new(3)
                },
                SessionOutput::StopConsumer,
                SessionOutput::FellBehind {
                    cursor: StreamSeq::new(1),
                    first: 3,
                    last: 10,
                    first_time: true
                },
            ]
        );
        assert!(!s.status().healthy());
        // No restart before the re-check.
        assert!(feed(&mut s, 29_000, vec![SessionInput::Timeout]).is_empty());
    }

    #[test]
    fn another_stream_is_refused_once_and_rechecked() {
        let mut s = session(FakeDb {
            cursor: 5,
            stream_created: Some(7),
            ..FakeDb::default()
        });
        feed(&mut s, 0, vec![connected()]);
        let out = feed(&mut s, 0, vec![info(1, 20, 8)]);
        let [SessionOutput::Refused { why }] = out.as_slice() else {
            panic!("expected a refusal, got {out:?}");
        };
        assert!(
            why.starts_with("another stream. Nothing more is applied here"),
            "{why}"
        );
        assert!(why.ends_with("adopt it to apply the new stream from its first message"));
        let status = s.status();
        assert!(!status.healthy());
        assert_eq!(status.reasons(), vec![why.clone()]);
        // The stream's end is not this replica's: no lag from another stream.
        assert_eq!(status.lag, 0);
        feed(&mut s, 30_000, vec![SessionInput::Timeout]);
        assert!(
            feed(&mut s, 30_000, vec![info(1, 20, 8)]).is_empty(),
            "said once"
        );
        // The operator asks for a look now; the right stream is back.
        assert_eq!(
            feed(
                &mut s,
                30_001,
                vec![SessionInput::Recheck, SessionInput::Timeout]
            ),
            vec![SessionOutput::ReadStreamInfo]
        );
        assert_eq!(
            feed(&mut s, 30_001, vec![info(1, 20, 7)]),
            vec![SessionOutput::StartConsumer {
                from: StreamSeq::new(6)
            }]
        );
        assert!(s.status().consumer_error.is_none());
    }

    #[test]
    fn failures_and_reconnects_start_a_new_consumer() {
        let mut s = session(FakeDb::default());
        consuming(&mut s, 0);
        // The consumer fails: a new one after consumer_retry, with the reason in the status.
        assert!(feed(
            &mut s,
            10,
            vec![SessionInput::ConsumerFailed {
                error: "gone".into()
            }]
        )
        .is_empty());
        assert_eq!(s.status().consumer_error.as_deref(), Some("gone"));
        assert!(!s.wants_messages());
        assert_eq!(
            feed(&mut s, 1_010, vec![SessionInput::Timeout]),
            vec![SessionOutput::ReadStreamInfo]
        );
        assert_eq!(
            feed(
                &mut s,
                1_010,
                vec![info(1, 0, 7), SessionInput::ConsumerStarted]
            ),
            vec![
                SessionOutput::StartConsumer {
                    from: StreamSeq::new(1)
                },
                SessionOutput::Consuming {
                    from: StreamSeq::new(1)
                }
            ]
        );
        // Disconnected: the consumer stops, nothing is read until connected again.
        assert_eq!(
            feed(&mut s, 2_000, vec![SessionInput::Disconnected]),
            vec![SessionOutput::StopConsumer]
        );
        assert!(feed(&mut s, 60_000, vec![SessionInput::Timeout]).is_empty());
        assert!(!s.status().healthy());
        assert_eq!(
            feed(&mut s, 60_001, vec![connected()]),
            vec![SessionOutput::ReadStreamInfo]
        );
        // Messages of a stopped consumer are dropped.
        feed(&mut s, 60_001, vec![message(1, 0)]);
        assert!(s.engine.db().applied.is_empty());
    }

    #[test]
    fn a_full_inbox_pauses_delivery() {
        let mut s = Session::new(
            FakeDb {
                fail_receive: true,
                ..FakeDb::default()
            },
            SessionConfig {
                max_inbox: 3,
                ..SessionConfig::new(EngineConfig::default(), "S-1", "adopt it")
            },
        );
        consuming(&mut s, 10);
        feed(&mut s, 1, vec![message(1, 9), message(2, 8)]);
        assert!(s.wants_messages());
        feed(&mut s, 1, vec![message(3, 7)]);
        assert!(!s.wants_messages(), "3 waiting: pause");
        s.engine.db_mut().fail_receive = false;
        feed(&mut s, 10_000, vec![SessionInput::Timeout]);
        assert_eq!(s.engine.db().applied, vec![1, 2, 3]);
        assert!(s.wants_messages());
    }

    #[test]
    fn a_publish_only_replica_never_consumes() {
        let mut s = Session::new(
            FakeDb::default(),
            SessionConfig {
                replicate: false,
                ..SessionConfig::new(EngineConfig::default(), "S-1", "adopt it")
            },
        );
        assert!(feed(&mut s, 0, vec![connected()]).is_empty());
        assert!(feed(&mut s, 60_000, vec![SessionInput::Timeout]).is_empty());
        assert!(s.status().healthy());
    }

    #[test]
    fn a_missing_stream_is_created_only_by_a_replica_that_applied_nothing() {
        assert_eq!(missing_stream_refusal("S-1", 0, "adopt it"), None);
        let why = missing_stream_refusal("S-1", 42, "adopt it").unwrap();
        assert!(why.contains("applied its messages up to 42"), "{why}");
        assert!(
            why.contains("whose first 42 messages every replica would skip"),
            "{why}"
        );
    }

    #[test]
    fn a_reopened_database_keeps_the_connection_and_consumes_from_its_cursor() {
        let mut s = session(FakeDb::default());
        consuming(&mut s, 10);
        feed(&mut s, 1, vec![message(1, 9)]);
        assert_eq!(s.status().stream_last_seq, 10);
        // A snapshot covering 30 replaced the database under a running consumer.
        let mut s = s
            .reopen(at(2), |db| Ok::<_, FakeError>(FakeDb { cursor: 30, ..db }))
            .unwrap();
        assert_eq!(
            s.status().stream_last_seq,
            30,
            "learned again, never below the cursor"
        );
        assert_eq!(
            feed(&mut s, 2, vec![SessionInput::Reopened]),
            vec![SessionOutput::StopConsumer, SessionOutput::ReadStreamInfo]
        );
        assert_eq!(
            feed(&mut s, 2, vec![info(1, 40, 7)]),
            vec![SessionOutput::StartConsumer {
                from: StreamSeq::new(31)
            }]
        );
        assert!(s.status().connected && s.engine.is_connected());
    }

    #[test]
    fn a_missing_stream_is_refused_in_the_status_until_the_stream_is_read() {
        let mut s = session(FakeDb::default());
        assert_eq!(
            s.refuse_missing_stream(),
            None,
            "nothing applied: create it"
        );
        let mut s = session(FakeDb {
            cursor: 5,
            stream_created: Some(7),
            ..FakeDb::default()
        });
        let why = s.refuse_missing_stream().unwrap();
        assert!(why.ends_with("adopt it to apply the new stream from its first message"));
        assert_eq!(s.refuse_missing_stream().as_ref(), Some(&why));
        let out: Vec<_> = std::iter::from_fn(|| s.poll_output()).collect();
        assert_eq!(
            out,
            vec![SessionOutput::Refused { why: why.clone() }],
            "said once"
        );
        assert_eq!(s.status().refused.as_ref(), Some(&why));
        // The stream is back (another replica created it, or the right one returned).
        feed(&mut s, 0, vec![connected()]);
        feed(&mut s, 0, vec![info(1, 20, 7)]);
        assert_eq!(s.status().refused, None);
        assert!(s.status().consumer_error.is_none());
    }

    #[test]
    fn a_filtered_feed_skips_sequences_without_a_gap_and_its_lag_is_pending() {
        let mut config = SessionConfig::new(EngineConfig::default(), "S-1", "adopt it");
        config.filtered = true;
        let mut s = Session::new(FakeDb::default(), config);
        consuming(&mut s, 50);
        assert!(feed(
            &mut s,
            1,
            vec![message(3, 4), message(9, 3), message(20, 0)]
        )
        .is_empty());
        let status = s.status();
        assert_eq!(status.cursor, 20);
        assert_eq!(status.lag, 0, "the feed has nothing pending");
        assert!(status.healthy());
        // Older or repeated deliveries are ignored, as with an unfiltered consumer.
        assert!(feed(&mut s, 2, vec![message(9, 0)]).is_empty());
        assert_eq!(s.status().cursor, 20);
        // A lost delivery is the host's to see (the consumer's own sequence): it reports
        // the consumer failed, and the session restarts it from the cursor.
        feed(
            &mut s,
            3,
            vec![SessionInput::ConsumerFailed {
                error: "delivery 5 missing".into(),
            }],
        );
        assert_eq!(
            feed(&mut s, 1_100, vec![SessionInput::Timeout]),
            vec![SessionOutput::ReadStreamInfo]
        );
        assert_eq!(
            feed(&mut s, 1_100, vec![info(1, 60, 7)]),
            vec![SessionOutput::StartConsumer {
                from: StreamSeq::new(21)
            }]
        );
    }
}
