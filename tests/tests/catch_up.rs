//! A node that fell behind the stream's retention catches up in place while its
//! application keeps a connection open and keeps writing, with the sidecar in a PID
//! namespace of its own (as in a container beside the application's): every acknowledged
//! application write ends up on every node, nobody restarts anything. Also: a damaged
//! database is not replaced while an application connection holds it; a node away for 10×
//! the stream's retention gets a snapshot from a healthy peer; transient JetStream errors
//! during start-up are retried.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use harmonylite_core::value::Value;
use harmonylite_tests::*;
use rusqlite::Connection;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, origin TEXT, body BLOB);";
const START: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(90);
const APP_INTERVAL: Duration = Duration::from_millis(50);

/// The tests of this file run one at a time: each runs up to three nodes with their
/// nats-servers, an application process and thousands of messages, and on two busy cores
/// a parallel run starves the leader elections they wait for.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The cursor `node`'s health endpoint reports.
fn cursor(node: &Node) -> u64 {
    node.health()
        .and_then(|(_, h)| h["cursor"].as_u64())
        .unwrap_or(0)
}

/// Writes `messages` transactions of `per_message` rows on the running `node`, each as a
/// stream message of its own (waits until the node applied its own message each time).
fn write_messages(node: &Node, first_id: i64, messages: i64, per_message: i64) {
    let app = node.app();
    for m in 0..messages {
        let before = cursor(node);
        let tx = app.unchecked_transaction().unwrap();
        for r in 0..per_message {
            tx.execute(
                "INSERT INTO items VALUES (?1, 'writer', x'01')",
                [first_id + m * per_message + r],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        // Long enough for a JetStream leader election after a node stopped.
        assert!(
            wait_until(Duration::from_secs(60), || cursor(node) > before),
            "{} never applied its own message:\n{}",
            node.name,
            node.log_tail()
        );
    }
}

/// Ids of `items` on `db`.
fn ids(db: &Path) -> BTreeSet<i64> {
    dump(db, "items")
        .into_iter()
        .filter_map(|r| match r[0] {
            Value::Integer(id) => Some(id),
            _ => None,
        })
        .collect()
}

/// Asserts every id in `acked` is on every node.
fn assert_all_acked_everywhere(nodes: &[&Node], acked: &[i64]) {
    assert!(!acked.is_empty(), "the application acknowledged no write");
    for node in nodes {
        let present = ids(&node.db);
        let lost: Vec<i64> = acked
            .iter()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        assert!(
            lost.is_empty(),
            "{} lacks {} of {} acknowledged application writes (first: {:?}):\n{}",
            node.name,
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(10)],
            node.log_tail()
        );
    }
}

/// A 3-node embedded cluster with a short stream and frequent snapshots.
fn cluster(dir: &Path, snapshot: &str) -> Vec<Node> {
    let ports = cluster_ports(3);
    (0..3)
        .map(|i| {
            let toml = embedded_cluster_toml(&ports, i, i as u64 + 1).replace(
                "[replication_log]\n",
                "[replication_log]\nmax_entries = 200\n",
            );
            Node::new(
                dir,
                &format!("n{}", i + 1),
                SCHEMA,
                &format!("{toml}{snapshot}"),
            )
        })
        .collect()
}

fn start_all(nodes: &mut [Node]) {
    for node in nodes.iter_mut() {
        node.start();
    }
    for node in nodes.iter_mut() {
        node.wait_healthy(START);
    }
}

/// The inode of the database file (a swap would change it).
fn inode(db: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(db).unwrap().ino()
}

#[test]
fn a_node_behind_at_start_catches_up_in_place_while_the_app_writes() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), "[snapshot]\nevery_messages = 50\n");
    start_all(&mut nodes);
    write_messages(&nodes[0], 1, 5, 2);
    let [n1, n2, n3] = &mut nodes[..] else {
        unreachable!()
    };
    wait_converged(&[n1, n2, n3], "items", CONVERGE, |rows| rows.len() == 10);
    let file = inode(&n2.db);

    let app = App::start(&n2.db, 1_000_000, APP_INTERVAL);
    n2.stop();
    // 400 messages of 5 rows: twice the stream's retention.
    write_messages(n1, 1_000, 400, 5);
    n2.start_in_own_pid_namespace();
    n2.wait_healthy(START);
    let healthy_at = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let acked = app.stop();
    assert!(
        acked.len() as f64 >= healthy_at.elapsed().as_secs_f64() * 5.0,
        "the application kept writing ({} writes)",
        acked.len()
    );

    let rows = wait_converged(&[n1, n2, n3], "items", CONVERGE, |rows| {
        rows.len() == 10 + 2000 + acked.len()
    });
    assert_eq!(rows.len(), 2010 + acked.len());
    assert_all_acked_everywhere(&[n1, n2, n3], &acked);
    assert_eq!(inode(&n2.db), file, "the database file was never replaced");
    let log = n2.log();
    assert!(log.contains("fell behind"), "{}", n2.log_tail());
    assert!(log.contains("caught up in place"), "{}", n2.log_tail());
    let (code, health) = n2.health().unwrap();
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["last_restore"]["reason"], "behind");
    assert!(n2.is_running(), "nobody restarted the sidecar");
}

