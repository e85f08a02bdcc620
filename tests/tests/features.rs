//! Features no other end-to-end test reaches, each through the real `harmonylite` binary, a
//! real nats-server and real SQLite files, the application being a connection (or a process)
//! of its own: the Prometheus endpoint during a workload, `--cleanup` on a live database,
//! `exclude_tables`, JSON logs, `--node-id` and HarmonyLite's single-dash flags,
//! `leaf_servers`, and `max_clock_ahead` with its documented recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harmonylite_core::value::Value;
use harmonylite_tests::*;
use rusqlite::Connection;

const SCHEMA: &str = "CREATE TABLE items(id TEXT PRIMARY KEY, name TEXT);";
const CONVERGE: Duration = Duration::from_secs(30);
const START: Duration = Duration::from_secs(30);

/// Every harmonylite object in the database: `(type, name)` of each schema entry named
/// `__hl_…` (or `sqlite_autoindex___hl_…`) or whose SQL mentions one (the capture triggers
/// on application tables).
fn harmonylite_objects(db: &Path) -> Vec<(String, String)> {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT type, name FROM sqlite_schema
             WHERE name LIKE '%\\_\\_hl\\_%' ESCAPE '\\' OR sql LIKE '%\\_\\_hl\\_%' ESCAPE '\\'
             ORDER BY type, name",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Names of the triggers on `table`.
fn triggers_on(db: &Path, table: &str) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1")
        .unwrap();
    stmt.query_map([table], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn has_row(db: &Path, table: &str, id: &str) -> bool {
    dump(db, table)
        .iter()
        .any(|r| r[0] == Value::Text(id.to_string()))
}

fn health_field(node: &Node, field: &str) -> Option<serde_json::Value> {
    node.health().map(|(_, h)| h[field].clone())
}

/// A sidecar process started with arguments of the test's choosing (not the harness's
/// `--config <path>`), logging to `log`; killed when dropped.
struct Sidecar {
    child: Option<Child>,
    log: PathBuf,
}

impl Sidecar {
    fn spawn(args: &[&str], log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(sidecar_binary())
            .args(args)
            .env("RUST_LOG", "info,harmonylite=debug")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("starting the sidecar");
        Sidecar {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, false);
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the sidecar binary once with `args`; returns whether it exited 0, its stdout and its
/// stderr.
fn run_sidecar(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(sidecar_binary())
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("running the sidecar binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------------------------------
// Prometheus

/// One metric family of a Prometheus text exposition.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    /// Sample name with its labels (as written) -> value.
    samples: BTreeMap<String, f64>,
}

/// Parses Prometheus's text format into families by name, checking the syntax of every line.
fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let family = families.entry(name.to_string()).or_default();
            assert!(family.help.is_none(), "two HELP lines for {name}");
            family.help = Some(help.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("TYPE line without a type: {line:?}"));
            let family = families.entry(name.to_string()).or_default();
            assert!(family.kind.is_none(), "two TYPE lines for {name}");
            family.kind = Some(kind.to_string());
        } else if line.starts_with('#') {
            continue;
        } else {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("sample value is not a number: {line:?}"));
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|base| {
                    families
                        .get(*base)
                        .and_then(|f| f.kind.as_deref())
                        .is_some_and(|k| k == "histogram" || k == "summary")
                })
                .unwrap_or(name);
            if let Some(labels) = series.strip_prefix(name) {
                if let Some(inner) = labels.strip_prefix('{') {
                    let inner = inner
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                    for pair in inner.split(',').filter(|p| !p.is_empty()) {
                        let (label, _) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("label without a value: {line:?}"));
                        assert!(
                            is_snake_case(label),
                            "label {label:?} is not snake_case: {line:?}"
                        );
                    }
                }
            }
            families
                .entry(family.to_string())
                .or_default()
                .samples
                .insert(series.to_string(), value);
        }
    }
    families
}

fn is_snake_case(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.contains("__")
        && !name.ends_with('_')
}

