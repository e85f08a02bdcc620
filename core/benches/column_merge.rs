//! What merging by column costs against merging by row, on real SQLite files.
//!
//! A figure printer, not a test: it checks row counts and values, never speed. The same
//! table (an integer key and 8 value columns of ~20 bytes, the last one an integer) is
//! captured in `row` mode and in `column` mode (in `column+counter` mode the integer column
//! is a counter), in WAL mode with `synchronous = NORMAL`, runs of both modes interleaved.
//!
//! 1. **Capture.** The application's own statements with the triggers installed, in
//!    1000-row transactions: INSERT, UPDATE of 1 of the 8 columns by key, `n = n - 1` (the
//!    integer column, a counter in `column+counter` mode), DELETE. Then the same plus the
//!    drain that turns the log into a published batch (what a change costs before it can
//!    leave the node). Ratios are column time / row time within one run pair.
//! 2. **Apply.** Rows per second a replica applies from another node's batches (1000-row
//!    frames) of INSERTs, then of UPDATEs of 1 of 8 columns, runs of both modes
//!    interleaved; ratios are column rate / row rate within one run pair.
//! 3. **Wire.** Bytes published per row (frames, LZ4 on) for every workload of 1., in
//!    each mode.
//!
//! ```text
//! cargo bench -p harmonylite-core --features sqlite --bench column_merge
//! cargo bench -p harmonylite-core --features sqlite --bench column_merge -- --quick
//! HL_BENCH_RUNS=9 HL_BENCH_ROWS=20000 cargo bench -p harmonylite-core --features sqlite --bench column_merge
//! cargo bench -p harmonylite-core --features sqlite --bench column_merge -- --quick --json /tmp/cm.json
//! ```
//!
//! `-- --json FILE` also writes every figure to FILE (what `scripts/bench` reads for
//! BENCHMARKS.md): median, min and max of the runs, the ratios per run pair, and the
//! target the bench judges — an UPDATE of 1 of 8 columns captured in column mode within
//! 1.2x of row mode's time (median of the per-run ratios; MET / MISSED, also printed).
//! `HL_BENCH_RUNS` applies with `--quick` too (default 1 there). Without cargo's `--bench`
//! argument (under `cargo test --all-targets`) it runs `--quick`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harmonylite_core::change::StreamSeq;
use harmonylite_core::column_merge::MergeConfig;
use harmonylite_core::hlc::{ntp64_from_unix, NodeId, NTP64};
use harmonylite_core::report::Inbound;
use harmonylite_core::sqlite::{Store, StoreOptions};
use rusqlite::{params, Connection};

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, c1 TEXT, c2 TEXT, c3 TEXT, \
                      c4 TEXT, c5 TEXT, c6 TEXT, c7 TEXT, n INTEGER NOT NULL DEFAULT 0)";
const TX_ROWS: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Row,
    Column,
    Counter,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Row => "row",
            Mode::Column => "column",
            Mode::Counter => "column+counter",
        }
    }

    fn merge(self) -> MergeConfig {
        match self {
            Mode::Row => MergeConfig::default(),
            Mode::Column => MergeConfig::new(&["t".into()], &[]).unwrap(),
            Mode::Counter => MergeConfig::new(&["t".into()], &["t.n".into()]).unwrap(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Insert,
    UpdateOne,
    Decrement,
    Delete,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::Insert,
        Workload::UpdateOne,
        Workload::Decrement,
        Workload::Delete,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Insert => "INSERT",
            Workload::UpdateOne => "UPDATE 1 of 8 columns",
            Workload::Decrement => "UPDATE n = n - 1",
            Workload::Delete => "DELETE",
        }
    }
}

struct Bench {
    dir: tempfile::TempDir,
    rows: usize,
    runs: usize,
}

fn now() -> NTP64 {
    ntp64_from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
}

fn value(i: usize, column: usize) -> String {
    format!("value {i:08} of column {column}")
}

