//! Multi-node replication through real sidecars: embedded clusters, an external server,
//! conflicts, write-time ordering, crashes and server restarts.

use std::time::Duration;

use harmonylite_core::value::Value;
use harmonylite_tests::*;

const SCHEMA: &str =
    "CREATE TABLE items(id TEXT PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB);";
const CONVERGE: Duration = Duration::from_secs(30);

fn text(v: &Value) -> &str {
    match v {
        Value::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

/// Inserts, updates, deletes and a conflict made by an app on each node, then convergence.
fn exercise(nodes: &mut [Node]) {
    for (i, node) in nodes.iter().enumerate() {
        let app = node.app();
        for k in 0..20 {
            app.execute(
                "INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    format!("n{i}-{k}"),
                    format!("item {k}"),
                    k,
                    k as f64 * 1.5,
                    vec![i as u8, k as u8]
                ],
            )
            .unwrap();
        }
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_converged(&refs, "items", CONVERGE, |rows| {
        rows.len() == 20 * nodes.len()
    });

    // Updates on one node, deletes on another.
    nodes[0]
        .app()
        .execute("UPDATE items SET qty = qty + 100 WHERE id LIKE 'n1-%'", [])
        .unwrap();
    nodes[1]
        .app()
        .execute("DELETE FROM items WHERE id LIKE 'n2-%'", [])
        .unwrap();
    let rows = wait_converged(&refs, "items", CONVERGE, |rows| {
        rows.len() == 20 * (nodes.len() - 1)
    });
    assert!(rows
        .iter()
        .filter(|r| text(&r[0]).starts_with("n1-"))
        .all(|r| matches!(r[2], Value::Integer(q) if q >= 100)));

    // Concurrent conflicting updates of one row: the later write wins everywhere.
    nodes[1]
        .app()
        .execute("UPDATE items SET name = 'first' WHERE id = 'n0-0'", [])
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    nodes[2]
        .app()
        .execute("UPDATE items SET name = 'second' WHERE id = 'n0-0'", [])
        .unwrap();
    let rows = wait_converged(&refs, "items", CONVERGE, |rows| {
        rows.iter()
            .any(|r| text(&r[0]) == "n0-0" && text(&r[1]) == "second")
    });
    // Deleted rows stay deleted.
    assert!(rows.iter().all(|r| !text(&r[0]).starts_with("n2-")));
}

#[test]
fn three_sidecars_with_embedded_servers_form_one_cluster_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let ports = cluster_ports(3);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::new(
                dir.path(),
                &format!("node{i}"),
                SCHEMA,
                &embedded_cluster_toml(&ports, i, i as u64 + 1),
            )
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    for node in &mut nodes {
        node.wait_healthy(Duration::from_secs(60));
    }
    exercise(&mut nodes);
}

#[test]
fn three_sidecars_on_one_external_server_converge() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::new(
                dir.path(),
                &format!("node{i}"),
                SCHEMA,
                &external_toml(&nats.url(), i as u64 + 1),
            )
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    for node in &mut nodes {
        node.wait_healthy(Duration::from_secs(30));
    }
    exercise(&mut nodes);
}

#[test]
fn the_later_write_wins_even_when_made_while_its_sidecar_was_down() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let mut a = Node::new(dir.path(), "a", SCHEMA, &external_toml(&nats.url(), 1));
    let mut b = Node::new(dir.path(), "b", SCHEMA, &external_toml(&nats.url(), 2));
    a.start();
    b.start();
    a.wait_healthy(Duration::from_secs(30));
    b.wait_healthy(Duration::from_secs(30));
    a.app()
        .execute(
            "INSERT INTO items(id, name) VALUES ('x', 'v0'), ('y', 'v0')",
            [],
        )
        .unwrap();
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 2);

    // Row x: A writes while its sidecar is down (older), then B writes (newer): B wins.
    // Row y: B writes first (older), then A writes while its sidecar is down (newer): A wins.
    a.stop();
    b.app()
        .execute("UPDATE items SET name = 'b-older' WHERE id = 'y'", [])
        .unwrap();
    // B's write must be published (and so older than A's offline write) before A writes.
    assert!(
        wait_until(Duration::from_secs(10), || {
            b.health().is_some_and(|(_, h)| h["outbox_depth"] == 0)
        }),
        "B did not publish its write within 10 s (outbox not empty):\n{}",
        b.log_tail()
    );
    std::thread::sleep(Duration::from_millis(50));
    a.app()
        .execute("UPDATE items SET name = 'a-older' WHERE id = 'x'", [])
        .unwrap();
    a.app()
        .execute("UPDATE items SET name = 'a-newer' WHERE id = 'y'", [])
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    b.app()
        .execute("UPDATE items SET name = 'b-newer' WHERE id = 'x'", [])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    a.start();
    let rows = wait_converged(&[&a, &b], "items", CONVERGE, |rows| {
        rows.iter().any(|r| text(&r[1]) == "b-newer")
            && rows.iter().any(|r| text(&r[1]) == "a-newer")
    });
    assert_eq!(
        rows.iter()
            .map(|r| text(&r[1]).to_string())
            .collect::<Vec<_>>(),
        ["b-newer", "a-newer"]
    );
}

