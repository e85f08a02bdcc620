//! The S3 snapshot store against a real S3-protocol server on loopback (moto's server mode):
//! upload (single `PUT` and multipart), list, prune and verified download; an interrupted
//! multipart upload is aborted, never listed, and leaves the previous snapshot usable; and a
//! new node bootstraps from a snapshot in S3 through real sidecars.

use std::path::Path;
use std::time::Duration;

use harmonylite::config::Config;
use harmonylite::snapshot::restore::download;
use harmonylite::snapshot::store::s3::{S3Store, PART_SIZE};
use harmonylite::snapshot::store::{SnapshotInfo, SnapshotStore, SnapshotStoreError};
use harmonylite::snapshot::{make_copy, FramedSource};
use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::snapshot::DEFAULT_CHUNK_SIZE;
use harmonylite_core::sqlite::{Store, StoreOptions};
use harmonylite_tests::moto::Moto;
use harmonylite_tests::*;

const STREAM: &str = "test-changes-1";
const BUCKET: &str = "hl-snaps";

fn node(n: u128) -> NodeId {
    NodeId::from_u128(n).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The S3 store of `stream` in `BUCKET` under `path`, configured like a node would be.
fn s3_store(moto: &Moto, dir: &Path, path: &str, stream: &str) -> SnapshotStore {
    let config = Config::from_toml_str(
        &format!(
            "db_path = {:?}\n{}",
            dir.join("x.db").display().to_string(),
            moto.snapshot_toml(BUCKET, path, "")
        ),
        "test.toml",
    )
    .unwrap();
    SnapshotStore::S3(Box::new(
        S3Store::open(&config.snapshot.s3, stream).unwrap(),
    ))
}

/// A replicated database of about `rows` KiB and its stripped copy, framed.
fn framed_copy(dir: &Path, covered: u64, rows: u32) -> (FramedSource, Vec<u8>) {
    let db = dir.join(format!("app-{covered}.db"));
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB);
         WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {rows})
         INSERT INTO t SELECT i, randomblob(1000) FROM r;"
    ))
    .unwrap();
    let store = Store::open(conn, StoreOptions::new(node(1))).unwrap();
    harmonylite_core::sqlite::meta::set(
        store.connection(),
        harmonylite_core::sqlite::meta::keys::CURSOR,
        covered as i64,
    )
    .unwrap();
    drop(store);
    let copy = dir.join(format!("copy-{covered}.db"));
    assert_eq!(make_copy(&db, &copy).unwrap(), StreamSeq::new(covered));
    let source =
        FramedSource::prepare(&copy, StreamSeq::new(covered), node(1), DEFAULT_CHUNK_SIZE).unwrap();
    let bytes = std::fs::read(&copy).unwrap();
    (source, bytes)
}

fn covered(list: &[SnapshotInfo]) -> Vec<u64> {
    list.iter().map(|s| s.covered_seq.get()).collect()
}

