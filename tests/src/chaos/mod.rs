//! The chaos harness: a seeded run of real sidecars and nats-servers, each node in a network
//! namespace of its own, under a random application workload and random faults — `kill -9`
//! and SIGSTOP of sidecars, `kill -9` of nats-servers, partitions, clock skew, a full disk —
//! then every fault healed and the result checked against the history and an LWW model. A
//! wasm replica (the npm package in node, over WebSocket) takes part by default, with faults of
//! its own: `kill -9`, partitions, and clock skew of the application process.
//!
//! - [`netns`]: the private network (namespaces, veth pairs, a bridge, blackhole partitions);
//! - [`cluster`]: the processes and each node's tmpfs;
//! - [`workload`]: the application writers;
//! - [`wasm`]: the wasm replica and its driver;
//! - [`faults`]: the fault injector;
//! - [`history`]: what happened;
//! - [`checker`]: the verdict on the data;
//! - [`incidents`]: the verdict on the processes: exits no fault explains, panics in any log,
//!   messages parked at the end.
//!
//! [`run`] performs one run; `tests/tests/chaos.rs` runs a few seeds in CI, and
//! `cargo run -p harmonylite-tests --bin chaos -- --seed N --duration 30m` repeats runs for a
//! duration and prints figures. Needs root (namespaces, tmpfs mounts), `ip` and libfaketime.

pub mod backlog;
pub mod checker;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod incidents;
pub mod netns;
pub mod wasm;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faults::{FaultKind, Injector};
use history::{History, Outcome};

/// The stream every sidecar publishes to (default `stream_prefix`, one shard).
pub const STREAM: &str = "harmonylite-changes-1";

/// A small seeded generator (SplitMix64): runs are reproducible in their random choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Seed of the workload and the faults.
    pub seed: u64,
    /// Native nodes (3 to 5).
    pub nodes: usize,
    /// How long the workload and the faults run.
    pub chaos: Duration,
    /// How long the nodes may take to converge after the heal.
    pub converge_timeout: Duration,
    /// Size of each node's tmpfs, in MiB.
    pub tmpfs_mb: u64,
    /// The kinds of fault to inject (all by default; the wasm replica's only with `wasm`).
    pub kinds: Vec<FaultKind>,
    /// Whether a wasm replica (the npm package in node) takes part.
    pub wasm: bool,
}

impl RunOptions {
    /// Defaults for `seed`: 3 nodes and the wasm replica, 30 s of chaos, 180 s to converge,
    /// 256 MiB per node, every kind of fault.
    pub fn new(seed: u64) -> Self {
        RunOptions {
            seed,
            nodes: 3,
            chaos: Duration::from_secs(30),
            converge_timeout: Duration::from_secs(180),
            tmpfs_mb: 256,
            kinds: FaultKind::ALL.to_vec(),
            wasm: true,
        }
    }
}

/// What the wasm replica did in a run.
#[derive(Debug, Default, Clone)]
pub struct WasmFigures {
    /// Node processes started (a restart is a new memory replica).
    pub incarnations: usize,
    /// Its transactions that must survive (flushed to JetStream, or of the last incarnation).
    pub transactions: u64,
    /// Its transactions lost to a `kill -9` before JetStream acknowledged them, or whose
    /// COMMIT failed (either outcome accepted).
    pub uncertain: u64,
    /// Node processes that exited on their own (restarted by the harness).
    pub exits: Vec<String>,
}

