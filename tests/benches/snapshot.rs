//! Snapshot benchmark: taking and restoring a snapshot of a 1 GiB replicated database,
//! compared with `cp` of the same file on the same disk, in one run. Prints figures; asserts
//! nothing about speed.
//!
//! - take: the sidecar's own code (`harmonylite::snapshot::take`). Into the `file` store: a
//!   consistent copy (bytes read inside a read transaction when the WAL is checkpointed, else
//!   SQLite's backup API), strip node-local state, checksum, fsync, index. Into the `nats`
//!   store (a real nats-server's object store, its JetStream directory on the same disk):
//!   the database file pinned by a read transaction, checksummed, and streamed framed into
//!   the upload, no local copy written (`harmonylite::snapshot::pinned`).
//! - restore: `harmonylite::snapshot::restore::download` (verify every chunk and the whole, write
//!   beside the database, fsync) then `prepare_restored_file` (node-local state, fsync):
//!   everything a restore does except the rename.
//!   `restore <- nats: download only` is the download part of the nats store's restore.
//! - the application's writes: single-row autocommit inserts on its own connection, alone
//!   and during one take into the nats store; their p99s and the ratio (issue 20's goal:
//!   at most 1.5×) go into the JSON with the steps.
//! - references: `cp` of the database file, and `cp` followed by an fsync of the copy; the
//!   object store alone (the database file put and read back with async-nats' object store
//!   API), the ceiling of the nats store; and the nats store's upload alone (a copy already
//!   made and checksummed), which shows how much of a take is the object store.
//!
//! Throughput = database bytes / wall time; each figure is the median of the rounds, all
//! steps interleaved round by round (`sync` between steps, not timed), the page cache warm.
//!
//! - the application's writes during a take: single-row inserts on the application's own
//!   connection, their latency alone and while a take into the nats store runs (p50, p99).
//!
//! Run: `cargo bench -p harmonylite-tests --bench snapshot` (1 GiB, 3 rounds), or
//! `-- --quick` (64 MiB, 2 rounds). `HL_BENCH_SNAPSHOT_MIB` and `HL_BENCH_ROUNDS` override;
//! `-- --json FILE` also writes every figure there (what `scripts/bench` reads): each
//! step's throughput in MiB/s and its time ratio to `cp`, both per round.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harmonylite::snapshot::restore::{download, prepare_restored_file};
use harmonylite::snapshot::store::{FileStore, SnapshotInfo, SnapshotStore};
use harmonylite::snapshot::{make_copy, take, FramedSource};
use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::snapshot::DEFAULT_CHUNK_SIZE;
use harmonylite_core::sqlite::snapshot::NodeLocal;
use harmonylite_tests::ExternalNats;

const STREAM: &str = "bench-changes-1";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn node() -> NodeId {
    NodeId::from_u128(1).unwrap()
}

async fn raw_object_store(
    js: &async_nats::jetstream::Context,
    file: &Path,
) -> (Duration, Duration) {
    use tokio::io::AsyncReadExt;
    let bucket = js
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: "bench-raw".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let t = Instant::now();
    let mut input = tokio::fs::File::open(file).await.unwrap();
    bucket
        .put(
            async_nats::jetstream::object_store::ObjectMetadata {
                name: "raw".into(),
                chunk_size: Some(512 * 1024),
                ..Default::default()
            },
            &mut input,
        )
        .await
        .unwrap();
    let put = t.elapsed();
    let t = Instant::now();
    let mut object = bucket.get("raw").await.unwrap();
    let mut buffer = bytes::BytesMut::with_capacity(4 << 20);
    loop {
        buffer.clear();
        if object.read_buf(&mut buffer).await.unwrap() == 0 {
            break;
        }
    }
    let get = t.elapsed();
    js.delete_object_store("bench-raw").await.unwrap();
    (put, get)
}

