//! Capture, drain and apply throughput of `harmonylite-core`'s SQLite store.
//!
//! A figure printer, not a test: it checks that what it measured is correct (row counts) but
//! never asserts on speed. Everything runs on real SQLite files in a temporary directory, in
//! WAL mode with `PRAGMA synchronous = NORMAL` on the application's connection, in this one
//! process.
//!
//! 1. **Capture overhead.** The same workload on a table with capture installed (a
//!    [`Store`] is opened on the file first, so the triggers exist; it never drains during
//!    the timed section) and on an identical table in another file without capture. Runs
//!    alternate between the two (A B, B A, ...) and each ratio (time with / time without) is
//!    computed within one run pair. Workloads: autocommit INSERTs, INSERTs in 100- and
//!    1000-row transactions, 1-column UPDATEs by primary key (autocommit and in 1000-row
//!    transactions), DELETEs by primary key in 1000-row transactions; ~100-byte rows,
//!    prepared statements. `diag:` rows split the cost: capture with the echo-suppression
//!    marker set (triggers fire, write nothing), a table whose only trigger is a no-op
//!    (`WHEN 0`), and autocommit with `synchronous = FULL`.
//! 2. **Drain.** `Store::drain()` over a log of pending single-row inserts (written in
//!    1000-row transactions beforehand), LZ4 on and off; encoding alone for comparison.
//! 3. **Apply.** `Store::receive()` of frames produced by another node's drain, in groups of
//!    64 messages per call, into a fresh file per run: 1000-row batches (one frame each),
//!    one big multi-part batch, and updates of rows the receiver already holds at an older
//!    version (the conflict path). A `diag:` row runs with `PRAGMA temp_store = MEMORY` on
//!    the store's connection; a breakdown times frame decoding alone.
//!
//! Each figure is the median of `HL_BENCH_RUNS` runs (default 5), with min and max, from
//! wall time. Two more columns: the median of the same figure from the thread's on-CPU time
//! (steadier on a busy machine; it leaves out waiting for a CPU and blocking I/O such as
//! checkpoint fsyncs) and the bytes handed to `write()` syscalls per row (WAL frames,
//! statement journals spilled to temp files), from `/proc/self/io`.
//!
//! ```text
//! cargo bench -p harmonylite-core --features sqlite --bench capture            # full sizes
//! cargo bench -p harmonylite-core --features sqlite --bench capture -- --quick # tiny, 3 runs
//! HL_BENCH_RUNS=9 HL_BENCH_SCALE=0.5 cargo bench -p harmonylite-core --features sqlite --bench capture
//! cargo bench -p harmonylite-core --features sqlite --bench capture -- apply   # one section
//! cargo bench -p harmonylite-core --features sqlite --bench capture -- "insert, autocommit"
//! ```
//!
//! `-- --json FILE` also writes every figure to FILE (what `scripts/bench` reads).
//! `HL_BENCH_SCALE` multiplies every row count. A free argument selects a section
//! (`capture`, `drain`, `apply`) or the capture workloads whose name starts with it (handy
//! under `perf record`). Without cargo's `--bench` argument (e.g. under
//! `cargo test --all-targets`) the binary runs in `--quick` mode. Figures are noisy on a
//! shared machine: other processes compete for the CPUs, the disk and the page cache.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::{ntp64_from_unix, NodeId, NTP64};
use harmonylite_core::report::Inbound;
use harmonylite_core::sqlite::{Store, StoreOptions};
use harmonylite_core::wire::{self, Compression};
use rusqlite::{params, Connection};

const SCHEMA: &str =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB)";
const INSERT: &str = "INSERT INTO t(id, name, qty, price, data) VALUES (?1, ?2, ?3, ?4, ?5)";
const NODE_A: u128 = 0xA;
const NODE_B: u128 = 0xB;
/// Messages handed to one `Store::receive` call.
const RECEIVE_GROUP: usize = 64;

// ---------------------------------------------------------------------------------------
// Configuration and statistics
// ---------------------------------------------------------------------------------------

struct Config {
    runs: usize,
    scale: f64,
    quick: bool,
    /// `--json <file>`: also write every figure there, machine-readable (see
    /// [`Table::write_json`]).
    json: Option<PathBuf>,
    /// Only run what matches (a section name `capture`/`drain`/`apply`, or part of a
    /// workload name), from the first argument not starting with `-`.
    filter: Option<String>,
}

