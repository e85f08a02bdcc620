//! Snapshots and restores through real sidecars and a real nats-server: a new node
//! bootstraps, a node that fell behind the stream's retention and a node with a damaged file
//! restore at start, kill -9 during a download and during the swap, and an interrupted
//! upload.

use std::path::Path;
use std::time::Duration;

use harmonylite_tests::*;
use rusqlite::Connection;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, origin TEXT, body BLOB);";
const CONVERGE: Duration = Duration::from_secs(30);
const START: Duration = Duration::from_secs(30);
const COMMAND: Duration = Duration::from_secs(60);
/// Periodic snapshots off: the tests take them explicitly with `--save-snapshot`.
const NO_PERIODIC: &str = "[snapshot]\ninterval = 0\nevery_messages = 0\n";

/// Inserts rows `ids` on `node`, one transaction each (the sidecar may batch several).
fn insert(node: &Node, origin: &str, ids: std::ops::Range<i64>, body_len: usize) {
    let app = node.app();
    for id in ids {
        app.execute(
            "INSERT INTO items VALUES (?1, ?2, randomblob(?3))",
            rusqlite::params![id, origin, body_len as i64],
        )
        .unwrap();
    }
}

/// The cursor `node`'s health endpoint reports.
fn cursor(node: &Node) -> u64 {
    node.health()
        .and_then(|(_, h)| h["cursor"].as_u64())
        .unwrap_or(0)
}

/// Inserts rows `ids` on the running `node`, each as a stream message of its own: after
/// each insert, waits until the node applied its own message.
fn insert_as_messages(node: &Node, origin: &str, ids: std::ops::Range<i64>) {
    let app = node.app();
    for id in ids {
        let before = cursor(node);
        app.execute(
            "INSERT INTO items VALUES (?1, ?2, randomblob(10))",
            rusqlite::params![id, origin],
        )
        .unwrap();
        assert!(
            wait_until(CONVERGE, || cursor(node) > before),
            "{} did not publish row {id}:\n{}",
            node.name,
            node.log_tail()
        );
    }
}

/// Inserts rows `ids` on `node` in one transaction.
fn insert_one_tx(node: &Node, origin: &str, ids: std::ops::Range<i64>, body_len: usize) {
    let mut app = node.app();
    let tx = app.transaction().unwrap();
    for id in ids {
        tx.execute(
            "INSERT INTO items VALUES (?1, ?2, randomblob(?3))",
            rusqlite::params![id, origin, body_len as i64],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn save_snapshot(node: &Node) {
    assert!(
        node.run_command(&["--save-snapshot"], &[], COMMAND),
        "--save-snapshot failed:\n{}",
        node.log_tail()
    );
}

fn restore_journal(node: &Node) -> std::path::PathBuf {
    let mut dir = node.db.as_os_str().to_owned();
    dir.push(".harmonylite");
    Path::new(&dir).join("restore.json")
}

fn restore_download(node: &Node) -> std::path::PathBuf {
    let mut path = node.db.as_os_str().to_owned();
    path.push(".hl-restore");
    path.into()
}

fn quick_check_problems(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let rows = conn.prepare("PRAGMA quick_check").and_then(|mut stmt| {
        stmt.query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()
    });
    match rows {
        Ok(rows) if rows == ["ok"] => Vec::new(),
        Ok(rows) => rows,
        Err(e) => vec![e.to_string()],
    }
}

/// Snapshot object names in a bucket of the external server.
fn bucket_objects(url: &str, bucket: &str) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use futures::StreamExt;
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let store = js.get_object_store(bucket).await.unwrap();
        let mut list = store.list().await.unwrap();
        let mut names = Vec::new();
        while let Some(object) = list.next().await {
            names.push(object.unwrap().name);
        }
        names
    })
}

