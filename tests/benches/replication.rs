//! Replication benchmark: a cluster of release-build sidecars on the embedded default
//! (each with its own supervised nats-server, routed together, stream replicas =
//! min(nodes, 3)), all on loopback on this machine. Prints figures; asserts nothing about
//! speed (it checks that every row arrived).
//!
//! Each figure is the median of `--runs` runs (default 5) on one cluster, with min and max:
//!
//! - Latency: an app commits one row on a node; the time until the row is readable on every
//!   other node (polled every 250 µs). p50 / p99 / max of each run's `HL_BENCH_SAMPLES`
//!   commits (default 200 per run, writers rotating over the nodes); every sample goes to
//!   the histogram in the JSON output. Below it, the hops of that path from the sidecars'
//!   `harmonylite_hop_seconds{hop}` histograms over the same samples (p50 / p99,
//!   interpolated within buckets): commit -> notice (file notification) -> captured
//!   (drain committed) -> acknowledged by JetStream on the writer; stored -> delivered ->
//!   applied on the receivers.
//!   The app's own commit time (part of each latency) is printed too.
//! - The same as a new user measures it: a Python `sqlite3` application with the module's
//!   defaults inserts one row at a time on node 0 and polls the other nodes' files itself
//!   (`HL_BENCH_SAMPLES / 2` commits per run; `python3` must be on PATH).
//! - Throughput: every node's app inserts `HL_BENCH_ROWS` rows (default 20,000) in 100-row
//!   transactions at full speed; rows/s = all rows / time until every node holds every row
//!   (converged, not just written).
//! - Autocommit throughput: one app on node 0 inserts single-row autocommit transactions as
//!   fast as it can for `HL_BENCH_SECONDS` (default 5) or `HL_BENCH_AUTOCOMMIT_ROWS` rows
//!   (default 10,000), whichever comes first; rows/s = rows / time until every node holds
//!   them. The same shape as `dqlite-benchmark`'s `kvwrite` with one worker.
//! - Memory: RSS of the sidecars and of the nats-servers (largest node), idle before each
//!   run and the peak under load.
//! - `--dqlite` (3 nodes): the same run also starts a 3-node dqlite cluster on loopback
//!   (Debian `go-dqlite`'s `dqlite-benchmark`, `kvwrite`, one worker, 32-byte keys and
//!   64-byte values, `HL_BENCH_SECONDS`) while the harmonylite cluster idles; ratios are
//!   taken within each run.
//! - `--row-bytes S` (default 64): the payload of every row the throughput runs write, for
//!   the cost model's row-size term; `--throughput-only` measures only the converged
//!   throughput of every node writing 100-row transactions (and memory), skipping latency
//!   and the autocommit run.
//! - `--catchup N`: a node is stopped, node 0 writes N changes (upserts in 1000-row
//!   transactions), and the stopped node starts again: time from its start until it holds
//!   every change (its nats-server rejoins and catches up, then the sidecar applies).
//!
//! ```text
//! cargo bench -p harmonylite-tests --bench replication                  # 3 nodes, 5 runs
//! cargo bench -p harmonylite-tests --bench replication -- --quick       # short runs
//! cargo bench -p harmonylite-tests --bench replication -- --nodes 5 --runs 7
//! cargo bench -p harmonylite-tests --bench replication -- --dqlite --catchup 1000000 --json out.json
//! cargo bench -p harmonylite-tests --bench replication -- --throughput-only --row-bytes 4096
//! ```
//!
//! One 2-core machine hosts every sidecar, every nats-server and the load: read the figures
//! as a floor, not as what separate hosts reach, and the 5- and 7-node figures as what this
//! machine does, not how the design scales.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harmonylite_tests::*;
use rusqlite::{Connection, OptionalExtension};

const SCHEMA: &str =
    "CREATE TABLE events(id INTEGER PRIMARY KEY, origin INTEGER, payload TEXT, at INTEGER);
     CREATE TABLE catchup(id INTEGER PRIMARY KEY, round INTEGER, payload TEXT);";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Command-line options (after `--`).
struct Opts {
    quick: bool,
    nodes: usize,
    runs: usize,
    samples: usize,
    rows_per_node: usize,
    seconds: f64,
    autocommit_rows: usize,
    dqlite: bool,
    catchup: Option<usize>,
    json: Option<PathBuf>,
    /// Payload bytes of each row the throughput runs write.
    row_bytes: usize,
    /// Measure only the every-node-writing throughput (and memory).
    throughput_only: bool,
}

