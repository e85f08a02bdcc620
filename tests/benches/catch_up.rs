//! Catch-up in place: a replica 1M changes behind merges a snapshot of ≥ 500 MB into its
//! live database while its application keeps writing. Prints the time to merge everything,
//! the merge rate, and the application's write latency (p50/p99) during the catch-up against
//! the same writes without it (goal: p99 ≤ 2×).
//!
//! The merge is paced exactly as the sidecar paces it (`harmonylite::snapshot::catch_up`):
//! `ROWS_PER_STEP` row versions per transaction; while the application wrote within
//! `APP_QUIET`, a step runs right after each of its writes is captured (the file
//! notification is a channel from the application thread here), otherwise steps run back to
//! back with a pause as long as the step took; each step checkpoints its own pages. The
//! snapshot's download is the restore download measured by the snapshot bench. The
//! application is a thread with its own connection (5 s busy timeout) inserting one row
//! every 2 ms; without catch-up the sidecar drains after each of its writes.
//!
//! `cargo bench -p harmonylite-tests --bench catch_up` (1,000,000 rows of 450 bytes: over 500 MB);
//! `-- --quick` (100,000 rows). Three rounds (`HL_BENCH_ROUNDS`), each on a fresh live
//! database; the figures are the rounds' medians. `HL_BENCH_CATCH_UP_ROWS` overrides; `-- --json FILE` writes
//! the figures there (what `scripts/bench` reads). To explore the pacing trade-off,
//! `HL_STEP_ROWS` (row versions per step), `HL_PAUSE` (pause as a multiple of the step's
//! duration) and `HL_TIMER_ONLY=1` (steps on the timer only, ignoring the application's writes)
//! replace the sidecar's pacing.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harmonylite::snapshot::catch_up::{APP_QUIET, MIN_PAUSE, ROWS_PER_STEP};
use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::{ntp64_from_unix, NodeId, NTP64};
use harmonylite_core::sqlite::{meta, CatchUp, CatchUpError, Store, StoreOptions};
use rusqlite::Connection;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, body BLOB);";
const APP_EVERY: Duration = Duration::from_millis(2);
const COVERED: u64 = 1_000_000_000;

fn now() -> NTP64 {
    ntp64_from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
}

fn store(path: &Path, node: u128) -> Store {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    Store::open(conn, StoreOptions::new(NodeId::from_u128(node).unwrap())).unwrap()
}

/// The snapshot: `rows` rows with their versions (node 1, increasing times), cursor
/// `COVERED`, as a stripped copy would be.
fn build_snapshot(path: &Path, rows: usize, body: usize) {
    let s = store(path, 1);
    let conn = s.connection();
    conn.execute_batch("PRAGMA synchronous = OFF").unwrap();
    let node = NodeId::from_u128(1).unwrap().to_bytes();
    let base = now().as_u64();
    let chunk = 100_000;
    let mut done = 0;
    while done < rows {
        let n = chunk.min(rows - done);
        let tx = conn.unchecked_transaction().unwrap();
        // Rows written with capture off (the marker set), then their versions directly.
        tx.execute("INSERT INTO __hl_applying VALUES (1)", [])
            .unwrap();
        tx.execute(
            "WITH RECURSIVE r(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM r WHERE i < ?2)
             INSERT INTO items SELECT i, hex(randomblob(8)), randomblob(?3) FROM r",
            rusqlite::params![done as i64 + 1, (done + n) as i64, body as i64],
        )
        .unwrap();
        let mut version = tx
            .prepare("INSERT INTO __hl_v1(k0, hlc, deleted) VALUES (?1, ?2, 0)")
            .unwrap();
        for i in done + 1..=done + n {
            let mut hlc = Vec::with_capacity(24);
            hlc.extend_from_slice(&(base + i as u64).to_be_bytes());
            hlc.extend_from_slice(&node);
            version.execute(rusqlite::params![i as i64, hlc]).unwrap();
        }
        drop(version);
        tx.execute("DELETE FROM __hl_applying", []).unwrap();
        tx.commit().unwrap();
        done += n;
    }
    meta::set(conn, meta::keys::CURSOR, COVERED as i64).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    drop(s);
    let copy = Connection::open(path).unwrap();
    copy.execute_batch("PRAGMA journal_mode = DELETE").unwrap();
}

