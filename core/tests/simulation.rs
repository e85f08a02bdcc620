//! Seeded multi-replica simulation on real SQLite files.
//!
//! Each scenario runs 3–5 replicas — an application connection writing through the capture
//! triggers, and a [`Session`] over a [`Store`] — against an in-memory stand-in for the
//! JetStream change stream that answers the sessions' outputs the way the hosts'
//! transports do: stream info (first and last sequence, creation time), one ordered
//! consumer per replica delivering from the requested sequence in order (random batch
//! sizes, stopped on `StopConsumer`), and publishes stored (or de-duplicated) and
//! acknowledged. The application makes random writes (inserts, updates, deletes,
//! key-changing updates, multi-row transactions, the same rows on several replicas) with
//! delayed drains. Two tables merge by row; `stock` merges by column with a counter `qty`
//! (inserts, edits of one column, `qty = qty + n`, deletes on a few shared rows).
//!
//! Faults, each chosen (on or off, and how often) by the seed:
//! - partitions that heal, crashes and restarts (a fresh session over the file), clock
//!   skew up to ±30 s per replica and wall-clock jumps (the triggers read a simulated
//!   clock);
//! - duplicate deliveries, duplicate publishes (the de-duplication window missed), lost
//!   acks, failed publishes while partitioned;
//! - gaps: the consumer skips a sequence once (delivers n + 2 after n); the session must
//!   stop it and restart from its cursor (never twice in a row at the same sequence, which
//!   the session takes for a deleted message);
//! - consumers that fail or end mid-stream, consumers that fail to start, and failed stream
//!   info reads;
//! - reconnects mid-batch: the connection drops while a delivery is handed over (part of
//!   the batch fed, the rest lost), then comes back (at once or later);
//! - stray messages: a stopped consumer's buffered messages still reach the session, which
//!   must drop them;
//! - lost retention: the stream drops its oldest messages (never more than some replica
//!   applied), so a replica that was partitioned, stopped or slow falls behind; its session
//!   must say `FellBehind` and consume nothing, then the replica catches up in place from a
//!   snapshot of a replica that is far enough ahead (`vacuum_into` + `strip_node_local`,
//!   merged by `Session::catch_up_step` in small steps while its application keeps writing,
//!   then `Reopened`), and must consume from the snapshot's covered sequence + 1;
//! - deleted messages: the stream loses a message from the middle (one some replica
//!   applied); consumers skip it, and a replica that needs it must say `FellBehind` when a
//!   fresh consumer skips it again, then catches up in place as above from a snapshot that
//!   covers it;
//! - a re-created stream: at a quiescent point the stream is deleted and created again
//!   (new creation time, sequences from 1, its consumers fail). Every replica that applied
//!   something must be refused and apply nothing from it while writes keep being published
//!   to it, until it is adopted (restarted after `stream_identity::forget_stream`).
//!
//! Checked throughout: a consumer is only ever started from the applied-or-queued
//! cursor + 1, on a stream the cursor counts in; the cursor only moves over sequences that
//! were delivered (nothing skipped), or to a catch-up's covered sequence; a refused or
//! fallen-behind replica applies nothing, and neither does a session without a running
//! consumer; every stream-info answer gets the decision the stream's state calls for
//! (refuse, fell behind, or consume); `FellBehind` only when the stream no longer holds
//! cursor + 1; `Reopened` reads the stream at once; every published frame fits the
//! server's payload limit minus the header room. At the end every replica is healthy and
//! caught up, its tables are identical row for row to the others' and equal a pure
//! [`LwwModel`] of everything published (on both streams when re-created) — `stock` the
//! [`ColumnRow`] model of its published column changes — and every application write to a
//! row-merge table reached a stream.
//!
//! `HL_SIM_SEED=<n>` replays one scenario; `HL_SIM_SCENARIOS=<n>` sets how many run
//! (default 500); `HL_SIM_FIRST_SEED=<n>` shifts the seed range.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use common::sim_clock::SimClock;
use harmonylite_core::change::StreamSeq;
use harmonylite_core::column_merge::{ColumnRow, MergeConfig};
use harmonylite_core::engine::{EngineConfig, Event, Now, Publish};
use harmonylite_core::hlc::{ntp64_from_unix, Hlc, NodeId};
use harmonylite_core::merge::{LwwModel, VersionedRow};
use harmonylite_core::session::{Session, SessionConfig, SessionInput, SessionOutput, StreamInfo};
use harmonylite_core::sqlite::snapshot::{strip_node_local, vacuum_into};
use harmonylite_core::sqlite::stream_identity::forget_stream;
use harmonylite_core::sqlite::{CatchUp, Store, StoreOptions};
use harmonylite_core::value::Value;
use harmonylite_core::wire::{self, Compression};
use rusqlite::{Connection, OpenFlags};

/// Simulated wall time of step 0 (Unix ms).
const BASE_MILLIS: i64 = 1_750_000_000_000;
/// Tables merging by row, checked against the [`LwwModel`].
const TABLES: [&str; 2] = ["items", "pairs"];
/// The table merging by column (`qty` a counter), checked against the [`ColumnRow`] model.
const STOCK: &str = "stock";
const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB);
    CREATE TABLE pairs(a TEXT NOT NULL, b INTEGER NOT NULL, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;
    CREATE TABLE stock(id INTEGER PRIMARY KEY, label TEXT, note TEXT DEFAULT 'none', \
                       qty INTEGER NOT NULL DEFAULT 0);
";
const STREAM: &str = "hl-sim";

/// How often each fault strikes in one scenario (percent of the chances it gets), chosen
/// by the seed; 0 turns it off.
#[derive(Debug)]
struct Faults {
    /// A delivered batch skips a sequence.
    gap: u8,
    /// A delivery ends with the consumer failing or ending instead.
    consumer_fail: u8,
    /// Starting a consumer fails.
    start_fail: u8,
    /// Reading the stream's info fails.
    info_fail: u8,
    /// The connection drops in the middle of a delivered batch.
    reconnect: u8,
    /// A stopped consumer's buffered messages still reach the session.
    stray: u8,
    /// Redelivery of a sequence already delivered.
    duplicate: u8,
    /// The stream drops its oldest messages (when a step offers it).
    retention: u8,
    /// The stream loses a message from the middle (when a step offers it).
    delete: u8,
    /// The stream is deleted and created again halfway.
    recreate: bool,
}

impl Faults {
    fn random(rng: &mut fastrand::Rng) -> Self {
        let mut rate = |max: u8| {
            if rng.u8(..4) == 0 {
                0
            } else {
                rng.u8(1..=max)
            }
        };
        Faults {
            gap: rate(15),
            consumer_fail: rate(10),
            start_fail: rate(20),
            info_fail: rate(20),
            reconnect: rate(10),
            stray: rate(30),
            duplicate: rate(15),
            retention: rate(60),
            delete: rate(60),
            recreate: rng.u8(..4) == 0,
        }
    }
}

/// What each fault did, summed over the scenarios run (to show they fire).
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    gaps: usize,
    consumer_failures: usize,
    start_failures: usize,
    info_failures: usize,
    mid_batch_reconnects: usize,
    strays: usize,
    retention_drops: usize,
    deletions: usize,
    fell_behind: usize,
    gap_fell_behind: usize,
    catch_ups: usize,
    recreations: usize,
    refusals: usize,
    adoptions: usize,
    restarts: usize,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.gaps += o.gaps;
        self.consumer_failures += o.consumer_failures;
        self.start_failures += o.start_failures;
        self.info_failures += o.info_failures;
        self.mid_batch_reconnects += o.mid_batch_reconnects;
        self.strays += o.strays;
        self.retention_drops += o.retention_drops;
        self.deletions += o.deletions;
        self.fell_behind += o.fell_behind;
        self.gap_fell_behind += o.gap_fell_behind;
        self.catch_ups += o.catch_ups;
        self.recreations += o.recreations;
        self.refusals += o.refusals;
        self.adoptions += o.adoptions;
        self.restarts += o.restarts;
    }
}