/// What one run did and found.
#[derive(Debug)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Acknowledged application transactions.
    pub transactions: u64,
    /// Row writes in acknowledged transactions.
    pub row_writes: u64,
    /// Transactions whose COMMIT failed (outcome uncertain) or that failed before it.
    pub failed_transactions: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Sidecars that exited on their own during the run (restarted by the harness); any is a
    /// failure ([`RunReport::incidents`]).
    pub sidecar_exits: Vec<String>,
    /// nats-servers that exited on their own (restarted by the harness), each with the fault
    /// that explains it or "unexplained" (a failure).
    pub nats_exits: Vec<String>,
    /// The wasm replica's part, when it took part.
    pub wasm: Option<WasmFigures>,
    /// Messages in the stream at the end.
    pub stream_messages: u64,
    /// Parts re-sent after JetStream's duplicate window (harmless).
    pub resent_parts: u64,
    /// Messages parked on some node at the end.
    pub parked: i64,
    /// Time from the heal to convergence, or `None` if the nodes never converged.
    pub converge: Option<Duration>,
    /// The checker's findings.
    pub verdict: checker::Verdict,
    /// Unexpected exits, panics and parked messages.
    pub incidents: incidents::Incidents,
    /// Where the seed, history, logs and databases were kept (when the run failed, or always
    /// with `HL_CHAOS_KEEP` set).
    pub kept: Option<PathBuf>,
}

impl RunReport {
    /// Whether the run converged, the checker found nothing, no process exited without a fault
    /// to explain it, no log holds a panic and nothing is parked at the end.
    pub fn passed(&self) -> bool {
        self.converge.is_some() && self.verdict.is_clean() && self.incidents.is_clean()
    }

    /// A multi-line account of the failures (empty when it passed).
    pub fn failures(&self) -> String {
        let mut out = String::new();
        if self.converge.is_none() {
            out.push_str("the nodes did not converge after the heal\n");
        }
        for (title, list) in [
            ("divergence", &self.verdict.divergences),
            ("lost write", &self.verdict.lost_writes),
            ("duplicate", &self.verdict.duplicates),
            ("unexpected exit", &self.incidents.unexpected_exits),
            ("panic", &self.incidents.panics),
            ("parked at the end", &self.incidents.parked),
        ] {
            for item in list.iter().take(20) {
                out.push_str(&format!("{title}: {item}\n"));
            }
            if list.len() > 20 {
                out.push_str(&format!("... and {} more {title}s\n", list.len() - 20));
            }
        }
        if let Some(dir) = &self.kept {
            out.push_str(&format!(
                "seed {}: history, logs and databases kept in {}\n",
                self.seed,
                dir.display()
            ));
        }
        out
    }
}

/// The directory runs work in (`target/chaos`, ignored by git).
pub fn work_root() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("chaos")
}

/// A name tag and subnet no other run of this process or a concurrent process uses.
fn run_identity() -> (String, u8) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let id = std::process::id().wrapping_mul(31).wrapping_add(n);
    (format!("c{:04x}", id & 0xffff), (id % 250) as u8 + 1)
}