#[test]
fn the_s3_store_uploads_lists_prunes_and_downloads_verified_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    moto.create_bucket(BUCKET);
    let store = s3_store(&moto, dir.path(), "cluster-a/snaps", STREAM);
    runtime().block_on(async {
        assert!(store.list().await.unwrap().is_empty());
        assert!(store.describe().contains(BUCKET), "{}", store.describe());

        // Small snapshots: one PUT each.
        let mut stored = Vec::new();
        for (i, seq) in [10u64, 30, 20].into_iter().enumerate() {
            let (source, bytes) = framed_copy(dir.path(), seq, 3000);
            assert!(source.framed_size() <= PART_SIZE as u64);
            let info = SnapshotInfo::new(STREAM, StreamSeq::new(seq), 1_000 + i as u64, node(1));
            assert_eq!(
                store.upload(&info, &source).await.unwrap(),
                source.framed_size()
            );
            stored.push((info, source.framed_size(), bytes));
        }
        let list = store.list().await.unwrap();
        assert_eq!(
            covered(&list),
            [10, 20, 30],
            "oldest first, by covered sequence"
        );
        assert_eq!(list[2].size, stored[1].1, "sizes come from the listing");

        let newest = store.newest().await.unwrap().unwrap();
        let target = dir.path().join("restored.db");
        let (header, downloaded) = download(&store, &newest, &target).await.unwrap();
        assert_eq!(header.covered_seq, StreamSeq::new(30));
        assert_eq!(downloaded, newest.size);
        assert_eq!(
            std::fs::read(&target).unwrap(),
            stored[1].2,
            "byte for byte"
        );

        // Keys live under the prefix and the stream; other streams and prefixes see nothing.
        let (code, body) = moto
            .request("GET", &format!("/{BUCKET}?list-type=2"))
            .unwrap();
        assert_eq!(code, 200);
        assert!(
            body.contains(&format!("<Key>cluster-a/snaps/{}</Key>", newest.name)),
            "{body}"
        );
        let other_stream = s3_store(&moto, dir.path(), "cluster-a/snaps", "other-changes-1");
        assert!(other_stream.list().await.unwrap().is_empty());
        let other_prefix = s3_store(&moto, dir.path(), "cluster-b", STREAM);
        assert!(other_prefix.list().await.unwrap().is_empty());

        // Retention: keep the newest 2.
        let deleted = store.prune(2).await.unwrap();
        assert_eq!(covered(&deleted), [10]);
        assert_eq!(covered(&store.list().await.unwrap()), [20, 30]);

        // A large snapshot goes up as a multipart upload and comes back intact.
        let (big, big_bytes) = framed_copy(dir.path(), 40, 40_000);
        assert!(
            big.framed_size() > 2 * PART_SIZE as u64,
            "{} bytes",
            big.framed_size()
        );
        let info = SnapshotInfo::new(STREAM, StreamSeq::new(40), 2_000, node(2));
        assert_eq!(store.upload(&info, &big).await.unwrap(), big.framed_size());
        let newest = store.newest().await.unwrap().unwrap();
        assert_eq!(newest.covered_seq, StreamSeq::new(40));
        assert_eq!(newest.size, big.framed_size());
        download(&store, &newest, &target).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), big_bytes);
        assert!(moto.multipart_uploads(BUCKET).is_empty(), "completed");

        // An upload that fails after two parts went out (the copy changed under it): the
        // multipart upload is aborted, nothing is listed, the previous snapshot still restores.
        let (broken, _) = framed_copy(dir.path(), 50, 40_000);
        let mut changed = std::fs::read(broken.path()).unwrap();
        let last = changed.len() - 10;
        changed[last] ^= 0xff;
        std::fs::write(broken.path(), &changed).unwrap();
        let info = SnapshotInfo::new(STREAM, StreamSeq::new(50), 3_000, node(3));
        let error = store.upload(&info, &broken).await.unwrap_err();
        assert!(
            matches!(error, SnapshotStoreError::Upload { .. }),
            "{error:#}"
        );
        assert!(
            format!("{error:#}").contains("damaged or changed"),
            "{error:#}"
        );
        assert_eq!(covered(&store.list().await.unwrap()), [20, 30, 40]);
        assert!(
            moto.multipart_uploads(BUCKET).is_empty(),
            "the failed upload was aborted: {:?}",
            moto.multipart_uploads(BUCKET)
        );
        let newest = store.newest().await.unwrap().unwrap();
        assert_eq!(newest.covered_seq, StreamSeq::new(40));
        download(&store, &newest, &target).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), big_bytes);
    });
}

#[test]
fn a_missing_bucket_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path());
    let store = s3_store(&moto, dir.path(), "", STREAM);
    let error = runtime().block_on(store.list()).unwrap_err();
    assert!(
        matches!(error, SnapshotStoreError::List { .. }),
        "{error:#}"
    );
    let message = format!("{error:#}");
    assert!(message.contains(BUCKET), "{message}");
}

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, origin TEXT, body BLOB);";
const START: Duration = Duration::from_secs(30);

#[test]
fn a_new_node_bootstraps_from_a_snapshot_in_s3() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let moto = Moto::start(dir.path());
    moto.create_bucket(BUCKET);
    let snapshot = moto.snapshot_toml(BUCKET, "prod", "interval = 0\nevery_messages = 0");
    let mut a = Node::new(
        dir.path(),
        "a",
        SCHEMA,
        &format!("{}{snapshot}", external_toml(&nats.url(), 1)),
    );
    a.start();
    a.wait_healthy(START);
    {
        let app = a.app();
        for id in 0..200 {
            app.execute(
                "INSERT INTO items VALUES (?1, 'a', randomblob(500))",
                rusqlite::params![id],
            )
            .unwrap();
        }
    }
    assert!(wait_until(START, || {
        a.health()
            .is_some_and(|(_, h)| h["outbox_depth"].as_u64() == Some(0))
    }));
    assert!(
        a.run_command(&["--save-snapshot"], &[], Duration::from_secs(60)),
        "--save-snapshot failed:\n{}",
        a.log_tail()
    );
    let (code, body) = moto
        .request("GET", &format!("/{BUCKET}?list-type=2&prefix=prod/"))
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(body.matches(".hlsnap</Key>").count(), 1, "{body}");

    // Writes after the snapshot reach the new node through the stream.
    {
        let app = a.app();
        for id in 200..220 {
            app.execute(
                "INSERT INTO items VALUES (?1, 'a', randomblob(500))",
                rusqlite::params![id],
            )
            .unwrap();
        }
    }
    let mut b = Node::without_database(
        dir.path(),
        "b",
        &format!("{}{snapshot}", external_toml(&nats.url(), 2)),
    );
    b.start();
    b.wait_healthy(START);
    b.wait_for_log("restored", START);
    assert!(b.log().contains("S3 bucket"), "{}", b.log_tail());
    let rows = wait_converged(&[&a, &b], "items", START, |rows| rows.len() == 220);
    assert_eq!(rows.len(), 220);
    let health = b.health().unwrap().1;
    assert_eq!(health["last_restore"]["reason"], "missing", "{health}");
}