impl Opts {
    fn parse() -> Opts {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let value = |flag: &str| -> Option<String> {
            args.iter().position(|a| a == flag).map(|i| {
                args.get(i + 1)
                    .unwrap_or_else(|| panic!("{flag} needs a value"))
                    .clone()
            })
        };
        let number = |flag: &str| -> Option<usize> {
            value(flag).map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{flag} {v:?} is not a number"))
            })
        };
        let quick = args.iter().any(|a| a == "--quick");
        let nodes = number("--nodes").unwrap_or(3);
        assert!(nodes >= 2, "--nodes must be at least 2");
        Opts {
            quick,
            nodes,
            runs: number("--runs").unwrap_or(5).max(1),
            samples: env_usize("HL_BENCH_SAMPLES", if quick { 40 } else { 200 }),
            rows_per_node: env_usize("HL_BENCH_ROWS", if quick { 2_000 } else { 20_000 }) / 100
                * 100,
            seconds: env_usize("HL_BENCH_SECONDS", if quick { 2 } else { 5 }) as f64,
            autocommit_rows: env_usize(
                "HL_BENCH_AUTOCOMMIT_ROWS",
                if quick { 2_000 } else { 10_000 },
            ),
            dqlite: args.iter().any(|a| a == "--dqlite"),
            catchup: number("--catchup"),
            json: value("--json").map(PathBuf::from),
            row_bytes: number("--row-bytes").unwrap_or(64),
            throughput_only: args.iter().any(|a| a == "--throughput-only"),
        }
    }
}

/// `values` in ascending order.
fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

/// The nats-server child of a sidecar.
fn nats_child(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let child: u32 = child.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.trim() == "nats-server" {
                return Some(child);
            }
        }
    }
    None
}

fn reader(db: &Path) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

/// Rows of `table` with ids in `lo..=hi` (a rowid range: cheap to poll).
fn count_range(conn: &Connection, table: &str, lo: i64, hi: i64) -> usize {
    conn.query_row(
        &format!("SELECT count(*) FROM {table} WHERE id BETWEEN ?1 AND ?2"),
        [lo, hi],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as usize
}

/// Median, min and max of one figure's runs.
struct Figure {
    metric: String,
    unit: &'static str,
    peer: &'static str,
    runs: Vec<f64>,
}

impl Figure {
    fn stats(&self) -> (f64, f64, f64) {
        let mut s = self.runs.clone();
        s.sort_by(f64::total_cmp);
        let mid = s.len() / 2;
        let median = if s.len() % 2 == 1 {
            s[mid]
        } else {
            (s[mid - 1] + s[mid]) / 2.0
        };
        (median, s[0], s[s.len() - 1])
    }
}

/// Wall time of the steps of one run, for its progress line.
struct StepTimes {
    last: Instant,
    steps: Vec<(&'static str, f64)>,
}

impl StepTimes {
    fn start() -> StepTimes {
        StepTimes {
            last: Instant::now(),
            steps: Vec::new(),
        }
    }

    /// Ends the step `name`, started at the previous mark.
    fn mark(&mut self, name: &'static str) {
        self.steps.push((name, self.last.elapsed().as_secs_f64()));
        self.last = Instant::now();
    }
}

impl std::fmt::Display for StepTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .steps
            .iter()
            .map(|(name, secs)| format!("{name} {secs:.1} s"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// Every figure of the run, in print order.
#[derive(Default)]
struct Figures {
    list: Vec<Figure>,
}

impl Figures {
    fn push(&mut self, metric: &str, unit: &'static str, peer: &'static str, value: f64) {
        match self.list.iter_mut().find(|f| f.metric == metric) {
            Some(f) => f.runs.push(value),
            None => self.list.push(Figure {
                metric: metric.into(),
                unit,
                peer,
                runs: vec![value],
            }),
        }
    }

    fn print(&self) {
        println!(
            "{:<52} {:>12} {:>12} {:>12} {:>8} {:>5}",
            "metric", "median", "min", "max", "unit", "runs"
        );
        for f in &self.list {
            let (median, min, max) = f.stats();
            println!(
                "{:<52} {:>12.2} {:>12.2} {:>12.2} {:>8} {:>5}",
                f.metric,
                median,
                min,
                max,
                f.unit,
                f.runs.len()
            );
        }
    }

    fn json(&self) -> Vec<serde_json::Value> {
        self.list
            .iter()
            .map(|f| {
                let (median, min, max) = f.stats();
                serde_json::json!({
                    "metric": f.metric, "value": median, "unit": f.unit, "peer": f.peer,
                    "runs": f.runs.len(), "min": min, "median": median, "max": max,
                })
            })
            .collect()
    }
}

/// The running cluster and the app connections to it.
struct Cluster {
    nodes: Vec<Node>,
    apps: Vec<Connection>,
    /// Each node's Prometheus port (the per-hop histograms).
    metrics_ports: Vec<u16>,
}

/// The hops of commit -> visible, in order, as the sidecar labels them
/// (`harmonylite_hop_seconds{hop}`).
const HOPS: [&str; 5] = [
    "commit_to_notice",
    "notice_to_captured",
    "captured_to_acked",
    "stored_to_delivered",
    "delivered_to_applied",
];

/// Cumulative bucket counts of one hop's histogram, summed over the nodes: (upper bound in
/// seconds, count of observations at or below it), ascending, `+Inf` last.
type Buckets = Vec<(f64, f64)>;

/// Every hop's buckets, scraped from every node's `/metrics`.
fn scrape_hops(cluster: &Cluster) -> Vec<Buckets> {
    let mut hops: Vec<Buckets> = vec![Vec::new(); HOPS.len()];
    for &port in &cluster.metrics_ports {
        let (_, body) = http_get(port, "/metrics").expect("a sidecar's /metrics answers");
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("harmonylite_hop_seconds_bucket{") else {
                continue;
            };
            let (labels, value) = rest.split_once("} ").expect("a sample line");
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
            };
            let (Some(hop), Some(le)) = (label("hop"), label("le")) else {
                continue;
            };
            let Some(h) = HOPS.iter().position(|&name| name == hop) else {
                continue;
            };
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let count: f64 = value.trim().parse().unwrap();
            match hops[h].iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += count,
                None => hops[h].push((le, count)),
            }
        }
    }
    for buckets in &mut hops {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    hops
}

/// The observations between two scrapes of the same hop.
fn bucket_difference(after: &Buckets, before: &Buckets) -> Buckets {
    after
        .iter()
        .map(|&(le, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c);
            (le, count - earlier)
        })
        .collect()
}

/// The `q` quantile of a histogram in milliseconds, interpolated linearly inside the
/// bucket it falls in (as Prometheus' `histogram_quantile`); `None` without observations.
fn bucket_quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0 * 1000.0);
            }
            let within = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return Some((lower.0 + (le - lower.0) * within) * 1000.0);
        }
        lower = (le, count);
    }
    None
}