/// The naming rules of <https://prometheus.io/docs/practices/naming/> for every family.
fn check_conventions(families: &BTreeMap<String, Family>, namespace: &str) {
    const NOT_BASE_UNITS: [&str; 14] = [
        "_ms",
        "_millis",
        "_milliseconds",
        "_us",
        "_microseconds",
        "_ns",
        "_nanoseconds",
        "_minutes",
        "_hours",
        "_days",
        "_kb",
        "_kib",
        "_mb",
        "_kilobytes",
    ];
    assert!(!families.is_empty(), "no metrics at all");
    for (name, family) in families {
        assert!(is_snake_case(name), "{name} is not snake_case");
        assert!(
            name.starts_with(&format!("{namespace}_")),
            "{name} lacks the {namespace}_ prefix"
        );
        let help = family.help.as_deref().unwrap_or_default();
        assert!(
            !help.trim().is_empty(),
            "{name} has no HELP line: {family:?}"
        );
        let kind = family
            .kind
            .as_deref()
            .unwrap_or_else(|| panic!("{name} has no TYPE line: {family:?}"));
        assert!(
            ["counter", "gauge", "histogram", "summary"].contains(&kind),
            "{name} has TYPE {kind}"
        );
        assert!(!family.samples.is_empty(), "{name} has no samples");
        match kind {
            "counter" => assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            ),
            _ => assert!(
                !name.ends_with("_total"),
                "{kind} {name} must not end in _total"
            ),
        }
        if kind == "histogram" || kind == "summary" {
            assert!(
                name.ends_with("_seconds") || name.ends_with("_bytes"),
                "{kind} {name} must name its base unit (_seconds, _bytes)"
            );
        }
        for word in NOT_BASE_UNITS {
            let stem = name.strip_suffix("_total").unwrap_or(name);
            assert!(
                !stem.ends_with(word) && !stem.contains(&format!("{word}_")),
                "{name} uses a unit that is not a base unit ({word}): use _seconds/_bytes"
            );
        }
        for (series, value) in &family.samples {
            if kind == "counter" {
                assert!(*value >= 0.0, "counter {series} is negative: {value}");
            }
        }
    }
}

/// The metrics a workload does not record (snapshots, restores, errors) do not appear in a
/// scrape: check every name metrics.rs documents (`//! | `<ns>_name{labels}` | type |`) by
/// the same rules, with the type the table gives.
fn check_documented_names() {
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../host-native/src/ops/metrics.rs"),
    )
    .unwrap();
    let mut families = BTreeMap::new();
    for row in source
        .lines()
        .filter_map(|l| l.strip_prefix("//! | `<ns>_"))
    {
        let name = format!("harmonylite_{}", row.split(['`', '{']).next().unwrap());
        let kind = row.split(" | ").nth(1).unwrap().trim().to_string();
        families.insert(
            name.clone(),
            Family {
                help: Some("documented".into()),
                kind: Some(kind),
                samples: BTreeMap::from([(name, 0.0)]),
            },
        );
    }
    assert!(
        families.len() >= 20,
        "metrics.rs's table was not parsed: {families:?}"
    );
    check_conventions(&families, "harmonylite");
}

/// Sum of a family's samples (all label sets); 0 when absent.
fn total(families: &BTreeMap<String, Family>, name: &str) -> f64 {
    families
        .get(name)
        .map(|f| f.samples.values().sum())
        .unwrap_or(0.0)
}

fn scrape(port: u16) -> BTreeMap<String, Family> {
    let (code, body) = http_get(port, "/metrics").expect("the metrics endpoint answers");
    assert_eq!(code, 200, "GET /metrics: {body}");
    parse_exposition(&body)
}