fn sync_all() {
    let _ = Command::new("sync").status();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

struct Figures {
    name: &'static str,
    times: Vec<Duration>,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().position(|a| a == "--json").map(|i| {
        std::path::PathBuf::from(
            args.get(i + 1)
                .unwrap_or_else(|| panic!("--json needs a file name")),
        )
    });
    let mib = env_usize("HL_BENCH_SNAPSHOT_MIB", if quick { 64 } else { 1024 });
    let rounds = env_usize("HL_BENCH_ROUNDS", if quick { 2 } else { 3 });
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let db = dir.path().join("app.db");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    let built = Instant::now();
    harmonylite_tests::build_replicated_database(&db, mib, node());
    let size = std::fs::metadata(&db).unwrap().len();
    println!(
        "database: {:.0} MiB ({} bytes), built in {:.1?}, on {}",
        size as f64 / 1048576.0,
        size,
        built.elapsed(),
        dir.path().display()
    );

    let nats = ExternalNats::start(&dir.path().join("nats"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let js = runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        async_nats::jetstream::new(client)
    });
    let config = harmonylite::config::Config::from_toml_str(
        &format!("db_path = {:?}\n", db.display().to_string()),
        "bench.toml",
    )
    .unwrap();
    let nats_store = runtime
        .block_on(SnapshotStore::open(&config, &js, STREAM))
        .unwrap();
    let file_store = SnapshotStore::File(FileStore::new(dir.path().join("snapshots"), STREAM));

    let mut figures = vec![
        Figures {
            name: "cp",
            times: vec![],
        },
        Figures {
            name: "cp + fsync",
            times: vec![],
        },
        Figures {
            name: "take -> file store",
            times: vec![],
        },
        Figures {
            name: "take -> nats store",
            times: vec![],
        },
        Figures {
            name: "restore <- file store",
            times: vec![],
        },
        Figures {
            name: "restore <- nats store",
            times: vec![],
        },
        Figures {
            name: "  (take: copy + strip only)",
            times: vec![],
        },
        Figures {
            name: "  (object store put, raw)",
            times: vec![],
        },
        Figures {
            name: "  (object store get, raw)",
            times: vec![],
        },
        Figures {
            name: "  (take: nats upload only)",
            times: vec![],
        },
        Figures {
            name: "  (restore <- nats: download only)",
            times: vec![],
        },
    ];
    let copy = dir.path().join("cp.db");
    let target = dir.path().join("restored.db");
    for round in 0..rounds {
        sync_all();
        let t = Instant::now();
        assert!(Command::new("cp")
            .arg(&db)
            .arg(&copy)
            .status()
            .unwrap()
            .success());
        figures[0].times.push(t.elapsed());
        std::fs::remove_file(&copy).unwrap();
        sync_all();

        let t = Instant::now();
        assert!(Command::new("cp")
            .arg(&db)
            .arg(&copy)
            .status()
            .unwrap()
            .success());
        std::fs::File::open(&copy).unwrap().sync_all().unwrap();
        figures[1].times.push(t.elapsed());
        std::fs::remove_file(&copy).unwrap();
        sync_all();

        let mut taken = Vec::new();
        for (i, store) in [(2, &file_store), (3, &nats_store)] {
            let t = Instant::now();
            let snapshot = runtime
                .block_on(take(&db, &work, node(), STREAM, store))
                .unwrap();
            figures[i].times.push(t.elapsed());
            taken.push(snapshot);
            sync_all();
        }

        for (i, store, snapshot) in [(4, &file_store, &taken[0]), (5, &nats_store, &taken[1])] {
            let t = Instant::now();
            runtime.block_on(async {
                let (header, _) = download(store, &snapshot.info, &target).await.unwrap();
                if i == 5 {
                    figures[10].times.push(t.elapsed());
                }
                let local = NodeLocal {
                    node_id: NodeId::from_u128(2).unwrap(),
                    incarnation: 42,
                    next_batch: None,
                    next_outbox_id: None,
                    clock: None,
                };
                prepare_restored_file(
                    &target,
                    local,
                    header.covered_seq,
                    StreamSeq::new(header.covered_seq.get() + 10),
                )
                .await
                .unwrap();
            });
            figures[i].times.push(t.elapsed());
            std::fs::remove_file(&target).unwrap();
            sync_all();
        }

        let t = Instant::now();
        let covered = make_copy(&db, &copy).unwrap();
        figures[6].times.push(t.elapsed());
        // The upload alone, from a copy already made and checksummed.
        let source = FramedSource::prepare(&copy, covered, node(), DEFAULT_CHUNK_SIZE).unwrap();
        let info = SnapshotInfo::new(STREAM, covered, 1, node());
        sync_all();
        let t = Instant::now();
        runtime.block_on(nats_store.upload(&info, &source)).unwrap();
        figures[9].times.push(t.elapsed());
        runtime.block_on(nats_store.delete(&info)).unwrap();
        std::fs::remove_file(&copy).unwrap();

        for (store, snapshot) in [(&file_store, &taken[0]), (&nats_store, &taken[1])] {
            runtime.block_on(store.delete(&snapshot.info)).unwrap();
        }

        // The object store alone, the ceiling of the nats store: the database file put and
        // read back with the plain async-nats API (no copy, no framing, no fsync).
        sync_all();
        let (put, get) = runtime.block_on(raw_object_store(&js, &db));
        figures[7].times.push(put);
        figures[8].times.push(get);
        sync_all();
        eprintln!("round {} of {rounds} done", round + 1);
    }

    let cp = median(figures[0].times.clone());
    let cp_fsync = median(figures[1].times.clone());
    println!();
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>10} {:>12} {:>16}  vs cp, each round",
        "step", "median", "min", "max", "MiB/s", "vs cp", "vs cp + fsync"
    );
    for f in &figures {
        let m = median(f.times.clone());
        let min = *f.times.iter().min().unwrap();
        let max = *f.times.iter().max().unwrap();
        let rounds: Vec<String> = f
            .times
            .iter()
            .zip(&figures[0].times)
            .map(|(t, c)| format!("{:.0}%", c.as_secs_f64() / t.as_secs_f64() * 100.0))
            .collect();
        println!(
            "{:<30} {:>10.2?} {:>10.2?} {:>10.2?} {:>10.0} {:>11.0}% {:>15.0}%  {}",
            f.name,
            m,
            min,
            max,
            mib_s(size, m),
            cp.as_secs_f64() / m.as_secs_f64() * 100.0,
            cp_fsync.as_secs_f64() / m.as_secs_f64() * 100.0,
            rounds.join(" "),
        );
    }
    println!();
    println!(
        "({} rounds; throughput = database bytes / wall time; \"vs cp\" = cp time / step time, i.e. throughput as a share of cp's; \"each round\" against that round's cp)",
        rounds
    );

    // The application's writes while a snapshot is taken (issue 20 point 6): the same
    // single-row autocommit inserts on the application's own connection, for as long as one
    // take into the nats store lasts, once alone and once during the take.
    let alone = app_writes_while(&db, || std::thread::sleep(median(figures[3].times.clone())));
    let during = app_writes_while(&db, || {
        runtime
            .block_on(take(&db, &work, node(), STREAM, &nats_store))
            .unwrap();
    });
    println!();
    println!("application writes (1-row autocommit INSERT, WAL, synchronous = NORMAL):");
    for (name, l) in [("alone", &alone), ("during a take -> nats store", &during)] {
        println!(
            "  {name:<28} {:>6} writes  p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}",
            l.len(),
            percentile(l, 0.50),
            percentile(l, 0.99),
            l.last().copied().unwrap_or_default()
        );
    }
    let ratio = percentile(&during, 0.99).as_secs_f64() / percentile(&alone, 0.99).as_secs_f64();
    println!("  p99 during / alone: {ratio:.2}x (target: at most {WRITES_DURING_TAKE_TARGET}x)");
    if let Some(path) = json {
        let writes = app_write_figures(&alone, &during);
        write_json(&path, size, quick, &figures, writes);
        println!("figures written to {}", path.display());
    }
}