#[test]
fn a_new_node_without_a_database_bootstraps_from_a_periodic_snapshot_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let periodic = "[snapshot]\nevery_messages = 20\nkeep = 2\n";
    let mut a = Node::new(
        dir.path(),
        "a",
        SCHEMA,
        &format!("{}{periodic}", external_toml(&nats.url(), 1)),
    );
    a.start();
    a.wait_healthy(START);
    insert_as_messages(&a, "a", 0..50);
    // Periodic snapshots: one as soon as there is something to cover, then every 20
    // messages; `keep = 2` prunes the older ones.
    let ok = wait_until(CONVERGE, || {
        a.health().is_some_and(|(_, h)| {
            h["last_snapshot"]["covered_seq"]
                .as_u64()
                .is_some_and(|s| s >= 20)
        })
    });
    assert!(ok, "no periodic snapshot:\n{}", a.log_tail());
    insert(&a, "a", 50..60, 100);

    let mut b = Node::without_database(
        dir.path(),
        "b",
        &format!("{}{NO_PERIODIC}", external_toml(&nats.url(), 2)),
    );
    assert!(!b.db.exists());
    b.start();
    b.wait_healthy(START);
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 60);
    let (_, health) = b.health().unwrap();
    assert_eq!(health["node_id"], "2", "the new node keeps its own id");
    assert_eq!(health["last_restore"]["reason"], "missing");
    assert!(b.log().contains("restored"), "{}", b.log_tail());

    // Both directions replicate afterwards.
    insert(&b, "b", 100..105, 10);
    insert(&a, "a", 200..205, 10);
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 70);
    let snapshots = bucket_objects(&nats.url(), "harmonylite-snapshots");
    assert!(
        (1..=2).contains(&snapshots.len()),
        "keep = 2: {snapshots:?}"
    );
}

#[test]
fn a_node_that_fell_behind_the_retention_restores_on_restart_and_keeps_its_offline_writes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let extra = |id| {
        format!(
            "{}{NO_PERIODIC}[replication_log]\nmax_entries = 20\n",
            external_toml(&nats.url(), id)
        )
    };
    let mut a = Node::new(dir.path(), "a", SCHEMA, &extra(1));
    let mut b = Node::new(dir.path(), "b", SCHEMA, &extra(2));
    a.start();
    b.start();
    a.wait_healthy(START);
    b.wait_healthy(START);
    insert(&a, "a", 0..5, 10);
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 5);

    b.stop();
    // The app on b keeps writing while its sidecar is down, and a writes far more messages
    // than the stream keeps.
    insert(&b, "b-offline", 1000..1003, 10);
    insert_as_messages(&a, "a", 5..65);
    save_snapshot(&a);

    b.start();
    b.wait_healthy(START);
    let rows = wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 68);
    assert_eq!(
        rows.iter()
            .filter(|r| r[1] == harmonylite_core::value::Value::Text("b-offline".into()))
            .count(),
        3,
        "b's offline writes reach both nodes"
    );
    let log = b.log();
    assert!(log.contains("fell behind"), "{}", b.log_tail());
    assert_eq!(b.health().unwrap().1["last_restore"]["reason"], "behind");
}

#[test]
fn a_damaged_database_is_detected_at_start_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let extra = |id| format!("{}{NO_PERIODIC}", external_toml(&nats.url(), id));
    let mut a = Node::new(dir.path(), "a", SCHEMA, &extra(1));
    let mut b = Node::new(dir.path(), "b", SCHEMA, &extra(2));
    a.start();
    b.start();
    a.wait_healthy(START);
    b.wait_healthy(START);
    insert_one_tx(&a, "a", 0..300, 1000);
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 300);
    save_snapshot(&a);

    b.stop();
    // Overwrite whole pages in the middle of b's file with garbage.
    let mut bytes = std::fs::read(&b.db).unwrap();
    assert!(
        bytes.len() > 4096 * 40,
        "b's database is {} bytes",
        bytes.len()
    );
    bytes[4096 * 20..4096 * 24].fill(0xA5);
    std::fs::write(&b.db, &bytes).unwrap();
    assert!(
        !quick_check_problems(&b.db).is_empty(),
        "the damage is visible to PRAGMA quick_check"
    );
    insert(&a, "a", 300..310, 10);

    b.start();
    b.wait_healthy(START);
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 310);
    assert!(quick_check_problems(&b.db).is_empty());
    assert!(b.log().contains("is damaged"), "{}", b.log_tail());
    assert_eq!(b.health().unwrap().1["last_restore"]["reason"], "damaged");
}

