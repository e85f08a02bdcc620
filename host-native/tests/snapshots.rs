//! Snapshot storage and the snapshot lease against a real `nats-server` and real SQLite
//! files: upload, list, prune, verified download, damaged snapshots, lease exclusivity and
//! expiry.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use harmonylite::config::Config;
use harmonylite::nats::server::{EmbeddedServerConfig, NatsServer};
use harmonylite::snapshot::lease::LeaseBucket;
use harmonylite::snapshot::restore::download;
use harmonylite::snapshot::store::{FileStore, SnapshotInfo, SnapshotStore};
use harmonylite::snapshot::{make_copy, FramedSource};
use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::snapshot::DEFAULT_CHUNK_SIZE;
use harmonylite_core::sqlite::{Store, StoreOptions};

const STREAM: &str = "test-changes-1";

fn node(n: u128) -> NodeId {
    NodeId::from_u128(n).unwrap()
}

async fn server(dir: &Path) -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start(EmbeddedServerConfig::new(dir.join("nats"), "t"))
        .await
        .unwrap();
    let client = async_nats::connect(server.client_url()).await.unwrap();
    (server, jetstream::new(client))
}

/// A replicated database of a few MiB (so snapshots have several chunks) and its
/// stripped copy, framed.
fn framed_copy(dir: &Path, covered: u64) -> (FramedSource, Vec<u8>) {
    let db = dir.join(format!("app-{covered}.db"));
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB);
         WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 3000)
         INSERT INTO t SELECT i, randomblob(1000) FROM r;",
    )
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
    assert!(source.header().chunk_count() > 2);
    let bytes = std::fs::read(&copy).unwrap();
    (source, bytes)
}

async fn exercise(store: &SnapshotStore, dir: &Path) {
    assert!(store.list().await.unwrap().is_empty());
    let mut stored = Vec::new();
    for (i, covered) in [10u64, 30, 20].into_iter().enumerate() {
        let (source, bytes) = framed_copy(dir, covered);
        let info = SnapshotInfo::new(STREAM, StreamSeq::new(covered), 1_000 + i as u64, node(1));
        let size = store.upload(&info, &source).await.unwrap();
        assert_eq!(size, source.framed_size());
        stored.push((info, bytes));
    }
    let listed: Vec<u64> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|s| s.covered_seq.get())
        .collect();
    assert_eq!(listed, [10, 20, 30], "oldest first, by covered sequence");

    let newest = store.newest().await.unwrap().unwrap();
    assert_eq!(newest.covered_seq, StreamSeq::new(30));
    let target = dir.join("restored.db");
    let (header, downloaded) = download(store, &newest, &target).await.unwrap();
    assert_eq!(header.covered_seq, StreamSeq::new(30));
    assert_eq!(downloaded, newest.size);
    assert_eq!(
        std::fs::read(&target).unwrap(),
        stored[1].1,
        "byte for byte"
    );

    let deleted = store.prune(2).await.unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].covered_seq, StreamSeq::new(10));
    let left: Vec<u64> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|s| s.covered_seq.get())
        .collect();
    assert_eq!(left, [20, 30]);
}

#[tokio::test]
async fn the_nats_store_uploads_lists_prunes_and_downloads_verified_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, js) = server(dir.path()).await;
    let config = Config::from_toml_str(
        &format!(
            "db_path = {:?}\n",
            dir.path().join("x.db").display().to_string()
        ),
        "test.toml",
    )
    .unwrap();
    let store = SnapshotStore::open(&config, &js, STREAM).await.unwrap();
    exercise(&store, dir.path()).await;
    // Another stream's snapshots in the same bucket are not ours.
    let other = SnapshotStore::open(&config, &js, "other-changes-1")
        .await
        .unwrap();
    assert!(other.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_file_store_does_the_same_and_refuses_a_damaged_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snaps = dir.path().join("snaps");
    let store = SnapshotStore::File(FileStore::new(snaps.clone(), STREAM));
    exercise(&store, dir.path()).await;

    // Each snapshot is its copy (`.db`, a plain SQLite file) and its index (`.hlsnap`).
    let newest = store.newest().await.unwrap().unwrap();
    let index = snaps.join(&newest.name);
    let data = snaps.join(newest.name.replace(".hlsnap", ".db"));
    let conn = rusqlite::Connection::open(&data).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 3000);
    drop(conn);

    // A flipped bit in the data, a truncated copy, a damaged index: all refused.
    let original = std::fs::read(&data).unwrap();
    let mut bytes = original.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&data, &bytes).unwrap();
    let target = dir.path().join("r.db");
    let error = download(&store, &newest, &target).await.unwrap_err();
    assert!(error.is_damaged(), "{error:#}");
    assert!(format!("{error:#}").contains("is damaged"), "{error:#}");
    std::fs::write(&data, &original[..middle]).unwrap();
    let error = download(&store, &newest, &target).await.unwrap_err();
    assert!(error.is_damaged(), "{error:#}");
    std::fs::write(&data, &original).unwrap();
    let mut index_bytes = std::fs::read(&index).unwrap();
    index_bytes[20] ^= 1;
    std::fs::write(&index, &index_bytes).unwrap();
    assert!(download(&store, &newest, &target).await.is_err());
    index_bytes[20] ^= 1;
    std::fs::write(&index, &index_bytes).unwrap();
    download(&store, &newest, &target).await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), original);

    // A copy without its index (an interrupted upload) is not a snapshot.
    std::fs::remove_file(&index).unwrap();
    assert_eq!(store.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn one_node_holds_the_lease_until_it_releases_it_or_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, js) = server(dir.path()).await;
    let bucket = LeaseBucket::open(&js, "lease-test", 1, Duration::from_secs(2))
        .await
        .unwrap();
    let mut a = bucket
        .try_acquire("k", node(1))
        .await
        .unwrap()
        .expect("free");
    assert!(bucket.try_acquire("k", node(2)).await.unwrap().is_none());
    assert_eq!(bucket.holder("k").await.unwrap().as_deref(), Some("1"));
    a.renew().await.unwrap();
    assert!(bucket.try_acquire("k", node(2)).await.unwrap().is_none());
    assert!(
        bucket
            .try_acquire("other", node(2))
            .await
            .unwrap()
            .is_some(),
        "leases are per key"
    );
    a.release().await;

    let b = bucket
        .try_acquire("k", node(2))
        .await
        .unwrap()
        .expect("released");
    // b's holder dies without releasing: the lease expires by itself.
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(mut c) = bucket.try_acquire("k", node(3)).await.unwrap() {
            c.renew().await.unwrap();
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