#[test]
fn prometheus_counters_move_during_a_workload_and_names_follow_the_conventions() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let (pa, pb) = (free_port(), free_port());
    let prometheus =
        |port: u16| format!("\n[prometheus]\nenable = true\nbind = \"127.0.0.1:{port}\"\n");
    let mut a = Node::new(
        dir.path(),
        "a",
        SCHEMA,
        &format!("{}{}", external_toml(&nats.url(), 1), prometheus(pa)),
    );
    let mut b = Node::new(
        dir.path(),
        "b",
        SCHEMA,
        &format!("{}{}", external_toml(&nats.url(), 2), prometheus(pb)),
    );
    a.start();
    b.start();
    a.wait_healthy(START);
    b.wait_healthy(START);

    // The application writes on A the whole time the endpoints are scraped.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let app = a.app();
        std::thread::spawn(move || {
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) {
                app.execute(
                    "INSERT INTO items VALUES (?1, 'workload')",
                    [format!("w{k:05}")],
                )
                .unwrap();
                k += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            k
        })
    };
    assert!(
        wait_until(CONVERGE, || dump(&b.db, "items").len() >= 10),
        "the workload did not reach B:\n{}",
        b.log_tail()
    );
    let (a1, b1) = (scrape(pa), scrape(pb));
    let before_second = dump(&b.db, "items").len();
    assert!(
        wait_until(CONVERGE, || dump(&b.db, "items").len()
            >= before_second + 20),
        "the workload stopped reaching B:\n{}",
        b.log_tail()
    );
    let (a2, b2) = (scrape(pa), scrape(pb));
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| {
        rows.len() == written as usize
    });

    for (node, scrape) in [("A", &a1), ("A", &a2), ("B", &b1), ("B", &b2)] {
        eprintln!("checking the conventions on {node}'s metrics");
        check_conventions(scrape, "harmonylite");
    }
    check_documented_names();
    let grew = |name: &str, first: &BTreeMap<String, Family>, second: &BTreeMap<String, Family>| {
        let (x, y) = (total(first, name), total(second, name));
        assert!(
            y > x,
            "{name} did not grow between two scrapes: {x} then {y}"
        );
    };
    // The writer captures and publishes; the receiver applies.
    grew("harmonylite_drained_rows_total", &a1, &a2);
    grew("harmonylite_published_frames_total", &a1, &a2);
    grew("harmonylite_applied_batches_total", &b1, &b2);
    grew("harmonylite_applied_rows_total", &b1, &b2);
    grew("harmonylite_apply_seconds", &b1, &b2);
    assert!(
        total(&b2, "harmonylite_applied_rows_total") >= before_second as f64,
        "B applied {before_second} rows but counts {}",
        total(&b2, "harmonylite_applied_rows_total")
    );
    for scrape in [&a2, &b2] {
        assert_eq!(total(scrape, "harmonylite_nats_connected"), 1.0);
        assert_eq!(total(scrape, "harmonylite_parked_messages"), 0.0);
    }
}

// ---------------------------------------------------------------------------------------
// --cleanup