/// Writes one row on every node (and the wasm replica) and waits until every node has every
/// row: the JetStream cluster, the stream, every sidecar and the replica work before the first
/// fault. Panics (keeping the run directory) otherwise.
fn warm_up(cluster: &cluster::Cluster, history: &History, root: &Path) {
    use harmonylite_core::value::Value;
    for node in &cluster.nodes {
        let conn = rusqlite::Connection::open(&node.db).expect("opening a node's database");
        let key = format!("warm-up-{}", node.index);
        let owner = format!("n{}", node.index);
        let begin_ms = history::now_ms();
        conn.execute(
            "INSERT INTO items(id, owner, val, note) VALUES (?1, ?2, 0, 'warm-up')",
            rusqlite::params![key, owner],
        )
        .expect("writing the warm-up row");
        let image = [
            ("id", Value::Text(key.clone())),
            ("owner", Value::Text(owner)),
            ("val", Value::Integer(0)),
            ("note", Value::Text("warm-up".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        history.commit(history::Commit {
            node: node.index,
            begin_ms,
            end_ms: history::now_ms(),
            writes: vec![history::RowWrite {
                table: "items".into(),
                key: Value::Text(key),
                image: Some(image),
            }],
            outcome: Outcome::Acknowledged,
        });
    }
    if let Some(wasm) = &cluster.wasm {
        wasm.insert(&format!("warm-up-{}", cluster.nodes.len()))
            .expect("writing the wasm replica's warm-up row");
    }
    let dbs = cluster.dbs();
    let ready = checker::wait_converged(&dbs, Duration::from_secs(120)).is_some()
        && dbs[0]
            .dump_table("items")
            .is_ok_and(|rows| rows.len() == dbs.len());
    if !ready {
        cluster.keep_databases(root);
        panic!(
            "the cluster did not replicate its warm-up rows within 120 s; logs in {}",
            root.display()
        );
    }
}

/// Performs one run: starts the cluster, runs the workload and faults for `chaos`, heals
/// everything, waits for convergence and checks. On failure the run directory (seed, history,
/// logs, databases) is kept and named in the report; on success it is removed.
pub fn run(options: &RunOptions) -> RunReport {
    assert!(
        (3..=5).contains(&options.nodes),
        "a chaos run has 3 to 5 nodes, not {}",
        options.nodes
    );
    if options.wasm {
        // Fail before anything starts when node or the built npm package is missing.
        wasm::node_binary();
        wasm::package_entry();
    }
    let (tag, subnet) = run_identity();
    let root = work_root().join(format!("seed-{}-{tag}", options.seed));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("creating the run directory");
    std::fs::write(root.join("seed"), format!("{}\n", options.seed)).unwrap();

    let history = History::default();
    let mut cluster = cluster::Cluster::start(
        &root,
        &tag,
        subnet,
        options.nodes,
        options.tmpfs_mb,
        options.wasm,
    );
    if options.wasm {
        let n = options.nodes;
        let mut wasm = wasm::WasmReplica::new(
            cluster.network.namespace(n),
            n,
            format!("ws://{}:{}", cluster.network.address(0), wasm::WS_PORT),
            root.join("wasm.log"),
            n,
            options.seed,
            n.min(3),
            history.clone(),
        );
        wasm.start();
        cluster.wasm = Some(wasm);
    }
    warm_up(&cluster, &history, &root);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| {
            workload::spawn_writer(
                n.index,
                n.db.clone(),
                options.seed,
                stop.clone(),
                history.clone(),
            )
        })
        .collect();
    if let Some(wasm) = cluster.wasm.as_mut() {
        wasm.start_workload();
    }

    let mut kinds = options.kinds.clone();
    if !options.wasm {
        kinds.retain(|k| !k.is_wasm());
    }
    let mut injector = Injector::new(options.seed, kinds, history.clone());
    let mut rng = Rng::new(options.seed ^ 0x5EED);
    let start = Instant::now();
    while start.elapsed() < options.chaos {
        injector.step(&mut cluster, Instant::now());
        for node in &mut cluster.nodes {
            if let Some(status) = node.sidecar_exited() {
                let what = format!(
                    "sidecar {} exited on its own ({status}); restarted",
                    node.index
                );
                history.fault(what);
                node.kill_sidecar();
                node.start_sidecar();
            }
            // nats-server exits when it cannot write its store (a full disk): a supervisor
            // would start it again, so the harness does. Every exit is recorded by the node
            // when first seen (wherever that is) and judged at the end.
            if let Some(status) = node.nats_exited() {
                let what = format!(
                    "nats-server {} exited on its own ({status}); restarted",
                    node.index
                );
                history.fault(what);
                node.kill_nats();
                node.start_nats();
            }
        }
        if let Some(wasm) = cluster.wasm.as_mut() {
            if let Some(status) = wasm.exited() {
                let what = format!(
                    "wasm replica ({}) exited on its own ({status}); restarted",
                    wasm.label()
                );
                history.fault(what);
                wasm.kill();
                wasm.start();
            }
        }
        std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("a writer thread panicked");
    }
    if let Some(wasm) = cluster.wasm.as_mut() {
        wasm.stop_workload();
    }
    injector.heal_all(&mut cluster);
    history.fault("heal everything".into());

    let converge = checker::wait_converged(&cluster.dbs(), options.converge_timeout);
    if let Some(wasm) = cluster.wasm.as_mut() {
        wasm.finish();
    }
    let record = history.snapshot();
    let db_refs = cluster.dbs();
    let mut origins: HashMap<u128, usize> =
        (0..options.nodes).map(|i| (i as u128 + 1, i)).collect();
    if let Some(wasm) = &cluster.wasm {
        origins.extend(wasm.incarnations.iter().map(|(id, index, _)| (*id, *index)));
    }
    let (stream, verdict) = match checker::read_stream(&cluster.nodes[0].namespace, STREAM, origins)
    {
        Ok(stream) => {
            let verdict = checker::check(&db_refs, &stream, &record);
            (stream, verdict)
        }
        Err(e) => {
            let verdict = checker::Verdict {
                divergences: vec![format!("cannot read the stream: {e}")],
                ..Default::default()
            };
            (checker::StreamContent::default(), verdict)
        }
    };
    let parked_at: Vec<incidents::ParkedAt> = db_refs
        .iter()
        .enumerate()
        .map(|(i, db)| incidents::ParkedAt {
            replica: db.label(i),
            parked: db.parked(),
        })
        .collect();
    let parked = parked_at
        .iter()
        .filter_map(|p| p.parked.as_ref().ok())
        .map(|(n, _)| n)
        .sum();
    let wasm_figures = cluster.wasm.as_ref().map(|wasm| {
        let first = options.nodes;
        let of_wasm = |c: &&history::Commit| c.node >= first;
        WasmFigures {
            incarnations: wasm.incarnations.len(),
            transactions: record
                .commits
                .iter()
                .filter(of_wasm)
                .filter(|c| c.outcome == Outcome::Acknowledged)
                .count() as u64,
            uncertain: record
                .commits
                .iter()
                .filter(of_wasm)
                .filter(|c| c.outcome == Outcome::Uncertain)
                .count() as u64,
            exits: wasm.exits.iter().map(describe_exit).collect(),
        }
    });
    drop(db_refs);
    // Every process must still run after the heal: this last look records any exit since.
    let (exits, logs) = cluster.exits_and_logs();
    let incidents = incidents::assess(&exits, &logs, &parked_at);
    let of = |prefix: &str| -> Vec<String> {
        exits
            .iter()
            .filter(|e| e.process.starts_with(prefix))
            .map(describe_exit)
            .collect()
    };
    let acked: Vec<_> = record
        .commits
        .iter()
        .filter(|c| c.outcome == Outcome::Acknowledged)
        .collect();
    let mut report = RunReport {
        seed: options.seed,
        transactions: acked.len() as u64,
        row_writes: acked.iter().map(|c| c.writes.len() as u64).sum(),
        failed_transactions: record.failed + (record.commits.len() - acked.len()) as u64,
        faults: injector.counts.clone(),
        sidecar_exits: of("sidecar"),
        nats_exits: of("nats-server"),
        wasm: wasm_figures,
        stream_messages: stream.messages,
        resent_parts: stream.resent_parts,
        parked,
        converge,
        verdict,
        incidents,
        kept: None,
    };
    if report.passed() && std::env::var_os("HL_CHAOS_KEEP").is_none() {
        drop(cluster);
        let _ = std::fs::remove_dir_all(&root);
    } else {
        std::fs::write(
            root.join("history.jsonl"),
            record.to_json_lines(options.seed),
        )
        .unwrap();
        if !report.passed() {
            std::fs::write(root.join("failures.txt"), report.failures()).unwrap();
        }
        cluster.keep_databases(&root);
        cluster.keep_wasm_tables(&root);
        drop(cluster);
        report.kept = Some(root);
    }
    report
}

/// One line for an exit: the process, its status and what explains it.
fn describe_exit(exit: &incidents::ExitRecord) -> String {
    format!(
        "{} exited on its own ({}): {}",
        exit.process,
        exit.status,
        exit.explained_by
            .as_deref()
            .unwrap_or("unexplained (a crash)")
    )
}
