//! The application's SQLite at the documented floor: an application built on SQLite 3.35.4
//! (`tests/sqlite-floor/`, a crate outside the workspace on rusqlite 0.25's bundled SQLite)
//! writes through the capture triggers a sidecar installed, with `PRAGMA trusted_schema=OFF`,
//! and reads what the sidecar applied from another node.
//!
//! The sidecars use the workspace's bundled SQLite; only the application is old. Everything
//! the sidecar puts in the application's schema (internal tables, triggers) must parse and
//! run in 3.35: a newer construct would make the application's first statement fail with
//! "malformed database schema", a function not allowed under `trusted_schema=OFF` would make
//! its writes fail with "unsafe use of ...".

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use harmonylite_core::value::Value;
use harmonylite_tests::*;

const SCHEMA: &str = "CREATE TABLE items(id TEXT PRIMARY KEY, name TEXT, qty INTEGER);";
const CONVERGE: Duration = Duration::from_secs(30);

/// The SQLite version the floor application must report.
const FLOOR: &str = "3.35.";

/// Builds `tests/sqlite-floor` once per test process (its own target directory under the
/// workspace's, `--locked` to its committed Cargo.lock) and returns the binary's path.
fn floor_app() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let tests_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
            let workspace = tests_dir.parent().expect("workspace root");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join("target"))
                .join("sqlite-floor");
            let mut build = nested_cargo();
            build
                .args(["build", "-q", "--locked", "--manifest-path"])
                .arg(tests_dir.join("sqlite-floor/Cargo.toml"))
                .arg("--target-dir")
                .arg(&target);
            let status = build
                .current_dir(workspace)
                .status()
                .expect("running cargo build for tests/sqlite-floor");
            assert!(status.success(), "building tests/sqlite-floor failed");
            let binary = target.join("debug/sqlite-floor-app");
            assert!(
                binary.is_file(),
                "floor application missing at {}",
                binary.display()
            );
            binary
        })
        .clone()
}

/// Runs the floor application on `db` with `sql` statements; returns its output lines after
/// checking the version line. Panics with its stderr when it fails.
fn floor(db: &Path, sql: &[&str]) -> Vec<String> {
    let output = Command::new(floor_app())
        .arg(db)
        .args(sql)
        .output()
        .expect("running the floor application");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SQLite 3.35 application failed on {sql:?}:\n{}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines().map(str::to_owned);
    let version = lines.next().unwrap_or_default();
    assert!(
        version
            .strip_prefix("sqlite_version ")
            .is_some_and(|v| v.starts_with(FLOOR)),
        "the floor application must run SQLite {FLOOR}x, it reported {version:?}"
    );
    lines.collect()
}

fn row(id: &str, name: &str, qty: i64) -> Vec<Value> {
    vec![
        Value::Text(id.into()),
        Value::Text(name.into()),
        Value::Integer(qty),
    ]
}