impl Cluster {
    fn start(dir: &Path, n: usize) -> Cluster {
        let ports = cluster_ports(n);
        let metrics_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| {
                let prometheus = format!(
                    "\n[prometheus]\nenable = true\nbind = \"127.0.0.1:{}\"\n",
                    metrics_ports[i]
                );
                Node::new(
                    dir,
                    &format!("node{i}"),
                    SCHEMA,
                    &format!(
                        "{}{prometheus}",
                        embedded_cluster_toml(&ports, i, i as u64 + 1)
                    ),
                )
            })
            .collect();
        for node in &mut nodes {
            node.start();
        }
        for node in &mut nodes {
            node.wait_healthy(Duration::from_secs(120));
        }
        std::thread::sleep(Duration::from_secs(2));
        let apps = nodes.iter().map(|n| reader(&n.db)).collect();
        Cluster {
            nodes,
            apps,
            metrics_ports,
        }
    }

    /// (sidecar, nats-server) RSS in KiB, the largest over the running nodes.
    fn rss(&self) -> (u64, u64) {
        let mut most = (0, 0);
        for node in &self.nodes {
            if let Some(pid) = node.pid() {
                most.0 = most.0.max(rss_kib(pid));
                most.1 = most.1.max(nats_child(pid).map(rss_kib).unwrap_or(0));
            }
        }
        most
    }

    /// Waits until every node holds `expected` rows of `table` in `lo..=hi`, sampling RSS
    /// into `peak`; panics after `timeout`.
    fn wait_all(
        &self,
        table: &str,
        (lo, hi): (i64, i64),
        expected: usize,
        peak: &mut (u64, u64),
        timeout: Duration,
    ) {
        let start = Instant::now();
        loop {
            let (s, n) = self.rss();
            peak.0 = peak.0.max(s);
            peak.1 = peak.1.max(n);
            let counts: Vec<usize> = self
                .apps
                .iter()
                .map(|a| count_range(a, table, lo, hi))
                .collect();
            if counts.iter().all(|&c| c == expected) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "no convergence on {table}: {counts:?} of {expected}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Commit -> visible on every other node, `samples` commits; returns the latencies and the
/// app's own commit times (the INSERT's autocommit, part of each latency), in ms.
fn latency_run(cluster: &Cluster, run: usize, samples: usize) -> (Vec<f64>, Vec<f64>) {
    let n = cluster.apps.len();
    let mut latencies = Vec::with_capacity(samples * (n - 1));
    let mut commits = Vec::with_capacity(samples);
    for k in 0..samples {
        let writer = k % n;
        let id = -((run * 1_000_000 + k + 1) as i64);
        let start = Instant::now();
        cluster.apps[writer]
            .execute(
                "INSERT INTO events(id, origin, payload) VALUES (?1, ?2, 'latency')",
                rusqlite::params![id, writer as i64],
            )
            .unwrap();
        commits.push(start.elapsed().as_secs_f64() * 1000.0);
        if std::env::var("HL_BENCH_TRACE").is_ok() {
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            eprintln!(
                "commit {id} on node{writer} at {}.{:06}",
                wall.as_secs(),
                wall.subsec_micros()
            );
        }
        let mut pending: Vec<usize> = (0..n).filter(|&i| i != writer).collect();
        while !pending.is_empty() {
            pending.retain(|&i| {
                let found: Option<i64> = cluster.apps[i]
                    .query_row("SELECT id FROM events WHERE id = ?1", [id], |r| r.get(0))
                    .optional()
                    .unwrap();
                if found.is_some() {
                    latencies.push(start.elapsed().as_secs_f64() * 1000.0);
                    false
                } else {
                    true
                }
            });
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "row {id} never arrived"
            );
            std::thread::sleep(Duration::from_micros(250));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (latencies, commits)
}

/// The latency run as a new user writes it: a Python `sqlite3` application with the
/// module's defaults (an implicit transaction per INSERT, `commit()`, SQLite's default
/// `synchronous = FULL`) inserting one row at a time on node 0, polling the other nodes'
/// files every 250 µs itself. Prints one line per commit: commit time, then each other
/// node's commit -> visible time, in ms.
const PYTHON_APP: &str = r#"
import sqlite3, sys, time
dbs, first, samples = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
app = sqlite3.connect(dbs[0], timeout=5)
others = [sqlite3.connect(db, timeout=5) for db in dbs[1:]]
for k in range(samples):
    key = first - k
    start = time.perf_counter()
    app.execute("INSERT INTO events(id, origin, payload) VALUES (?, 0, 'python')", (key,))
    app.commit()
    line = ["%.4f" % ((time.perf_counter() - start) * 1000)]
    pending = list(range(len(others)))
    while pending:
        for i in list(pending):
            if others[i].execute("SELECT 1 FROM events WHERE id = ?", (key,)).fetchone():
                line.append("%.4f" % ((time.perf_counter() - start) * 1000))
                pending.remove(i)
        if pending:
            if time.perf_counter() - start > 30:
                sys.exit("row %d never arrived" % key)
            time.sleep(0.00025)
    print(" ".join(line), flush=True)
    time.sleep(0.005)
"#;

/// [`PYTHON_APP`] on node 0, `samples` commits; returns the latencies and the app's commit
/// times in ms. Fails loudly without `python3`.
fn python_latency_run(cluster: &Cluster, run: usize, samples: usize) -> (Vec<f64>, Vec<f64>) {
    let dbs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.db.display().to_string())
        .collect();
    let first = -((run * 1_000_000 + 500_000 + 1) as i64);
    let output = Command::new("python3")
        .args(["-c", PYTHON_APP, &dbs.join(","), &first.to_string()])
        .arg(samples.to_string())
        .output()
        .expect("python3 is needed for the Python application's latency run");
    assert!(
        output.status.success(),
        "the Python application failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (mut latencies, mut commits) = (Vec::new(), Vec::new());
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut values = line.split(' ').map(|v| v.parse::<f64>().unwrap());
        commits.extend(values.next());
        latencies.extend(values);
    }
    assert_eq!(commits.len(), samples, "one line per commit");
    (latencies, commits)
}

/// Every node writes `rows_per_node` rows in 100-row transactions; returns (seconds until
/// all were written, seconds until every node held every row).
fn throughput_run(
    cluster: &Cluster,
    run: usize,
    (rows_per_node, row_bytes): (usize, usize),
    peak: &mut (u64, u64),
) -> (f64, f64) {
    let first = |i: usize| ((i + 1) * 1_000_000_000 + run * 10_000_000) as i64;
    let start = Instant::now();
    let writers: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let db = node.db.clone();
            let base = first(i);
            let payload = "x".repeat(row_bytes);
            std::thread::spawn(move || {
                let mut app = reader(&db);
                for chunk in 0..rows_per_node / 100 {
                    let tx = app.transaction().unwrap();
                    {
                        let mut stmt = tx
                            .prepare_cached(
                                "INSERT INTO events(id, origin, payload) VALUES (?1, ?2, ?3)",
                            )
                            .unwrap();
                        for j in 0..100 {
                            let id = base + (chunk * 100 + j) as i64;
                            stmt.execute(rusqlite::params![id, i as i64, payload])
                                .unwrap();
                        }
                    }
                    tx.commit().unwrap();
                }
                start.elapsed()
            })
        })
        .collect();
    // Every writer's range lies within [first(0), first(n-1) + rows).
    for (i, _) in cluster.nodes.iter().enumerate() {
        let lo = first(i);
        cluster.wait_all(
            "events",
            (lo, lo + rows_per_node as i64 - 1),
            rows_per_node,
            peak,
            Duration::from_secs(600),
        );
    }
    let converged = start.elapsed().as_secs_f64();
    let written = writers
        .into_iter()
        .map(|w| w.join().unwrap().as_secs_f64())
        .fold(0.0, f64::max);
    (written, converged)
}

