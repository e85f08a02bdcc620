//! Quick-mode chaos (CI): a few seeded runs of 3 real sidecars and 3 nats-servers, each in a
//! network namespace of its own, plus a wasm replica (the built npm package in node, over
//! WebSocket, in a namespace of its own), under a random workload and random faults (kill -9
//! and SIGSTOP of sidecars, kill -9 of nats-servers, partitions, clock skew, a full disk;
//! kill -9, partitions and app-side clock skew of the wasm replica), healed and checked against
//! the history and an LWW model (`harmonylite_tests::chaos`). A run also fails on any process
//! exit no fault explains, any panic in a log, and any message still parked at the end. The
//! seeds 1, 2, 3 between them inject every kind of fault (`chaos::faults::first_deck`); the
//! test asserts they did. A failed run keeps its seed, history, logs and databases under
//! `target/chaos/` and names the path. Needs root, `ip`, libfaketime
//! (scripts/lib/tools.sh installs them), node and the built npm package (`npm/dist`): a
//! missing one fails the test, nothing is skipped.
//!
//! Also here: a full disk under one node gives clear errors, corrupts nothing, and
//! replication resumes once space is freed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use harmonylite_tests::chaos::faults::FaultKind;
use harmonylite_tests::chaos::incidents::{self, names_full_disk};
use harmonylite_tests::chaos::{self, checker, checker::Db, cluster::Cluster, RunOptions};
use harmonylite_tests::wait_until;

/// Seeds of the quick mode, and whether they are the default ones (which must inject every
/// kind of fault between them); `HL_CHAOS_SEEDS=7,8` replaces them (to replay a failure).
fn seeds() -> (Vec<u64>, bool) {
    match std::env::var("HL_CHAOS_SEEDS") {
        Ok(list) => (
            list.split(',')
                .map(|s| {
                    s.trim()
                        .parse()
                        .expect("HL_CHAOS_SEEDS: comma-separated integers")
                })
                .collect(),
            false,
        ),
        Err(_) => (vec![1, 2, 3], true),
    }
}

#[test]
fn quick_chaos_runs_converge_without_loss() {
    let mut failures = String::new();
    let mut injected: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let (seeds, default_seeds) = seeds();
    for seed in seeds {
        let mut options = RunOptions::new(seed);
        options.chaos = Duration::from_secs(25);
        let report = chaos::run(&options);
        eprintln!(
            "seed {seed}: {} transactions, faults {:?}, converged in {:?}, {} stream messages, wasm replica {:?}, exits {:?} {:?}",
            report.transactions, report.faults, report.converge, report.stream_messages, report.wasm,
            report.sidecar_exits, report.nats_exits
        );
        assert!(
            report.transactions > 0,
            "seed {seed}: the workload wrote nothing"
        );
        let wasm = report.wasm.as_ref().expect("the wasm replica took part");
        assert!(
            wasm.transactions > 0,
            "seed {seed}: the wasm replica wrote nothing that must survive"
        );
        assert!(
            report.stream_messages > 0,
            "seed {seed}: the checker read no message from the stream"
        );
        for (kind, n) in &report.faults {
            *injected.entry(*kind).or_default() += n;
        }
        if !report.passed() {
            failures.push_str(&format!("seed {seed}:\n{}", report.failures()));
        }
    }
    assert!(failures.is_empty(), "chaos runs failed:\n{failures}");
    let missing: Vec<_> = FaultKind::ALL
        .into_iter()
        .filter(|k| !injected.contains_key(k))
        .map(|k| k.name())
        .collect();
    if default_seeds {
        assert!(
            missing.is_empty(),
            "the quick mode did not inject every kind of fault: none of {missing:?} (injected {injected:?})"
        );
    } else {
        assert!(!injected.is_empty(), "no fault was injected");
        eprintln!("HL_CHAOS_SEEDS replays given seeds: kinds not injected {missing:?}");
    }
}

fn rows(db: &Path) -> usize {
    checker::dump_table(db, "items")
        .map(|r| r.len())
        .unwrap_or(0)
}