impl Config {
    fn from_env() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        // `cargo bench` passes `--bench`; anything else (e.g. `cargo test`) gets quick mode.
        let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
        let env_f64 = |name: &str| -> Option<f64> {
            std::env::var(name).ok().map(|v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
            })
        };
        let runs = env_f64("HL_BENCH_RUNS")
            .map(|r| r as usize)
            .unwrap_or(if quick { 3 } else { 5 })
            .max(1);
        let scale = env_f64("HL_BENCH_SCALE").unwrap_or(1.0) * if quick { 0.01 } else { 1.0 };
        assert!(scale > 0.0, "HL_BENCH_SCALE must be positive");
        let json = args.iter().position(|a| a == "--json").map(|i| {
            PathBuf::from(
                args.get(i + 1)
                    .unwrap_or_else(|| panic!("--json needs a file name")),
            )
        });
        let filter = args
            .iter()
            .enumerate()
            .find(|(i, a)| !a.starts_with('-') && (*i == 0 || args[i - 1] != "--json"))
            .map(|(_, a)| a.clone());
        Config {
            runs,
            scale,
            quick,
            json,
            filter,
        }
    }

    fn wants(&self, section: &str, name: &str) -> bool {
        self.filter
            .as_deref()
            .is_none_or(|f| f == section || name.starts_with(f))
    }

    /// `base` scaled, at least `min`.
    fn n(&self, base: usize, min: usize) -> usize {
        ((base as f64 * self.scale).round() as usize).max(min)
    }
}

/// Median, min and max of a sample.
#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Stats {
        assert!(!samples.is_empty());
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let mid = s.len() / 2;
        let median = if s.len() % 2 == 1 {
            s[mid]
        } else {
            (s[mid - 1] + s[mid]) / 2.0
        };
        Stats {
            median,
            min: s[0],
            max: s[s.len() - 1],
        }
    }
}

/// What a target says about a figure.
#[derive(Clone, Copy)]
enum Target {
    None,
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    /// The target as JSON (`{"at_most": v}` or `{"at_least": v}`) and its verdict on
    /// `median` (`MET` / `MISSED`), or `None` without a target. The printed table and the
    /// `--json` file both use this, so BENCHMARKS.md shows the same verdicts.
    fn judge(self, median: f64) -> Option<(serde_json::Value, &'static str)> {
        let (json, met) = match self {
            Target::None => return None,
            Target::AtMost(v) => (serde_json::json!({ "at_most": v }), median <= v),
            Target::AtLeast(v) => (serde_json::json!({ "at_least": v }), median >= v),
        };
        Some((json, if met { "MET" } else { "MISSED" }))
    }
}

struct Line {
    metric: String,
    stats: Stats,
    /// How many runs the figure is made of.
    runs: usize,
    /// The same figure computed from on-CPU time instead of wall time.
    cpu: Option<Stats>,
    /// Bytes passed to `write()`-family syscalls per row (WAL, journals, temp files).
    written: Option<Stats>,
    unit: &'static str,
    target: Target,
}

#[derive(Default)]
struct Table {
    sections: Vec<(String, Vec<Line>)>,
}

impl Table {
    fn section(&mut self, title: &str) {
        self.sections.push((title.to_string(), Vec::new()));
    }

    fn add(&mut self, metric: impl Into<String>, samples: &[f64], unit: &'static str, t: Target) {
        self.add_full(metric, samples, &[], &[], unit, t);
    }

    /// A figure from wall-time samples, plus the same from on-CPU time and bytes written
    /// per row (either may be empty).
    fn add_full(
        &mut self,
        metric: impl Into<String>,
        samples: &[f64],
        cpu: &[f64],
        written: &[f64],
        unit: &'static str,
        t: Target,
    ) {
        let linux = cfg!(target_os = "linux");
        let line = Line {
            metric: metric.into(),
            stats: Stats::of(samples),
            runs: samples.len(),
            cpu: (!cpu.is_empty() && linux).then(|| Stats::of(cpu)),
            written: (!written.is_empty() && linux).then(|| Stats::of(written)),
            unit,
            target: t,
        };
        eprintln!(
            "  {:<52} {:>12} {}",
            line.metric,
            fmt_num(line.stats.median),
            line.unit
        );
        self.sections
            .last_mut()
            .expect("a section first")
            .1
            .push(line);
    }