/// Single-row autocommit inserts on node 0 for `seconds`; returns (rows, seconds until
/// every node held them).
fn autocommit_run(
    cluster: &Cluster,
    run: usize,
    (seconds, max_rows, row_bytes): (f64, usize, usize),
    peak: &mut (u64, u64),
) -> (usize, f64) {
    let base = (100_000_000_000 + run * 10_000_000) as i64;
    let app = &cluster.apps[0];
    let mut stmt = app
        .prepare("INSERT INTO events(id, origin, payload) VALUES (?1, 0, ?2)")
        .unwrap();
    let payload = "v".repeat(row_bytes);
    let start = Instant::now();
    let mut rows = 0usize;
    while rows < max_rows && start.elapsed().as_secs_f64() < seconds {
        stmt.execute(rusqlite::params![base + rows as i64, payload])
            .unwrap();
        rows += 1;
    }
    cluster.wait_all(
        "events",
        (base, base + rows as i64 - 1),
        rows,
        peak,
        Duration::from_secs(600),
    );
    (rows, start.elapsed().as_secs_f64())
}

/// One `dqlite-benchmark` run on a fresh 3-node dqlite cluster on loopback.
struct DqliteRun {
    ops_per_s: f64,
    latencies_ms: Vec<f64>,
    errors: usize,
    peak_rss_kib: u64,
}