#[test]
fn kill_9_during_the_download_and_during_the_swap_then_the_next_start_completes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let extra = |id| format!("{}{NO_PERIODIC}", external_toml(&nats.url(), id));
    let mut a = Node::new(dir.path(), "a", SCHEMA, &extra(1));
    a.start();
    a.wait_healthy(START);
    // Several MiB, so the snapshot has several chunks and a download can be cut short.
    insert_one_tx(&a, "a", 0..4000, 1000);
    save_snapshot(&a);
    insert(&a, "a", 4000..4010, 10);

    // Killed after the first chunk of the download reached the temporary file.
    let mut b = Node::without_database(dir.path(), "b", &extra(2));
    b.start_with_env(&[("HARMONYLITE_PAUSE_AT", "restore-download")]);
    b.wait_for_log("paused at failpoint restore-download", START);
    b.kill9();
    let partial = restore_download(&b);
    assert!(partial.exists(), "a partial download is left");
    assert!(
        std::fs::metadata(&partial).unwrap().len() < 4_000_000,
        "the download was cut short"
    );
    assert!(!b.db.exists(), "the database was not touched");
    b.start();
    b.wait_healthy(START);
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 4010);
    assert!(!partial.exists());

    // Killed in the middle of the swap: journal written, old WAL removed, not renamed yet.
    b.stop();
    std::fs::remove_file(&b.db).unwrap();
    insert(&a, "a", 4010..4020, 10);
    b.start_with_env(&[("HARMONYLITE_PAUSE_AT", "restore-swap")]);
    b.wait_for_log("paused at failpoint restore-swap", START);
    b.kill9();
    assert!(restore_journal(&b).exists(), "the swap is journaled");
    assert!(!b.db.exists());
    b.start();
    b.wait_healthy(START);
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 4020);
    assert!(!restore_journal(&b).exists());
    assert!(b
        .log()
        .contains("completing a restore that was interrupted"));
    insert(&b, "b", 9000..9005, 10);
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 4025);
}

#[test]
fn an_interrupted_upload_leaves_the_previous_snapshot_restorable() {
    for store in ["nats", "file"] {
        let dir = tempfile::tempdir().unwrap();
        let nats = ExternalNats::start(&dir.path().join("nats"));
        let snaps = dir.path().join("snapshots");
        std::fs::create_dir(&snaps).unwrap();
        let section = match store {
            "file" => format!(
                "[snapshot]\ninterval = 0\nevery_messages = 0\nstore = \"file\"\nfile_dir = {:?}\n",
                snaps.display().to_string()
            ),
            _ => NO_PERIODIC.to_owned(),
        };
        let extra = |id| format!("{}{section}", external_toml(&nats.url(), id));
        let mut a = Node::new(dir.path(), "a", SCHEMA, &extra(1));
        a.start();
        a.wait_healthy(START);
        insert_one_tx(&a, "a", 0..3000, 1000);
        save_snapshot(&a);
        insert(&a, "a", 3000..3020, 10);

        // A second snapshot killed after its first chunk went out.
        let mut upload = a.spawn_command(
            &["--save-snapshot"],
            &[("HARMONYLITE_PAUSE_AT", "snapshot-upload")],
        );
        a.wait_for_log("paused at failpoint snapshot-upload", COMMAND);
        stop_child(&mut upload, true);

        let complete: Vec<String> = match store {
            "file" => {
                let files: Vec<String> = std::fs::read_dir(snaps.join("harmonylite-changes-1"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                assert_eq!(
                    files.iter().filter(|n| n.ends_with(".db")).count(),
                    2,
                    "the interrupted upload's copy is there: {files:?}"
                );
                files
                    .into_iter()
                    .filter(|n| n.ends_with(".hlsnap"))
                    .collect()
            }
            _ => bucket_objects(&nats.url(), "harmonylite-snapshots"),
        };
        assert_eq!(
            complete.len(),
            1,
            "{store}: only the first snapshot is visible: {complete:?}"
        );

        let mut c = Node::without_database(dir.path(), "c", &extra(3));
        c.start();
        c.wait_healthy(START);
        wait_converged(&[&a, &c], "items", CONVERGE, |rows| rows.len() == 3020);
        assert!(
            c.log().contains(&complete[0]),
            "{store}: c restored from the first snapshot:\n{}",
            c.log_tail()
        );
    }
}
