//! S3 snapshot benchmark: taking and restoring a snapshot of a ~100 MiB replicated database
//! through the `s3` store, against moto's S3 server on loopback (`moto_server`, installed by
//! `ensure_moto` in scripts/lib/tools.sh). Prints figures; asserts nothing about speed.
//!
//! - take: `harmonylite::snapshot::take` into the S3 store (copy, strip node-local state,
//!   checksum, frame, multipart upload of 16 MiB parts).
//! - restore: `harmonylite::snapshot::restore::download` (verify every chunk and the whole, write
//!   beside the database, fsync) then `prepare_restored_file` (node-local state, fsync):
//!   everything a restore does except the rename.
//!
//! - reference: `cp` of the database file on the same disk, in every round before the take
//!   (`sync` between steps, not timed), so each step has a time ratio to `cp` of its round.
//!
//! moto keeps objects in memory and is single-threaded Python: it is a functional stand-in,
//! slower than a real object store; the figures bound the sidecar's own cost from above.
//!
//! Run: `cargo bench -p harmonylite-tests --bench s3_snapshot` (100 MiB, 3 rounds), or
//! `-- --quick` (32 MiB, 2 rounds); `HL_BENCH_SNAPSHOT_MIB` and `HL_BENCH_ROUNDS` override.
//! `-- --json FILE` also writes every figure there (what `scripts/bench` reads), in the
//! snapshot bench's format: each step's throughput in MiB/s and its time ratio to `cp`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harmonylite::config::Config;
use harmonylite::snapshot::restore::{download, prepare_restored_file};
use harmonylite::snapshot::store::s3::S3Store;
use harmonylite::snapshot::store::SnapshotStore;
use harmonylite::snapshot::take;
use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::sqlite::snapshot::NodeLocal;
use harmonylite_tests::moto::Moto;

const STREAM: &str = "bench-changes-1";
const BUCKET: &str = "bench-snaps";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn node() -> NodeId {
    NodeId::from_u128(1).unwrap()
}

fn summary(label: &str, bytes: u64, times: &mut [Duration]) {
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "{label:<8} median {:>7.2} s ({:>6.1} MiB/s)  min {:>6.2} s  max {:>6.2} s",
        median.as_secs_f64(),
        bytes as f64 / (1 << 20) as f64 / median.as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64()
    );
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

/// Median, min and max, as the snapshot bench writes them.
fn stats(values: &[f64]) -> serde_json::Value {
    let mut s = values.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    serde_json::json!({ "runs": s.len(), "min": s[0], "median": median, "max": s[s.len() - 1], "value": median })
}

/// `cp`, take and restore: each step's throughput and, per round, its time relative to
/// `cp` of the same round.
fn write_json(path: &Path, size: u64, quick: bool, steps: &[(&str, &[Duration])]) {
    let cp = steps[0].1;
    let mut out = Vec::new();
    for (name, times) in steps {
        let peer = if *name == "cp" { "cp" } else { "harmonylite" };
        let rates: Vec<f64> = times.iter().map(|t| mib_s(size, *t)).collect();
        let mut figure = stats(&rates);
        figure["metric"] = format!("snapshot {name}: throughput").into();
        figure["unit"] = "MiB/s".into();
        figure["peer"] = peer.into();
        out.push(figure);
        if *name != "cp" {
            let ratios: Vec<f64> = times
                .iter()
                .zip(cp)
                .map(|(t, c)| t.as_secs_f64() / c.as_secs_f64())
                .collect();
            let mut figure = stats(&ratios);
            figure["metric"] = format!("snapshot {name}: time ratio to cp").into();
            figure["unit"] = "x".into();
            figure["peer"] = format!("{peer} vs cp").into();
            out.push(figure);
        }
    }
    let doc = serde_json::json!({
        "suite": "s3-snapshot",
        "quick": quick,
        "database_bytes": size,
        "figures": out,
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn sync_all() {
    let _ = Command::new("sync").status();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().position(|a| a == "--json").map(|i| {
        std::path::PathBuf::from(
            args.get(i + 1)
                .unwrap_or_else(|| panic!("--json needs a file name")),
        )
    });
    let mib = env_usize("HL_BENCH_SNAPSHOT_MIB", if quick { 32 } else { 100 });
    let rounds = env_usize("HL_BENCH_ROUNDS", if quick { 2 } else { 3 });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    harmonylite_tests::build_replicated_database(&db, mib, node());
    let size = std::fs::metadata(&db).unwrap().len();
    let moto = Moto::start(dir.path());
    moto.create_bucket(BUCKET);
    let config = Config::from_toml_str(
        &format!(
            "db_path = {:?}\n{}",
            db.display().to_string(),
            moto.snapshot_toml(BUCKET, "bench", "")
        ),
        "bench.toml",
    )
    .unwrap();
    let store = SnapshotStore::S3(Box::new(
        S3Store::open(&config.snapshot.s3, STREAM).unwrap(),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "S3 snapshot of a {:.1} MiB database, moto on 127.0.0.1:{}, {rounds} rounds",
        size as f64 / (1 << 20) as f64,
        moto.port
    );
    let (mut cps, mut takes, mut restores) = (Vec::new(), Vec::new(), Vec::new());
    let copy = dir.path().join("cp.db");
    for round in 0..rounds {
        sync_all();
        let t0 = Instant::now();
        assert!(Command::new("cp")
            .arg(&db)
            .arg(&copy)
            .status()
            .unwrap()
            .success());
        cps.push(t0.elapsed());
        std::fs::remove_file(&copy).unwrap();
        sync_all();

        let work = dir.path().join("work");
        let t0 = Instant::now();
        let taken = runtime
            .block_on(take(&db, &work, node(), STREAM, &store))
            .unwrap();
        takes.push(t0.elapsed());

        let target = dir.path().join("restored.db");
        let t0 = Instant::now();
        runtime.block_on(async {
            let (header, _) = download(&store, &taken.info, &target).await.unwrap();
            let local = NodeLocal {
                node_id: NodeId::from_u128(2).unwrap(),
                incarnation: 7,
                next_batch: None,
                next_outbox_id: None,
                clock: None,
            };
            prepare_restored_file(&target, local, header.covered_seq, StreamSeq::new(1000))
                .await
                .unwrap();
        });
        restores.push(t0.elapsed());
        std::fs::remove_file(&target).unwrap();
        runtime.block_on(store.delete(&taken.info)).unwrap();
        sync_all();
        println!(
            "round {round}: cp {:.3} s, take {:.2} s, restore {:.2} s ({} framed bytes)",
            cps[round].as_secs_f64(),
            takes[round].as_secs_f64(),
            restores[round].as_secs_f64(),
            taken.bytes
        );
    }
    if let Some(path) = json {
        write_json(
            &path,
            size,
            quick,
            &[
                ("cp", &cps),
                ("take -> s3 store (moto)", &takes),
                ("restore <- s3 store (moto)", &restores),
            ],
        );
        println!("figures written to {}", path.display());
    }
    summary("cp", size, &mut cps);
    summary("take", size, &mut takes);
    summary("restore", size, &mut restores);
}