#[test]
fn cleanup_on_a_live_database_removes_every_harmonylite_object_and_a_restart_reinstalls_capture() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let schema = "CREATE TABLE items(id TEXT PRIMARY KEY, name TEXT);
                  CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);
                  CREATE INDEX notes_body ON notes(body);
                  CREATE VIEW item_names AS SELECT name FROM items;";
    let mut a = Node::new(dir.path(), "a", schema, &external_toml(&nats.url(), 1));
    let mut b = Node::new(dir.path(), "b", schema, &external_toml(&nats.url(), 2));
    a.start();
    b.start();
    a.wait_healthy(START);
    b.wait_healthy(START);

    // The application keeps one connection open for the whole test.
    let app = a.app();
    for k in 0..10 {
        app.execute(
            "INSERT INTO items VALUES (?1, ?2)",
            [format!("a{k}"), format!("item {k}")],
        )
        .unwrap();
        app.execute("INSERT INTO notes(body) VALUES (?1)", [format!("note {k}")])
            .unwrap();
    }
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 10);
    wait_converged(&[&a, &b], "notes", CONVERGE, |rows| rows.len() == 10);
    let installed = harmonylite_objects(&a.db);
    assert!(
        installed.iter().any(|(t, _)| t == "trigger")
            && installed.iter().any(|(t, _)| t == "table"),
        "capture was not installed: {installed:?}"
    );
    let app_schema = |conn: &Connection| -> Vec<(String, String, Option<String>)> {
        let mut stmt = conn
            .prepare(
                "SELECT type, name, sql FROM sqlite_schema
                 WHERE name NOT LIKE '%\\_\\_hl\\_%' ESCAPE '\\' AND coalesce(sql, '') NOT LIKE '%\\_\\_hl\\_%' ESCAPE '\\'
                 ORDER BY type, name",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let (items_before, notes_before, schema_before) =
        (dump(&a.db, "items"), dump(&a.db, "notes"), app_schema(&app));

    // The application's connection stays open while the sidecar is stopped and
    // `--cleanup` runs, and reads and writes through it afterwards.
    a.stop();
    let count: i64 = app
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 10);
    assert!(
        a.run_command(&["--cleanup"], &[], Duration::from_secs(30)),
        "--cleanup failed:\n{}",
        a.log_tail()
    );
    a.wait_for_log("removed harmonylite objects", Duration::from_secs(1));
    assert_eq!(harmonylite_objects(&a.db), [], "objects left by --cleanup");
    assert_eq!(
        dump(&a.db, "items"),
        items_before,
        "application rows changed"
    );
    assert_eq!(
        dump(&a.db, "notes"),
        notes_before,
        "application rows changed"
    );
    assert_eq!(
        app_schema(&app),
        schema_before,
        "application schema changed"
    );
    let names: Vec<String> = app
        .prepare("SELECT * FROM item_names ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(names.len(), 10, "the application's view still reads");
    let integrity: String = app
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    // A second cleanup finds nothing and still succeeds.
    assert!(a.run_command(&["--cleanup"], &[], Duration::from_secs(30)));
    a.wait_for_log("nothing removed", Duration::from_secs(1));

    // NOTE: writes the application makes between `--cleanup` and the next start are not
    // captured (no triggers) and the reinstall does not publish them: they never reach the
    // other nodes. Not asserted here (reported with this test); the application does not
    // write in that window.

    // Meanwhile B keeps writing.
    b.app()
        .execute("INSERT INTO items VALUES ('b-during', 'from b')", [])
        .unwrap();

    // A restart installs capture again and replication works both ways.
    a.start();
    a.wait_healthy(START);
    let reinstalled = harmonylite_objects(&a.db);
    assert!(
        !triggers_on(&a.db, "items").is_empty() && !triggers_on(&a.db, "notes").is_empty(),
        "capture triggers not reinstalled: {reinstalled:?}"
    );
    app.execute("INSERT INTO items VALUES ('a-after', 'from a')", [])
        .unwrap();
    app.execute("UPDATE items SET name = 'changed' WHERE id = 'a3'", [])
        .unwrap();
    app.execute("DELETE FROM notes WHERE id = 1", []).unwrap();
    b.app()
        .execute("INSERT INTO items VALUES ('b-after', 'from b')", [])
        .unwrap();
    let rows = wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 13);
    assert!(rows
        .iter()
        .any(|r| r[0] == Value::Text("a3".into()) && r[1] == Value::Text("changed".into())));
    for id in ["b-during", "a-after", "b-after"] {
        assert!(has_row(&a.db, "items", id), "{id} missing on A");
    }
    wait_converged(&[&a, &b], "notes", CONVERGE, |rows| rows.len() == 9);
}

// ---------------------------------------------------------------------------------------
// exclude_tables

