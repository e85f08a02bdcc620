//! Schema changes on a live cluster, through real sidecars and a real nats-server: a rolling
//! add-column while every node keeps writing, a table created by one node's application,
//! `harmonylite migrate` reaching a node that was down, `DROP TABLE` while changes for the
//! table are in flight, and `harmonylite parked --discard` for a table dropped on purpose
//! (docs/schema-changes.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use harmonylite_core::value::Value;
use harmonylite_tests::*;

const CONVERGE: Duration = Duration::from_secs(60);
const ITEMS: &str = "CREATE TABLE items(id TEXT PRIMARY KEY, v INTEGER NOT NULL);";

/// `n` nodes on one external server, started and healthy.
fn cluster(dir: &std::path::Path, nats: &ExternalNats, n: usize, schema: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| {
            Node::new(
                dir,
                &format!("node{i}"),
                schema,
                &format!(
                    "cleanup_interval = 60000\n{}",
                    external_toml(&nats.url(), i as u64 + 1)
                ),
            )
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    for node in &mut nodes {
        node.wait_healthy(Duration::from_secs(30));
    }
    nodes
}

fn health(node: &Node) -> serde_json::Value {
    node.health()
        .unwrap_or_else(|| {
            panic!(
                "{} health endpoint did not answer:\n{}",
                node.name,
                node.log_tail()
            )
        })
        .1
}

fn write_sql(dir: &std::path::Path, name: &str, sql: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, sql).unwrap();
    path.display().to_string()
}

fn has_column(node: &Node, table: &str, column: &str) -> bool {
    node.app()
        .query_row(
            "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        > 0
}

/// Writes `items` rows `<prefix>-<k>` through a fresh application connection until `stop`,
/// filling `note` once the node's table has it. Returns (rows written, rows written with a
/// note, every error).
fn writer(
    db: std::path::PathBuf,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(u64, Vec<String>, Vec<String>)> {
    std::thread::spawn(move || {
        let app = rusqlite::Connection::open(&db).unwrap();
        app.busy_timeout(Duration::from_secs(10)).unwrap();
        let (mut written, mut noted, mut errors) = (0u64, Vec::new(), Vec::new());
        let mut k = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let id = format!("{prefix}-{k}");
            let with_note = app
                .query_row(
                    "SELECT count(*) FROM pragma_table_info('items') WHERE name = 'note'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                > 0;
            let result = if with_note {
                app.execute(
                    "INSERT INTO items(id, v, note) VALUES (?1, ?2, ?3)",
                    rusqlite::params![id, k as i64, format!("note {id}")],
                )
            } else {
                app.execute(
                    "INSERT INTO items(id, v) VALUES (?1, ?2)",
                    rusqlite::params![id, k as i64],
                )
            };
            match result {
                Ok(_) => {
                    written += 1;
                    if with_note {
                        noted.push(id);
                    }
                }
                Err(e) => errors.push(format!("{id}: {e}")),
            }
            k += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        (written, noted, errors)
    })
}

#[test]
fn a_rolling_add_column_while_every_node_writes_loses_nothing_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let nodes = cluster(dir.path(), &nats, 3, ITEMS);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| writer(n.db.clone(), format!("n{i}"), stop.clone()))
        .collect();
    // One node after the other adds the column, by the application's own DDL, while every
    // application keeps writing.
    for node in &nodes {
        std::thread::sleep(Duration::from_millis(700));
        node.app()
            .execute_batch("ALTER TABLE items ADD COLUMN note TEXT")
            .unwrap_or_else(|e| panic!("ALTER TABLE on {} failed: {e}", node.name));
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut noted = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        let (written, with_note, errors) = w.join().unwrap();
        assert!(errors.is_empty(), "writes failed on node{i}: {errors:?}");
        assert!(written > 50, "node{i} wrote only {written} rows");
        total += written;
        noted.extend(with_note);
    }
    assert!(!noted.is_empty());
    let refs: Vec<&Node> = nodes.iter().collect();
    let rows = wait_converged(&refs, "items", CONVERGE, |rows| rows.len() as u64 == total);
    // Columns: id, v, note. Every row written with a note has it everywhere.
    let notes: std::collections::BTreeMap<String, Value> = rows
        .iter()
        .map(|r| match &r[0] {
            Value::Text(id) => (id.clone(), r[2].clone()),
            other => panic!("unexpected id {other:?}"),
        })
        .collect();
    for id in &noted {
        assert_eq!(notes[id], Value::Text(format!("note {id}")), "{id}");
    }
    for node in &nodes {
        assert!(
            wait_until(CONVERGE, || health(node)["parked"] == 0),
            "{} still has parked messages: {}",
            node.name,
            health(node)
        );
    }
    let fingerprints: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| health(n)["schema_fingerprint"].clone())
        .collect();
    assert!(
        fingerprints.windows(2).all(|w| w[0] == w[1]),
        "{fingerprints:?}"
    );
}