#[test]
fn a_sidecar_killed_while_its_app_writes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::new(
                dir.path(),
                &format!("node{i}"),
                SCHEMA,
                &external_toml(&nats.url(), i as u64 + 1),
            )
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    for node in &mut nodes {
        node.wait_healthy(Duration::from_secs(30));
    }
    let db = nodes[0].db.clone();
    let writer = std::thread::spawn(move || {
        let app = rusqlite::Connection::open(&db).unwrap();
        app.busy_timeout(Duration::from_secs(10)).unwrap();
        for k in 0..3000 {
            app.execute(
                "INSERT INTO items(id, name, qty) VALUES (?1, 'w', ?2) ON CONFLICT(id) DO UPDATE SET qty = excluded.qty",
                rusqlite::params![format!("k{}", k % 1000), k],
            )
            .unwrap();
            if k % 100 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        nodes[0].kill9();
        std::thread::sleep(Duration::from_millis(200));
        nodes[0].start();
    }
    writer.join().unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    let rows = wait_converged(&refs, "items", Duration::from_secs(60), |rows| {
        rows.len() == 1000
            && rows
                .iter()
                .all(|r| matches!(r[2], Value::Integer(q) if q >= 2000))
    });
    // Every key holds the last value the app wrote to it.
    for row in rows {
        let k: i64 = text(&row[0])[1..].parse().unwrap();
        assert_eq!(row[2], Value::Integer(2000 + k));
    }
    // The app's node never applied anything twice: its own batches only advanced its cursor.
    // (The last restart may still be starting its embedded server: the others can converge
    // without it when it published everything before the last kill.)
    for node in &mut nodes {
        node.wait_healthy(Duration::from_secs(60));
    }
    let parked = nodes
        .iter()
        .map(|n| n.health().unwrap().1["parked"].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(parked, 0);
}

#[test]
fn nats_server_restarts_lose_nothing_and_sidecars_recover_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = ExternalNats::start(&dir.path().join("nats"));
    let mut a = Node::new(dir.path(), "a", SCHEMA, &external_toml(&nats.url(), 1));
    let mut b = Node::new(dir.path(), "b", SCHEMA, &external_toml(&nats.url(), 2));
    a.start();
    b.start();
    a.wait_healthy(Duration::from_secs(30));
    b.wait_healthy(Duration::from_secs(30));
    for round in 0..3 {
        let app = a.app();
        for k in 0..50 {
            app.execute(
                "INSERT INTO items(id, qty) VALUES (?1, ?2)",
                rusqlite::params![format!("r{round}-{k}"), k],
            )
            .unwrap();
            if k == 25 {
                nats.stop();
            }
        }
        // Writes made while the server is down wait in the outbox.
        std::thread::sleep(Duration::from_millis(500));
        b.app()
            .execute(
                "INSERT INTO items(id, qty) VALUES (?1, 0)",
                [format!("b{round}")],
            )
            .unwrap();
        nats.restart();
    }
    let rows = wait_converged(&[&a, &b], "items", Duration::from_secs(60), |rows| {
        rows.len() == 153
    });
    assert_eq!(rows.len(), 153);
    assert!(a.is_running() && b.is_running());
    // Each reconnect starts a new consumer from the cursor at once, rather than waiting for
    // the old one's heartbeats to fail.
    for node in [&a, &b] {
        let log = node.log();
        let reconnects = log.matches("connected to NATS").count();
        let started = log.matches("consuming the change stream").count();
        assert!(
            reconnects >= 1 && started > reconnects,
            "{}: {started} consumer starts for {reconnects} reconnects:\n{log}",
            node.name
        );
    }
}