impl Bench {
    /// A fresh file with the table and a store (triggers installed) in `mode`.
    fn replica(&self, name: &str, mode: Mode, node: u128) -> (PathBuf, Connection, Store) {
        let path = self.dir.path().join(name);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let app = Connection::open(&path).unwrap();
        app.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; {SCHEMA}"
        ))
        .unwrap();
        let mut options = StoreOptions::new(NodeId::from_u128(node).unwrap());
        options.merge = Some(mode.merge());
        let store = Store::open(Connection::open(&path).unwrap(), options).unwrap();
        (path, app, store)
    }

    fn insert(&self, app: &Connection) {
        let mut statement = app
            .prepare_cached("INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")
            .unwrap();
        for chunk in (0..self.rows).collect::<Vec<_>>().chunks(TX_ROWS) {
            app.execute_batch("BEGIN").unwrap();
            for &i in chunk {
                statement
                    .execute(params![
                        i as i64,
                        value(i, 1),
                        value(i, 2),
                        value(i, 3),
                        value(i, 4),
                        value(i, 5),
                        value(i, 6),
                        value(i, 7),
                        100
                    ])
                    .unwrap();
            }
            app.execute_batch("COMMIT").unwrap();
        }
    }

    fn run(&self, app: &Connection, workload: Workload) {
        if workload == Workload::Insert {
            return self.insert(app);
        }
        let sql = match workload {
            Workload::UpdateOne => "UPDATE t SET c3 = ?2 WHERE id = ?1",
            Workload::Decrement => "UPDATE t SET n = n - 1 WHERE id = ?1",
            Workload::Delete => "DELETE FROM t WHERE id = ?1",
            Workload::Insert => unreachable!(),
        };
        let mut statement = app.prepare_cached(sql).unwrap();
        for chunk in (0..self.rows).collect::<Vec<_>>().chunks(TX_ROWS) {
            app.execute_batch("BEGIN").unwrap();
            for &i in chunk {
                match workload {
                    Workload::UpdateOne => statement.execute(params![i as i64, format!("new {i}")]),
                    _ => statement.execute(params![i as i64]),
                }
                .unwrap();
            }
            app.execute_batch("COMMIT").unwrap();
        }
    }

    /// One run of `workload` in `mode`: (capture time, capture + drain time, bytes
    /// published per row).
    fn capture_run(&self, mode: Mode, workload: Workload) -> (Duration, Duration, f64) {
        let (_, app, mut store) = self.replica("capture.db", mode, 1);
        if workload != Workload::Insert {
            self.insert(&app);
            drain_all(&mut store);
        }
        let start = Instant::now();
        self.run(&app, workload);
        let captured = start.elapsed();
        drain_all(&mut store);
        let total = start.elapsed();
        let bytes = publish_all(&mut store).iter().map(Vec::len).sum::<usize>();
        (captured, total, bytes as f64 / self.rows as f64)
    }

    /// Rows per second a fresh replica applies from a `mode` node's batches of INSERTs and
    /// then of 1-of-8 UPDATEs.
    fn apply_run(&self, mode: Mode) -> (f64, f64) {
        let (_, app, mut source) = self.replica("source.db", mode, 1);
        self.insert(&app);
        drain_all(&mut source);
        let inserts = publish_all(&mut source);
        self.run(&app, Workload::UpdateOne);
        drain_all(&mut source);
        let updates = publish_all(&mut source);
        let (_, target_app, mut target) = self.replica("target.db", mode, 2);
        let start = Instant::now();
        receive(&mut target, &inserts, 1);
        let insert_rate = self.rows as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        receive(&mut target, &updates, inserts.len() as u64 + 1);
        let update_rate = self.rows as f64 / start.elapsed().as_secs_f64();
        let changed: i64 = target_app
            .query_row("SELECT count(*) FROM t WHERE c3 LIKE 'new %'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(changed as usize, self.rows, "every update applied");
        (insert_rate, update_rate)
    }
}

fn drain_all(store: &mut Store) {
    while store.drain().unwrap().rows > 0 {}
}

fn publish_all(store: &mut Store) -> Vec<Vec<u8>> {
    let frames = store.outbox_after(0, 1_000_000).unwrap();
    let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
    store.outbox_remove(&ids).unwrap();
    frames.into_iter().map(|f| f.frame).collect()
}

fn receive(store: &mut Store, frames: &[Vec<u8>], first_seq: u64) {
    for (i, group) in frames.chunks(64).enumerate() {
        let messages: Vec<Inbound> = group
            .iter()
            .enumerate()
            .map(|(j, frame)| Inbound {
                seq: StreamSeq::new(first_seq + (i * 64 + j) as u64),
                frame: frame.clone(),
                subject: None,
            })
            .collect();
        let report = store.receive(now(), &messages).unwrap();
        assert!(report.parked.is_empty(), "{:?}", report.parked);
    }
}

/// Median, min and max of a sample (the median of an even count is the mean of the middle
/// two, as in `capture.rs`).
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

