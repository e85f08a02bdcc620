//! Replication benchmark: a 3-node cluster of release-build sidecars on the embedded default
//! (each with its own supervised nats-server, routed together, stream replicas = 3), all on
//! loopback on this machine. Prints figures; asserts nothing about speed.
//!
//! - Latency: an app commits one row on node A; the time until the row is readable on B and
//!   on C (polled every 250 µs). p50 / p99 / max over `HL_BENCH_SAMPLES` (default 400),
//!   writers rotating over the three nodes.
//! - Throughput: all three apps insert `HL_BENCH_ROWS` rows each (default 20,000) in
//!   100-row transactions at full speed; rows/s = all rows / time until every node holds
//!   every row (converged, not just written).
//! - Memory: RSS of each sidecar and of each nats-server, idle and the peak under load.
//!
//! Run: `cargo bench -p harmonylite-tests --bench replication` (add `-- --quick` for a
//! short run). One 2-core machine hosts 3 sidecars, 3 nats-servers and the load: read the
//! figures as a floor, not as what separate hosts reach.

use std::path::Path;
use std::time::{Duration, Instant};

use harmonylite_tests::*;
use rusqlite::{Connection, OptionalExtension};

const SCHEMA: &str =
    "CREATE TABLE events(id INTEGER PRIMARY KEY, origin INTEGER, payload TEXT, at INTEGER);";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let samples = env_usize("HL_BENCH_SAMPLES", if quick { 100 } else { 400 });
    let rows_per_node = env_usize("HL_BENCH_ROWS", if quick { 3_000 } else { 20_000 });
    std::env::set_var("HL_SIDECAR_PROFILE", "release");
    if std::env::var("HL_SIDECAR_LOG").is_err() {
        std::env::set_var("HL_SIDECAR_LOG", "warn");
    }
    let dir = tempfile::tempdir().unwrap();
    if std::env::var("HL_BENCH_KEEP").is_ok() {
        println!("keeping {}", dir.path().display());
    }
    let dir_path = dir.path().to_path_buf();
    let _keep = std::env::var("HL_BENCH_KEEP").is_ok().then(|| dir.keep());
    let ports = cluster_ports(3);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::new(
                &dir_path,
                &format!("node{i}"),
                SCHEMA,
                &embedded_cluster_toml(&ports, i, i as u64 + 1),
            )
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    for node in &mut nodes {
        node.wait_healthy(Duration::from_secs(60));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid().unwrap()).collect();
    let nats_pids: Vec<Option<u32>> = pids.iter().map(|p| nats_child(*p)).collect();
    let idle: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let nats_idle: Vec<u64> = nats_pids
        .iter()
        .map(|p| p.map(rss_kib).unwrap_or(0))
        .collect();

    // Latency.
    let apps: Vec<Connection> = nodes.iter().map(|n| reader(&n.db)).collect();
    let mut latencies = Vec::with_capacity(samples * 2);
    for k in 0..samples {
        let writer = k % 3;
        let id = 1_000_000_000 + k as i64;
        let start = Instant::now();
        apps[writer]
            .execute(
                "INSERT INTO events(id, origin, payload) VALUES (?1, ?2, 'latency')",
                rusqlite::params![id, writer as i64],
            )
            .unwrap();
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
        let mut pending: Vec<usize> = (0..3).filter(|&i| i != writer).collect();
        while !pending.is_empty() {
            pending.retain(|&i| {
                let found: Option<i64> = apps[i]
                    .query_row("SELECT id FROM events WHERE id = ?1", [id], |r| r.get(0))
                    .optional()
                    .unwrap();
                if found.is_some() {
                    latencies.push(start.elapsed());
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
    latencies.sort();

    // Throughput, with RSS sampled during the load.
    let total = rows_per_node * 3 + samples;
    let start = Instant::now();
    let writers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let db = node.db.clone();
            std::thread::spawn(move || {
                let mut app = reader(&db);
                let base = i as i64 * 100_000_000;
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
                            stmt.execute(rusqlite::params![id, i as i64, "x".repeat(64)])
                                .unwrap();
                        }
                    }
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    let mut peak = idle.clone();
    let mut nats_peak = nats_idle.clone();
    let counts = |apps: &[Connection]| -> Vec<usize> {
        apps.iter()
            .map(|a| {
                a.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
                    .unwrap() as usize
            })
            .collect()
    };
    let mut written_at = None;
    loop {
        for (i, pid) in pids.iter().enumerate() {
            peak[i] = peak[i].max(rss_kib(*pid));
            if let Some(n) = nats_pids[i] {
                nats_peak[i] = nats_peak[i].max(rss_kib(n));
            }
        }
        if written_at.is_none() && writers.iter().all(|w| w.is_finished()) {
            written_at = Some(start.elapsed());
        }
        if counts(&apps).iter().all(|&c| c == total) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no convergence: {:?}",
            counts(&apps)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let converged = start.elapsed();
    for w in writers {
        w.join().unwrap();
    }
    let rate = (rows_per_node * 3) as f64 / converged.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;

    println!("harmonylite replication benchmark — 3 nodes, embedded nats-servers, stream replicas 3, loopback");
    println!(
        "machine: {} cores; sidecars, servers and load share it",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("{:<44} {:>12} {:>10}  target", "metric", "value", "unit");
    println!(
        "{:<44} {:>12.2} {:>10}  <= 2",
        "commit -> visible latency p50",
        ms(percentile(&latencies, 0.5)),
        "ms"
    );
    println!(
        "{:<44} {:>12.2} {:>10}  <= 10",
        "commit -> visible latency p99",
        ms(percentile(&latencies, 0.99)),
        "ms"
    );
    println!(
        "{:<44} {:>12.2} {:>10}",
        "commit -> visible latency max",
        ms(*latencies.last().unwrap()),
        "ms"
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "latency samples (2 receivers each)",
        latencies.len(),
        ""
    );
    println!(
        "{:<44} {:>12.0} {:>10}  >= 20000",
        "converged throughput, 3 writers", rate, "rows/s"
    );
    println!(
        "{:<44} {:>12.2} {:>10}",
        "  all rows written after",
        written_at.unwrap_or(converged).as_secs_f64(),
        "s"
    );
    println!(
        "{:<44} {:>12.2} {:>10}",
        "  all rows on every node after",
        converged.as_secs_f64(),
        "s"
    );
    for i in 0..3 {
        println!(
            "{:<44} {:>12.1} {:>10}",
            format!("node{i} sidecar RSS idle / peak"),
            idle[i] as f64 / 1024.0,
            "MiB"
        );
        println!("{:<44} {:>12.1} {:>10}", "", peak[i] as f64 / 1024.0, "MiB");
        println!(
            "{:<44} {:>12.1} {:>10}",
            format!("node{i} nats-server RSS idle / peak"),
            nats_idle[i] as f64 / 1024.0,
            "MiB"
        );
        println!(
            "{:<44} {:>12.1} {:>10}",
            "",
            nats_peak[i] as f64 / 1024.0,
            "MiB"
        );
    }
}