#[test]
fn an_excluded_table_never_reaches_the_other_node_and_the_others_do() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let schema = "CREATE TABLE items(id TEXT PRIMARY KEY, name TEXT);
                  CREATE TABLE local_only(id TEXT PRIMARY KEY, name TEXT);";
    // Only the writer excludes the table: were its writes published, B would apply them.
    let mut a = Node::new(
        dir.path(),
        "a",
        schema,
        &format!(
            "exclude_tables = [\"local_only\"]\n{}",
            external_toml(&nats.url(), 1)
        ),
    );
    let mut b = Node::new(dir.path(), "b", schema, &external_toml(&nats.url(), 2));
    a.start();
    b.start();
    a.wait_healthy(START);
    b.wait_healthy(START);
    assert_eq!(
        triggers_on(&a.db, "local_only"),
        Vec::<String>::new(),
        "capture installed on an excluded table"
    );
    assert!(!triggers_on(&a.db, "items").is_empty());

    // Excluded and replicated writes in the same transactions, then more of both.
    let mut app = a.app();
    for round in 0..3 {
        let tx = app.transaction().unwrap();
        for k in 0..5 {
            let id = format!("r{round}-{k}");
            tx.execute("INSERT INTO local_only VALUES (?1, 'secret')", [&id])
                .unwrap();
            tx.execute("INSERT INTO items VALUES (?1, 'shared')", [&id])
                .unwrap();
        }
        tx.commit().unwrap();
        app.execute(
            "UPDATE local_only SET name = 'changed' WHERE id LIKE 'r%-0'",
            [],
        )
        .unwrap();
        app.execute("DELETE FROM local_only WHERE id LIKE 'r%-1'", [])
            .unwrap();
    }
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 15);
    // Everything A published has been applied by B (its cursor reached the stream's end).
    assert!(wait_until(Duration::from_secs(10), || {
        let (ha, hb) = (a.health().unwrap().1, b.health().unwrap().1);
        ha["outbox_depth"] == 0 && hb["lag"] == 0 && hb["cursor"] == ha["stream_last_seq"]
    }));
    assert_eq!(dump(&a.db, "local_only").len(), 12);
    assert_eq!(
        dump(&b.db, "local_only"),
        Vec::<Vec<Value>>::new(),
        "writes to an excluded table reached the other node"
    );
    assert_eq!(health_field(&b, "parked"), Some(0.into()));

    // The other way: B does not exclude the table and publishes its writes to it; A, which
    // excludes it, never applies them to its table.
    b.app()
        .execute("INSERT INTO local_only VALUES ('from-b', 'x')", [])
        .unwrap();
    b.app()
        .execute("INSERT INTO items VALUES ('marker', 'x')", [])
        .unwrap();
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 16);
    assert!(wait_until(Duration::from_secs(10), || {
        let (ha, hb) = (a.health().unwrap().1, b.health().unwrap().1);
        hb["outbox_depth"] == 0 && ha["lag"] == 0 && ha["cursor"] == hb["stream_last_seq"]
    }));
    assert!(
        !has_row(&a.db, "local_only", "from-b"),
        "a remote write was applied to a table this node excludes"
    );
    // A skips those rows (the rest of their transaction applies): nothing is parked.
    assert_eq!(
        health_field(&a, "parked"),
        Some(0.into()),
        "{}",
        a.log_tail()
    );
}

// ---------------------------------------------------------------------------------------
// logging.format = "json"

#[test]
fn json_logging_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    // An embedded server, whose own lines the sidecar forwards into its log.
    let mut node = Node::new(
        dir.path(),
        "node",
        SCHEMA,
        &format!(
            "node_id = 7\n[nats]\nbind_address = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    );
    let text = std::fs::read_to_string(&node.config).unwrap();
    assert!(text.contains("[logging]\n"), "{text}");
    std::fs::write(
        &node.config,
        text.replace("[logging]\n", "[logging]\nformat = \"json\"\n"),
    )
    .unwrap();
    node.start();
    node.wait_healthy(START);
    node.app()
        .execute("INSERT INTO items VALUES ('x', 'one')", [])
        .unwrap();
    assert!(wait_until(CONVERGE, || node.health().is_some_and(
        |(_, h)| h["stream_last_seq"] == 1 && h["outbox_depth"] == 0
    )));
    node.stop();
    let nodes = [node];

    for (i, node) in nodes.iter().enumerate() {
        let log = node.log();
        let id = format!("{:x}", 7 + i);
        let mut targets = BTreeSet::new();
        let mut lines = 0;
        for line in log.lines() {
            lines += 1;
            let entry: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{}: a log line is not JSON ({e}): {line:?}", node.name)
            });
            let level = entry["level"].as_str().unwrap_or_default();
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
                "{}: no level: {line}",
                node.name
            );
            let message = entry["fields"]["message"]
                .as_str()
                .or(entry["message"].as_str());
            assert!(
                message.is_some_and(|m| !m.is_empty()),
                "{}: no message: {line}",
                node.name
            );
            assert!(
                entry["timestamp"].is_string(),
                "{}: no timestamp: {line}",
                node.name
            );
            // The id is known from the configuration, so every line carries it.
            assert_eq!(
                entry["span"]["node_id"].as_str(),
                Some(id.as_str()),
                "{}: line without the node id: {line}",
                node.name
            );
            targets.insert(entry["target"].as_str().unwrap_or_default().to_string());
        }
        assert!(lines >= 10, "{}: only {lines} log lines:\n{log}", node.name);
        // The sidecar's own lines and the embedded nats-server's forwarded ones.
        assert!(
            targets.contains("nats_server"),
            "{}: {targets:?}",
            node.name
        );
        assert!(
            targets.iter().any(|t| t.starts_with("harmonylite")),
            "{}: {targets:?}",
            node.name
        );
    }
}