#[test]
fn a_node_paused_past_the_retention_catches_up_at_run_time_while_the_app_writes() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), "[snapshot]\nevery_messages = 50\n");
    for node in nodes.iter_mut().take(1) {
        node.start();
    }
    nodes[1].start_in_own_pid_namespace();
    nodes[2].start();
    for node in nodes.iter_mut() {
        node.wait_healthy(START);
    }
    write_messages(&nodes[0], 1, 5, 2);
    let [n1, n2, n3] = &mut nodes[..] else {
        unreachable!()
    };
    wait_converged(&[n1, n2, n3], "items", CONVERGE, |rows| rows.len() == 10);
    let file = inode(&n2.db);

    let app = App::start(&n2.db, 1_000_000, APP_INTERVAL);
    n2.signal("STOP");
    // More than the stream keeps (200) plus what the paused consumer's pull request had
    // asked the server to deliver already (its batch).
    write_messages(n1, 1_000, 1200, 2);
    let acked_while_paused = app.acked();
    n2.signal("CONT");
    // It notices on its own, with no restart and no operator.
    n2.wait_for_log("caught up in place", CONVERGE);
    n2.wait_healthy(START);
    std::thread::sleep(Duration::from_secs(2));
    let acked = app.stop();
    assert!(acked.len() > acked_while_paused);

    let converged = wait_until(CONVERGE, || {
        let all: Vec<_> = [&*n1, &*n2, &*n3].iter().map(|n| ids(&n.db)).collect();
        all.windows(2).all(|w| w[0] == w[1]) && all[0].len() >= 10 + 2400
    });
    assert!(converged, "the nodes did not converge:\n{}", n2.log_tail());
    assert_all_acked_everywhere(&[n1, n2, n3], &acked);
    let rows = ids(&n1.db);
    let app_rows = rows.iter().filter(|id| **id >= 1_000_000).count();
    assert_eq!(rows.len() - app_rows, 2410, "every writer row, once");
    assert_eq!(
        app_rows,
        acked.len(),
        "application rows on the nodes vs writes the application got success for"
    );
    assert_eq!(inode(&n2.db), file, "the database file was never replaced");
    assert!(
        !n2.log().contains("Stop the application"),
        "{}",
        n2.log_tail()
    );
    assert!(n2.is_running());
}

#[test]
fn a_damaged_database_is_not_replaced_while_an_app_connection_holds_it() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let extra = |id| {
        format!(
            "{}[snapshot]\ninterval = 0\nevery_messages = 0\n",
            external_toml(&nats.url(), id)
        )
    };
    let mut a = Node::new(dir.path(), "a", SCHEMA, &extra(1));
    let mut b = Node::new(dir.path(), "b", SCHEMA, &extra(2));
    a.start();
    b.start();
    a.wait_healthy(START);
    b.wait_healthy(START);
    let app = a.app();
    let tx = app.unchecked_transaction().unwrap();
    for id in 0..300 {
        tx.execute("INSERT INTO items VALUES (?1, 'a', randomblob(1000))", [id])
            .unwrap();
    }
    tx.commit().unwrap();
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 300);
    assert!(a.run_command(&["--save-snapshot"], &[], Duration::from_secs(60)));

    b.stop();
    Connection::open(&b.db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let mut bytes = std::fs::read(&b.db).unwrap();
    bytes[4096 * 20..4096 * 24].fill(0xA5);
    std::fs::write(&b.db, &bytes).unwrap();
    let damaged = inode(&b.db);

    // The application (another process) holds a connection to the damaged file.
    let script = format!(
        "import sqlite3, time\nc = sqlite3.connect({:?})\nc.execute('SELECT count(*) FROM sqlite_schema').fetchall()\nprint('open', flush=True)\ntime.sleep(120)\n",
        b.db.display().to_string()
    );
    let mut holder = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut buf = [0u8; 5];
    std::io::Read::read_exact(holder.stdout.as_mut().unwrap(), &mut buf).unwrap();

    b.start_in_own_pid_namespace();
    b.wait_for_log("waiting for every other connection to close", START);
    std::thread::sleep(Duration::from_secs(2));
    let (code, health) = b.health().expect("health answers while waiting");
    assert_eq!(code, 503);
    assert!(
        health["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("another PID namespace") || w.contains("process")),
        "{health}"
    );
    assert_eq!(
        inode(&b.db),
        damaged,
        "no swap while the connection is open"
    );

    let _ = holder.kill();
    let _ = holder.wait();
    b.wait_healthy(START);
    assert_ne!(inode(&b.db), damaged, "restored once the connection closed");
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 300);
    assert_eq!(b.health().unwrap().1["last_restore"]["reason"], "damaged");
}