/// A request from a session that the simulated transport has not answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Info,
    Start(u64),
}

/// A catch-up in place in progress.
struct CatchUpJob {
    job: CatchUp,
    covered: u64,
    path: PathBuf,
}

struct Replica {
    node: NodeId,
    path: PathBuf,
    clock: SimClock,
    skew_ms: i64,
    app: Connection,
    session: Option<Session<Store>>,
    options: StoreOptions,
    config: SessionConfig,
    /// The server's payload limit as this replica's connection reports it.
    max_payload: usize,
    connected: bool,
    publishes: VecDeque<Publish>,
    /// ReadStreamInfo / StartConsumer outputs not answered yet, in order.
    requests: VecDeque<Request>,
    /// The running simulated consumer: the next sequence it delivers.
    consumer: Option<u64>,
    /// (table, key) of every committed application write, for the no-lost-write check.
    written: Vec<(String, Vec<Value>)>,
    /// The stream generation the database's cursor counts in (the one its session last
    /// recorded); `None` before any, and after adopting a new stream.
    counts_in: Option<u32>,
    /// The replica had applied something when the stream was re-created: it must be
    /// refused until adopted.
    must_adopt: bool,
    /// A session of this replica said `Refused` since the stream was re-created.
    refused_since_recreate: bool,
    /// The current session said `Refused` (it says it once per reason).
    session_refused: bool,
    /// The current session said `FellBehind` and has not consumed since.
    behind: bool,
    /// The cursor while refused or behind: nothing may be applied.
    blocked_at: Option<u64>,
    /// The sequence the session's last gap skipped, until delivered: the session takes a
    /// second gap there for a deleted message, so a transient skip never repeats it.
    last_gap: Option<u64>,
    catch_up: Option<CatchUpJob>,
}

/// The simulated JetStream stream.
struct Stream {
    /// Bumped when the stream is deleted and created again.
    generation: u32,
    created_ns: i64,
    /// Message `seq` is `frames[seq - 1]`; those before `first_seq` were dropped, those in
    /// `deleted` were deleted from the middle.
    frames: Vec<Vec<u8>>,
    first_seq: u64,
    deleted: BTreeSet<u64>,
    msg_ids: HashSet<String>,
    /// Every frame ever stored, on every generation of the stream, in order (the model).
    published: Vec<Vec<u8>>,
}

impl Stream {
    fn new(generation: u32, created_ns: i64) -> Self {
        Stream {
            generation,
            created_ns,
            frames: Vec::new(),
            first_seq: 1,
            deleted: BTreeSet::new(),
            msg_ids: HashSet::new(),
            published: Vec::new(),
        }
    }

    fn last(&self) -> u64 {
        self.frames.len() as u64
    }

    /// What JetStream reports: an empty stream that never held anything has first = 0;
    /// one whose messages were all dropped has first = last + 1.
    fn info(&self) -> StreamInfo {
        StreamInfo {
            first_seq: if self.frames.is_empty() {
                0
            } else {
                self.first_seq
            },
            last_seq: self.last(),
            created_ns: self.created_ns,
        }
    }

    fn holds(&self, seq: u64) -> bool {
        seq >= self.first_seq && seq <= self.last() && !self.deleted.contains(&seq)
    }

    /// The first message held at or after `seq` (what a consumer delivers next).
    fn next_held(&self, seq: u64) -> Option<u64> {
        (seq.max(self.first_seq)..=self.last()).find(|&s| !self.deleted.contains(&s))
    }

    fn message(&self, seq: u64) -> SessionInput {
        assert!(self.holds(seq));
        SessionInput::Message {
            seq: StreamSeq::new(seq),
            pending: self.last() - seq,
            frame: self.frames[seq as usize - 1].clone(),
            subject: None,
        }
    }

    fn store(&mut self, frame: Vec<u8>, msg_id: String) {
        self.published.push(frame.clone());
        self.frames.push(frame);
        self.msg_ids.insert(msg_id);
    }
}

struct Sim {
    rng: fastrand::Rng,
    faults: Faults,
    stats: Stats,
    replicas: Vec<Replica>,
    stream: Stream,
    time_ms: u64,
    snapshots: usize,
    dir: tempfile::TempDir,
}

impl Replica {
    fn now(&self, time_ms: u64) -> Now {
        Now {
            monotonic: Duration::from_millis(time_ms),
            wall: ntp64_from_unix(Duration::from_millis(
                (BASE_MILLIS + time_ms as i64 + self.skew_ms) as u64,
            )),
        }
    }

    fn session(&self) -> &Session<Store> {
        self.session.as_ref().expect("replica is running")
    }

    /// Forgets what the transport was doing for the session (it is gone or stopped).
    fn drop_transport(&mut self) {
        self.publishes.clear();
        self.requests.clear();
        self.consumer = None;
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let faults = Faults::random(&mut rng);
        let dir = tempfile::tempdir().unwrap();
        let count = rng.usize(3..=5);
        let max_frame = if rng.bool() { 700 } else { 1 << 20 };
        let compression = if rng.bool() {
            Compression::Lz4
        } else {
            Compression::None
        };
        let replicas = (0..count)
            .map(|i| {
                let node = NodeId::from_u128(rng.u128(1..u128::MAX)).unwrap();
                let path = dir.path().join(format!("replica{i}.db"));
                let skew_ms = rng.i64(-30_000..=30_000);
                let clock = SimClock::new(BASE_MILLIS + skew_ms);
                let app = Connection::open_with_flags_and_vfs(
                    &path,
                    OpenFlags::default(),
                    clock.vfs_name(),
                )
                .unwrap();
                app.busy_timeout(Duration::from_secs(5)).unwrap();
                app.execute_batch(SCHEMA).unwrap();
                let mut options = StoreOptions::new(node);
                options.merge = Some(
                    MergeConfig::new(&[STOCK.to_string()], &[format!("{STOCK}.qty")]).unwrap(),
                );
                options.max_frame = max_frame;
                options.compression = compression;
                let engine = EngineConfig {
                    polling_interval: Duration::from_millis(rng.u64(50..500)),
                    publish_window: rng.usize(1..6),
                    apply_batch: rng.usize(1..8),
                    retry_min: Duration::from_millis(10),
                    retry_max: Duration::from_millis(200),
                    parked_retry_interval: Duration::from_millis(500),
                    publish: true,
                };
                let mut config = SessionConfig::new(engine, STREAM, "adopt it");
                config.max_inbox = if rng.bool() { rng.usize(1..8) } else { 4096 };
                config.header_room = rng.usize(16..200);
                config.recheck_interval = Duration::from_millis(rng.u64(100..3000));
                config.consumer_retry = Duration::from_millis(rng.u64(1..300));
                config.stream_info_retry = Duration::from_millis(rng.u64(1..300));
                Replica {
                    node,
                    path,
                    clock,
                    skew_ms,
                    app,
                    session: None,
                    options,
                    max_payload: max_frame + config.header_room,
                    config,
                    connected: true,
                    publishes: VecDeque::new(),
                    requests: VecDeque::new(),
                    consumer: None,
                    written: Vec::new(),
                    counts_in: None,
                    must_adopt: false,
                    refused_since_recreate: false,
                    session_refused: false,
                    behind: false,
                    blocked_at: None,
                    last_gap: None,
                    catch_up: None,
                }
            })
            .collect();
        let mut sim = Sim {
            rng,
            faults,
            stats: Stats::default(),
            replicas,
            stream: Stream::new(0, BASE_MILLIS * 1_000_000),
            time_ms: 0,
            snapshots: 0,
            dir,
        };
        for r in 0..sim.replicas.len() {
            sim.start(r);
        }
        sim
    }