// ---------------------------------------------------------------------------------------
// --node-id and HarmonyLite's single-dash flags

#[test]
fn node_id_flag_and_go_style_single_dash_flags_work_on_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    // A's file names no id; B's names one the flag overrides.
    let a = Node::new(
        dir.path(),
        "a",
        SCHEMA,
        &format!("[nats]\nurls = [\"{}\"]\n", nats.url()),
    );
    let b = Node::new(dir.path(), "b", SCHEMA, &external_toml(&nats.url(), 0x99));
    let (ca, cb) = (path_str(&a.config), path_str(&b.config));

    let (ok, version, _) = run_sidecar(&["-version"]);
    assert!(ok && version.starts_with("harmonylite "), "{version}");
    let (ok, help, _) = run_sidecar(&["-help"]);
    assert!(ok && help.contains("--node-id"), "{help}");

    let mut sa = Sidecar::spawn(&["-config", ca, "-node-id=1a"], &dir.path().join("a.log"));
    let mut sb = Sidecar::spawn(
        &["--config", cb, "--node-id", "2B"],
        &dir.path().join("b.log"),
    );
    for (node, sidecar) in [(&a, &sa), (&b, &sb)] {
        assert!(
            wait_until(START, || node.health().is_some_and(|(code, _)| code == 200)),
            "{} not healthy:\n{}",
            node.name,
            sidecar.log()
        );
    }
    assert_eq!(health_field(&a, "node_id"), Some("1a".into()));
    assert_eq!(health_field(&b, "node_id"), Some("2b".into()));
    a.app()
        .execute("INSERT INTO items VALUES ('from-a', 'x')", [])
        .unwrap();
    b.app()
        .execute("INSERT INTO items VALUES ('from-b', 'y')", [])
        .unwrap();
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 2);
    assert!(sa.log().contains("node_id=1a"), "{}", sa.log());
    sa.stop();
    sb.stop();

    // The ids were stored in the databases.
    for (node, id) in [(&a, 0x1a), (&b, 0x2b)] {
        let conn = Connection::open(&node.db).unwrap();
        assert_eq!(
            harmonylite_core::sqlite::Store::stored_node_id(&conn).unwrap(),
            harmonylite_core::hlc::NodeId::from_u128(id),
            "{}",
            node.name
        );
    }

    // One-shot commands in the single-dash form, with `=` and with a separate value.
    let (ok, out, err) = run_sidecar(&["-config", ca, "-parked", "-json"]);
    assert!(ok, "-parked -json failed: {err}");
    let parked: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(parked["parked"], 0, "{out}");
    let (ok, out, err) = run_sidecar(&[&format!("-config={ca}"), "-schema-status"]);
    assert!(ok && out.contains("schema_fingerprint"), "{out}{err}");
    let (ok, _, err) = run_sidecar(&["-config", ca, "-cleanup"]);
    assert!(ok, "-cleanup failed: {err}");
    assert!(err.contains("removed harmonylite objects"), "{err}");
    assert_eq!(harmonylite_objects(&a.db), []);
    assert_eq!(dump(&a.db, "items").len(), 2);
    // A bad value for a single-dash flag is refused, naming the flag.
    let (ok, _, err) = run_sidecar(&["-config", cb, "-node-id", "zz"]);
    assert!(!ok && err.contains("--node-id"), "{err}");
}

// ---------------------------------------------------------------------------------------
// leaf_servers