fn dqlite_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("dqlite-benchmark"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("dqlite-benchmark not found on PATH: install Debian's go-dqlite and libdqlite0 (scripts/bench does: ensure_dqlite in scripts/lib/tools.sh)")
    })
}

fn dqlite_run(dir: &Path, seconds: f64) -> DqliteRun {
    let binary = dqlite_binary();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let log = |i: usize| std::fs::File::create(dir.join(format!("dqlite{i}.log"))).unwrap();
    let spawn = |i: usize, extra: &[&str]| -> Child {
        Command::new(&binary)
            .args(["--db", &addrs[i], "--dir"])
            .arg(dir.join(format!("n{i}")))
            .args(extra)
            .stdout(Stdio::from(log(i)))
            .stderr(Stdio::from(log(i + 10)))
            .spawn()
            .expect("starting dqlite-benchmark")
    };
    let cluster = addrs.join(",");
    let duration = format!("{}", seconds.round().max(1.0) as u64);
    let mut driver = spawn(
        0,
        &[
            "--driver",
            "--cluster",
            &cluster,
            "--duration",
            &duration,
            "--workers",
            "1",
            "--workload",
            "kvwrite",
            "--key-size",
            "32",
            "--value-size",
            "64",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut others: Vec<Child> = (1..3).map(|i| spawn(i, &["--join", &addrs[0]])).collect();
    let started = Instant::now();
    let mut peak = 0;
    let status = loop {
        if let Some(status) = driver.try_wait().unwrap() {
            break status;
        }
        let rss = [driver.id()]
            .into_iter()
            .chain(others.iter().map(|c| c.id()))
            .map(rss_kib)
            .max()
            .unwrap_or(0);
        peak = peak.max(rss);
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "dqlite-benchmark did not finish; logs in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for child in &mut others {
        stop_child(child, false);
    }
    assert!(
        status.success(),
        "dqlite-benchmark failed ({status}); logs in {}",
        dir.display()
    );
    let results = dir.join("n0").join(&addrs[0]).join("results");
    let file = std::fs::read_dir(&results)
        .unwrap_or_else(|e| panic!("reading {}: {e}", results.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("0-exec-"))
        })
        .unwrap_or_else(|| panic!("no 0-exec-* results in {}", results.display()));
    let text = std::fs::read_to_string(&file).unwrap();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_ns = None;
    let mut last_ns = 0u64;
    for line in text
        .lines()
        .skip_while(|l| !l.starts_with("measurements"))
        .skip(1)
    {
        let mut parts = line.splitn(2, ' ');
        let (Some(ts), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(ts) = ts.parse::<u64>() else { continue };
        match value.trim().parse::<f64>() {
            Ok(ms) => {
                latencies.push(ms);
                first_ns.get_or_insert(ts);
                last_ns = ts;
            }
            Err(_) => errors += 1,
        }
    }
    assert!(
        latencies.len() > 1,
        "dqlite-benchmark recorded no successful writes ({errors} errors) in {}",
        file.display()
    );
    // Timestamps are taken at each op's start: the span covers n - 1 ops plus the last one.
    let span = (last_ns - first_ns.unwrap()) as f64 / 1e9 + latencies.last().unwrap() / 1000.0;
    DqliteRun {
        ops_per_s: latencies.len() as f64 / span,
        latencies_ms: latencies,
        errors,
        peak_rss_kib: peak,
    }
}

/// Stops the last node, writes `changes` upserts on node 0, starts the node again; returns
/// (seconds to write and replicate to the running nodes, seconds from restart to caught up).
fn catchup_run(cluster: &mut Cluster, run: usize, changes: usize) -> (f64, f64) {
    let last = cluster.nodes.len() - 1;
    cluster.nodes[last].stop();
    let start = Instant::now();
    let app = &cluster.apps[0];
    let mut stmt = app
        .prepare(
            "INSERT INTO catchup(id, round, payload) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET round = excluded.round, payload = excluded.payload",
        )
        .unwrap();
    let payload = "c".repeat(64);
    let mut id = 0usize;
    while id < changes {
        app.execute_batch("BEGIN").unwrap();
        for _ in 0..1000.min(changes - id) {
            stmt.execute(rusqlite::params![id as i64, run as i64, payload])
                .unwrap();
            id += 1;
        }
        app.execute_batch("COMMIT").unwrap();
    }
    let arrived = |conn: &Connection| -> bool {
        // Applied in stream order: the last change there means all of them are.
        conn.query_row(
            "SELECT round FROM catchup WHERE id = ?1",
            [changes as i64 - 1],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .unwrap()
            == Some(run as i64)
    };
    assert!(
        wait_until(Duration::from_secs(1200), || (0..last)
            .all(|i| arrived(&cluster.apps[i]))),
        "the running nodes never received the catch-up writes"
    );
    let written = start.elapsed().as_secs_f64();
    let restart = Instant::now();
    cluster.nodes[last].start();
    let away = reader(&cluster.nodes[last].db);
    assert!(
        wait_until(Duration::from_secs(1200), || arrived(&away)),
        "the restarted node never caught up:\n{}",
        cluster.nodes[last].log_tail()
    );
    let caught_up = restart.elapsed().as_secs_f64();
    let done: i64 = away
        .query_row(
            "SELECT count(*) FROM catchup WHERE round = ?1",
            [run as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(done as usize, changes, "caught-up node misses changes");
    cluster.nodes[last].wait_healthy(Duration::from_secs(120));
    (written, caught_up)
}

fn main() {
    let opts = Opts::parse();
    std::env::set_var("HL_SIDECAR_PROFILE", "release");
    if std::env::var("HL_SIDECAR_LOG").is_err() {
        std::env::set_var("HL_SIDECAR_LOG", "warn");
    }
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    // Removed at the end of main, after the cluster (declared later, dropped first) has
    // stopped, unless HL_BENCH_KEEP is set. (A `.then(|| dir.keep())` here moved `dir` into
    // the closure and dropped it at once, so every run left its cluster's files behind:
    // over 1 GiB each with a 1M-change catch-up.)
    let _dir = if std::env::var("HL_BENCH_KEEP").is_ok() {
        println!("keeping {}", dir.keep().display());
        None
    } else {
        Some(dir)
    };
    let n = opts.nodes;
    let started = Instant::now();
    let mut cluster = Cluster::start(&dir_path, n);
    eprintln!(
        "{n}-node cluster up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if opts.dqlite {
        assert_eq!(n, 3, "--dqlite compares 3-node clusters: use --nodes 3");
    }
    assert!(
        !opts.throughput_only || (!opts.dqlite && opts.catchup.is_none()),
        "--throughput-only measures no latency: leave out --dqlite and --catchup"
    );

    let mut figures = Figures::default();
    let mut histogram: Vec<f64> = Vec::new();
    let mut dqlite_histogram: Vec<f64> = Vec::new();
    let mut dqlite_errors = 0;
    for run in 0..opts.runs {
        let idle = cluster.rss();
        figures.push(
            "sidecar RSS idle (largest node)",
            "MiB",
            "harmonylite",
            idle.0 as f64 / 1024.0,
        );
        figures.push(
            "nats-server RSS idle (largest node)",
            "MiB",
            "nats-server",
            idle.1 as f64 / 1024.0,
        );

        // Latency samples and the autocommit rate of this run (left empty / 0 with
        // --throughput-only, which rules out --dqlite, the only reader besides the figures).
        let mut lat = Vec::new();
        let mut ours = 0.0;
        // Wall time of each step of this run, printed with its progress line.
        let mut steps = StepTimes::start();
        if !opts.throughput_only {
            let hops_before = scrape_hops(&cluster);
            let commits;
            (lat, commits) = latency_run(&cluster, run, opts.samples);
            let hops_after = scrape_hops(&cluster);
            histogram.extend_from_slice(&lat);
            lat.sort_by(f64::total_cmp);
            figures.push(
                "app commit time p50",
                "ms",
                "harmonylite",
                percentile(&sorted(commits), 0.5),
            );
            figures.push(
                "commit -> visible latency p50",
                "ms",
                "harmonylite",
                percentile(&lat, 0.5),
            );
            figures.push(
                "commit -> visible latency p99",
                "ms",
                "harmonylite",
                percentile(&lat, 0.99),
            );
            figures.push(
                "commit -> visible latency max",
                "ms",
                "harmonylite",
                *lat.last().unwrap(),
            );
            // Where the time goes: each hop's share, from the sidecars' own histograms of
            // these samples (bucket-interpolated, so read them to about a quarter ms).
            for (h, name) in HOPS.iter().enumerate() {
                let hop = bucket_difference(&hops_after[h], &hops_before[h]);
                for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
                    if let Some(ms) = bucket_quantile(&hop, q) {
                        figures.push(&format!("  hop {name} {label}"), "ms", "harmonylite", ms);
                    }
                }
            }
        }

        if !opts.throughput_only {
            let (python, commits) = python_latency_run(&cluster, run, opts.samples / 2);
            let python = sorted(python);
            for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
                figures.push(
                    &format!("Python sqlite3 app: commit -> visible latency {label}"),
                    "ms",
                    "harmonylite",
                    percentile(&python, q),
                );
            }
            figures.push(
                "Python sqlite3 app: commit time p50",
                "ms",
                "harmonylite",
                percentile(&sorted(commits), 0.5),
            );
            steps.mark("latency");
        }
        let mut peak = idle;
        let (written, converged) = throughput_run(
            &cluster,
            run,
            (opts.rows_per_node, opts.row_bytes),
            &mut peak,
        );
        let total = (opts.rows_per_node * n) as f64;
        figures.push(
            &format!("converged throughput, {n} writers, 100-row tx"),
            "rows/s",
            "harmonylite",
            total / converged,
        );
        figures.push(
            &format!("converged payload throughput, {n} writers, 100-row tx"),
            "MiB/s",
            "harmonylite",
            total * opts.row_bytes as f64 / converged / 1048576.0,
        );
        figures.push(
            "  (that run: all rows written after)",
            "s",
            "harmonylite",
            written,
        );
        figures.push(
            "  (that run: all rows on every node after)",
            "s",
            "harmonylite",
            converged,
        );

        steps.mark("throughput");
        if !opts.throughput_only {
            let (rows, converged) = autocommit_run(
                &cluster,
                run,
                (opts.seconds, opts.autocommit_rows, opts.row_bytes),
                &mut peak,
            );
            ours = rows as f64 / converged;
            figures.push(
                "converged throughput, 1 writer, autocommit",
                "rows/s",
                "harmonylite",
                ours,
            );
        }
        figures.push(
            "sidecar RSS peak under load (largest node)",
            "MiB",
            "harmonylite",
            peak.0 as f64 / 1024.0,
        );
        figures.push(
            "nats-server RSS peak under load (largest node)",
            "MiB",
            "nats-server",
            peak.1 as f64 / 1024.0,
        );

        if !opts.throughput_only {
            steps.mark("autocommit");
        }
        if opts.dqlite {
            let d = dqlite_run(&dir_path.join(format!("dqlite-{run}")), opts.seconds);
            let mut l = d.latencies_ms.clone();
            dqlite_histogram.extend_from_slice(&l);
            dqlite_errors += d.errors;
            l.sort_by(f64::total_cmp);
            figures.push(
                "dqlite: commit latency p50 (1 worker)",
                "ms",
                "dqlite",
                percentile(&l, 0.5),
            );
            figures.push(
                "dqlite: commit latency p99 (1 worker)",
                "ms",
                "dqlite",
                percentile(&l, 0.99),
            );
            figures.push(
                "dqlite: commit latency max (1 worker)",
                "ms",
                "dqlite",
                *l.last().unwrap(),
            );
            figures.push(
                "dqlite: write throughput, 1 worker, autocommit",
                "rows/s",
                "dqlite",
                d.ops_per_s,
            );
            figures.push(
                "dqlite: node RSS peak under load (largest node)",
                "MiB",
                "dqlite",
                d.peak_rss_kib as f64 / 1024.0,
            );
            figures.push(
                "ratio: autocommit converged rows/s, harmonylite / dqlite",
                "x",
                "harmonylite vs dqlite",
                ours / d.ops_per_s,
            );
            figures.push(
                "ratio: latency p50, harmonylite visible / dqlite commit",
                "x",
                "harmonylite vs dqlite",
                percentile(&lat, 0.5) / percentile(&l, 0.5),
            );
            figures.push(
                "ratio: latency p99, harmonylite visible / dqlite commit",
                "x",
                "harmonylite vs dqlite",
                percentile(&lat, 0.99) / percentile(&l, 0.99),
            );
        }
        if opts.dqlite {
            steps.mark("dqlite");
        }
        eprintln!("run {} of {} done ({steps})", run + 1, opts.runs);
    }
    if let Some(changes) = opts.catchup {
        for run in 0..opts.runs {
            let (written, caught_up) = catchup_run(&mut cluster, run, changes);
            figures.push(
                &format!("catch-up: node away for {changes} changes, restart -> converged"),
                "s",
                "harmonylite",
                caught_up,
            );
            figures.push(
                &format!("catch-up: {changes} changes, rows/s applied by the returning node"),
                "rows/s",
                "harmonylite",
                changes as f64 / caught_up,
            );
            figures.push(
                &format!("catch-up: {changes} changes written on node 0 and replicated to the running nodes after"),
                "s",
                "harmonylite",
                written,
            );
            eprintln!(
                "catch-up run {} of {} done (writes {written:.1} s, restart -> caught up {caught_up:.1} s)",
                run + 1,
                opts.runs
            );
        }
    }

    println!(
        "harmonylite replication benchmark — {n} nodes, embedded nats-servers, stream replicas {}, loopback{}",
        n.min(3),
        if opts.quick { " (quick)" } else { "" }
    );
    println!(
        "machine: {} cores; sidecars, servers and load share it; {} runs, {} latency samples per run, {} rows per writer",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        opts.runs,
        opts.samples,
        opts.rows_per_node
    );
    figures.print();
    if opts.dqlite {
        println!("dqlite: {dqlite_errors} failed writes over all runs (not counted in its rate)");
    }
    if let Some(path) = &opts.json {
        let mut histograms = serde_json::Map::new();
        if !histogram.is_empty() {
            histograms.insert(
                format!("harmonylite commit -> visible, {n} nodes (ms)"),
                serde_json::json!(histogram),
            );
        }
        if opts.dqlite {
            histograms.insert(
                "dqlite commit, 3 nodes (ms)".into(),
                serde_json::json!(dqlite_histogram),
            );
        }
        let doc = serde_json::json!({
            "suite": "replication",
            "nodes": n,
            "quick": opts.quick,
            "runs": opts.runs,
            "samples_per_run": opts.samples,
            "rows_per_writer": opts.rows_per_node,
            "row_bytes": opts.row_bytes,
            "throughput_only": opts.throughput_only,
            "autocommit_seconds": opts.seconds,
            "autocommit_max_rows": opts.autocommit_rows,
            "dqlite_failed_writes": dqlite_errors,
            "figures": figures.json(),
            "histograms": histograms,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("figures written to {}", path.display());
    }
}
