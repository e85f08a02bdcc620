//! Seeded multi-replica simulation on real SQLite files.
//!
//! Each scenario runs 3–5 replicas (an application connection writing through the capture
//! triggers, and an [`Engine`] over a [`Store`]) against an in-memory stand-in for the
//! JetStream stream, with random application writes (inserts, updates, deletes, key-changing
//! updates, multi-row transactions, the same rows on several replicas), delayed drains,
//! random delivery batching, duplicate deliveries and publishes, lost acks, partitions that
//! heal, crashes and restarts, and per-replica clock skew up to ±30 s (the triggers read a
//! simulated clock). At the end every replica's tables must be identical row for row and
//! equal a pure [`LwwModel`] of everything published, and every application write must have
//! reached the stream.
//!
//! `HL_SIM_SEED=<n>` replays one scenario; `HL_SIM_SCENARIOS=<n>` sets how many run
//! (default 500); `HL_SIM_FIRST_SEED=<n>` shifts the seed range.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use common::sim_clock::SimClock;
use harmonylite_core::change::StreamSeq;
use harmonylite_core::engine::{Engine, EngineConfig, Input, Now, Output, Publish};
use harmonylite_core::hlc::{ntp64_from_unix, Hlc, NodeId};
use harmonylite_core::merge::{LwwModel, VersionedRow};
use harmonylite_core::report::Inbound;
use harmonylite_core::sqlite::{Store, StoreOptions};
use harmonylite_core::value::Value;
use harmonylite_core::wire::{self, Compression};
use rusqlite::{Connection, OpenFlags};