#[test]
fn a_sidecar_joined_as_a_leaf_node_replicates_through_the_leaf_connection() {
    let dir = tempfile::tempdir().unwrap();
    let leaf_port = free_port();
    let hub = ExternalNats::start_with_config(
        &dir.path().join("hub"),
        &format!("leafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n}}\n"),
    );
    // A runs its embedded server, whose only way to the hub is the leaf connection; B is a
    // plain client of the hub.
    let mut a = Node::new(
        dir.path(),
        "a",
        SCHEMA,
        &format!(
            "node_id = 1\n[nats]\nbind_address = \"127.0.0.1:{}\"\nleaf_servers = [\"nats://127.0.0.1:{leaf_port}\"]\n",
            free_port()
        ),
    );
    let mut b = Node::new(dir.path(), "b", SCHEMA, &external_toml(&hub.url(), 2));
    a.start();
    a.wait_healthy(START);
    a.wait_for_log("Leafnode connection created", Duration::from_secs(15));
    b.start();
    b.wait_healthy(START);
    assert!(
        wait_until(Duration::from_secs(10), || hub
            .log()
            .contains("Leafnode connection created")),
        "the hub saw no leaf connection:\n{}",
        hub.log()
    );

    for k in 0..5 {
        a.app()
            .execute(
                "INSERT INTO items VALUES (?1, 'from the leaf')",
                [format!("a{k}")],
            )
            .unwrap();
        b.app()
            .execute(
                "INSERT INTO items VALUES (?1, 'from the hub')",
                [format!("b{k}")],
            )
            .unwrap();
    }
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 10);
    a.app()
        .execute("UPDATE items SET name = 'updated on a' WHERE id = 'b0'", [])
        .unwrap();
    b.app()
        .execute("DELETE FROM items WHERE id = 'a0'", [])
        .unwrap();
    let rows = wait_converged(&[&a, &b], "items", CONVERGE, |rows| {
        rows.len() == 9
            && rows.iter().any(|r| {
                r[0] == Value::Text("b0".into()) && r[1] == Value::Text("updated on a".into())
            })
    });
    assert!(!rows.iter().any(|r| r[0] == Value::Text("a0".into())));
}

// ---------------------------------------------------------------------------------------
// max_clock_ahead

/// Where Debian's libfaketime lives (package `faketime`; scripts/lib/tools.sh
/// `ensure_chaos_tools` installs it).
fn libfaketime() -> PathBuf {
    harmonylite_tests::chaos::cluster::libfaketime()
}

/// The application on a host whose clock is `skew_s` seconds ahead: a python3 process under
/// libfaketime running `sql` on `db`. Returns the time that process saw (Unix seconds).
fn skewed_app_write(db: &Path, skew_s: i64, sql: &str) -> f64 {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], timeout=5)\n\
             c.execute(sys.argv[2])\n\
             c.commit()\n\
             print(time.time())",
        ])
        .arg(db)
        .arg(sql)
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", format!("{skew_s:+}"))
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .expect("running python3 (the skewed application)");
    assert!(
        out.status.success(),
        "the skewed application failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (seen - real - skew_s as f64).abs() < 2.0,
        "libfaketime did not skew the application's clock by {skew_s} s (saw {seen}, real {real})"
    );
    seen
}