#[test]
fn full_disk_gives_clear_errors_corrupts_nothing_and_replication_resumes() {
    let root = chaos::work_root().join(format!("full-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let mut cluster = Cluster::start(
        &root,
        &format!("d{:04x}", std::process::id() & 0xffff),
        251,
        3,
        64,
        false,
    );
    let dbs: Vec<_> = cluster.nodes.iter().map(|n| n.db.clone()).collect();
    let db_refs: Vec<Db> = dbs.iter().map(|p| Db::File(p)).collect();

    // Replication works before the fault.
    rusqlite::Connection::open(&dbs[1])
        .unwrap()
        .execute("INSERT INTO items VALUES ('before', 'n1', 0, 'before')", [])
        .unwrap();
    assert!(
        checker::wait_converged(&db_refs, Duration::from_secs(120)).is_some() && rows(&dbs[0]) == 1,
        "the cluster did not replicate before the fault; logs in {}",
        root.display()
    );

    // Fill node 0's disk (its database and its JetStream store share the tmpfs).
    cluster.nodes[0].fill_disk();
    let app0 = rusqlite::Connection::open(&dbs[0]).unwrap();
    app0.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut refused = None;
    for k in 0..200 {
        let payload = "x".repeat(4000);
        if let Err(e) = app0.execute(
            "INSERT INTO items(id, owner, val, note) VALUES (?1, 'n0', ?2, ?3)",
            rusqlite::params![format!("full-{k}"), k, payload],
        ) {
            refused = Some(e.to_string());
            break;
        }
    }
    let refused = refused.expect("an application write on a full disk succeeded 200 times");
    assert!(
        names_full_disk(&refused),
        "the application's error does not say the disk is full: {refused}"
    );
    let log_offset = std::fs::read_to_string(&cluster.nodes[0].sidecar_log)
        .unwrap_or_default()
        .len();
    // The other nodes keep writing; node 0 cannot apply while its disk is full.
    let app1 = rusqlite::Connection::open(&dbs[1]).unwrap();
    app1.busy_timeout(Duration::from_secs(5)).unwrap();
    for k in 0..50 {
        app1.execute(
            "INSERT INTO items(id, owner, val, note) VALUES (?1, 'n1', ?2, 'while full')",
            rusqlite::params![format!("n1-{k}"), k],
        )
        .unwrap();
    }
    // The sidecar itself names the full disk (it cannot apply node 1's rows), in its own log
    // and since the disk filled: an operator reading only the sidecar's log learns why.
    let sidecar_log = || {
        let log = std::fs::read_to_string(&cluster.nodes[0].sidecar_log).unwrap_or_default();
        log.get(log_offset..).unwrap_or_default().to_string()
    };
    let named = wait_until(Duration::from_secs(30), || names_full_disk(&sidecar_log()));
    assert!(
        named,
        "node 0's sidecar did not name the full disk in its log within 30 s:\n{}",
        sidecar_log()
    );

    // Free the space: replication resumes, every node converges, nothing is corrupt.
    let restarted = cluster.nodes[0].free_disk();
    eprintln!("nats-server 0 restarted after the disk was freed: {restarted}");
    app0.execute(
        "INSERT INTO items(id, owner, val, note) VALUES ('after', 'n0', 1, 'after')",
        [],
    )
    .unwrap();
    let converged = checker::wait_converged(&db_refs, Duration::from_secs(120));
    assert!(
        converged.is_some(),
        "the nodes did not converge after the disk was freed; logs in {}",
        root.display()
    );
    assert!(
        rows(&dbs[0]) >= 52,
        "node 0 misses rows after the disk was freed"
    );
    for db in &dbs {
        let conn = rusqlite::Connection::open(db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "{} is corrupt", db.display());
    }
    // No process crashed or panicked (a nats-server may stop on the full disk), and nothing
    // is parked.
    let (exits, logs) = cluster.exits_and_logs();
    let parked: Vec<_> = db_refs
        .iter()
        .enumerate()
        .map(|(i, db)| incidents::ParkedAt {
            replica: db.label(i),
            parked: db.parked(),
        })
        .collect();
    let found = incidents::assess(&exits, &logs, &parked);
    assert!(
        found.is_clean(),
        "the full disk crashed, panicked or parked something (logs in {}): {found:#?}",
        root.display()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&root);
}