    /// Writes every figure to `path` as `{"suite", "figures": [{"metric", "value", "unit",
    /// "peer", "runs", "min", "median", "max", "section"}]}` (value = median, from wall
    /// time), plus `"target"` and `"verdict"` for a figure with a target (see
    /// [`Target::judge`]). An indented line is named after the line it belongs to
    /// (`"<parent> / <line>"`), except the `diag:` and `of which:` lines, which stand alone;
    /// ratios and the plain-table side count as figures of the peer `sqlite`.
    fn write_json(&self, path: &Path, cfg: &Config) {
        let mut figures = Vec::new();
        for (title, lines) in &self.sections {
            let mut parent = String::new();
            for l in lines {
                let trimmed = l.metric.trim();
                let standalone = ["diag:", "of which:"]
                    .iter()
                    .any(|p| trimmed.starts_with(p));
                let name = if standalone {
                    trimmed.to_string()
                } else if l.metric.starts_with(' ') {
                    format!("{parent} / {trimmed}")
                } else {
                    parent = l.metric.trim_end_matches(": ratio").to_string();
                    l.metric.clone()
                };
                let peer = if l.unit == "x" {
                    "harmonylite vs sqlite"
                } else if l.metric.trim() == "without capture" {
                    "sqlite"
                } else {
                    "harmonylite"
                };
                let mut figure = serde_json::json!({
                    "metric": name,
                    "value": l.stats.median,
                    "unit": l.unit,
                    "peer": peer,
                    "runs": l.runs,
                    "min": l.stats.min,
                    "median": l.stats.median,
                    "max": l.stats.max,
                    "section": title,
                });
                if let Some((target, verdict)) = l.target.judge(l.stats.median) {
                    figure["target"] = target;
                    figure["verdict"] = verdict.into();
                }
                figures.push(figure);
            }
        }
        let doc = serde_json::json!({
            "suite": "capture",
            "quick": cfg.quick,
            "scale": cfg.scale,
            "sqlite": rusqlite::version(),
            "machine": machine(),
            "figures": figures,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).expect("json"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    fn print(&self) {
        let width = self
            .sections
            .iter()
            .flat_map(|(_, lines)| lines.iter().map(|l| l.metric.len()))
            .max()
            .unwrap_or(10)
            .max(6);
        let header = format!(
            "{:<width$}  {:>12}  {:>12}  {:>12}  {:<7}  {:>12}  {:>9}  {:<16}",
            "metric",
            "median",
            "min",
            "max",
            "unit",
            "cpu median",
            "wr B/row",
            "target (on wall median)"
        );
        println!("{header}");
        println!("{}", "-".repeat(header.len()));
        for (title, lines) in &self.sections {
            println!("[{title}]");
            for l in lines {
                let target = match (l.target, l.target.judge(l.stats.median)) {
                    (Target::AtMost(v), Some((_, verdict))) => format!("<= {v} {verdict}"),
                    (Target::AtLeast(v), Some((_, verdict))) => {
                        format!(">= {} {verdict}", fmt_num(v))
                    }
                    _ => String::new(),
                };
                println!(
                    "{:<width$}  {:>12}  {:>12}  {:>12}  {:<7}  {:>12}  {:>9}  {}",
                    l.metric,
                    fmt_num(l.stats.median),
                    fmt_num(l.stats.min),
                    fmt_num(l.stats.max),
                    l.unit,
                    l.cpu.map(|c| fmt_num(c.median)).unwrap_or_default(),
                    l.written
                        .map(|c| format!("{:.0}", c.median))
                        .unwrap_or_default(),
                    target
                );
            }
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1000.0 {
        // Thousands separators for rates.
        let s = format!("{:.0}", v);
        let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push('_');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// On-CPU time of the calling thread (Linux): unlike wall time, it leaves out time spent
/// waiting for a CPU taken by other processes, so it is steadier on a shared machine. It
/// also leaves out blocking I/O (the fsyncs of WAL checkpoints).
#[cfg(target_os = "linux")]
fn thread_cpu() -> Duration {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout) for the call.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu() -> Duration {
    Duration::ZERO
}

/// Bytes this process passed to `write()`-family syscalls so far (`wchar` in
/// `/proc/self/io`; 0 where unavailable).
fn bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Wall time, on-CPU time and bytes written of a timed section.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Duration,
    written: u64,
}

struct Timer {
    wall: Instant,
    cpu: Duration,
    written: u64,
}

impl Timer {
    fn start() -> Timer {
        Timer {
            written: bytes_written(),
            cpu: thread_cpu(),
            wall: Instant::now(),
        }
    }

    fn stop(self) -> Timing {
        let wall = self.wall.elapsed();
        let cpu = thread_cpu().saturating_sub(self.cpu);
        Timing {
            wall,
            cpu,
            written: bytes_written().saturating_sub(self.written),
        }
    }
}

/// Wall and on-CPU rates, and bytes written per row, of the runs of one figure.
#[derive(Default)]
struct Rates {
    wall: Vec<f64>,
    cpu: Vec<f64>,
    written: Vec<f64>,
}

impl Rates {
    fn push(&mut self, rows: usize, t: Timing) {
        self.wall.push(rate(rows, t.wall));
        self.cpu.push(rate(rows, t.cpu));
        self.written.push(t.written as f64 / rows as f64);
    }

    fn report(&self, table: &mut Table, metric: impl Into<String>, target: Target) {
        table.add_full(
            metric,
            &self.wall,
            &self.cpu,
            &self.written,
            "rows/s",
            target,
        );
    }
}

fn rate(rows: usize, d: Duration) -> f64 {
    rows as f64 / d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------
// Files and rows
// ---------------------------------------------------------------------------------------

/// Names fresh database files in one temporary directory and deletes them after use.
struct Files {
    dir: tempfile::TempDir,
    next: usize,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::tempdir().expect("creating a temporary directory"),
            next: 0,
        }
    }

    fn fresh(&mut self, label: &str) -> PathBuf {
        self.next += 1;
        self.dir.path().join(format!("{:04}-{label}.db", self.next))
    }
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Copies a closed (checkpointed) database file.
fn copy_db(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copying a template database");
}

/// The application's connection: WAL, `synchronous = NORMAL`.
fn app_connection(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("opening the app connection");
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .expect("WAL");
    assert_eq!(mode, "wal");
    conn.execute_batch("PRAGMA synchronous = NORMAL")
        .expect("synchronous");
    conn
}

fn open_store(path: &Path, node: u128, compression: Compression) -> Store {
    let mut options = StoreOptions::new(NodeId::from_u128(node).expect("non-zero node id"));
    options.compression = compression;
    Store::open(Connection::open(path).expect("opening the store"), options).expect("Store::open")
}

fn now() -> NTP64 {
    ntp64_from_unix(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970"),
    )
}

/// Values of row `id` (about 100 bytes: ~21-byte text, two 8-byte numbers, 64-byte blob).
struct RowGen {
    data: Vec<u8>,
}

impl RowGen {
    fn new() -> Self {
        RowGen {
            data: (0..64u8).collect(),
        }
    }

    fn data(&mut self, id: i64) -> &[u8] {
        self.data[..8].copy_from_slice(&id.to_le_bytes());
        &self.data
    }
}

/// Inserts rows `first..first + count` in transactions of `tx_rows`.
fn insert_rows(conn: &Connection, first: i64, count: usize, tx_rows: usize) {
    let mut gen = RowGen::new();
    let mut stmt = conn.prepare(INSERT).expect("prepare insert");
    let mut id = first;
    let end = first + count as i64;
    while id < end {
        conn.execute_batch("BEGIN").expect("begin");
        let stop = (id + tx_rows as i64).min(end);
        while id < stop {
            stmt.execute(params![
                id,
                format!("name-{id:016}"),
                id,
                id as f64 * 0.5,
                gen.data(id)
            ])
            .expect("insert");
            id += 1;
        }
        conn.execute_batch("COMMIT").expect("commit");
    }
}

fn checkpoint(conn: &Connection) {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
}

// ---------------------------------------------------------------------------------------
// 1. Capture overhead
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Op {
    Insert,
    Update,
    Delete,
}

struct Workload {
    name: &'static str,
    op: Op,
    rows: usize,
    /// Rows per transaction; 1 = autocommit.
    tx_rows: usize,
    target: Target,
    /// What side A has.
    variant: Variant,
    /// Diagnostic: `PRAGMA synchronous = FULL` on both app connections (an fsync per commit).
    full_sync: bool,
}

/// Side A of a pair (side B is always a plain table).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Capture installed.
    Capture,
    /// Diagnostic: capture installed, echo-suppression marker set, so the triggers fire
    /// but their `WHEN` clause is false and they write nothing.
    Suppressed,
    /// Diagnostic: capture installed, then its triggers recreated without their `WHEN`
    /// clause (the echo-suppression check), to price that check.
    NoWhen,
    /// Diagnostic: no capture; one `AFTER INSERT ... WHEN 0` trigger that never runs a
    /// statement: the price of a table having any trigger at all.
    NoopTrigger,
}

/// One side of a pair, ready for the timed section.
struct Side {
    app: Connection,
    /// The capture side's store (kept open, never drained while timing); the plain side
    /// keeps an idle second connection instead, so both files have two connections.
    _store: Option<Store>,
    _other: Option<Connection>,
    path: PathBuf,
}

fn prepare_side(files: &mut Files, w: &Workload, side_a: bool) -> Side {
    let path = files.fresh(if side_a { "a" } else { "b" });
    let app = app_connection(&path);
    app.execute_batch(SCHEMA).expect("schema");
    if w.full_sync {
        app.execute_batch("PRAGMA synchronous = FULL")
            .expect("synchronous");
    }
    let capture = side_a && w.variant != Variant::NoopTrigger;
    if side_a && w.variant == Variant::NoopTrigger {
        app.execute_batch("CREATE TRIGGER noop AFTER INSERT ON t WHEN 0 BEGIN SELECT 1; END")
            .expect("no-op trigger");
    }
    let (mut store, other) = if capture {
        (Some(open_store(&path, NODE_A, Compression::Lz4)), None)
    } else {
        (
            None,
            Some(Connection::open(&path).expect("second connection")),
        )
    };
    if !matches!(w.op, Op::Insert) {
        insert_rows(&app, 1, w.rows, 1000);
        if let Some(store) = store.as_mut() {
            // Existing rows have versions, as they would in a running node.
            store.drain().expect("drain of the pre-population");
            let frames = store.outbox_after(0, usize::MAX).expect("outbox");
            let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
            store.outbox_remove(&ids).expect("outbox cleanup");
        }
    }
    if capture && w.variant == Variant::NoWhen {
        drop_when_clauses(&app);
    }
    if capture && w.variant == Variant::Suppressed {
        app.execute_batch("INSERT INTO __hl_applying VALUES (1)")
            .expect("setting the marker");
    }
    checkpoint(&app);
    Side {
        app,
        _store: store,
        _other: other,
        path,
    }
}

/// Recreates the capture triggers of `t` without their `WHEN` clause (the store must not
/// touch the file afterwards: it would see a schema change).
fn drop_when_clauses(conn: &Connection) {
    let triggers: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 't'")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()
        })
        .expect("reading triggers");
    assert_eq!(triggers.len(), 3);
    let when = "WHEN NOT EXISTS (SELECT 1 FROM \"__hl_applying\") ";
    for (name, sql) in triggers {
        assert!(sql.contains(when), "unexpected trigger text: {sql}");
        conn.execute_batch(&format!(
            "DROP TRIGGER \"{name}\"; {};",
            sql.replace(when, "")
        ))
        .expect("recreating a trigger");
    }
}

fn run_workload(conn: &Connection, w: &Workload) -> Timing {
    let mut gen = RowGen::new();
    let sql = match w.op {
        Op::Insert => INSERT,
        Op::Update => "UPDATE t SET qty = ?1 WHERE id = ?2",
        Op::Delete => "DELETE FROM t WHERE id = ?1",
    };
    let mut stmt = conn.prepare(sql).expect("prepare");
    // Prepared outside the timed section too.
    let mut begin = conn.prepare("BEGIN").expect("prepare begin");
    let mut commit = conn.prepare("COMMIT").expect("prepare commit");
    let names: Vec<String> = match w.op {
        Op::Insert => (1..=w.rows).map(|id| format!("name-{id:016}")).collect(),
        _ => Vec::new(),
    };
    let timer = Timer::start();
    let mut id = 1i64;
    let end = w.rows as i64 + 1;
    while id < end {
        let batched = w.tx_rows > 1;
        if batched {
            begin.execute([]).expect("begin");
        }
        let stop = (id + w.tx_rows as i64).min(end);
        while id < stop {
            let changed = match w.op {
                Op::Insert => stmt
                    .execute(params![
                        id,
                        names[(id - 1) as usize],
                        id,
                        id as f64 * 0.5,
                        gen.data(id)
                    ])
                    .expect("insert"),
                Op::Update => stmt.execute(params![id * 7, id]).expect("update"),
                Op::Delete => stmt.execute([id]).expect("delete"),
            };
            debug_assert_eq!(changed, 1);
            id += 1;
        }
        if batched {
            commit.execute([]).expect("commit");
        }
    }
    timer.stop()
}

// Two names for one function, so a profiler tells the sides apart (the `black_box` calls
// keep them from being merged or turned into tail calls).
#[inline(never)]
fn timed_with_capture(conn: &Connection, w: &Workload) -> Timing {
    let timing = run_workload(conn, w);
    std::hint::black_box(1u8);
    timing
}

#[inline(never)]
fn timed_without_capture(conn: &Connection, w: &Workload) -> Timing {
    let timing = run_workload(conn, w);
    std::hint::black_box(2u8);
    timing
}

fn log_depth(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM __hl_log", [], |r| r.get(0))
        .expect("log depth")
}

fn bench_capture(cfg: &Config, files: &mut Files, table: &mut Table) {
    let t = |n| Target::AtMost(n);
    let workloads = [
        Workload {
            name: "insert, autocommit",
            op: Op::Insert,
            rows: cfg.n(20_000, 50),
            tx_rows: 1,
            target: t(1.05),
            variant: Variant::Capture,
            full_sync: false,
        },
        Workload {
            name: "insert, 100-row tx",
            op: Op::Insert,
            rows: cfg.n(50_000, 200),
            tx_rows: 100,
            target: t(1.3),
            variant: Variant::Capture,
            full_sync: false,
        },
        Workload {
            name: "insert, 1000-row tx",
            op: Op::Insert,
            rows: cfg.n(50_000, 1000),
            tx_rows: 1000,
            target: Target::None,
            variant: Variant::Capture,
            full_sync: false,
        },
        Workload {
            name: "update 1 col by pk, autocommit",
            op: Op::Update,
            rows: cfg.n(20_000, 50),
            tx_rows: 1,
            target: Target::None,
            variant: Variant::Capture,
            full_sync: false,
        },
        Workload {
            name: "update 1 col by pk, 1000-row tx",
            op: Op::Update,
            rows: cfg.n(50_000, 1000),
            tx_rows: 1000,
            target: Target::None,
            variant: Variant::Capture,
            full_sync: false,
        },
        Workload {
            name: "delete by pk, 1000-row tx",
            op: Op::Delete,
            rows: cfg.n(50_000, 1000),
            tx_rows: 1000,
            target: Target::None,
            variant: Variant::Capture,
            full_sync: false,
        },
        Workload {
            name: "diag: insert, autocommit, triggers suppressed",
            op: Op::Insert,
            rows: cfg.n(20_000, 50),
            tx_rows: 1,
            target: Target::None,
            variant: Variant::Suppressed,
            full_sync: false,
        },
        Workload {
            name: "diag: insert, 1000-row tx, triggers suppressed",
            op: Op::Insert,
            rows: cfg.n(50_000, 1000),
            tx_rows: 1000,
            target: Target::None,
            variant: Variant::Suppressed,
            full_sync: false,
        },
        Workload {
            name: "diag: insert, 1000-row tx, capture triggers without WHEN",
            op: Op::Insert,
            rows: cfg.n(50_000, 1000),
            tx_rows: 1000,
            target: Target::None,
            variant: Variant::NoWhen,
            full_sync: false,
        },
        Workload {
            name: "diag: insert, autocommit, synchronous=FULL",
            op: Op::Insert,
            rows: cfg.n(500, 20),
            tx_rows: 1,
            target: Target::None,
            variant: Variant::Capture,
            full_sync: true,
        },
        Workload {
            name: "diag: insert, autocommit, no-op trigger only",
            op: Op::Insert,
            rows: cfg.n(20_000, 50),
            tx_rows: 1,
            target: Target::None,
            variant: Variant::NoopTrigger,
            full_sync: false,
        },
        Workload {
            name: "diag: insert, 1000-row tx, no-op trigger only",
            op: Op::Insert,
            rows: cfg.n(50_000, 1000),
            tx_rows: 1000,
            target: Target::None,
            variant: Variant::NoopTrigger,
            full_sync: false,
        },
    ];
    let wanted: Vec<&Workload> = workloads
        .iter()
        .filter(|w| cfg.wants("capture", w.name))
        .collect();
    if !wanted.is_empty() {
        table.section("1. capture overhead: same workload with / without capture triggers");
    }
    for w in wanted {
        let (mut with, mut without) = (Rates::default(), Rates::default());
        let (mut ratio, mut ratio_cpu) = (Vec::new(), Vec::new());
        for run in 0..cfg.runs {
            let a = prepare_side(files, w, true);
            let b = prepare_side(files, w, false);
            // Alternate which side goes first: A B, B A, ...
            let (ta, tb) = if run % 2 == 0 {
                let ta = timed_with_capture(&a.app, w);
                (ta, timed_without_capture(&b.app, w))
            } else {
                let tb = timed_without_capture(&b.app, w);
                (timed_with_capture(&a.app, w), tb)
            };
            // Every workload changes each row once, without touching keys: one entry per row.
            let expected_log = match w.variant {
                Variant::Capture => Some(w.rows as i64),
                Variant::Suppressed => Some(0),
                Variant::NoWhen => Some(w.rows as i64),
                Variant::NoopTrigger => None,
            };
            if let Some(expected) = expected_log {
                assert_eq!(log_depth(&a.app), expected, "{}: log depth", w.name);
            }
            with.push(w.rows, ta);
            without.push(w.rows, tb);
            ratio.push(ta.wall.as_secs_f64() / tb.wall.as_secs_f64());
            ratio_cpu.push(ta.cpu.as_secs_f64() / tb.cpu.as_secs_f64());
            for side in [a, b] {
                let path = side.path.clone();
                drop(side);
                remove_db(&path);
            }
        }
        let tx = if w.tx_rows == 1 {
            String::new()
        } else {
            format!(" x{}", w.rows / w.tx_rows)
        };
        table.add_full(
            format!("{} ({} rows{tx}): ratio", w.name, w.rows),
            &ratio,
            &ratio_cpu,
            &[],
            "x",
            w.target,
        );
        let a_label = match w.variant {
            Variant::Capture => "    with capture",
            Variant::Suppressed => "    with capture, suppressed",
            Variant::NoWhen => "    with capture, no WHEN",
            Variant::NoopTrigger => "    with no-op trigger",
        };
        with.report(table, a_label, Target::None);
        without.report(table, "    without capture", Target::None);
    }
}

// ---------------------------------------------------------------------------------------
// 2. Drain
// ---------------------------------------------------------------------------------------

/// A closed database with `rows` pending log entries (inserts in 1000-row transactions).
fn drain_template(files: &mut Files, rows: usize) -> PathBuf {
    let path = files.fresh("drain-template");
    let app = app_connection(&path);
    app.execute_batch(SCHEMA).expect("schema");
    let store = open_store(&path, NODE_A, Compression::Lz4);
    insert_rows(&app, 1, rows, 1000);
    assert_eq!(log_depth(&app), rows as i64);
    drop(store);
    drop(app);
    path
}

/// Drains a copy of `template`; returns the timing and the outbox frames.
fn drain_copy(
    files: &mut Files,
    template: &Path,
    rows: usize,
    compression: Compression,
) -> (Timing, Vec<Vec<u8>>) {
    let path = files.fresh("drain");
    copy_db(template, &path);
    let mut store = open_store(&path, NODE_A, compression);
    let timer = Timer::start();
    let report = store.drain().expect("drain");
    let timing = timer.stop();
    assert_eq!(report.rows, rows);
    let frames = store.outbox_after(0, usize::MAX).expect("outbox");
    drop(store);
    remove_db(&path);
    (timing, frames.into_iter().map(|f| f.frame).collect())
}

/// Drains the template with each compression; returns the frames of an LZ4 run (one batch
/// of `rows` rows, split into parts).
fn bench_drain(cfg: &Config, files: &mut Files, table: &mut Table) -> Vec<Vec<u8>> {
    let rows = cfg.n(100_000, 1000);
    table.section(&format!(
        "2. drain: Store::drain() of {rows} pending single-row inserts (one batch)"
    ));
    let template = drain_template(files, rows);
    let mut big_batch = Vec::new();
    for compression in [Compression::Lz4, Compression::None] {
        let mut rates = Rates::default();
        let mut bytes = Vec::new();
        let mut frames_n = 0;
        for _ in 0..cfg.runs {
            let (timing, frames) = drain_copy(files, &template, rows, compression);
            rates.push(rows, timing);
            frames_n = frames.len();
            bytes.push(frames.iter().map(Vec::len).sum::<usize>() as f64 / rows as f64);
            if compression == Compression::Lz4 {
                big_batch = frames;
            }
        }
        let name = match compression {
            Compression::Lz4 => "LZ4",
            Compression::None => "no compression",
        };
        rates.report(
            table,
            format!("drain, {name} ({frames_n} frames)"),
            Target::None,
        );
        table.add("    frame bytes per row", &bytes, "B", Target::None);
    }
    remove_db(&template);

    // Breakdown: encoding alone (postcard, LZ4, CRC) of the same batch.
    let body: Vec<u8> = big_batch
        .iter()
        .flat_map(|f| wire::decode_frame(f).expect("frame").body)
        .collect();
    let compression = wire::decode_frame(&big_batch[0])
        .expect("frame")
        .compression;
    let batch = wire::decode_batch(compression, &body).expect("batch");
    for compression in [Compression::Lz4, Compression::None] {
        let mut rates = Rates::default();
        for _ in 0..cfg.runs {
            let timer = Timer::start();
            let frames = wire::encode_batch(
                NodeId::from_u128(NODE_A).expect("node"),
                harmonylite_core::change::BatchSeq::new(1),
                &batch,
                compression,
                1024 * 1024,
            )
            .expect("encode");
            rates.push(rows, timer.stop());
            assert!(!frames.is_empty());
        }
        let name = match compression {
            Compression::Lz4 => "LZ4",
            Compression::None => "no compression",
        };
        rates.report(
            table,
            format!("    of which: encode only, {name} (no SQL)"),
            Target::None,
        );
    }
    big_batch
}

// ---------------------------------------------------------------------------------------
// 3. Apply
// ---------------------------------------------------------------------------------------

/// Frames node A published: inserts of `rows` rows, then updates of every row, each drained
/// after every `batch_rows`-row transaction.
struct Published {
    inserts: Vec<Vec<u8>>,
    updates: Vec<Vec<u8>>,
}

fn publish_from_a(files: &mut Files, rows: usize, batch_rows: usize) -> Published {
    let path = files.fresh("node-a");
    let app = app_connection(&path);
    app.execute_batch(SCHEMA).expect("schema");
    let mut store = open_store(&path, NODE_A, Compression::Lz4);
    let take = |store: &mut Store| -> Vec<Vec<u8>> {
        let frames = store.outbox_after(0, usize::MAX).expect("outbox");
        let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
        store.outbox_remove(&ids).expect("outbox cleanup");
        frames.into_iter().map(|f| f.frame).collect()
    };
    let mut first = 1i64;
    while first <= rows as i64 {
        let n = batch_rows.min(rows + 1 - first as usize);
        insert_rows(&app, first, n, n);
        store.drain().expect("drain");
        first += n as i64;
    }
    let inserts = take(&mut store);
    let mut update = app
        .prepare("UPDATE t SET name = ?1, qty = qty + 1, price = price * 2 WHERE id = ?2")
        .expect("prepare update");
    let mut id = 1i64;
    while id <= rows as i64 {
        app.execute_batch("BEGIN").expect("begin");
        let stop = (id + batch_rows as i64).min(rows as i64 + 1);
        while id < stop {
            update
                .execute(params![format!("updated-{id:014}"), id])
                .expect("update");
            id += 1;
        }
        app.execute_batch("COMMIT").expect("commit");
        store.drain().expect("drain");
    }
    let updates = take(&mut store);
    drop(update);
    drop(store);
    drop(app);
    remove_db(&path);
    Published { inserts, updates }
}

/// A fresh receiver: table `t`, capture installed.
fn fresh_receiver(path: &Path) -> Store {
    let app = app_connection(path);
    app.execute_batch(SCHEMA).expect("schema");
    drop(app);
    open_store(path, NODE_B, Compression::Lz4)
}

/// Feeds `frames` (stream sequences from `first_seq`) in groups; returns the time and the
/// rows applied as (new, remote won).
fn apply_frames(store: &mut Store, frames: &[Vec<u8>], first_seq: u64) -> (Timing, u64, u64) {
    let messages: Vec<Inbound> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| Inbound {
            seq: StreamSeq::new(first_seq + i as u64),
            frame: f.clone(),
            subject: None,
        })
        .collect();
    let (mut new_rows, mut won) = (0, 0);
    let timer = Timer::start();
    for group in messages.chunks(RECEIVE_GROUP) {
        let report = store.receive(now(), group).expect("receive");
        assert!(report.parked.is_empty(), "parked: {:?}", report.parked);
        new_rows += report.applied.new_rows;
        won += report.applied.remote_won;
    }
    (timer.stop(), new_rows, won)
}

/// Applies `frames` to a fresh receiver per run (all rows new), after running `pragma` (a
/// diagnostic connection setting, if any) on the receiver's connection.
fn apply_fresh(
    cfg: &Config,
    files: &mut Files,
    frames: &[Vec<u8>],
    rows: usize,
    pragma: Option<&str>,
) -> Rates {
    let mut rates = Rates::default();
    for _ in 0..cfg.runs {
        let path = files.fresh("apply");
        let mut b = fresh_receiver(&path);
        if let Some(pragma) = pragma {
            b.connection()
                .execute_batch(pragma)
                .expect("diagnostic pragma");
        }
        let (timing, new_rows, _) = apply_frames(&mut b, frames, 1);
        assert_eq!(new_rows as usize, rows);
        rates.push(rows, timing);
        drop(b);
        remove_db(&path);
    }
    rates
}

fn bench_apply(cfg: &Config, files: &mut Files, table: &mut Table, big_batch: &[Vec<u8>]) {
    let rows = cfg.n(100_000, 1000);
    let target = Target::AtLeast(150_000.0);
    table.section(&format!(
        "3. apply: Store::receive() of node A's frames, {RECEIVE_GROUP} messages per call"
    ));
    let published = publish_from_a(files, rows, 1000);

    apply_fresh(cfg, files, &published.inserts, rows, None).report(
        table,
        format!(
            "apply new rows, 1000-row batches ({} frames)",
            published.inserts.len()
        ),
        target,
    );
    // What one drain of the whole log produced: one batch in several parts.
    apply_fresh(cfg, files, big_batch, rows, None).report(
        table,
        format!(
            "apply new rows, one {rows}-row batch ({} parts)",
            big_batch.len()
        ),
        target,
    );

    // Conflict path: B holds every row at an older version (A's inserts applied), then
    // applies A's updates.
    let template = files.fresh("apply-conflict-template");
    {
        let mut b = fresh_receiver(&template);
        let (_, new_rows, _) = apply_frames(&mut b, &published.inserts, 1);
        assert_eq!(new_rows as usize, rows);
    }
    let next_seq = published.inserts.len() as u64 + 1;
    let mut rates = Rates::default();
    for _ in 0..cfg.runs {
        let path = files.fresh("apply-conflict");
        copy_db(&template, &path);
        let mut b = open_store(&path, NODE_B, Compression::Lz4);
        let (timing, _, won) = apply_frames(&mut b, &published.updates, next_seq);
        assert_eq!(won as usize, rows);
        rates.push(rows, timing);
        drop(b);
        remove_db(&path);
    }
    remove_db(&template);
    rates.report(
        table,
        "apply updates of older existing rows (remote wins)",
        target,
    );

    // Diagnostic: the per-message savepoint's journal kept in memory instead of a temp file.
    let pragma = "PRAGMA temp_store = MEMORY";
    apply_fresh(cfg, files, &published.inserts, rows, Some(pragma)).report(
        table,
        format!("    diag: 1000-row batches, store conn {pragma}"),
        Target::None,
    );

    // Breakdown: decoding alone (CRC, LZ4, postcard, validation).
    let mut rates = Rates::default();
    for _ in 0..cfg.runs {
        let timer = Timer::start();
        let mut n = 0;
        for frame in &published.inserts {
            let part = wire::decode_frame(frame).expect("frame");
            n += wire::decode_batch(part.compression, &part.body)
                .expect("batch")
                .len();
        }
        rates.push(n, timer.stop());
        assert_eq!(n, rows);
    }
    rates.report(
        table,
        "    of which: decode frames only (no SQL)",
        Target::None,
    );
}

// ---------------------------------------------------------------------------------------

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    format!(
        "{cpus} CPUs (nproc), {model}, {} {}, load avg (1 min) at start {load}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

fn main() {
    let cfg = Config::from_env();
    let started = Instant::now();
    let mut files = Files::new();
    let mut table = Table::default();
    let header = format!(
        "harmonylite-core capture/drain/apply bench: SQLite {}, {} runs per figure, scale {}{}\n\
         machine: {}\n\
         files in {} (WAL, synchronous=NORMAL); shared machine: expect noise from other processes",
        rusqlite::version(),
        cfg.runs,
        cfg.scale,
        if cfg.quick { " (quick)" } else { "" },
        machine(),
        files.dir.path().display(),
    );
    eprintln!("{header}\nprogress (medians):");

    bench_capture(&cfg, &mut files, &mut table);
    let big_batch = if cfg.wants("drain", "drain") {
        bench_drain(&cfg, &mut files, &mut table)
    } else if cfg.wants("apply", "apply") {
        // Apply needs one big drained batch.
        let rows = cfg.n(100_000, 1000);
        let template = drain_template(&mut files, rows);
        let (_, frames) = drain_copy(&mut files, &template, rows, Compression::Lz4);
        remove_db(&template);
        frames
    } else {
        Vec::new()
    };
    if cfg.wants("apply", "apply") {
        bench_apply(&cfg, &mut files, &mut table, &big_batch);
    }

    println!();
    println!("{header}");
    println!("ratio = time with capture / time without, per interleaved run pair; x = times");
    println!();
    table.print();
    if let Some(path) = &cfg.json {
        table.write_json(path, &cfg);
        println!("figures written to {}", path.display());
    }
    println!(
        "\ntotal bench time {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