#[test]
fn a_table_created_by_one_application_parks_where_missing_until_migrate_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let nodes = cluster(dir.path(), &nats, 3, ITEMS);
    let ddl = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)";
    // node1's application creates the table too; node2's does not.
    nodes[1].app().execute_batch(ddl).unwrap();
    let app = nodes[0].app();
    app.execute_batch(ddl).unwrap();
    // Written at once, before the sidecar has seen the new table.
    for k in 0..20 {
        app.execute(
            "INSERT INTO notes VALUES (?1, ?2)",
            rusqlite::params![k, format!("note {k}")],
        )
        .unwrap();
    }
    wait_converged(&[&nodes[0], &nodes[1]], "notes", CONVERGE, |rows| {
        rows.len() == 20
    });
    assert!(
        wait_until(CONVERGE, || health(&nodes[2])["parked_by_table"]["notes"]
            .as_u64()
            .unwrap_or(0)
            > 0),
        "node2 did not park the changes of the table it lacks: {}\n{}",
        health(&nodes[2]),
        nodes[2].log_tail()
    );
    assert_eq!(health(&nodes[2])["healthy"], true);

    // The operator creates the table everywhere with a migration (a no-op where it exists).
    let file = write_sql(
        dir.path(),
        "notes.sql",
        &format!(
            "CREATE TABLE IF NOT EXISTS {}",
            &ddl["CREATE TABLE ".len()..]
        ),
    );
    assert!(
        nodes[2].run_command(&["--migrate", &file], &[], Duration::from_secs(60)),
        "migrate failed:\n{}",
        nodes[2].log_tail()
    );
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_converged(&refs, "notes", CONVERGE, |rows| rows.len() == 20);
    for node in &nodes {
        assert!(
            wait_until(CONVERGE, || {
                let h = health(node);
                h["migration_version"] == 1 && h["parked"] == 0
            }),
            "{}: {}",
            node.name,
            health(node)
        );
    }
    // The migration's table replicates like any other from now on.
    nodes[2]
        .app()
        .execute("INSERT INTO notes VALUES (100, 'from node2')", [])
        .unwrap();
    wait_converged(&refs, "notes", CONVERGE, |rows| rows.len() == 21);
}

