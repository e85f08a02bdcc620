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
//!    frames) of INSERTs, then of UPDATEs of 1 of 8 columns.
//! 3. **Wire.** Bytes published per row (frames, LZ4 on) for an UPDATE of 1 of 8 columns
//!    and for a counter decrement.
//!
//! ```text
//! cargo bench -p harmonylite-core --features sqlite --bench column_merge
//! cargo bench -p harmonylite-core --features sqlite --bench column_merge -- --quick
//! HL_BENCH_RUNS=9 HL_BENCH_ROWS=20000 cargo bench -p harmonylite-core --features sqlite --bench column_merge
//! ```
//!
//! Without cargo's `--bench` argument (under `cargo test --all-targets`) it runs `--quick`.

use std::path::PathBuf;
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let bench = Bench {
        dir: tempfile::tempdir().unwrap(),
        rows: if quick {
            2000
        } else {
            env("HL_BENCH_ROWS", 10_000)
        },
        runs: if quick { 1 } else { env("HL_BENCH_RUNS", 5) },
    };
    println!(
        "column merge vs row merge: {} rows, {} runs (median), 8 value columns, {TX_ROWS}-row transactions",
        bench.rows, bench.runs
    );
    println!();
    println!(
        "{:<24} {:<15} {:>12} {:>10} {:>16} {:>10} {:>12}",
        "capture", "mode", "capture ms", "vs row", "+drain ms", "vs row", "bytes/row"
    );
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
        for (m, mode) in modes.iter().enumerate() {
            let ratio = |field: fn(&(f64, f64, f64)) -> f64| {
                median(
                    times[m]
                        .iter()
                        .zip(&times[0])
                        .map(|(t, row)| field(t) / field(row))
                        .collect(),
                )
            };
            println!(
                "{:<24} {:<15} {:>12.1} {:>9.2}x {:>16.1} {:>9.2}x {:>12.1}",
                workload.name(),
                mode.name(),
                median(times[m].iter().map(|t| t.0).collect()),
                ratio(|t| t.0),
                median(times[m].iter().map(|t| t.1).collect()),
                ratio(|t| t.1),
                median(times[m].iter().map(|t| t.2).collect()),
            );
        }
    }
    println!();
    println!(
        "{:<24} {:<15} {:>16} {:>16}",
        "apply", "mode", "INSERT rows/s", "UPDATE rows/s"
    );
    for mode in [Mode::Row, Mode::Column] {
        let runs: Vec<(f64, f64)> = (0..bench.runs).map(|_| bench.apply_run(mode)).collect();
        println!(
            "{:<24} {:<15} {:>16.0} {:>16.0}",
            "apply from 1000-row frames",
            mode.name(),
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
        );
    }
}