#[test]
fn with_defaults_a_node_away_for_ten_times_the_retention_rebuilds_from_a_peer_snapshot() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let ports = cluster_ports(3);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let toml = embedded_cluster_toml(&ports, i, i as u64 + 1).replace(
                "[replication_log]\n",
                "[replication_log]\nmax_entries = 200\n",
            );
            Node::new(dir.path(), &format!("d{}", i + 1), SCHEMA, &toml)
        })
        .collect();
    start_all(&mut nodes);
    write_messages(&nodes[0], 1, 3, 1);
    let [a, b, c] = &mut nodes[..] else {
        unreachable!()
    };
    wait_converged(&[a, b, c], "items", CONVERGE, |rows| rows.len() == 3);
    // With defaults the cluster takes its first periodic snapshot soon after start (none is
    // stored yet), then not again for 100,000 messages or an hour. Wait for that first one:
    // taken while b is away instead, it would cover b's gap and b would never need a peer.
    assert!(
        wait_until(Duration::from_secs(60), || [&*a, &*b, &*c]
            .iter()
            .any(|n| n.log().contains("took snapshot"))),
        "no node took the first periodic snapshot:\n{}",
        a.log_tail()
    );
    b.stop();
    write_messages(a, 100, 2000, 1);
    b.start();
    b.wait_healthy(START);
    wait_converged(&[a, b, c], "items", CONVERGE, |rows| rows.len() == 2003);
    let log = b.log();
    assert!(log.contains("caught up in place"), "{}", b.log_tail());
    // b asked the cluster itself; or, on a loaded machine, c fell behind the 200-message
    // retention during the burst too and asked first, and the snapshot a peer took for c
    // covered b's gap as well. Either way the snapshot was taken on request: none was
    // stored that covers the gap, and the defaults take no periodic one in this time.
    assert!(
        log.contains("asking the cluster") || c.log().contains("asking the cluster"),
        "nobody asked the cluster for a snapshot:\n{}",
        b.log_tail()
    );
    assert!(
        a.log().contains("a node asked for a snapshot")
            || c.log().contains("a node asked for a snapshot"),
        "a peer answered the request:\n{}",
        a.log_tail()
    );
    assert!(!log.contains("--save-snapshot"), "{}", b.log_tail());
}

#[test]
fn transient_jetstream_errors_in_each_start_up_step_are_retried() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let extra = |id| {
        format!(
            "{}[snapshot]\ninterval = 0\nevery_messages = 0\n",
            external_toml(&nats.url(), id)
        )
    };
    let mut a = Node::new(dir.path(), "a", SCHEMA, &extra(1));
    a.start();
    a.wait_healthy(START);
    let app = a.app();
    for id in 0..20 {
        app.execute("INSERT INTO items VALUES (?1, 'a', x'00')", [id])
            .unwrap();
    }
    assert!(a.run_command(&["--save-snapshot"], &[], Duration::from_secs(60)));

    // A new node (no database) restores at start: every step fails a few times first.
    let mut b = Node::without_database(dir.path(), "b", &extra(2));
    b.start_with_env(&[(
        "HARMONYLITE_FAIL_AT",
        "stream-info:2,snapshot-store:2,snapshot-list:3",
    )]);
    b.wait_healthy(START);
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 20);
    let log = b.log();
    for point in ["stream-info", "snapshot-store", "snapshot-list"] {
        assert!(
            log.contains(&format!("at {point} (HARMONYLITE_FAIL_AT)")),
            "{point} failed and was retried:\n{}",
            b.log_tail()
        );
    }
    assert!(b.is_running());
    assert_eq!(b.health().unwrap().1["last_restore"]["reason"], "missing");
}
