//! Serverless mode (`sleep_timeout`) with real sidecars and a real nats-server: an idle node
//! takes a snapshot and exits 0; restarted, it consumes the stream from exactly the message
//! after its cursor (nothing skipped, nothing applied twice), catches up, and sleeps again.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use harmonylite_core::sqlite::meta;
use harmonylite_tests::*;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, origin TEXT, n INTEGER);";
const CONVERGE: Duration = Duration::from_secs(30);

/// Waits for `child` to exit by itself within `timeout`; its exit code.
fn wait_exit(child: &mut Child, timeout: Duration, node: &Node) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() >= deadline {
            stop_child(child, true);
            panic!(
                "{} did not go to sleep within {timeout:?}:\n{}",
                node.name,
                node.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stored_cursor(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    meta::get_i64(&conn, meta::keys::CURSOR)
        .unwrap()
        .unwrap_or(0)
}

/// Snapshot indexes in the file store (one `.hlsnap` per snapshot).
fn snapshots(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for stream in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(stream.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.ends_with(".hlsnap") && !name.starts_with('.') {
                names.push(name);
            }
        }
    }
    names.sort();
    names
}

/// The covered sequence in a snapshot name (`<covered, 20 digits>-<ms>-<node>.hlsnap`).
fn covered(name: &str) -> i64 {
    name.split('-').next().unwrap().parse().unwrap()
}

#[test]
fn an_idle_node_snapshots_and_exits_0_and_a_restart_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let snaps = dir.path().join("snaps");
    std::fs::create_dir_all(&snaps).unwrap();
    let store = format!(
        "[snapshot]\ninterval = 0\nevery_messages = 0\nstore = \"file\"\nfile_dir = {:?}\n",
        snaps.display().to_string()
    );
    let mut a = Node::new(
        dir.path(),
        "a",
        SCHEMA,
        &format!("{}{store}", external_toml(&nats.url(), 1)),
    );
    let b = Node::new(
        dir.path(),
        "b",
        SCHEMA,
        &format!(
            "sleep_timeout = 3000\n{}{store}",
            external_toml(&nats.url(), 2)
        ),
    );
    a.start();
    a.wait_healthy(CONVERGE);
    let mut b_run = b.spawn_command(&[], &[]);

    // Busy: writes keep arriving for longer than sleep_timeout, so b stays up.
    let app = a.app();
    let started = Instant::now();
    for id in 0..30 {
        app.execute(
            "INSERT INTO items VALUES (?1, 'a', 0)",
            rusqlite::params![id],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(started.elapsed() > Duration::from_millis(4000));
    assert!(
        b_run.try_wait().unwrap().is_none(),
        "b slept while changes kept arriving:\n{}",
        b.log_tail()
    );
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 30);

    // Idle: b snapshots and exits 0.
    let code = wait_exit(&mut b_run, Duration::from_secs(30), &b);
    assert_eq!(code, 0, "{}", b.log_tail());
    let log = b.log();
    assert!(log.contains("sleeping (serverless mode)"), "{log}");
    assert!(log.contains("before sleeping"), "{log}");
    // Every stream message (one per captured batch of a's transactions) was applied.
    let cursor = stored_cursor(&b.db);
    let stream_last = a
        .health()
        .and_then(|(_, h)| h["stream_last_seq"].as_i64())
        .unwrap();
    assert!(cursor > 0);
    assert_eq!(
        cursor, stream_last,
        "b applied every message before sleeping"
    );
    let taken = snapshots(&snaps);
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(
        covered(&taken[0]),
        cursor,
        "the snapshot covers all b applied"
    );

    // While b sleeps: new rows and updates of rows b already has.
    for id in 30..50 {
        app.execute(
            "INSERT INTO items VALUES (?1, 'a', 0)",
            rusqlite::params![id],
        )
        .unwrap();
    }
    app.execute("UPDATE items SET n = n + 1 WHERE id < 10", [])
        .unwrap();

    // Restarted, b consumes from exactly the message after its cursor, without a restore.
    let before = b.log().len();
    let mut b_run = b.spawn_command(&[], &[]);
    let rows = wait_converged(&[&a, &b], "items", CONVERGE, |rows| {
        rows.len() == 50
            && rows[..10]
                .iter()
                .all(|r| r[2] == harmonylite_core::value::Value::Integer(1))
    });
    assert_eq!(rows.len(), 50);
    let second = b.log()[before..].to_owned();
    assert!(
        second.contains(&format!("from={}", cursor + 1)),
        "b resumes right after its cursor {cursor}:\n{second}"
    );
    assert!(!second.contains("restoring"), "{second}");

    // Idle again: a second snapshot, covering the messages applied since, and exit 0.
    let code = wait_exit(&mut b_run, Duration::from_secs(30), &b);
    assert_eq!(code, 0, "{}", b.log_tail());
    let after = stored_cursor(&b.db);
    assert!(after > cursor, "{after} > {cursor}");
    let taken = snapshots(&snaps);
    assert_eq!(taken.len(), 2, "{taken:?}");
    assert_eq!(covered(&taken[1]), after);
    assert_eq!(dump(&b.db, "items"), dump(&a.db, "items"));
}