/// Latency percentiles of the application's inserts, in milliseconds.
struct Latency {
    writes: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// The application: inserts a row every `APP_EVERY` until `stop`, timing each commit, and
/// signals `notify` after each (the file notification the sidecar gets).
fn app(
    path: &Path,
    first_id: i64,
    stop: Arc<AtomicBool>,
    notify: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<Latency> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let conn = Connection::open(&path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut times = Vec::new();
        let mut id = first_id;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            conn.execute("INSERT INTO items VALUES (?1, 'app', x'00')", [id])
                .unwrap();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            let _ = notify.send(());
            id += 1;
            std::thread::sleep(APP_EVERY);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        Latency {
            writes: times.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: times[times.len() - 1],
        }
    })
}

/// One round's figures.
struct Round {
    took: Duration,
    steps: u64,
    busy: u64,
    baseline: Latency,
    during: Latency,
}

/// One round on a fresh live database: the application's writes alone (the sidecar
/// draining after each notification), then the same writes during a whole catch-up from
/// `snapshot`, paced as the sidecar paces it: while the application wrote within
/// `APP_QUIET`, a step runs right after each of its writes is noticed (and drained);
/// otherwise steps run on the timer (a pause as long as the step took).
fn round(
    dir: &Path,
    n: usize,
    snapshot: &Path,
    rows: usize,
    pacing: (usize, f64),
    baseline_for: Duration,
) -> Round {
    let live = dir.join(format!("live-{n}.db"));
    let mut live_store = store(&live, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let (notify, noticed) = std::sync::mpsc::channel();
    let writer = app(&live, 10_000_000, stop.clone(), notify);
    let started = Instant::now();
    while started.elapsed() < baseline_for {
        if noticed.recv_timeout(Duration::from_millis(100)).is_ok() {
            live_store.drain().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let baseline = writer.join().unwrap();

    let (step_rows, pause_factor) = pacing;
    let aligned = std::env::var("HL_TIMER_ONLY").is_err();
    let mut merge = CatchUp::open(snapshot, StreamSeq::new(COVERED)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (notify, noticed) = std::sync::mpsc::channel();
    let writer = app(&live, 20_000_000, stop.clone(), notify);
    let started = Instant::now();
    let (mut steps, mut busy) = (0u64, 0u64);
    let mut next_step_at = Instant::now();
    let mut app_wrote_at: Option<Instant> = None;
    let report = loop {
        let mut due = next_step_at;
        if let Some(quiet_at) = app_wrote_at.map(|at| at + APP_QUIET).filter(|_| aligned) {
            due = due.max(quiet_at);
        }
        let wait = due.saturating_duration_since(Instant::now());
        if noticed.recv_timeout(wait).is_ok() {
            // The application wrote: capture it, as the sidecar does on the notification.
            live_store.drain().unwrap();
            app_wrote_at = Some(Instant::now());
            if !aligned && Instant::now() < next_step_at {
                continue;
            }
        }
        let step = Instant::now();
        match live_store.catch_up_step(&mut merge, now(), step_rows) {
            Ok(report) if report.finished => break report,
            Ok(_) => {
                steps += 1;
                next_step_at = Instant::now() + step.elapsed().mul_f64(pause_factor).max(MIN_PAUSE);
            }
            Err(CatchUpError::Store(e)) if e.is_transient() => {
                busy += 1;
                next_step_at = Instant::now() + Duration::from_millis(50);
            }
            Err(e) => panic!("catch-up failed: {e}"),
        }
    };
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = writer.join().unwrap();
    assert_eq!(report.rows_read, rows as u64);
    assert_eq!(report.remote_won, rows as u64);
    drop(live_store);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", live.display()));
    }
    Round {
        took,
        steps,
        busy,
        baseline,
        during,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args
        .iter()
        .position(|a| a == "--json")
        .map(|i| args.get(i + 1).expect("--json needs a file name").clone());
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
    let rows = env("HL_BENCH_CATCH_UP_ROWS").unwrap_or(if quick { 100_000.0 } else { 1_000_000.0 })
        as usize;
    let rounds = env("HL_BENCH_ROUNDS").unwrap_or(3.0) as usize;
    let pacing = (
        env("HL_STEP_ROWS")
            .map(|v| v as usize)
            .unwrap_or(ROWS_PER_STEP),
        env("HL_PAUSE").unwrap_or(1.0),
    );
    let baseline_for = Duration::from_secs(if quick { 5 } else { 15 });
    let body = 450;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot.db");
    let built = Instant::now();
    build_snapshot(&snapshot, rows, body);
    let snapshot_bytes = std::fs::metadata(&snapshot).unwrap().len();
    println!(
        "snapshot: {rows} rows, {:.0} MB, built in {:.1} s; {rounds} rounds, {} row versions per step",
        snapshot_bytes as f64 / 1e6,
        built.elapsed().as_secs_f64(),
        pacing.0
    );
    let mut results = Vec::new();
    for n in 0..rounds {
        let r = round(dir.path(), n, &snapshot, rows, pacing, baseline_for);
        println!(
            "round {}: merged in {:.1} s ({:.0} rows/s, {} steps, {} busy retries); app p99 {:.2} ms without, {:.2} ms during ({:.2}x); p50 {:.2} / {:.2} ms; max {:.2} / {:.2} ms",
            n + 1,
            r.took.as_secs_f64(),
            rows as f64 / r.took.as_secs_f64(),
            r.steps,
            r.busy,
            r.baseline.p99,
            r.during.p99,
            r.during.p99 / r.baseline.p99,
            r.baseline.p50,
            r.during.p50,
            r.baseline.max,
            r.during.max
        );
        results.push(r);
    }
    let seconds = median(results.iter().map(|r| r.took.as_secs_f64()).collect());
    let pick = |f: &dyn Fn(&Round) -> f64| median(results.iter().map(f).collect());
    let (base_p50, base_p99, base_max) = (
        pick(&|r| r.baseline.p50),
        pick(&|r| r.baseline.p99),
        pick(&|r| r.baseline.max),
    );
    let (dur_p50, dur_p99, dur_max) = (
        pick(&|r| r.during.p50),
        pick(&|r| r.during.p99),
        pick(&|r| r.during.max),
    );
    let ratio = pick(&|r| r.during.p99 / r.baseline.p99);
    let verdict = if ratio <= 2.0 { "MET" } else { "MISSED" };
    println!(
        "catch-up (median of {rounds}): {rows} row versions merged in {seconds:.1} s ({:.0} rows/s)",
        rows as f64 / seconds
    );
    println!("app writes without catch-up: p50 {base_p50:.2} ms, p99 {base_p99:.2} ms, max {base_max:.2} ms");
    println!("app writes during catch-up:  p50 {dur_p50:.2} ms, p99 {dur_p99:.2} ms, max {dur_max:.2} ms");
    println!(
        "target: app write p99 during catch-up <= 2x without (median ratio): {ratio:.2}x {verdict}"
    );
    if let Some(path) = json {
        let doc = serde_json::json!({
            "suite": "catch-up",
            "quick": quick,
            "rounds": rounds,
            "rows": rows,
            "snapshot_bytes": snapshot_bytes,
            "catch_up_seconds": seconds,
            "rows_per_second": rows as f64 / seconds,
            "rows_per_step": pacing.0,
            "busy_retries": results.iter().map(|r| r.busy).sum::<u64>(),
            "app_baseline_ms": { "writes": results[0].baseline.writes, "p50": base_p50, "p99": base_p99, "max": base_max },
            "app_during_ms": { "writes": results[0].during.writes, "p50": dur_p50, "p99": dur_p99, "max": dur_max },
            "p99_ratio": ratio,
            "p99_ratios": results.iter().map(|r| r.during.p99 / r.baseline.p99).collect::<Vec<_>>(),
            "targets": [{ "name": "app write p99 during catch-up / without", "target": "<= 2.0x", "value": ratio, "verdict": verdict }],
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}