/// Issue 20's goal for the application's write p99 during a take, as a ratio to without.
const WRITES_DURING_TAKE_TARGET: f64 = 1.5;

/// The application's write latency alone and during a take as figures (one measurement
/// each: min = median = max), the p99 ratio with its target and verdict.
fn app_write_figures(alone: &[Duration], during: &[Duration]) -> Vec<serde_json::Value> {
    let ms = |l: &[Duration]| percentile(l, 0.99).as_secs_f64() * 1000.0;
    let one = |metric: &str, unit: &str, peer: &str, value: f64| {
        let mut figure = stats(&[value]);
        figure["metric"] = metric.into();
        figure["unit"] = unit.into();
        figure["peer"] = peer.into();
        figure
    };
    let ratio = ms(during) / ms(alone);
    let mut judged = one(
        "snapshot app write p99 during a take -> nats store / alone",
        "x",
        "during vs without a take",
        ratio,
    );
    judged["target"] = serde_json::json!({ "at_most": WRITES_DURING_TAKE_TARGET });
    judged["verdict"] = if ratio <= WRITES_DURING_TAKE_TARGET {
        "MET"
    } else {
        "MISSED"
    }
    .into();
    vec![
        one(
            "snapshot app writes alone: latency p99",
            "ms",
            "harmonylite",
            ms(alone),
        ),
        one(
            "snapshot app writes during a take -> nats store: latency p99",
            "ms",
            "harmonylite",
            ms(during),
        ),
        judged,
    ]
}

/// Runs `work` while another thread writes single rows into `db` as an application would
/// (its own connection, autocommit); returns each write's latency, sorted.
fn app_writes_while(db: &Path, work: impl FnOnce()) -> Vec<Duration> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.to_owned(), stop.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            conn.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
            let mut latencies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                conn.execute(
                    "INSERT INTO items(name, body) VALUES ('app', randomblob(100))",
                    [],
                )
                .unwrap();
                latencies.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(1));
            }
            latencies
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    work();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut latencies = writer.join().unwrap();
    latencies.sort();
    latencies
}

/// The `q` quantile of sorted `values`.
fn percentile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Median, min and max.
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

/// Every step's throughput and, per round, its time relative to `cp` of the same round, then
/// `extra` figures.
fn write_json(
    path: &Path,
    size: u64,
    quick: bool,
    figures: &[Figures],
    extra: Vec<serde_json::Value>,
) {
    let cp = &figures[0].times;
    let mut out = Vec::new();
    for f in figures {
        let name = f.name.trim().trim_start_matches('(').trim_end_matches(')');
        let peer = if f.name.starts_with("cp") {
            "cp"
        } else if f.name.contains("object store") {
            "nats-server"
        } else {
            "harmonylite"
        };
        let rates: Vec<f64> = f.times.iter().map(|t| mib_s(size, *t)).collect();
        let mut figure = stats(&rates);
        figure["metric"] = format!("snapshot {name}: throughput").into();
        figure["unit"] = "MiB/s".into();
        figure["peer"] = peer.into();
        out.push(figure);
        if f.name != "cp" {
            let ratios: Vec<f64> = f
                .times
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
    out.extend(extra);
    let doc = serde_json::json!({
        "suite": "snapshot",
        "quick": quick,
        "database_bytes": size,
        "figures": out,
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