/// The one target this bench judges: an UPDATE of 1 of 8 columns captured in column mode
/// takes at most this many times the row mode's time (the ratio's median over the runs).
const UPDATE_ONE_TARGET: f64 = 1.2;

/// One figure of the `--json` file: every run's value, summarised as median, min and max.
struct Figure {
    metric: String,
    unit: &'static str,
    peer: String,
    samples: Vec<f64>,
    section: &'static str,
    /// `Some(bound)`: the median must be at most `bound`.
    at_most: Option<f64>,
}

#[derive(Default)]
struct Figures {
    list: Vec<Figure>,
}

impl Figures {
    fn add(
        &mut self,
        section: &'static str,
        metric: String,
        unit: &'static str,
        peer: String,
        samples: Vec<f64>,
    ) -> Stats {
        let stats = Stats::of(&samples);
        self.list.push(Figure {
            metric,
            unit,
            peer,
            samples,
            section,
            at_most: None,
        });
        stats
    }

    /// Writes every figure to `path` as `{"suite": "column-merge", "figures": [{"metric",
    /// "value", "unit", "peer", "runs", "min", "median", "max", "section"}], ...}` (value =
    /// median), plus `"target": {"at_most": n}` and `"verdict": "MET" | "MISSED"` for the
    /// figure with a target: the shape `bench/report` reads for every suite.
    fn write_json(&self, path: &Path, bench: &Bench, quick: bool) {
        let figures: Vec<serde_json::Value> = self
            .list
            .iter()
            .map(|f| {
                let s = Stats::of(&f.samples);
                let mut v = serde_json::json!({
                    "metric": f.metric,
                    "value": s.median,
                    "unit": f.unit,
                    "peer": f.peer,
                    "runs": f.samples.len(),
                    "min": s.min,
                    "median": s.median,
                    "max": s.max,
                    "section": f.section,
                });
                if let Some(bound) = f.at_most {
                    v["target"] = serde_json::json!({ "at_most": bound });
                    v["verdict"] = verdict(s.median, bound).into();
                }
                v
            })
            .collect();
        let doc = serde_json::json!({
            "suite": "column-merge",
            "quick": quick,
            "rows": bench.rows,
            "runs": bench.runs,
            "tx_rows": TX_ROWS,
            "sqlite": rusqlite::version(),
            "figures": figures,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).expect("json"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

fn verdict(median: f64, at_most: f64) -> &'static str {
    if median <= at_most {
        "MET"
    } else {
        "MISSED"
    }
}

/// The name of a capture figure: `UPDATE 1 of 8 columns, column merge: capture + drain`.
fn capture_metric(workload: Workload, mode: Mode, what: &str) -> String {
    format!("{}, {} merge: {what}", workload.name(), mode.name())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test`) gets quick mode.
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    let json = args.iter().position(|a| a == "--json").map(|i| {
        PathBuf::from(
            args.get(i + 1)
                .unwrap_or_else(|| panic!("--json needs a file name")),
        )
    });
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .map(|v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
            })
            .unwrap_or(default)
    };
    let bench = Bench {
        dir: tempfile::tempdir().unwrap(),
        rows: if quick {
            2000
        } else {
            env("HL_BENCH_ROWS", 10_000)
        },
        runs: env("HL_BENCH_RUNS", if quick { 1 } else { 5 }).max(1),
    };
    let mut figures = Figures::default();
    println!(
        "column merge vs row merge: {} rows, {} runs (median), 8 value columns, {TX_ROWS}-row transactions",
        bench.rows, bench.runs
    );
    println!();
    println!(
        "{:<24} {:<15} {:>12} {:>10} {:>16} {:>10} {:>12}",
        "capture", "mode", "capture ms", "vs row", "+drain ms", "vs row", "bytes/row"
    );
    let mut update_one = None;
    for workload in Workload::ALL {
        let modes: &[Mode] = match workload {
            Workload::Decrement => &[Mode::Row, Mode::Column, Mode::Counter],
            _ => &[Mode::Row, Mode::Column],
        };
        let mut times: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); modes.len()];
        for run in 0..bench.runs {
            // Interleave the modes, alternating which goes first.
            let order: Vec<usize> = if run % 2 == 0 {
                (0..modes.len()).collect()
            } else {
                (0..modes.len()).rev().collect()
            };
            for m in order {
                let (captured, total, bytes) = bench.capture_run(modes[m], workload);
                times[m].push((
                    captured.as_secs_f64() * 1e3,
                    total.as_secs_f64() * 1e3,
                    bytes,
                ));
            }
        }
        for (m, &mode) in modes.iter().enumerate() {
            // Ratios within one run pair (this mode's run against the row mode's).
            let ratios = |field: fn(&(f64, f64, f64)) -> f64| -> Vec<f64> {
                times[m]
                    .iter()
                    .zip(&times[0])
                    .map(|(t, row)| field(t) / field(row))
                    .collect()
            };
            let section = "capture";
            let peer = "harmonylite".to_string();
            let captured = figures.add(
                section,
                capture_metric(workload, mode, "capture"),
                "ms",
                peer.clone(),
                times[m].iter().map(|t| t.0).collect(),
            );
            let drained = figures.add(
                section,
                capture_metric(workload, mode, "capture + drain"),
                "ms",
                peer.clone(),
                times[m].iter().map(|t| t.1).collect(),
            );
            let bytes = figures.add(
                section,
                capture_metric(workload, mode, "bytes published per row"),
                "bytes",
                peer,
                times[m].iter().map(|t| t.2).collect(),
            );
            // The row mode's own ratios (all 1) are not figures.
            let (capture_ratio, drain_ratio) = if mode == Mode::Row {
                (1.0, 1.0)
            } else {
                let vs = format!("{} vs row merge", mode.name());
                let c = figures.add(
                    section,
                    capture_metric(workload, mode, "capture time ratio to row merge"),
                    "x",
                    vs.clone(),
                    ratios(|t| t.0),
                );
                if workload == Workload::UpdateOne && mode == Mode::Column {
                    figures.list.last_mut().unwrap().at_most = Some(UPDATE_ONE_TARGET);
                    update_one = Some(c.median);
                }
                let d = figures.add(
                    section,
                    capture_metric(workload, mode, "capture + drain time ratio to row merge"),
                    "x",
                    vs,
                    ratios(|t| t.1),
                );
                (c.median, d.median)
            };
            println!(
                "{:<24} {:<15} {:>12.1} {:>9.2}x {:>16.1} {:>9.2}x {:>12.1}",
                workload.name(),
                mode.name(),
                captured.median,
                capture_ratio,
                drained.median,
                drain_ratio,
                bytes.median,
            );
        }
    }
    if let Some(ratio) = update_one {
        println!(
            "target: {}, column merge capture time within {UPDATE_ONE_TARGET}x of row merge: {} ({ratio:.2}x)",
            Workload::UpdateOne.name(),
            verdict(ratio, UPDATE_ONE_TARGET)
        );
    }
    println!();
    println!(
        "{:<24} {:<15} {:>16} {:>16}",
        "apply", "mode", "INSERT rows/s", "UPDATE rows/s"
    );
    // Both modes in every run, alternating which goes first; ratios within one run.
    let modes = [Mode::Row, Mode::Column];
    let mut rates: Vec<Vec<(f64, f64)>> = vec![Vec::new(); modes.len()];
    for run in 0..bench.runs {
        let order: [usize; 2] = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for m in order {
            rates[m].push(bench.apply_run(modes[m]));
        }
    }
    for (m, &mode) in modes.iter().enumerate() {
        let mut medians = Vec::new();
        for (workload, field) in [
            (
                Workload::Insert,
                (|r: &(f64, f64)| r.0) as fn(&(f64, f64)) -> f64,
            ),
            (Workload::UpdateOne, |r: &(f64, f64)| r.1),
        ] {
            let apply = format!("apply {} from {TX_ROWS}-row frames", workload.name());
            let s = figures.add(
                "apply",
                format!("{apply}, {} merge", mode.name()),
                "rows/s",
                "harmonylite".into(),
                rates[m].iter().map(field).collect(),
            );
            medians.push(s.median);
            if mode != Mode::Row {
                figures.add(
                    "apply",
                    format!("{apply}, {} merge: rate ratio to row merge", mode.name()),
                    "x",
                    format!("{} vs row merge", mode.name()),
                    rates[m]
                        .iter()
                        .zip(&rates[0])
                        .map(|(r, row)| field(r) / field(row))
                        .collect(),
                );
            }
        }
        println!(
            "{:<24} {:<15} {:>16.0} {:>16.0}",
            format!("apply from {TX_ROWS}-row frames"),
            mode.name(),
            medians[0],
            medians[1],
        );
    }
    if let Some(path) = &json {
        figures.write_json(path, &bench, quick);
        println!();
        println!("figures written to {}", path.display());
    }
}