fn parked_json(node: &Node) -> serde_json::Value {
    let (ok, out, err) = run_sidecar(&["--config", path_str(&node.config), "parked", "--json"]);
    assert!(ok, "harmonylite parked failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn parked_kinds(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = conn
        .prepare("SELECT kind FROM __hl_parked ORDER BY 1")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_change_stamped_too_far_ahead_is_parked_then_applied_when_the_clock_catches_up_or_the_bound_is_raised(
) {
    const SKEW: i64 = 10;
    const BOUND: i64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let faketime = |skew: i64| {
        [
            ("LD_PRELOAD", libfaketime().display().to_string()),
            ("FAKETIME", format!("{skew:+}")),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
        ]
    };
    // A: the host whose clock runs ahead (its sidecar and its application).
    let mut a = Node::new(dir.path(), "a", SCHEMA, &external_toml(&nats.url(), 1));
    // B: the receiver, refusing timestamps more than BOUND s ahead, retrying parked
    // messages every 300 ms.
    let mut b = Node::new(
        dir.path(),
        "b",
        SCHEMA,
        &format!(
            "max_clock_ahead = {BOUND}\ncleanup_interval = 300\n{}",
            external_toml(&nats.url(), 2)
        ),
    );
    let env = faketime(SKEW);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    a.start_with_env(&env);
    b.start();
    a.wait_healthy(START);
    b.wait_healthy(START);

    // 1. A change SKEW s ahead: parked on B (kind `clock`), retried, and applied once B's
    // clock is within BOUND s of it, i.e. about SKEW - BOUND s after it was written.
    let written = Instant::now();
    skewed_app_write(&a.db, SKEW, "INSERT INTO items VALUES ('ahead', 'skewed')");
    assert!(
        wait_until(Duration::from_secs(5), || health_field(&b, "parked")
            .is_some_and(|p| p.as_u64() >= Some(1))),
        "B did not park the change from the future:\n{}",
        b.log_tail()
    );
    assert!(
        !has_row(&b.db, "items", "ahead"),
        "applied despite the bound"
    );
    assert!(
        parked_kinds(&b.db).iter().all(|k| k == "clock"),
        "{:?}",
        parked_kinds(&b.db)
    );
    // A clock refusal is about the whole message, not one of its tables: it is counted
    // under "" (core's `ApplyError::table` names no table for it).
    let (_, health) = b.health().unwrap();
    assert_eq!(
        health["parked_by_table"],
        serde_json::json!({"": 1}),
        "{health}"
    );
    let parked = parked_json(&b);
    assert_eq!(parked["parked"], 1, "{parked}");
    assert_eq!(parked["tables"][0]["table"], "", "{parked}");
    assert!(
        b.log().contains("ahead of local time (limit 3000 ms)"),
        "B's log does not say why it parked:\n{}",
        b.log_tail()
    );
    assert!(
        wait_until(Duration::from_secs(SKEW as u64 + 10), || has_row(
            &b.db, "items", "ahead"
        )),
        "the parked change was never applied after B's clock caught up:\n{}",
        b.log_tail()
    );
    let after = written.elapsed();
    assert!(
        after >= Duration::from_secs((SKEW - BOUND - 1) as u64),
        "applied after {after:?}, before B's clock could have caught up"
    );
    assert!(wait_until(Duration::from_secs(5), || health_field(
        &b, "parked"
    ) == Some(0.into())));
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 1);

    // 2. A change an hour ahead stays parked; raising the bound (a restart with a larger
    // max_clock_ahead) applies it.
    a.stop();
    let env = faketime(3600);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    a.start_with_env(&env);
    a.wait_healthy(START);
    skewed_app_write(
        &a.db,
        3600,
        "INSERT INTO items VALUES ('far', 'an hour ahead')",
    );
    assert!(
        wait_until(Duration::from_secs(5), || health_field(&b, "parked")
            .is_some_and(|p| p.as_u64() >= Some(1))),
        "B did not park the change an hour ahead:\n{}",
        b.log_tail()
    );
    std::thread::sleep(Duration::from_secs(2)); // several retries
    assert!(!has_row(&b.db, "items", "far"), "applied despite the bound");
    assert_eq!(parked_json(&b)["parked"], 1);
    b.stop();
    let text = std::fs::read_to_string(&b.config).unwrap();
    std::fs::write(
        &b.config,
        text.replace(
            &format!("max_clock_ahead = {BOUND}\n"),
            "max_clock_ahead = 7200\n",
        ),
    )
    .unwrap();
    b.start();
    b.wait_healthy(START);
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| {
        rows.len() == 2 && rows.iter().any(|r| r[0] == Value::Text("far".into()))
    });
    assert!(wait_until(Duration::from_secs(5), || health_field(
        &b, "parked"
    ) == Some(0.into())));
    assert_eq!(parked_json(&b)["parked"], 0);
    // B's clock now follows the far stamp: its own next write wins over it.
    b.app()
        .execute("UPDATE items SET name = 'b after' WHERE id = 'far'", [])
        .unwrap();
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| {
        rows.iter()
            .any(|r| r[0] == Value::Text("far".into()) && r[1] == Value::Text("b after".into()))
    });
}