    fn hit(&mut self, percent: u8) -> bool {
        percent > 0 && self.rng.u8(..100) < percent
    }

    /// Opens the replica's file with a fresh session (a start or a restart).
    fn start(&mut self, r: usize) {
        let replica = &mut self.replicas[r];
        assert!(replica.session.is_none());
        let conn = Connection::open(&replica.path).unwrap();
        let store = Store::open(conn, replica.options.clone()).unwrap();
        replica.session = Some(Session::new(store, replica.config.clone()));
        replica.session_refused = false;
        replica.behind = false;
        replica.last_gap = None;
        if replica.connected {
            let max_payload = replica.max_payload;
            self.feed(r, vec![SessionInput::Connected { max_payload }]);
        }
    }

    /// Crashes the replica: its session, transport and catch-up are gone.
    fn stop(&mut self, r: usize) -> Store {
        let replica = &mut self.replicas[r];
        replica.drop_transport();
        if let Some(job) = replica.catch_up.take() {
            job.job.into_source().close().unwrap();
            std::fs::remove_file(&job.path).unwrap();
        }
        replica
            .session
            .take()
            .expect("replica is running")
            .into_db()
    }

    /// Feeds inputs to a replica's session and carries out its outputs; returns the
    /// outputs other than publishes and engine events. Checks that the cursor moved only
    /// over sequences fed now, that a consumer starts only from the cursor + 1 on a stream
    /// the cursor counts in, and that nothing is applied while refused or behind.
    fn feed(&mut self, r: usize, inputs: Vec<SessionInput>) -> Vec<SessionOutput> {
        let t = self.time_ms;
        let generation = self.stream.generation;
        let replica = &mut self.replicas[r];
        let now = replica.now(t);
        let fed: HashSet<u64> = inputs
            .iter()
            .filter_map(|i| match i {
                SessionInput::Message { seq, .. } => Some(seq.get()),
                _ => None,
            })
            .collect();
        if inputs.contains(&SessionInput::Reopened) {
            replica.last_gap = None;
        }
        let session = replica.session.as_mut().expect("replica is running");
        let before = session.cursor().get();
        session.handle_inputs(now, inputs);
        let cursor = session.cursor().get();
        let mut said = Vec::new();
        while let Some(output) = session.poll_output() {
            match &output {
                SessionOutput::Publish(p) => {
                    replica.publishes.push_back(p.clone());
                    continue;
                }
                SessionOutput::Event(Event::DatabaseError {
                    operation, error, ..
                }) => panic!("replica {r}: database error while {operation}: {error}"),
                SessionOutput::Event(_) => continue,
                SessionOutput::ReadStreamInfo => {
                    // A read still unanswered answers this one too (after Reopened while
                    // reading, the session asks again).
                    if !replica.requests.contains(&Request::Info) {
                        replica.requests.push_back(Request::Info);
                    }
                }
                SessionOutput::StartConsumer { from } => {
                    assert_eq!(
                        from.get(),
                        cursor + 1,
                        "replica {r} started a consumer from {from}, not from its cursor {cursor} + 1"
                    );
                    if cursor > 0 {
                        assert_eq!(
                            replica.counts_in,
                            Some(generation),
                            "replica {r} started a consumer on a stream its cursor {cursor} does not count in"
                        );
                    }
                    replica.behind = false;
                    replica.blocked_at = None;
                    replica.requests.push_back(Request::Start(from.get()));
                }
                SessionOutput::StopConsumer => {
                    replica.consumer = None;
                    replica.requests.retain(|q| !matches!(q, Request::Start(_)));
                }
                SessionOutput::Gap { expected, got } => {
                    assert!(got > expected, "replica {r}: {output:?}");
                    assert_eq!(
                        expected.get(),
                        cursor + 1,
                        "replica {r}: a gap after {expected} but the cursor is {cursor}"
                    );
                    replica.last_gap = Some(expected.get());
                }
                SessionOutput::Refused { why } => {
                    assert!(
                        cursor > 0 && replica.counts_in != Some(generation),
                        "replica {r} (cursor {cursor}) refused the stream its cursor counts in: {why}"
                    );
                    replica.session_refused = true;
                    replica.refused_since_recreate = true;
                    replica.blocked_at = Some(cursor);
                    self.stats.refusals += 1;
                }
                SessionOutput::FellBehind {
                    cursor: at, first, ..
                } => {
                    assert_eq!(at.get(), cursor, "replica {r}: {output:?}");
                    assert!(*first > cursor + 1, "replica {r}: {output:?}");
                    assert!(
                        !self.stream.holds(cursor + 1),
                        "replica {r} said it fell behind but the stream holds {} ({output:?})",
                        cursor + 1
                    );
                    if said.iter().any(|o| matches!(o, SessionOutput::Gap { .. })) {
                        self.stats.gap_fell_behind += 1;
                    }
                    replica.behind = true;
                    replica.blocked_at = Some(cursor);
                    self.stats.fell_behind += 1;
                }
                SessionOutput::Consuming { from } => {
                    assert_eq!(from.get(), cursor + 1, "replica {r}: {output:?}");
                }
            }
            said.push(output);
        }
        assert!(
            cursor >= before,
            "replica {r}'s cursor went back from {before} to {cursor}"
        );
        if replica.last_gap.is_some_and(|g| cursor >= g) {
            replica.last_gap = None;
        }
        if let Some(skipped) = (before + 1..=cursor).find(|s| !fed.contains(s)) {
            panic!(
                "replica {r}'s cursor moved from {before} to {cursor} but {skipped} was not delivered"
            );
        }
        if let Some(at) = replica.blocked_at {
            assert_eq!(
                cursor, at,
                "replica {r} applied messages while refused or behind"
            );
            assert_eq!(session.applied_cursor().get(), at);
        }
        let status = session.status();
        if replica.behind {
            assert!(status.fell_behind && !status.healthy(), "{status:?}");
        }
        if replica.session_refused && replica.blocked_at.is_some() {
            assert!(status.refused.is_some() && !status.healthy(), "{status:?}");
        }
        said
    }

