//! S3 snapshot benchmark: taking and restoring a snapshot of a ~100 MiB replicated database
//! through the `s3` store, against moto's S3 server on loopback (`moto_server`, installed by
//! `ensure_moto` in scripts/lib/tools.sh). Prints figures; asserts nothing about speed.
//!
//! - take: `harmonylite::snapshot::take` into the S3 store (copy, strip node-local state,
//!   checksum, frame, multipart upload of 16 MiB parts).
//! - restore: `harmonylite::restore::download` (verify every chunk and the whole, write
//!   beside the database, fsync) then `prepare_restored_file` (node-local state, fsync):
//!   everything a restore does except the rename.
//!
//! moto keeps objects in memory and is single-threaded Python: it is a functional stand-in,
//! slower than a real object store; the figures bound the sidecar's own cost from above.
//!
//! Run: `cargo bench -p harmonylite-tests --bench s3_snapshot` (100 MiB, 3 rounds);
//! `HL_BENCH_SNAPSHOT_MIB` and `HL_BENCH_ROUNDS` override.

use std::time::{Duration, Instant};

use harmonylite::config::Config;
use harmonylite::restore::{download, prepare_restored_file};
use harmonylite::s3_store::S3Store;
use harmonylite::snapshot::take;
use harmonylite::snapshot_store::SnapshotStore;
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mib = env_usize("HL_BENCH_SNAPSHOT_MIB", 100);
    let rounds = env_usize("HL_BENCH_ROUNDS", 3);
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
    let (mut takes, mut restores) = (Vec::new(), Vec::new());
    for round in 0..rounds {
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
        println!(
            "round {round}: take {:.2} s, restore {:.2} s ({} framed bytes)",
            takes[round].as_secs_f64(),
            restores[round].as_secs_f64(),
            taken.bytes
        );
    }
    summary("take", size, &mut takes);
    summary("restore", size, &mut restores);
}