/// Simulated wall time of step 0 (Unix ms).
const BASE_MILLIS: i64 = 1_750_000_000_000;
const TABLES: [&str; 2] = ["items", "pairs"];
const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB);
    CREATE TABLE pairs(a TEXT NOT NULL, b INTEGER NOT NULL, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;
";

struct Replica {
    node: NodeId,
    path: PathBuf,
    clock: SimClock,
    skew_ms: i64,
    app: Connection,
    engine: Option<Engine<Store>>,
    options: StoreOptions,
    engine_config: EngineConfig,
    connected: bool,
    publishes: VecDeque<Publish>,
    /// (table, key) of every committed application write, for the no-lost-write check.
    written: Vec<(String, Vec<Value>)>,
}

#[derive(Default)]
struct Stream {
    frames: Vec<Vec<u8>>,
    msg_ids: HashSet<String>,
}

struct Sim {
    rng: fastrand::Rng,
    replicas: Vec<Replica>,
    stream: Stream,
    time_ms: u64,
    _dir: tempfile::TempDir,
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

    fn engine(&mut self) -> &mut Engine<Store> {
        self.engine.as_mut().expect("replica is running")
    }

    fn start(&mut self, time_ms: u64) {
        let conn = Connection::open(&self.path).unwrap();
        let store = Store::open(conn, self.options.clone()).unwrap();
        self.engine = Some(Engine::new(store, self.engine_config.clone()));
        if self.connected {
            self.input(time_ms, Input::Connected);
        }
    }

    fn input(&mut self, time_ms: u64, input: Input) {
        let now = self.now(time_ms);
        let engine = self.engine.as_mut().expect("replica is running");
        engine.handle_input(now, input);
        while let Some(output) = engine.poll_output() {
            match output {
                Output::Publish(p) => self.publishes.push_back(p),
                Output::Event(harmonylite_core::engine::Event::DatabaseError {
                    operation,
                    error,
                    ..
                }) => {
                    panic!("database error while {operation}: {error}")
                }
                Output::Event(_) => {}
            }
        }
    }

    fn tick(&mut self, time_ms: u64) {
        self.clock.set(BASE_MILLIS + time_ms as i64 + self.skew_ms);
        let due = self
            .engine()
            .poll_timeout()
            .is_some_and(|t| t <= Duration::from_millis(time_ms));
        if due {
            self.input(time_ms, Input::Timeout);
        }
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
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
                options.max_frame = max_frame;
                options.compression = compression;
                let engine_config = EngineConfig {
                    polling_interval: Duration::from_millis(rng.u64(50..500)),
                    publish_window: rng.usize(1..6),
                    apply_batch: rng.usize(1..8),
                    retry_min: Duration::from_millis(10),
                    retry_max: Duration::from_millis(200),
                    parked_retry_interval: Duration::from_millis(500),
                    publish: true,
                };
                Replica {
                    node,
                    path,
                    clock,
                    skew_ms,
                    app,
                    engine: None,
                    options,
                    engine_config,
                    connected: true,
                    publishes: VecDeque::new(),
                    written: Vec::new(),
                }
            })
            .collect();
        let mut sim = Sim {
            rng,
            replicas,
            stream: Stream::default(),
            time_ms: 0,
            _dir: dir,
        };
        for r in &mut sim.replicas {
            r.start(0);
        }
        sim
    }

    fn step(&mut self) {
        let r = self.rng.usize(..self.replicas.len());
        match self.rng.u8(..100) {
            0..=39 => self.app_write(r),
            40..=59 => self.deliver(r),
            60..=79 => self.pump_publishes(r, false),
            80..=84 => self.toggle_partition(r),
            85..=87 => self.restart(r),
            88 => {
                // A wall-clock jump (backwards or forwards) on one replica.
                self.replicas[r].skew_ms = self.rng.i64(-30_000..=30_000);
            }
            _ => {
                let ms = self.rng.u64(1..400);
                self.advance(ms);
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        self.time_ms += ms;
        for r in &mut self.replicas {
            r.tick(self.time_ms);
        }
    }

    fn toggle_partition(&mut self, r: usize) {
        let t = self.time_ms;
        let replica = &mut self.replicas[r];
        replica.connected = !replica.connected;
        replica.publishes.clear();
        let input = if replica.connected {
            Input::Connected
        } else {
            Input::Disconnected
        };
        replica.input(t, input);
    }

    fn restart(&mut self, r: usize) {
        let t = self.time_ms;
        let replica = &mut self.replicas[r];
        replica.engine = None;
        replica.publishes.clear();
        replica.start(t);
    }

    fn deliver(&mut self, r: usize) {
        let t = self.time_ms;
        let count = self.rng.usize(1..8);
        let duplicate = self.rng.u8(..10) == 0;
        let replica = &mut self.replicas[r];
        if !replica.connected {
            return;
        }
        let cursor = replica.engine().cursor().get() as usize;
        if duplicate && cursor > 0 {
            let seq = self.rng.usize(1..=cursor);
            let frame = self.stream.frames[seq - 1].clone();
            replica.input(
                t,
                Input::Message(Inbound {
                    seq: StreamSeq::new(seq as u64),
                    frame,
                }),
            );
        }
        for seq in cursor + 1..=(cursor + count).min(self.stream.frames.len()) {
            let frame = self.stream.frames[seq - 1].clone();
            replica.input(
                t,
                Input::Message(Inbound {
                    seq: StreamSeq::new(seq as u64),
                    frame,
                }),
            );
        }
    }

    /// Carries out pending publishes: stored (or de-duplicated) and acknowledged, with lost
    /// acks and failures unless `reliable`.
    fn pump_publishes(&mut self, r: usize, reliable: bool) {
        let t = self.time_ms;
        let n = if reliable {
            usize::MAX
        } else {
            self.rng.usize(1..6)
        };
        for _ in 0..n {
            let Some(p) = self.replicas[r].publishes.pop_front() else {
                break;
            };
            if !self.replicas[r].connected {
                self.replicas[r].input(t, Input::PublishFailed { id: p.id });
                continue;
            }
            let dedup =
                self.stream.msg_ids.contains(&p.msg_id) && (reliable || self.rng.u8(..10) < 7);
            if !dedup {
                self.stream.frames.push(p.frame);
                self.stream.msg_ids.insert(p.msg_id);
            }
            let ack_lost = !reliable && self.rng.u8(..10) == 0;
            let input = if ack_lost {
                Input::PublishFailed { id: p.id }
            } else {
                Input::Acked { id: p.id }
            };
            self.replicas[r].input(t, input);
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
            replica.input(t, Input::LocalWrite);
        }
    }

    /// Heals everything and runs until every replica has published and applied it all.
    fn quiesce(&mut self) -> Result<(), String> {
        for r in 0..self.replicas.len() {
            if !self.replicas[r].connected {
                self.toggle_partition(r);
            }
        }
        for round in 0..500 {
            for r in 0..self.replicas.len() {
                let t = self.time_ms;
                self.replicas[r].input(t, Input::LocalWrite);
                self.pump_publishes(r, true);
                let len = self.stream.frames.len();
                let replica = &mut self.replicas[r];
                let cursor = replica.engine().cursor().get() as usize;
                for seq in cursor + 1..=len {
                    let frame = self.stream.frames[seq - 1].clone();
                    replica.input(
                        t,
                        Input::Message(Inbound {
                            seq: StreamSeq::new(seq as u64),
                            frame,
                        }),
                    );
                }
            }
            self.advance(1000);
            let len = self.stream.frames.len() as u64;
            let settled = self.replicas.iter_mut().all(|r| {
                let store = r.engine.as_ref().unwrap().db();
                r.publishes.is_empty()
                    && store.outbox_depth().unwrap().0 == 0
                    && !store.has_pending_log().unwrap()
                    && store.cursor().get() == len
            });
            if settled && round > 0 {
                return Ok(());
            }
        }
        let state: Vec<String> = self
            .replicas
            .iter()
            .map(|r| {
                let engine = r.engine.as_ref().unwrap();
                let store = engine.db();
                format!(
                    "publishes={} outbox={:?} log={} cursor={} in_flight={} inbox={}",
                    r.publishes.len(),
                    store.outbox_depth().unwrap(),
                    store.has_pending_log().unwrap(),
                    store.cursor(),
                    engine.in_flight(),
                    engine.inbox_len()
                )
            })
            .collect();
        Err(format!(
            "replicas did not settle after 500 rounds (stream has {} frames): {state:#?}",
            self.stream.frames.len()
        ))
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
}

impl AppOp {
    fn random(rng: &mut fastrand::Rng) -> Self {
        let id = rng.i64(1..=12);
        let a = ["x", "y", "zé"][rng.usize(..3)].to_string();
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

/// The LWW state of everything in the stream, and the (origin, table, key) of every change.
fn model_of(stream: &Stream) -> (LwwModel, HashSet<(NodeId, String, Vec<Value>)>) {
    let mut model = LwwModel::new();
    let mut seen = HashSet::new();
    let mut parts: HashMap<(NodeId, u64), BTreeMap<u32, Vec<u8>>> = HashMap::new();
    for frame in &stream.frames {
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
    }
    (model, seen)
}

struct Outcome {
    frames: usize,
    writes: usize,
}

fn run_scenario(seed: u64) -> Result<Outcome, String> {
    let mut sim = Sim::new(seed);
    let steps = sim.rng.usize(60..160);
    for _ in 0..steps {
        sim.step();
    }
    sim.quiesce()?;
    let (model, published) = model_of(&sim.stream);
    let mut writes = 0;
    for (i, r) in sim.replicas.iter().enumerate() {
        let conn = r.engine.as_ref().unwrap().db().connection();
        for table in TABLES {
            let actual = dump(conn, table);
            let expected = model.live_rows(table);
            if actual != expected {
                return Err(format!(
                    "replica {i} table {table} differs from the LWW model\n actual:   {actual:?}\n expected: {expected:?}"
                ));
            }
        }
        let parked = r.engine.as_ref().unwrap().db().parked_count().unwrap();
        if parked > 0 {
            return Err(format!("replica {i} parked {parked} messages"));
        }
        for (table, key) in &r.written {
            writes += 1;
            if !published.contains(&(r.node, table.clone(), key.clone())) {
                return Err(format!(
                    "replica {i} wrote {table} {key:?} but it never reached the stream"
                ));
            }
        }
    }
    let first = sim.replicas[0].engine.as_ref().unwrap().db().connection();
    for (i, r) in sim.replicas.iter().enumerate().skip(1) {
        let conn = r.engine.as_ref().unwrap().db().connection();
        for table in TABLES {
            if dump(conn, table) != dump(first, table) {
                return Err(format!("replica {i} and replica 0 differ in {table}"));
            }
        }
    }
    Ok(Outcome {
        frames: sim.stream.frames.len(),
        writes,
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
    let (mut frames, mut writes) = (0, 0);
    for seed in &seeds {
        match std::panic::catch_unwind(|| run_scenario(*seed)) {
            Ok(Ok(outcome)) => {
                frames += outcome.frames;
                writes += outcome.writes;
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
        "{} scenarios, {writes} application writes, {frames} frames published",
        seeds.len()
    );
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
