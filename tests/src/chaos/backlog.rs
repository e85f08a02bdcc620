//! Resource bound: the sidecar's memory while a large backlog waits in its outbox because
//! NATS is unreachable, and while the backlog is published once NATS is back.
//!
//! One node on an external nats-server (127.0.0.1): the stream is created, the server is
//! stopped, the application writes `rows` rows (`per_transaction` at a time) which the
//! sidecar drains into its outbox, then the server comes back and the outbox empties. The
//! sidecar's resident set size is sampled after every transaction and every 20 ms while
//! waiting, and its high-water mark (`VmHWM`) is read at the end of each phase. Nothing is
//! asserted; the figures are printed:
//! `cargo run -p harmonylite-tests --bin chaos -- --backlog 1000000 [--per-transaction 1]`.

use std::fmt;
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rusqlite::Connection;

use super::cluster::chaos_sidecar_binary;
use crate::{stop_child, wait_until, ExternalNats};

/// The measured figures.
#[derive(Debug)]
pub struct BacklogFigures {
    /// Rows written while NATS was unreachable.
    pub rows: u64,
    /// Rows per application transaction.
    pub per_transaction: u64,
    /// Outbox entries (batch parts) waiting when the writes were done and drained.
    pub outbox_entries: i64,
    /// Size of the database file with the backlog, in MiB.
    pub db_mib: f64,
    /// Sidecar RSS before the backlog, in KiB.
    pub rss_idle_kib: u64,
    /// Peak sidecar RSS while the backlog built up, in KiB.
    pub rss_offline_peak_kib: u64,
    /// Peak sidecar RSS while the backlog was published, in KiB.
    pub rss_publish_peak_kib: u64,
    /// Peak anonymous (heap) part of the RSS while publishing, in KiB (file-backed pages,
    /// such as a memory-mapped database, excluded).
    pub rss_anon_publish_peak_kib: u64,
    /// Time to publish the whole backlog once NATS was back.
    pub publish_time: Duration,
}

impl fmt::Display for BacklogFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "backlog figures")?;
        writeln!(
            f,
            "  rows written offline:        {} ({} per transaction)",
            self.rows, self.per_transaction
        )?;
        writeln!(f, "  outbox entries waiting:      {}", self.outbox_entries)?;
        writeln!(f, "  database size:               {:.1} MiB", self.db_mib)?;
        writeln!(
            f,
            "  sidecar RSS idle:            {:.1} MiB",
            self.rss_idle_kib as f64 / 1024.0
        )?;
        writeln!(
            f,
            "  sidecar RSS peak, offline:   {:.1} MiB",
            self.rss_offline_peak_kib as f64 / 1024.0
        )?;
        writeln!(
            f,
            "  sidecar RSS peak, publishing:{:>6.1} MiB",
            self.rss_publish_peak_kib as f64 / 1024.0
        )?;
        writeln!(
            f,
            "  of which anonymous (heap):   {:.1} MiB",
            self.rss_anon_publish_peak_kib as f64 / 1024.0
        )?;
        write!(
            f,
            "  publish time:                {:.1} s",
            self.publish_time.as_secs_f64()
        )
    }
}

/// Resident set size of process `pid`, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// Peak resident set size of process `pid` so far (`VmHWM`), in KiB (0 once it is gone).
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn count(db: &Path, table: &str) -> i64 {
    Connection::open(db)
        .and_then(|c| c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)))
        .unwrap_or(-1)
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn start_sidecar(config: &Path, log: &Path) -> Child {
    let file = std::fs::File::create(log).expect("creating the sidecar log");
    Command::new(chaos_sidecar_binary())
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("starting the sidecar")
}

/// Runs the measurement with `rows` rows written `per_transaction` at a time.
pub fn measure(rows: u64, per_transaction: u64) -> BacklogFigures {
    assert!(per_transaction > 0, "at least one row per transaction");
    let dir = super::work_root().join(format!("backlog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut nats = ExternalNats::start(&dir.join("nats"));
    let db: PathBuf = dir.join("backlog.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, payload TEXT NOT NULL);",
    )
    .unwrap();
    drop(conn);
    let config = dir.join("backlog.toml");
    std::fs::write(
        &config,
        format!(
            "db_path = {:?}\nnode_id = 1\n[nats]\nurls = [\"{}\"]\nreconnect_wait_seconds = 1\n",
            db.display().to_string(),
            nats.url()
        ),
    )
    .unwrap();
    let log = dir.join("backlog.log");
    let mut sidecar = start_sidecar(&config, &log);
    assert!(
        wait_until(Duration::from_secs(60), || count(&db, "__hl_tables") == 1),
        "the sidecar did not install capture:\n{}",
        log_tail(&log)
    );
    let mut app = Connection::open(&db).unwrap();
    app.busy_timeout(Duration::from_secs(5)).unwrap();
    app.execute("INSERT INTO t VALUES (0, 'warm-up')", [])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || count(&db, "__hl_outbox") == 0
            && count(&db, "__hl_log") == 0),
        "the warm-up row was not published:\n{}",
        log_tail(&log)
    );
    let pid = sidecar.id();
    let rss_idle_kib = rss_kib(pid);
    nats.stop();

    let mut peak = rss_idle_kib;
    let payload = "x".repeat(100);
    let mut written = 0u64;
    while written < rows {
        let tx = app.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO t(id, payload) VALUES (?1, ?2)")
                .unwrap();
            for _ in 0..per_transaction.min(rows - written) {
                written += 1;
                insert
                    .execute(rusqlite::params![written as i64, payload])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        peak = peak.max(rss_kib(pid));
    }
    assert!(
        wait_until(Duration::from_secs(600), || {
            peak = peak.max(rss_kib(pid));
            count(&db, "__hl_log") == 0
        }),
        "the sidecar did not drain the backlog into its outbox:\n{}",
        log_tail(&log)
    );
    let outbox_entries = count(&db, "__hl_outbox");
    let rss_offline_peak_kib = peak.max(peak_rss_kib(pid));
    let db_mib = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;

    nats.restart();
    let started = Instant::now();
    let mut publish_peak = rss_kib(pid);
    let mut anon_peak = 0;
    assert!(
        wait_until(Duration::from_secs(1800), || {
            publish_peak = publish_peak.max(rss_kib(pid));
            anon_peak = anon_peak.max(proc_status_kib(pid, "RssAnon:"));
            count(&db, "__hl_outbox") == 0
        }),
        "the backlog was not published within 30 min:\n{}",
        log_tail(&log)
    );
    let publish_time = started.elapsed();
    // The process's own high-water mark covers any spike between two samples.
    let overall_peak = peak_rss_kib(pid);
    if overall_peak > rss_offline_peak_kib {
        publish_peak = publish_peak.max(overall_peak);
    }
    stop_child(&mut sidecar, false);
    nats.stop();
    let _ = std::fs::remove_dir_all(&dir);
    BacklogFigures {
        rows,
        per_transaction,
        outbox_entries,
        db_mib,
        rss_idle_kib,
        rss_offline_peak_kib,
        rss_publish_peak_kib: publish_peak,
        rss_anon_publish_peak_kib: anon_peak,
        publish_time,
    }
}