#[test]
fn migrate_reaches_a_node_that_was_down_and_is_applied_once_before_the_data_needing_it() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let mut nodes = cluster(dir.path(), &nats, 2, ITEMS);
    nodes[0]
        .app()
        .execute("INSERT INTO items VALUES ('a', 1)", [])
        .unwrap();
    wait_converged(&[&nodes[0], &nodes[1]], "items", CONVERGE, |rows| {
        rows.len() == 1
    });
    nodes[1].stop();

    // Destructive DDL is refused without the flag, and nothing is published.
    let drop = write_sql(dir.path(), "drop.sql", "ALTER TABLE items DROP COLUMN v");
    assert!(!nodes[0].run_command(&["migrate", &drop], &[], Duration::from_secs(30)));
    assert!(
        nodes[0].log().contains("--allow-destructive"),
        "{}",
        nodes[0].log_tail()
    );

    let add = write_sql(
        dir.path(),
        "add.sql",
        "-- a column and an index\nALTER TABLE items ADD COLUMN note TEXT DEFAULT 'none';\nCREATE INDEX items_note ON items(note);",
    );
    assert!(
        nodes[0].run_command(&["migrate", &add], &[], Duration::from_secs(60)),
        "migrate failed:\n{}",
        nodes[0].log_tail()
    );
    assert!(
        has_column(&nodes[0], "items", "note"),
        "migrate returned before applying"
    );
    nodes[0]
        .app()
        .execute(
            "INSERT INTO items(id, v, note) VALUES ('b', 2, 'written after the migration')",
            [],
        )
        .unwrap();

    nodes[1].start();
    nodes[1].wait_healthy(Duration::from_secs(30));
    let rows = wait_converged(&[&nodes[0], &nodes[1]], "items", CONVERGE, |rows| {
        rows.len() == 2
    });
    assert_eq!(
        rows,
        vec![
            vec![
                Value::Text("a".into()),
                Value::Integer(1),
                Value::Text("none".into())
            ],
            vec![
                Value::Text("b".into()),
                Value::Integer(2),
                Value::Text("written after the migration".into())
            ],
        ]
    );
    for node in &nodes {
        let h = health(node);
        assert_eq!(h["migration_version"], 1, "{}: {h}", node.name);
        assert_eq!(h["parked"], 0, "{}: {h}", node.name);
    }
    assert_eq!(
        health(&nodes[0])["schema_fingerprint"],
        health(&nodes[1])["schema_fingerprint"]
    );
    // --schema-status prints the same fingerprint and version on both.
    let status = |node: &Node| {
        let out = std::process::Command::new(sidecar_binary())
            .args(["--config", node.config.to_str().unwrap(), "--schema-status"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (s0, s1) = (status(&nodes[0]), status(&nodes[1]));
    assert!(s0.contains("migration_version 1\n"), "{s0}");
    let fingerprint = |s: &str| s.lines().next().unwrap().to_string();
    assert_eq!(fingerprint(&s0), fingerprint(&s1));
    assert_eq!(
        fingerprint(&s0),
        format!(
            "schema_fingerprint {}",
            health(&nodes[0])["schema_fingerprint"].as_str().unwrap()
        )
    );
    // Restarting does not apply it again.
    nodes[1].stop();
    nodes[1].start();
    nodes[1].wait_healthy(Duration::from_secs(30));
    assert_eq!(health(&nodes[1])["migration_version"], 1);
}

#[test]
fn dropping_a_table_while_its_changes_are_in_flight_parks_them_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE keep(id INTEGER PRIMARY KEY, v TEXT);";
    let nodes = cluster(dir.path(), &nats, 2, schema);
    let stop = Arc::new(AtomicBool::new(false));
    let burst = {
        let db = nodes[0].db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let app = rusqlite::Connection::open(db).unwrap();
            app.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut k = 0i64;
            while !stop.load(Ordering::Relaxed) {
                app.execute("INSERT INTO t VALUES (?1, 'x')", [k]).unwrap();
                k += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            k
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    nodes[1].app().execute_batch("DROP TABLE t").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let written = burst.join().unwrap();
    assert!(written > 20);

    assert!(
        wait_until(CONVERGE, || health(&nodes[1])["parked_by_table"]["t"]
            .as_u64()
            .unwrap_or(0)
            > 0),
        "changes for the dropped table were not parked: {}\n{}",
        health(&nodes[1]),
        nodes[1].log_tail()
    );
    // The node keeps serving: other tables replicate both ways, the file is sound.
    nodes[0]
        .app()
        .execute("INSERT INTO keep VALUES (1, 'a')", [])
        .unwrap();
    nodes[1]
        .app()
        .execute("INSERT INTO keep VALUES (2, 'b')", [])
        .unwrap();
    wait_converged(&[&nodes[0], &nodes[1]], "keep", CONVERGE, |rows| {
        rows.len() == 2
    });
    let h = health(&nodes[1]);
    assert_eq!(h["healthy"], true, "{h}");
    let check: String = nodes[1]
        .app()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let leftovers: i64 = nodes[1]
        .app()
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE tbl_name = 't'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leftovers, 0, "a trigger of the dropped table is left");
    // The rows on node0 are untouched.
    assert_eq!(dump(&nodes[0].db, "t").len() as i64, written);
}

/// Runs a one-shot `harmonylite` command against `node`'s configuration (next to its running
/// sidecar) and returns (success, stdout, stderr).
fn command(node: &Node, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(sidecar_binary())
        .args(["--config", node.config.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn parked_of(node: &Node, table: &str) -> u64 {
    health(node)["parked_by_table"][table].as_u64().unwrap_or(0)
}

#[test]
fn parked_changes_of_a_dropped_table_are_discarded_next_to_the_running_sidecar_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let nodes = cluster(dir.path(), &nats, 2, ITEMS);
    // node0's application has two tables node1 lacks or has narrower: `notes` (missing on
    // node1, say dropped there on purpose) and `wide` (node1 lacks its column b).
    let notes = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)";
    nodes[1]
        .app()
        .execute_batch("CREATE TABLE wide(id INTEGER PRIMARY KEY, a TEXT)")
        .unwrap();
    let app = nodes[0].app();
    app.execute_batch(&format!(
        "{notes}; CREATE TABLE wide(id INTEGER PRIMARY KEY, a TEXT, b TEXT)"
    ))
    .unwrap();
    // Three source transactions, each drained on its own (the next is written once node1
    // has the previous one), so each is one message.
    let tx = app.unchecked_transaction().unwrap();
    for k in 0..10 {
        tx.execute(
            "INSERT INTO notes VALUES (?1, ?2)",
            rusqlite::params![k, format!("note {k}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let parked = |table: &str| {
        assert!(
            wait_until(CONVERGE, || parked_of(&nodes[1], table) > 0),
            "node1 did not park the change for {table}: {}\n{}",
            health(&nodes[1]),
            nodes[1].log_tail()
        )
    };
    parked("notes");
    app.execute("INSERT INTO wide VALUES (1, 'a', 'b')", [])
        .unwrap();
    parked("wide");
    app.execute("INSERT INTO items VALUES ('x', 1)", [])
        .unwrap();
    wait_converged(&[&nodes[0], &nodes[1]], "items", CONVERGE, |rows| {
        rows.len() == 1
    });
    let parked_notes = parked_of(&nodes[1], "notes");
    assert_eq!(parked_notes, 1);
    let items_before = dump(&nodes[1].db, "items");

    // `parked --json` lists both tables, and whether each exists here.
    let (ok, out, err) = command(&nodes[1], &["parked", "--json"]);
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = |t: &str| {
        listed["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["table"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("{t} not listed: {listed}"))
    };
    assert_eq!(row("notes")["messages"], parked_notes, "{listed}");
    assert_eq!(row("notes")["exists"], false);
    assert_eq!(row("wide")["exists"], true);
    let (ok, out, _) = command(&nodes[1], &["parked"]);
    assert!(ok && out.contains("--discard notes"), "{out}");

    // Refusals: a misspelt table, and a table that exists here (its change waits for a
    // column) without --force. Nothing is discarded.
    let (ok, _, err) = command(&nodes[1], &["parked", "--discard", "nots"]);
    assert!(!ok && err.contains("nothing parked"), "{err}");
    let (ok, _, err) = command(&nodes[1], &["parked", "--discard", "wide"]);
    assert!(
        !ok && err.contains("exists here") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(parked_of(&nodes[1], "notes"), parked_notes);
    assert!(parked_of(&nodes[1], "wide") > 0);

    // Discard notes while the sidecar runs: the count it prints, then health follows.
    let (ok, out, err) = command(&nodes[1], &["parked", "--discard", "notes", "--json"]);
    assert!(ok, "{err}");
    let discarded: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(discarded["messages"], parked_notes, "{discarded}");
    assert_eq!(discarded["changes"], 10, "{discarded}");
    assert!(
        wait_until(CONVERGE, || {
            let h = health(&nodes[1]);
            h["parked_by_table"].get("notes").is_none()
                && h["parked"] == parked_of(&nodes[1], "wide")
        }),
        "health still counts the discarded messages: {}",
        health(&nodes[1])
    );
    let (ok, out, err) = command(&nodes[1], &["parked", "--discard", "wide", "--force"]);
    assert!(ok && out.contains("for table wide"), "{out}{err}");
    assert!(
        wait_until(CONVERGE, || health(&nodes[1])["parked"] == 0),
        "{}",
        health(&nodes[1])
    );
    let (ok, out, _) = command(&nodes[1], &["parked"]);
    assert!(ok && out.contains("no parked messages"), "{out}");

    // Data is unaffected: node1's rows are as they were, node0 keeps its notes, and
    // replication goes on.
    assert_eq!(dump(&nodes[1].db, "items"), items_before);
    assert_eq!(dump(&nodes[0].db, "notes").len(), 10);
    nodes[0]
        .app()
        .execute("INSERT INTO items VALUES ('y', 2)", [])
        .unwrap();
    wait_converged(&[&nodes[0], &nodes[1]], "items", CONVERGE, |rows| {
        rows.len() == 2
    });

    // A later migration creating notes on node1 does not bring the discarded changes back:
    // node1's notes starts empty, and only what is written from now on replicates.
    let file = write_sql(
        dir.path(),
        "notes.sql",
        &format!(
            "CREATE TABLE IF NOT EXISTS {}",
            &notes["CREATE TABLE ".len()..]
        ),
    );
    assert!(
        nodes[1].run_command(&["--migrate", &file], &[], Duration::from_secs(60)),
        "migrate failed:\n{}",
        nodes[1].log_tail()
    );
    nodes[0]
        .app()
        .execute("INSERT INTO notes VALUES (100, 'after the migration')", [])
        .unwrap();
    assert!(
        wait_until(CONVERGE, || dump(&nodes[1].db, "notes").len() == 1),
        "{:?}",
        dump(&nodes[1].db, "notes")
    );
    assert_eq!(
        dump(&nodes[1].db, "notes"),
        vec![vec![
            Value::Integer(100),
            Value::Text("after the migration".into())
        ]]
    );
    assert_eq!(dump(&nodes[0].db, "notes").len(), 11);
    for node in &nodes {
        let h = health(node);
        assert_eq!(h["parked"], 0, "{}: {h}", node.name);
        assert_eq!(h["migration_version"], 1, "{}: {h}", node.name);
    }
}