#[test]
fn an_application_on_sqlite_3_35_with_untrusted_schema_writes_and_reads_replicated_rows() {
    let version = floor(Path::new(":memory:"), &["SELECT sqlite_version()"]);
    eprintln!("the floor application runs SQLite {}", version[0]);

    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let mut one = Node::new(dir.path(), "node1", SCHEMA, &external_toml(&nats.url(), 1));
    let mut two = Node::new(dir.path(), "node2", SCHEMA, &external_toml(&nats.url(), 2));
    one.start();
    two.start();
    one.wait_healthy(Duration::from_secs(30));
    two.wait_healthy(Duration::from_secs(30));

    // The sidecar's schema objects parse in 3.35: the capture triggers on `items` are there.
    let triggers = floor(
        &one.db,
        &["SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'items'"],
    );
    assert!(
        triggers[0].parse::<u32>().unwrap() >= 3,
        "expected insert, update and delete triggers on items, found {triggers:?}"
    );

    // INSERT (several rows in one statement, and an upsert's insert) ...
    let out = floor(
        &one.db,
        &[
            "INSERT INTO items VALUES ('a', 'alpha', 1), ('b', 'beta', 2), ('c', 'gamma', 3)",
            "INSERT INTO items VALUES ('e', 'epsilon', 5) ON CONFLICT(id) DO UPDATE SET qty = 0",
        ],
    );
    assert_eq!(out, ["changes 3", "changes 1"]);
    let rows = wait_converged(&[&one, &two], "items", CONVERGE, |rows| rows.len() == 4);
    assert_eq!(
        rows,
        [
            row("a", "alpha", 1),
            row("b", "beta", 2),
            row("c", "gamma", 3),
            row("e", "epsilon", 5)
        ]
    );

    // ... UPDATE, an upsert's update and DELETE, in one explicit transaction.
    let out = floor(
        &one.db,
        &[
            "BEGIN",
            "UPDATE items SET name = 'ALPHA', qty = qty + 10 WHERE id = 'a'",
            "INSERT INTO items VALUES ('e', 'x', 0) ON CONFLICT(id) DO UPDATE SET qty = qty * 10",
            "DELETE FROM items WHERE id = 'b'",
            "COMMIT",
        ],
    );
    // (BEGIN and COMMIT print sqlite3_changes() of the statement before them.)
    assert_eq!(out[1..4], ["changes 1", "changes 1", "changes 1"]);
    let want = [
        row("a", "ALPHA", 11),
        row("c", "gamma", 3),
        row("e", "epsilon", 50),
    ];
    wait_converged(&[&one, &two], "items", CONVERGE, |rows| rows == want);

    // A change made on node 2, applied to node 1's database by its sidecar, is readable by
    // the 3.35 application, which can then write over it.
    let app = two.app();
    app.execute("INSERT INTO items VALUES ('d', 'delta', 4)", [])
        .unwrap();
    app.execute("UPDATE items SET qty = 33 WHERE id = 'c'", [])
        .unwrap();
    drop(app);
    let select = "SELECT id, name, qty FROM items ORDER BY id";
    let want = ["a|ALPHA|11", "c|gamma|33", "d|delta|4", "e|epsilon|50"];
    let mut seen = Vec::new();
    let applied = wait_until(CONVERGE, || {
        seen = floor(&one.db, &[select]);
        seen == want
    });
    assert!(
        applied,
        "node 2's changes never reached the 3.35 application on node 1: it reads {seen:?}\n{}",
        one.log_tail()
    );
    assert_eq!(
        floor(&one.db, &["UPDATE items SET name = 'DELTA' WHERE id = 'd'"]),
        ["changes 1"]
    );
    wait_converged(&[&one, &two], "items", CONVERGE, |rows| {
        rows.iter().any(|r| r == &row("d", "DELTA", 4))
    });

    // A table the 3.35 application creates while the sidecar runs gets capture triggers
    // that work in 3.35 too (node 2 creates it as well: changes to a table it lacks would
    // wait, parked).
    two.app()
        .execute_batch("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);")
        .unwrap();
    floor(
        &one.db,
        &["CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"],
    );
    let count_triggers =
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'notes'";
    let mut triggers = Vec::new();
    let installed = wait_until(CONVERGE, || {
        triggers = floor(&one.db, &[count_triggers]);
        triggers[0].parse::<u32>().unwrap() >= 3
    });
    assert!(
        installed,
        "no capture triggers on the new table: {triggers:?}\n{}",
        one.log_tail()
    );
    floor(
        &one.db,
        &[
            "INSERT INTO notes(id, body) VALUES (1, 'one'), (2, 'two')",
            "UPDATE notes SET body = 'ONE' WHERE id = 1",
            "DELETE FROM notes WHERE id = 2",
        ],
    );
    wait_converged(&[&one, &two], "notes", CONVERGE, |rows| {
        rows == [vec![Value::Integer(1), Value::Text("ONE".into())]]
    });
}

#[test]
fn column_merge_triggers_run_in_an_application_on_sqlite_3_35_with_untrusted_schema() {
    const STOCK: &str = "CREATE TABLE stock(sku TEXT PRIMARY KEY, label TEXT, \
                         qty INTEGER NOT NULL DEFAULT 0);";
    let merge = "[merge]\ncolumn = [\"stock\"]\ncounters = [\"stock.qty\"]\n";
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let config = |n| format!("{}{merge}", external_toml(&nats.url(), n));
    let mut one = Node::new(dir.path(), "node1", STOCK, &config(1));
    let mut two = Node::new(dir.path(), "node2", STOCK, &config(2));
    one.start();
    two.start();
    one.wait_healthy(Duration::from_secs(30));
    two.wait_healthy(Duration::from_secs(30));
    assert_eq!(
        floor(
            &one.db,
            &["INSERT INTO stock(sku, label, qty) VALUES ('pen', 'Pen', 10)"]
        ),
        ["changes 1"]
    );
    let stock = |label: &str, qty: i64| {
        vec![
            Value::Text("pen".into()),
            Value::Text(label.into()),
            Value::Integer(qty),
        ]
    };
    wait_converged(&[&one, &two], "stock", CONVERGE, |rows| {
        rows == [stock("Pen", 10)]
    });
    // The 3.35 application decrements and relabels on node 1 while node 2's application
    // decrements too: the counter adds both, the label survives.
    let out = floor(
        &one.db,
        &[
            "UPDATE stock SET qty = qty - 1 WHERE sku = 'pen'",
            "UPDATE stock SET qty = qty - 1 WHERE sku = 'pen'",
            "UPDATE stock SET label = 'Blue pen' WHERE sku = 'pen'",
        ],
    );
    assert_eq!(out, ["changes 1", "changes 1", "changes 1"]);
    two.app()
        .execute("UPDATE stock SET qty = qty - 3 WHERE sku = 'pen'", [])
        .unwrap();
    let rows = wait_converged(&[&one, &two], "stock", CONVERGE, |rows| {
        rows == [stock("Blue pen", 5)]
    });
    assert_eq!(rows, [stock("Blue pen", 5)]);
    assert_eq!(
        floor(&one.db, &["SELECT label || '|' || qty FROM stock"]),
        ["Blue pen|5"]
    );
}