    fn step(&mut self) {
        let r = self.rng.usize(..self.replicas.len());
        match self.rng.u8(..100) {
            0..=33 => self.app_write(r),
            34..=51 => self.deliver(r),
            52..=65 => self.pump_publishes(r, false),
            66..=70 => {
                let n = self.rng.usize(1..=3);
                self.transport(r, n, false);
            }
            71..=74 => {
                let connected = !self.replicas[r].connected;
                self.set_connected(r, connected);
            }
            75..=77 => {
                self.stop(r);
                self.start(r);
                self.stats.restarts += 1;
            }
            78 => {
                // A wall-clock jump (backwards or forwards) on one replica.
                self.replicas[r].skew_ms = self.rng.i64(-30_000..=30_000);
            }
            79 => {
                if self.hit(self.faults.retention) {
                    self.drop_oldest();
                }
            }
            80 => {
                if self.hit(self.faults.delete) {
                    self.delete_one();
                }
            }
            81..=84 => self.catch_up_step(false),
            85 => {
                // The operator asks for a look at the stream now.
                if self.replicas[r].blocked_at.is_some() {
                    self.feed(r, vec![SessionInput::Recheck]);
                }
            }
            86 => {
                if self.replicas[r].must_adopt && self.replicas[r].refused_since_recreate {
                    self.adopt(r);
                }
            }
            _ => {
                let ms = self.rng.u64(1..400);
                self.advance(ms);
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        self.time_ms += ms;
        let t = self.time_ms;
        for r in 0..self.replicas.len() {
            let replica = &self.replicas[r];
            replica.clock.set(BASE_MILLIS + t as i64 + replica.skew_ms);
            let due = replica
                .session()
                .poll_timeout()
                .is_some_and(|at| at <= Duration::from_millis(t));
            if due {
                self.feed(r, vec![SessionInput::Timeout]);
            }
        }
    }

    fn set_connected(&mut self, r: usize, connected: bool) {
        let replica = &mut self.replicas[r];
        if replica.connected == connected {
            return;
        }
        replica.connected = connected;
        replica.drop_transport();
        let input = if connected {
            SessionInput::Connected {
                max_payload: replica.max_payload,
            }
        } else {
            SessionInput::Disconnected
        };
        self.feed(r, vec![input]);
    }

    /// Answers up to `n` of the replica's requests in order (those they lead to included),
    /// with failures unless `reliable`.
    fn transport(&mut self, r: usize, n: usize, reliable: bool) {
        for _ in 0..n {
            if !self.replicas[r].connected {
                return;
            }
            let Some(request) = self.replicas[r].requests.pop_front() else {
                return;
            };
            match request {
                Request::Info if !reliable && self.hit(self.faults.info_fail) => {
                    self.stats.info_failures += 1;
                    let error = "stream info timed out".to_owned();
                    self.feed(r, vec![SessionInput::StreamInfoFailed { error }]);
                }
                Request::Info => self.answer_info(r),
                Request::Start(_) if !reliable && self.hit(self.faults.start_fail) => {
                    self.stats.start_failures += 1;
                    let error = "creating the consumer timed out".to_owned();
                    self.feed(r, vec![SessionInput::ConsumerFailed { error }]);
                }
                Request::Start(from) => {
                    self.replicas[r].consumer = Some(from);
                    self.feed(r, vec![SessionInput::ConsumerStarted]);
                }
            }
        }
    }

    /// Answers a stream info read, and checks the session decides what the stream's state
    /// calls for.
    fn answer_info(&mut self, r: usize) {
        let info = self.stream.info();
        let generation = self.stream.generation;
        let replica = &self.replicas[r];
        let cursor = replica.session().cursor().get();
        let refused = cursor > 0 && replica.counts_in != Some(generation);
        let said_refused = replica.session_refused;
        let behind = !refused && info.first_seq > cursor + 1 && info.last_seq > cursor;
        let said = self.feed(r, vec![SessionInput::StreamInfo(info)]);
        let started = said
            .iter()
            .any(|o| matches!(o, SessionOutput::StartConsumer { .. }));
        let fell_behind = said
            .iter()
            .any(|o| matches!(o, SessionOutput::FellBehind { .. }));
        let refusal = said
            .iter()
            .any(|o| matches!(o, SessionOutput::Refused { .. }));
        let what = format!(
            "replica {r} (cursor {cursor}, counts in {:?}) read {info:?} of generation {generation} and said {said:?}",
            self.replicas[r].counts_in
        );
        if refused {
            assert!(!started && !fell_behind, "{what}");
            assert_eq!(refusal, !said_refused, "{what}");
        } else if behind {
            assert!(fell_behind && !started && !refusal, "{what}");
        } else {
            assert!(started && !fell_behind && !refusal, "{what}");
        }
        if !refused && cursor == 0 {
            // A replica that applied nothing records whatever stream it reads.
            self.replicas[r].counts_in = Some(generation);
        }
    }

    fn deliver(&mut self, r: usize) {
        if !self.replicas[r].connected {
            return;
        }
        if self.rng.u8(..10) < 8 {
            self.transport(r, usize::MAX, false);
        }
        let Some(next) = self.replicas[r].consumer else {
            if self.hit(self.faults.stray) {
                self.stray(r);
            }
            return;
        };
        let session = self.replicas[r].session();
        assert!(
            session.status().consuming,
            "replica {r}: a consumer runs but the session does not consume"
        );
        if !session.wants_messages() {
            return;
        }
        let room = self.replicas[r].config.max_inbox - session.engine().inbox_len();
        if self.hit(self.faults.consumer_fail) {
            self.stats.consumer_failures += 1;
            self.replicas[r].consumer = None;
            let input = if self.rng.bool() {
                SessionInput::ConsumerFailed {
                    error: "consumer heartbeats missed".into(),
                }
            } else {
                SessionInput::ConsumerEnded
            };
            self.feed(r, vec![input]);
            return;
        }
        let first = self.stream.first_seq;
        let mut next = next;
        let mut batch = Vec::new();
        if next > first && self.hit(self.faults.duplicate) {
            let seq = self.rng.u64(first..next);
            if self.stream.holds(seq) {
                batch.push(self.stream.message(seq));
            }
        }
        let count = self.rng.usize(1..8).min(room);
        for _ in 0..count {
            // The server skips what retention dropped and what was deleted.
            let Some(mut seq) = self.stream.next_held(next) else {
                break;
            };
            if Some(seq) != self.replicas[r].last_gap && self.hit(self.faults.gap) {
                if let Some(after) = self.stream.next_held(seq + 1) {
                    self.stats.gaps += 1;
                    seq = after;
                }
            }
            batch.push(self.stream.message(seq));
            next = seq + 1;
        }
        self.replicas[r].consumer = Some(next);
        if batch.is_empty() {
            return;
        }
        if self.hit(self.faults.reconnect) {
            // The connection drops while the batch is handed over: the rest is lost.
            self.stats.mid_batch_reconnects += 1;
            let k = self.rng.usize(..batch.len());
            batch.truncate(k);
            if !batch.is_empty() {
                self.feed(r, batch);
            }
            self.set_connected(r, false);
            if self.rng.bool() {
                self.set_connected(r, true);
            }
            return;
        }
        if self.rng.bool() {
            self.feed(r, batch);
            return;
        }
        for message in batch {
            // Once the session stopped the consumer, the rest of its batch is dropped, or
            // (stray) still handed over.
            if self.replicas[r].consumer.is_none() {
                if !self.hit(self.faults.stray) {
                    break;
                }
                let before = self.replicas[r].session().cursor();
                self.stats.strays += 1;
                self.feed(r, vec![message]);
                assert_eq!(
                    self.replicas[r].session().cursor(),
                    before,
                    "replica {r} applied a message of a stopped consumer"
                );
            } else {
                self.feed(r, vec![message]);
            }
        }
    }

    /// A consumer that is no longer running still hands over a few buffered messages: the
    /// session must drop them (it consumes nothing without a running consumer).
    fn stray(&mut self, r: usize) {
        let before = self.replicas[r].session().cursor().get();
        let from = (before + 1).max(self.stream.first_seq);
        let to = self.stream.last().min(from + self.rng.u64(0..3));
        let messages: Vec<SessionInput> = (from..=to)
            .filter(|&s| self.stream.holds(s))
            .map(|s| self.stream.message(s))
            .collect();
        if messages.is_empty() {
            return;
        }
        self.stats.strays += 1;
        self.feed(r, messages);
        assert_eq!(
            self.replicas[r].session().cursor().get(),
            before,
            "replica {r} applied messages without a running consumer"
        );
    }

    /// Carries out pending publishes: stored (or de-duplicated) and acknowledged, with lost
    /// acks and failures unless `reliable`.
    fn pump_publishes(&mut self, r: usize, reliable: bool) {
        let n = if reliable {
            usize::MAX
        } else {
            self.rng.usize(1..6)
        };
        for _ in 0..n {
            let Some(p) = self.replicas[r].publishes.pop_front() else {
                break;
            };
            let replica = &self.replicas[r];
            let limit = replica.max_payload - replica.config.header_room;
            assert!(
                p.frame.len() <= limit,
                "replica {r} published a {}-byte frame over a {}-byte payload limit with {} bytes of header room",
                p.frame.len(),
                replica.max_payload,
                replica.config.header_room
            );
            if !replica.connected {
                self.feed(r, vec![SessionInput::PublishFailed { id: p.id }]);
                continue;
            }
            let dedup =
                self.stream.msg_ids.contains(&p.msg_id) && (reliable || self.rng.u8(..10) < 7);
            if !dedup {
                self.stream.store(p.frame, p.msg_id);
            }
            let ack_lost = !reliable && self.rng.u8(..10) == 0;
            let input = if ack_lost {
                SessionInput::PublishFailed { id: p.id }
            } else {
                SessionInput::Acked { id: p.id }
            };
            self.feed(r, vec![input]);
        }
    }

    fn app_write(&mut self, r: usize) {
        let t = self.time_ms;
        let ops = if self.rng.u8(..5) == 0 {
            self.rng.usize(2..6)
        } else {
            1
        };
        let notify = self.rng.u8(..3) != 0;
        let statements: Vec<AppOp> = (0..ops).map(|_| AppOp::random(&mut self.rng)).collect();
        let replica = &mut self.replicas[r];
        replica.clock.set(BASE_MILLIS + t as i64 + replica.skew_ms);
        let tx = replica.app.transaction().unwrap();
        let mut written = Vec::new();
        for op in &statements {
            written.extend(op.run(&tx));
        }
        tx.commit().unwrap();
        replica.written.extend(written);
        if notify {
            self.feed(r, vec![SessionInput::LocalWrite]);
        }
    }

    /// Retention drops the stream's oldest messages, never past what some replica consuming
    /// this stream applied (so that one can serve the snapshot the others catch up from).
    fn drop_oldest(&mut self) {
        let Some(furthest) = self.furthest_applied() else {
            return;
        };
        let bound = furthest.min(self.stream.last()) + 1;
        if bound <= self.stream.first_seq {
            return;
        }
        self.stream.first_seq = self.rng.u64(self.stream.first_seq + 1..=bound);
        self.stats.retention_drops += 1;
    }

    /// The stream loses one message from the middle (neither its first nor its last, and
    /// one some replica consuming this stream applied).
    fn delete_one(&mut self) {
        let Some(furthest) = self.furthest_applied() else {
            return;
        };
        let (low, high) = (
            self.stream.first_seq + 1,
            furthest.min(self.stream.last().saturating_sub(1)),
        );
        if low > high {
            return;
        }
        if self.stream.deleted.insert(self.rng.u64(low..=high)) {
            self.stats.deletions += 1;
        }
    }

    /// The furthest any replica consuming the current stream applied.
    fn furthest_applied(&self) -> Option<u64> {
        let generation = self.stream.generation;
        self.replicas
            .iter()
            .filter(|r| r.counts_in == Some(generation))
            .map(|r| r.session().applied_cursor().get())
            .max()
    }

    /// A replica that its session said fell behind takes a snapshot of one far enough ahead
    /// (as the sidecar does) and runs one step of merging it in place; once finished it
    /// feeds `Reopened`. With `to_the_end`, every replica behind runs its catch-up to the
    /// end.
    fn catch_up_step(&mut self, to_the_end: bool) {
        let behind: Vec<usize> = (0..self.replicas.len())
            .filter(|&r| self.replicas[r].behind)
            .collect();
        if behind.is_empty() {
            return;
        }
        let targets = if to_the_end {
            behind
        } else {
            vec![behind[self.rng.usize(..behind.len())]]
        };
        for r in targets {
            if self.replicas[r].catch_up.is_none() && !self.take_snapshot_for(r) {
                continue;
            }
            loop {
                let rows = self.rng.usize(1..30);
                let now = self.replicas[r].now(self.time_ms).wall;
                let replica = &mut self.replicas[r];
                let job = replica.catch_up.as_mut().unwrap();
                let report = replica
                    .session
                    .as_mut()
                    .unwrap()
                    .catch_up_step(&mut job.job, now, rows)
                    .unwrap_or_else(|e| panic!("replica {r}: catch-up step failed: {e}"));
                if report.finished {
                    let job = replica.catch_up.take().unwrap();
                    assert_eq!(
                        replica.session().applied_cursor().get(),
                        job.covered,
                        "replica {r}: the catch-up did not move the cursor to the covered sequence"
                    );
                    assert_eq!(replica.session().cursor().get(), job.covered);
                    job.job.into_source().close().unwrap();
                    std::fs::remove_file(&job.path).unwrap();
                    replica.behind = false;
                    replica.blocked_at = Some(job.covered);
                    self.stats.catch_ups += 1;
                    let connected = replica.connected;
                    let said = self.feed(r, vec![SessionInput::Reopened]);
                    // Consuming again from the new cursor starts with a look at the stream
                    // now, not at the next re-check.
                    assert!(
                        !connected
                            || said.contains(&SessionOutput::ReadStreamInfo)
                            || self.replicas[r].requests.contains(&Request::Info),
                        "replica {r} reopened but did not read the stream: {said:?}"
                    );
                    break;
                }
                if !to_the_end {
                    break;
                }
            }
        }
    }

    /// Starts replica `r`'s catch-up from a snapshot of a replica consuming the same stream
    /// that applied everything the stream no longer holds (up to its first sequence − 1
    /// and every deleted message after `r`'s cursor); false if none has.
    fn take_snapshot_for(&mut self, r: usize) -> bool {
        let generation = self.stream.generation;
        let cursor = self.replicas[r].session().cursor().get();
        let deleted = self.stream.deleted.range(cursor + 1..).next_back();
        let needed = (self.stream.first_seq - 1).max(deleted.copied().unwrap_or(0));
        let donors: Vec<usize> = (0..self.replicas.len())
            .filter(|&d| {
                d != r
                    && self.replicas[d].counts_in == Some(generation)
                    && self.replicas[d].session().applied_cursor().get() >= needed
            })
            .collect();
        if donors.is_empty() {
            return false;
        }
        let donor = donors[self.rng.usize(..donors.len())];
        self.snapshots += 1;
        let path = self
            .dir
            .path()
            .join(format!("snapshot{}.db", self.snapshots));
        let donor_cursor = self.replicas[donor].session().applied_cursor().get();
        vacuum_into(
            self.replicas[donor].session().app_connection(),
            path.to_str().unwrap(),
        )
        .unwrap();
        let covered = strip_node_local(&mut Connection::open(&path).unwrap())
            .unwrap()
            .get();
        assert_eq!(covered, donor_cursor);
        assert!(covered > self.replicas[r].session().cursor().get());
        let job = CatchUp::open(&path, StreamSeq::new(covered)).unwrap();
        self.replicas[r].catch_up = Some(CatchUpJob { job, covered, path });
        true
    }

    /// Deletes the stream and creates it again: new creation time, sequences from 1, an
    /// empty de-duplication window; running consumers fail or end.
    fn recreate_stream(&mut self) {
        let published = std::mem::take(&mut self.stream.published);
        let generation = self.stream.generation + 1;
        self.stream = Stream::new(
            generation,
            (BASE_MILLIS + self.time_ms as i64) * 1_000_000 + i64::from(generation),
        );
        self.stream.published = published;
        self.stats.recreations += 1;
        for r in 0..self.replicas.len() {
            let replica = &mut self.replicas[r];
            replica.must_adopt = replica.session().cursor().get() > 0;
            replica.refused_since_recreate = false;
            let running = replica.consumer.take().is_some();
            let starting = replica
                .requests
                .iter()
                .any(|q| matches!(q, Request::Start(_)));
            replica.requests.retain(|q| !matches!(q, Request::Start(_)));
            let input = if running && self.rng.bool() {
                SessionInput::ConsumerEnded
            } else if running || starting {
                SessionInput::ConsumerFailed {
                    error: "stream not found".into(),
                }
            } else {
                continue;
            };
            self.feed(r, vec![input]);
        }
    }

    /// Adopts the re-created stream on a refused replica the way an operator does: the
    /// replica stops, forgets the stream it consumed (cursor back to 0) and starts again.
    fn adopt(&mut self, r: usize) {
        let conn = self.stop(r).into_connection();
        forget_stream(&conn).unwrap();
        conn.close().unwrap();
        let replica = &mut self.replicas[r];
        replica.counts_in = None;
        replica.must_adopt = false;
        replica.blocked_at = None;
        self.stats.adoptions += 1;
        self.start(r);
    }

    /// Heals everything and runs until every replica has published and applied it all
    /// (adopting a re-created stream and catching up replicas that fell behind).
    fn quiesce(&mut self) -> Result<(), String> {
        for r in 0..self.replicas.len() {
            self.set_connected(r, true);
        }
        for round in 0..500 {
            for r in 0..self.replicas.len() {
                if self.replicas[r].must_adopt && self.replicas[r].refused_since_recreate {
                    self.adopt(r);
                }
                self.feed(r, vec![SessionInput::LocalWrite]);
                self.pump_publishes(r, true);
                self.transport(r, usize::MAX, true);
                self.deliver_all(r);
            }
            self.catch_up_step(true);
            self.advance(1000);
            let last = self.stream.last();
            let settled = self.replicas.iter().all(|r| {
                let session = r.session();
                let status = session.status();
                r.publishes.is_empty()
                    && r.requests.is_empty()
                    && r.consumer.is_some()
                    && !r.must_adopt
                    && session.outbox_depth().unwrap().0 == 0
                    && session.log_depth().unwrap() == 0
                    && session.applied_cursor().get() == last
                    && status.healthy()
                    && status.caught_up(0)
            });
            if settled && round > 0 {
                return Ok(());
            }
        }
        let state: Vec<String> = self
            .replicas
            .iter()
            .map(|r| {
                let session = r.session();
                format!(
                    "publishes={} requests={:?} consumer={:?} must_adopt={} outbox={:?} log={} status={:?}",
                    r.publishes.len(),
                    r.requests,
                    r.consumer,
                    r.must_adopt,
                    session.outbox_depth().unwrap(),
                    session.log_depth().unwrap(),
                    session.status(),
                )
            })
            .collect();
        Err(format!(
            "replicas did not settle after 500 rounds (stream holds {}..={}): {state:#?}",
            self.stream.first_seq,
            self.stream.last()
        ))
    }

    /// Delivers everything the replica's consumer has left, in order, without faults.
    fn deliver_all(&mut self, r: usize) {
        while let Some(next) = self.replicas[r].consumer {
            let session = self.replicas[r].session();
            if !session.wants_messages() || next > self.stream.last() {
                return;
            }
            let room = self.replicas[r].config.max_inbox - session.engine().inbox_len();
            let mut batch = Vec::new();
            let mut next = next;
            while batch.len() < room {
                let Some(seq) = self.stream.next_held(next) else {
                    break;
                };
                batch.push(self.stream.message(seq));
                next = seq + 1;
            }
            self.replicas[r].consumer = Some(next);
            if batch.is_empty() {
                return;
            }
            self.feed(r, batch);
        }
    }
}

/// One application statement.
enum AppOp {
    UpsertItem {
        id: i64,
        name: String,
        qty: i64,
        price: f64,
        data: Option<Vec<u8>>,
    },
    UpdateItem {
        id: i64,
        qty: i64,
    },
    DeleteItem {
        id: i64,
    },
    MoveItem {
        from: i64,
        to: i64,
    },
    UpsertPair {
        a: String,
        b: i64,
        v: String,
    },
    DeletePair {
        a: String,
        b: i64,
    },
    MovePair {
        a: String,
        from: i64,
        to: i64,
    },
    InsertStock {
        id: i64,
        label: String,
        qty: i64,
    },
    EditStock {
        id: i64,
        column: &'static str,
        value: String,
    },
    CountStock {
        id: i64,
        delta: i64,
    },
    DeleteStock {
        id: i64,
    },
}

impl AppOp {
    fn random(rng: &mut fastrand::Rng) -> Self {
        let id = rng.i64(1..=12);
        let a = ["x", "y", "zé"][rng.usize(..3)].to_string();
        if rng.u8(..3) == 0 {
            let id = rng.i64(1..=4);
            return match rng.u8(..10) {
                0 => AppOp::InsertStock {
                    id,
                    label: format!("l{}", rng.u32(..100)),
                    qty: rng.i64(-5..50),
                },
                1..=3 => AppOp::EditStock {
                    id,
                    column: ["label", "note"][rng.usize(..2)],
                    value: format!("e{}", rng.u32(..1000)),
                },
                4..=8 => AppOp::CountStock {
                    id,
                    delta: [-1, -1, 1, 5, -3][rng.usize(..5)],
                },
                _ => AppOp::DeleteStock { id },
            };
        }
        match rng.u8(..10) {
            0..=2 => AppOp::UpsertItem {
                id,
                name: format!("n{}", rng.u32(..1000)),
                qty: rng.i64(..),
                price: [0.1, -0.0, 1e300, f64::MIN_POSITIVE, rng.f64()][rng.usize(..5)],
                data: rng
                    .bool()
                    .then(|| (0..rng.usize(..16)).map(|_| rng.u8(..)).collect()),
            },
            3 => AppOp::UpdateItem {
                id,
                qty: rng.i64(..),
            },
            4 => AppOp::DeleteItem { id },
            5 => AppOp::MoveItem {
                from: id,
                to: rng.i64(1..=12),
            },
            6 | 7 => AppOp::UpsertPair {
                a,
                b: rng.i64(0..4),
                v: format!("v{}", rng.u32(..100)),
            },
            8 => AppOp::DeletePair {
                a,
                b: rng.i64(0..4),
            },
            _ => AppOp::MovePair {
                a,
                from: rng.i64(0..4),
                to: rng.i64(0..4),
            },
        }
    }

    /// Runs the statement; returns the (table, key) of every row it changed.
    fn run(&self, conn: &Connection) -> Vec<(String, Vec<Value>)> {
        let item = |id: i64| ("items".to_string(), vec![Value::Integer(id)]);
        let pair = |a: &str, b: i64| {
            (
                "pairs".to_string(),
                vec![Value::Text(a.into()), Value::Integer(b)],
            )
        };
        let stock = |id: i64, changed: usize| {
            if changed > 0 {
                vec![(STOCK.to_string(), vec![Value::Integer(id)])]
            } else {
                vec![]
            }
        };
        let exec = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> usize {
            match conn.execute(sql, p) {
                Ok(n) => n,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    0
                }
                Err(e) => panic!("application write failed: {e}"),
            }
        };
        match self {
            AppOp::UpsertItem {
                id,
                name,
                qty,
                price,
                data,
            } => {
                let n = exec(
                    "INSERT INTO items(id, name, qty, price, data) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(id) DO UPDATE SET name = excluded.name, qty = excluded.qty,
                     price = excluded.price, data = excluded.data",
                    &[id, name, qty, price, data],
                );
                if n > 0 {
                    vec![item(*id)]
                } else {
                    vec![]
                }
            }
            AppOp::UpdateItem { id, qty } => {
                let n = exec("UPDATE items SET qty = ?2 WHERE id = ?1", &[id, qty]);
                if n > 0 {
                    vec![item(*id)]
                } else {
                    vec![]
                }
            }
            AppOp::DeleteItem { id } => {
                let n = exec("DELETE FROM items WHERE id = ?1", &[id]);
                if n > 0 {
                    vec![item(*id)]
                } else {
                    vec![]
                }
            }
            AppOp::MoveItem { from, to } => {
                let n = exec("UPDATE items SET id = ?2 WHERE id = ?1", &[from, to]);
                if n > 0 {
                    vec![item(*from), item(*to)]
                } else {
                    vec![]
                }
            }
            AppOp::UpsertPair { a, b, v } => {
                let n = exec(
                    "INSERT INTO pairs(a, b, v) VALUES (?1, ?2, ?3) ON CONFLICT(a, b) DO UPDATE SET v = excluded.v",
                    &[a, b, v],
                );
                if n > 0 {
                    vec![pair(a, *b)]
                } else {
                    vec![]
                }
            }
            AppOp::DeletePair { a, b } => {
                let n = exec("DELETE FROM pairs WHERE a = ?1 AND b = ?2", &[a, b]);
                if n > 0 {
                    vec![pair(a, *b)]
                } else {
                    vec![]
                }
            }
            AppOp::MovePair { a, from, to } => {
                let n = exec(
                    "UPDATE pairs SET b = ?3 WHERE a = ?1 AND b = ?2",
                    &[a, from, to],
                );
                if n > 0 {
                    vec![pair(a, *from), pair(a, *to)]
                } else {
                    vec![]
                }
            }
            AppOp::InsertStock { id, label, qty } => {
                let n = exec(
                    "INSERT INTO stock(id, label, qty) VALUES (?1, ?2, ?3)",
                    &[id, label, qty],
                );
                stock(*id, n)
            }
            AppOp::EditStock { id, column, value } => {
                let n = exec(
                    &format!("UPDATE stock SET {column} = ?2 WHERE id = ?1"),
                    &[id, value],
                );
                stock(*id, n)
            }
            AppOp::CountStock { id, delta } => {
                let n = exec(
                    "UPDATE stock SET qty = qty + ?2 WHERE id = ?1",
                    &[id, delta],
                );
                stock(*id, n)
            }
            AppOp::DeleteStock { id } => {
                let n = exec("DELETE FROM stock WHERE id = ?1", &[id]);
                stock(*id, n)
            }
        }
    }
}

type Rows = BTreeMap<Vec<Value>, BTreeMap<String, Value>>;

/// A table's rows keyed by primary key, every column by name.
fn dump(conn: &Connection, table: &str) -> Rows {
    let key_columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")
        .unwrap()
        .query_map([table], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
    let names: Vec<String> = stmt.column_names().map(String::from).collect();
    stmt.query_map([], |r| {
        let image: BTreeMap<String, Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Ok((n.clone(), r.get::<_, Value>(i)?)))
            .collect::<rusqlite::Result<_>>()?;
        Ok(image)
    })
    .unwrap()
    .map(|image| {
        let image = image.unwrap();
        (
            key_columns.iter().map(|k| image[k].clone()).collect(),
            image,
        )
    })
    .collect()
}

/// The merged state of every frame published: the LWW model of the tables that merge by
/// row, the column model of `stock`, and the (origin, table, key) of every change.
type Models = (
    LwwModel,
    BTreeMap<Vec<Value>, ColumnRow>,
    HashSet<(NodeId, String, Vec<Value>)>,
);

fn model_of(frames: &[Vec<u8>]) -> Models {
    let mut model = LwwModel::new();
    let mut columns: BTreeMap<Vec<Value>, ColumnRow> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut parts: HashMap<(NodeId, u64), BTreeMap<u32, Vec<u8>>> = HashMap::new();
    for frame in frames {
        let m = wire::decode_frame(frame).expect("every published frame decodes");
        let body = if m.parts == 1 {
            m.body
        } else {
            let entry = parts.entry((m.origin, m.batch_seq.get())).or_default();
            entry.insert(m.part, m.body);
            if entry.len() < m.parts as usize {
                continue;
            }
            parts
                .remove(&(m.origin, m.batch_seq.get()))
                .unwrap()
                .into_values()
                .flatten()
                .collect()
        };
        let batch =
            wire::decode_batch(m.compression, &body).expect("every published batch decodes");
        for row in &batch.rows {
            let schema = &batch.tables[row.table as usize];
            let image = row.values.as_ref().map(|values| {
                schema
                    .key_columns
                    .iter()
                    .zip(&row.key)
                    .chain(schema.value_columns.iter().zip(values))
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect()
            });
            let hlc: Hlc = row.hlc(m.origin);
            seen.insert((m.origin, schema.name.clone(), row.key.clone()));
            model.merge(
                (schema.name.clone(), row.key.clone()),
                VersionedRow { hlc, image },
            );
        }
        for cell in &batch.cells {
            let schema = &batch.tables[cell.table as usize];
            assert_eq!(schema.name, STOCK, "only stock merges by column");
            seen.insert((m.origin, schema.name.clone(), cell.key.clone()));
            let row = columns.entry(cell.key.clone()).or_default();
            for change in cell.changes(schema, m.origin) {
                row.merge(&change);
            }
        }
    }
    (model, columns, seen)
}

/// The rows of `stock` the column model shows: plain columns from their visible writes (or
/// their defaults), the counter summed.
fn stock_rows(model: &BTreeMap<Vec<Value>, ColumnRow>) -> Rows {
    model
        .iter()
        .filter(|(_, row)| row.exists())
        .map(|(key, row)| {
            let plain = |name: &str, default: Value| row.column(name).cloned().unwrap_or(default);
            let image = BTreeMap::from([
                ("id".to_string(), key[0].clone()),
                ("label".to_string(), plain("label", Value::Null)),
                (
                    "note".to_string(),
                    plain("note", Value::Text("none".into())),
                ),
                (
                    "qty".to_string(),
                    Value::Integer(row.counter("qty", 0) as i64),
                ),
            ]);
            (key.clone(), image)
        })
        .collect()
}

struct Outcome {
    frames: usize,
    writes: usize,
    stats: Stats,
}

fn run_scenario(seed: u64) -> Result<Outcome, String> {
    let mut sim = Sim::new(seed);
    let steps = sim.rng.usize(60..160);
    if sim.faults.recreate {
        for _ in 0..steps / 2 {
            sim.step();
        }
        sim.quiesce()?;
        sim.recreate_stream();
        for _ in steps / 2..steps {
            sim.step();
        }
    } else {
        for _ in 0..steps {
            sim.step();
        }
    }
    sim.quiesce()?;
    let (model, columns, published) = model_of(&sim.stream.published);
    let stock = stock_rows(&columns);
    let mut writes = 0;
    for (i, r) in sim.replicas.iter().enumerate() {
        let conn = r.session().app_connection();
        for table in TABLES {
            let actual = dump(conn, table);
            let expected = model.live_rows(table);
            if actual != expected {
                return Err(format!(
                    "replica {i} table {table} differs from the LWW model\n actual:   {actual:?}\n expected: {expected:?}"
                ));
            }
        }
        let actual = dump(conn, STOCK);
        if actual != stock {
            return Err(format!(
                "replica {i} table {STOCK} differs from the column model\n actual:   {actual:?}\n expected: {stock:?}"
            ));
        }
        let parked = r.session().parked_count().unwrap();
        if parked > 0 {
            return Err(format!("replica {i} parked {parked} messages"));
        }
        for (table, key) in &r.written {
            writes += 1;
            // A column-merge table publishes only what changed: an UPDATE that wrote the
            // same values, or counter changes that cancel out within one drain, publish
            // nothing (the comparison with the column model above catches a lost write).
            if table == STOCK {
                continue;
            }
            if !published.contains(&(r.node, table.clone(), key.clone())) {
                return Err(format!(
                    "replica {i} wrote {table} {key:?} but it never reached the stream"
                ));
            }
        }
    }
    let first = sim.replicas[0].session().app_connection();
    for (i, r) in sim.replicas.iter().enumerate().skip(1) {
        let conn = r.session().app_connection();
        for table in TABLES.into_iter().chain([STOCK]) {
            if dump(conn, table) != dump(first, table) {
                return Err(format!("replica {i} and replica 0 differ in {table}"));
            }
        }
    }
    Ok(Outcome {
        frames: sim.stream.published.len(),
        writes,
        stats: sim.stats,
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

#[test]
fn replicas_converge_to_the_lww_model() {
    let seeds: Vec<u64> = match env_u64("HL_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("HL_SIM_FIRST_SEED").unwrap_or(1);
            let count = env_u64("HL_SIM_SCENARIOS").unwrap_or(500);
            (first..first + count).collect()
        }
    };
    let (mut frames, mut writes, mut stats) = (0, 0, Stats::default());
    for seed in &seeds {
        match std::panic::catch_unwind(|| run_scenario(*seed)) {
            Ok(Ok(outcome)) => {
                frames += outcome.frames;
                writes += outcome.writes;
                stats += outcome.stats;
            }
            Ok(Err(message)) => {
                panic!("simulation seed {seed} failed: {message}\nreplay with HL_SIM_SEED={seed}")
            }
            Err(_) => panic!(
                "simulation seed {seed} panicked (see above)\nreplay with HL_SIM_SEED={seed}"
            ),
        }
    }
    assert!(
        writes > seeds.len(),
        "scenarios made too few writes to mean anything"
    );
    println!(
        "{} scenarios, {writes} application writes, {frames} frames published; faults: {stats:?}",
        seeds.len()
    );
    if seeds.len() >= 100 {
        let Stats {
            gaps,
            consumer_failures,
            start_failures,
            info_failures,
            mid_batch_reconnects,
            strays,
            retention_drops,
            deletions,
            fell_behind,
            gap_fell_behind,
            catch_ups,
            recreations,
            refusals,
            adoptions,
            restarts,
        } = stats;
        let fired = [
            ("gaps", gaps),
            ("consumer failures", consumer_failures),
            ("start failures", start_failures),
            ("stream info failures", info_failures),
            ("mid-batch reconnects", mid_batch_reconnects),
            ("stray messages", strays),
            ("retention drops", retention_drops),
            ("deleted messages", deletions),
            ("falls behind", fell_behind),
            ("falls behind at a repeated gap", gap_fell_behind),
            ("catch-ups", catch_ups),
            ("re-created streams", recreations),
            ("refusals", refusals),
            ("adoptions", adoptions),
            ("restarts", restarts),
        ];
        for (fault, count) in fired {
            assert!(count > 0, "no {fault} in {} scenarios", seeds.len());
        }
    }
}

#[test]
fn the_sim_clock_drives_trigger_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = SimClock::new(BASE_MILLIS);
    let app = Connection::open_with_flags_and_vfs(
        dir.path().join("a.db"),
        OpenFlags::default(),
        clock.vfs_name(),
    )
    .unwrap();
    let read = || -> i64 {
        app.query_row(
            &format!(
                "SELECT {}",
                harmonylite_core::capture::ddl::WALL_CLOCK_MILLIS
            ),
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(read(), BASE_MILLIS);
    clock.set(BASE_MILLIS - 5_000);
    assert_eq!(read(), BASE_MILLIS - 5_000);
}
