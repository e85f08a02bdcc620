//! Tables that merge by column (issue 19) on a real 3-node cluster: sidecars with their
//! embedded nats-servers, each in a network namespace of its own (so a node can be cut off
//! from the others and healed, `harmonylite_tests::chaos::netns`) and a PID namespace of
//! its own (`unshare --pid --fork --mount-proc`, as in a container beside the application's).
//! Applications write through their own connections; counters are decremented by one Python
//! process per node. Every case is checked on all three database files:
//!
//! - two nodes edit different columns of one row while cut off from each other: both edits
//!   survive; the same column edited on both sides: the later write wins;
//! - a delete against a concurrent update of one column: an update older than the delete
//!   goes with the row, an update later than it brings the row back with only that column
//!   (the others at their defaults);
//! - 1,000 concurrent `UPDATE stock SET qty = qty - 1` from the three nodes' applications end
//!   at exactly -1,000 everywhere, also when one sidecar is killed with SIGKILL in the middle
//!   and restarted (its application writes on while it is down);
//! - `harmonylite migrate --merge notes=column` switches a running row-merge cluster on every
//!   node, and a node restarted with a `[merge]` that disagrees refuses to start, naming the
//!   table.
//!
//! Needs root (network namespaces), `ip`, `unshare`, `python3` and nats-server; a missing
//! one fails the test. Nothing here is timed: every wait polls with a generous limit.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harmonylite_core::value::Value;
use harmonylite_tests::chaos::netns::Network;
use harmonylite_tests::{dump, nats_server_binary, sidecar_binary, stop_child, wait_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rusqlite::Connection;

const SCHEMA: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT DEFAULT 'untitled', \
                      body TEXT DEFAULT 'empty', tag TEXT DEFAULT 'none');
                      CREATE TABLE stock(sku TEXT PRIMARY KEY, qty INTEGER NOT NULL DEFAULT 0, \
                      name TEXT);";
const MERGE: &str = "[merge]\ncolumn = [\"notes\"]\ncounters = [\"stock.qty\"]\n";
const START: Duration = Duration::from_secs(90);
const CONVERGE: Duration = Duration::from_secs(120);

/// The tests of this file run one at a time: each runs three sidecars and three
/// nats-servers, and on two busy cores a parallel run starves the leader elections they
/// wait for.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One node: a sidecar (with its embedded nats-server) in network namespace `namespace`,
/// started through `ip netns exec … unshare --pid --fork --mount-proc`.
struct Member {
    name: String,
    db: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// The `unshare` process (the sidecar is its only child, PID 1 of its namespace).
    child: Option<Child>,
    namespace: String,
    /// Everything of the config but `[merge]`.
    base_config: String,
}

impl Member {
    /// Writes the config with `merge` (a `[merge]` section, or "").
    fn write_config(&self, merge: &str) {
        std::fs::write(&self.config, format!("{}{merge}", self.base_config)).unwrap();
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let nats_dir = nats_server_binary().parent().unwrap().display().to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace])
            .args([
                "unshare",
                "--pid",
                "--fork",
                "--kill-child=SIGTERM",
                "--mount-proc",
            ])
            .arg(sidecar_binary())
            .arg("--config")
            .arg(&self.config)
            .env(
                "PATH",
                format!("{nats_dir}:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .env(
                "RUST_LOG",
                std::env::var("HL_SIDECAR_LOG").unwrap_or_else(|_| "info,harmonylite=debug".into()),
            )
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("`ip` (iproute2) and `unshare` (util-linux) must be installed");
        self.child = Some(child);
    }

    /// The sidecar's process id (as this namespace sees it), while it runs.
    fn sidecar_pid(&self) -> Option<i32> {
        let pid = self.child.as_ref()?.id();
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok());
            found.is_some()
        });
        found
    }

    /// Sends `signal` to the sidecar itself and waits until `unshare` reports its exit.
    fn signal_and_reap(&mut self, signal: Signal) {
        if let Some(pid) = self.sidecar_pid() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            stop_child(&mut child, true);
        }
    }

    /// Stops the sidecar cleanly (SIGTERM) and waits for it.
    fn stop(&mut self) {
        self.signal_and_reap(Signal::SIGTERM);
    }

    /// Kills the sidecar without warning (SIGKILL); as PID 1 of its namespace, its
    /// nats-server dies with it.
    fn kill9(&mut self) {
        self.signal_and_reap(Signal::SIGKILL);
    }

    /// Waits up to `timeout` for the sidecar to exit on its own.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// An application connection, as an unchanged app would open it.
    fn app(&self) -> Connection {
        let conn = Connection::open(&self.db).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn
    }

    fn exec(&self, sql: &str) {
        self.app()
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("{}: {sql}: {e}", self.name));
    }

    /// One number read from the database (an internal table's count, say).
    fn count(&self, sql: &str) -> i64 {
        self.app()
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{}: {sql}: {e}", self.name))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs the sidecar binary once with this node's config and `args`, from the test's own
    /// namespaces (the schema commands read and write the database only); returns whether
    /// it succeeded and its stdout and stderr.
    fn command(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(sidecar_binary())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .expect("running the harmonylite binary");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Three members and the network between them (the members drop first).
struct Cluster {
    nodes: Vec<Member>,
    network: Network,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Creates the namespaces, a database with [`SCHEMA`] and a config with `merge` per
    /// node, starts every sidecar and waits until a row written on each node reached every
    /// node.
    fn start(merge: &str) -> Cluster {
        for (program, why) in [
            ("unshare", "util-linux, for the sidecars' PID namespaces"),
            ("python3", "with sqlite3, for the application processes"),
        ] {
            let found = Command::new(program)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(found, "{program} ({why}) must be installed");
        }
        nats_server_binary();
        static RUN: AtomicU32 = AtomicU32::new(0);
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id().wrapping_mul(7).wrapping_add(run);
        let tag = format!("m{:04x}", id & 0xffff);
        let network = Network::create(&tag, (id % 250) as u8 + 1, 3);
        let dir = tempfile::tempdir().unwrap();
        let nodes = (0..3)
            .map(|i| {
                let name = format!("node{i}");
                let db = dir.path().join(format!("{name}.db"));
                let conn = Connection::open(&db).unwrap();
                conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
                conn.execute_batch(SCHEMA).unwrap();
                drop(conn);
                let peers: Vec<String> = (0..3)
                    .filter(|j| *j != i)
                    .map(|j| format!("\"nats://{}:6222\"", network.address(j)))
                    .collect();
                let base_config = format!(
                    "db_path = {db:?}\nnode_id = {id}\npolling_interval = 200\n\n\
                     [replication_log]\nreplicas = 3\n\n\
                     [nats]\nbind_address = \"127.0.0.1:4222\"\ncluster_addr = \"{addr}:6222\"\n\
                     cluster_peers = [{peers}]\n\n[logging]\nverbose = true\n\n",
                    db = db.display().to_string(),
                    id = i + 1,
                    addr = network.address(i),
                    peers = peers.join(", "),
                );
                let member = Member {
                    config: dir.path().join(format!("{name}.toml")),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    db,
                    child: None,
                    namespace: network.namespace(i),
                    base_config,
                };
                member.write_config(merge);
                member
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            network,
            _dir: dir,
        };
        for node in &mut cluster.nodes {
            node.start();
        }
        for node in &cluster.nodes {
            let installed = wait_until(START, || {
                Connection::open(&node.db)
                    .and_then(|c| {
                        c.query_row("SELECT count(*) FROM __hl_tables", [], |r| {
                            r.get::<_, i64>(0)
                        })
                    })
                    .is_ok_and(|n| n == 2)
            });
            assert!(
                installed,
                "{} did not install capture within {START:?}:\n{}",
                node.name,
                node.log_tail()
            );
        }
        // Every node's writes reach every node: the JetStream cluster and the stream work.
        for (i, node) in cluster.nodes.iter().enumerate() {
            node.exec(&format!(
                "INSERT INTO stock(sku, name) VALUES ('warm-up-{i}', 'warm-up')"
            ));
        }
        cluster.converged("stock", START, |rows| rows.len() == 3);
        cluster
    }

    /// Waits until `table` is the same on every node and `ready` holds for it; panics with
    /// each node's rows and log otherwise. Returns the rows.
    fn converged(
        &self,
        table: &str,
        timeout: Duration,
        ready: impl Fn(&[Vec<Value>]) -> bool,
    ) -> Vec<Vec<Value>> {
        let mut last: Vec<Vec<Vec<Value>>> = Vec::new();
        let ok = wait_until(timeout, || {
            last = self.nodes.iter().map(|n| dump(&n.db, table)).collect();
            last.windows(2).all(|w| w[0] == w[1]) && ready(&last[0])
        });
        if !ok {
            let mut report = String::new();
            for (node, rows) in self.nodes.iter().zip(&last) {
                report.push_str(&format!(
                    "\n--- {}: {rows:?}\n{}\n",
                    node.name,
                    node.log_tail()
                ));
            }
            panic!("{table} did not converge within {timeout:?}:{report}");
        }
        last.remove(0)
    }

    /// Asserts no node parked anything.
    fn assert_nothing_parked(&self) {
        for node in &self.nodes {
            let parked = node.count("SELECT count(*) FROM __hl_parked");
            assert_eq!(
                parked,
                0,
                "{} parked messages:\n{}",
                node.name,
                node.log_tail()
            );
        }
    }

    /// Waits until `node`'s local writes were all captured and published (nothing in its
    /// change log or outbox).
    fn wait_published(&self, node: usize) {
        let member = &self.nodes[node];
        let ok = wait_until(CONVERGE, || {
            member.count(
                "SELECT (SELECT count(*) FROM __hl_log) + (SELECT count(*) FROM __hl_outbox)",
            ) == 0
        });
        assert!(
            ok,
            "{} did not publish its writes:\n{}",
            member.name,
            member.log_tail()
        );
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn note(id: i64, title: &str, body: &str, tag: &str) -> Vec<Value> {
    vec![Value::Integer(id), text(title), text(body), text(tag)]
}

/// The `stock` row of `sku`, if any.
fn qty(rows: &[Vec<Value>], sku: &str) -> Option<Value> {
    rows.iter()
        .find(|r| r[0] == text(sku))
        .map(|r| r[1].clone())
}

/// A moment between two writes, so that "later" is unambiguous (HLCs come from the write's
/// wall-clock time); not a timed assertion.
fn pause() {
    std::thread::sleep(Duration::from_millis(50));
}

/// An application process decrementing a counter: `count` transactions of one
/// `UPDATE stock SET qty = qty - 1 WHERE sku = ?` each, on its own connection, printing how
/// many it committed after each.
struct Decrementer {
    child: Child,
    done: Arc<AtomicUsize>,
    reader: Option<std::thread::JoinHandle<()>>,
}

const DECREMENT_SCRIPT: &str = r#"
import sqlite3, sys, time
db, sku, count, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
conn = sqlite3.connect(db, timeout=30, isolation_level=None)
for i in range(count):
    while True:
        try:
            cur = conn.execute("UPDATE stock SET qty = qty - 1 WHERE sku = ?", (sku,))
            break
        except sqlite3.OperationalError as e:
            # Busy past the timeout: the statement did not commit; try it again.
            print(f"retrying write {i}: {e}", file=sys.stderr, flush=True)
            time.sleep(0.05)
    if cur.rowcount != 1:
        sys.exit(f"write {i} changed {cur.rowcount} rows")
    print(i + 1, flush=True)
    time.sleep(interval)
conn.close()
"#;

impl Decrementer {
    fn start(db: &Path, sku: &str, count: usize, interval: Duration) -> Decrementer {
        let mut child = Command::new("python3")
            .args(["-c", DECREMENT_SCRIPT])
            .arg(db)
            .arg(sku)
            .arg(count.to_string())
            .arg(interval.as_secs_f64().to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (with sqlite3) must be installed for the application processes");
        let stdout = child.stdout.take().unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let sink = done.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(n) = line.trim().parse() {
                    sink.store(n, Ordering::Relaxed);
                }
            }
        });
        Decrementer {
            child,
            done,
            reader: Some(reader),
        }
    }

    /// Writes committed so far.
    fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until the process finished every write; panics if it failed.
    fn finish(mut self) -> usize {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        assert!(status.success(), "an application process failed: {status}");
        self.done()
    }
}

impl Drop for Decrementer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `check` holds, or panics naming `what`.
fn wait_for(what: &str, timeout: Duration, check: impl FnMut() -> bool) {
    assert!(wait_until(timeout, check), "{what} within {timeout:?}");
}

#[test]
fn columns_merge_by_their_own_writers_and_counters_add_up_on_a_real_cluster() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let mut cluster = Cluster::start(MERGE);
    let (a, b) = (0, 1);
    cluster.nodes[a].exec(
        "INSERT INTO notes VALUES (1, 't1', 'b1', 'x1'), (2, 't2', 'b2', 'x2'), \
         (3, 't3', 'b3', 'x3'), (4, 't4', 'b4', 'x4'), (5, 't5', 'b5', 'x5');
         INSERT INTO stock(sku, qty, name) VALUES ('apple', 0, 'Apple'), ('pear', 0, 'Pear');",
    );
    cluster.converged("notes", CONVERGE, |rows| rows.len() == 5);
    cluster.converged("stock", CONVERGE, |rows| rows.len() == 5);
    eprintln!("cluster up and seeded after {:?}", started.elapsed());

    // Node a is cut off from b and c; each side keeps writing.
    cluster.network.partition(&[a]);
    // (a) Different columns of one row.
    cluster.nodes[a].exec("UPDATE notes SET title = 'from a' WHERE id = 1");
    cluster.nodes[b].exec("UPDATE notes SET body = 'from b' WHERE id = 1");
    // (b) One column on both sides, each side the later writer once.
    cluster.nodes[a].exec("UPDATE notes SET title = 'a, older' WHERE id = 2");
    cluster.nodes[b].exec("UPDATE notes SET title = 'b, older' WHERE id = 3");
    pause();
    cluster.nodes[b].exec("UPDATE notes SET title = 'b, later' WHERE id = 2");
    cluster.nodes[a].exec("UPDATE notes SET title = 'a, later' WHERE id = 3");
    // (c) A delete against an update of one column: the update older than the delete
    // (row 4), the update later than it (row 5).
    cluster.nodes[a].exec("UPDATE notes SET body = 'edit before the delete' WHERE id = 4");
    cluster.nodes[b].exec("DELETE FROM notes WHERE id = 5");
    pause();
    cluster.nodes[b].exec("DELETE FROM notes WHERE id = 4");
    cluster.nodes[a].exec("UPDATE notes SET title = 'edit after the delete' WHERE id = 5");
    // The majority side published its writes; they reach c but not a, and a's stay on a.
    cluster.wait_published(b);
    let c = 2;
    let majority = dump(&cluster.nodes[b].db, "notes");
    let reached_c = wait_until(CONVERGE, || dump(&cluster.nodes[c].db, "notes") == majority);
    assert!(reached_c, "c did not get b's writes during the partition");
    assert_eq!(
        majority,
        [
            note(1, "t1", "from b", "x1"),
            note(2, "b, later", "b2", "x2"),
            note(3, "b, older", "b3", "x3"),
        ]
    );
    assert_eq!(
        dump(&cluster.nodes[a].db, "notes"),
        [
            note(1, "from a", "b1", "x1"),
            note(2, "a, older", "b2", "x2"),
            note(3, "a, later", "b3", "x3"),
            note(4, "t4", "edit before the delete", "x4"),
            note(5, "edit after the delete", "b5", "x5"),
        ]
    );
    eprintln!(
        "the majority side replicated its writes after {:?}",
        started.elapsed()
    );
    cluster.network.heal();

    let expected = vec![
        note(1, "from a", "from b", "x1"),
        note(2, "b, later", "b2", "x2"),
        note(3, "a, later", "b3", "x3"),
        // Row 4 is gone; row 5 is back with only the column written after the delete.
        note(5, "edit after the delete", "empty", "none"),
    ];
    let rows = cluster.converged("notes", CONVERGE, |rows| rows == expected.as_slice());
    assert_eq!(rows, expected);
    eprintln!("column cases converged after {:?}", started.elapsed());

    // (d) 1,000 concurrent decrements from the three nodes' applications.
    let split = [334, 333, 333];
    let apps: Vec<Decrementer> = cluster
        .nodes
        .iter()
        .zip(split)
        .map(|(n, count)| Decrementer::start(&n.db, "apple", count, Duration::from_millis(2)))
        .collect();
    let written: usize = apps.into_iter().map(Decrementer::finish).sum();
    assert_eq!(written, 1000);
    cluster.converged("stock", CONVERGE, |rows| {
        qty(rows, "apple") == Some(Value::Integer(-1000))
    });
    eprintln!("1,000 decrements converged after {:?}", started.elapsed());

    // The same with node b's sidecar killed (SIGKILL) in the middle and restarted while its
    // application keeps writing.
    let apps: Vec<Decrementer> = cluster
        .nodes
        .iter()
        .zip(split)
        .map(|(n, count)| Decrementer::start(&n.db, "pear", count, Duration::from_millis(8)))
        .collect();
    wait_for("node b's application wrote 60 times", CONVERGE, || {
        apps[b].done() >= 60
    });
    cluster.nodes[b].kill9();
    let at_kill = apps[b].done();
    wait_for(
        "node b's application wrote 100 times with its sidecar down",
        CONVERGE,
        || apps[b].done() >= at_kill + 100,
    );
    let while_down = apps[b].done() - at_kill;
    cluster.nodes[b].start();
    let written: usize = apps.into_iter().map(Decrementer::finish).sum();
    assert_eq!(written, 1000);
    let rows = cluster.converged("stock", CONVERGE, |rows| {
        qty(rows, "pear") == Some(Value::Integer(-1000))
    });
    assert_eq!(qty(&rows, "apple"), Some(Value::Integer(-1000)));
    eprintln!(
        "1,000 decrements with a sidecar killed ({while_down}+ written while it was down) \
         converged after {:?}",
        started.elapsed()
    );
    // The notes did not move, and nothing was parked anywhere.
    assert_eq!(dump(&cluster.nodes[b].db, "notes"), expected);
    cluster.assert_nothing_parked();
}

#[test]
fn migrate_merge_switches_a_running_row_cluster_and_a_disagreeing_node_refuses_to_start() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let mut cluster = Cluster::start("");
    cluster.nodes[0].exec("INSERT INTO notes VALUES (1, 't', 'b', 'x')");
    cluster.converged("notes", CONVERGE, |rows| rows.len() == 1);
    for node in &cluster.nodes {
        let (ok, out, err) = node.command(&["--schema-status"]);
        assert!(ok, "{err}");
        assert!(out.contains("merge notes row\n"), "{out}");
    }

    // A malformed argument is refused before anything is opened.
    let (ok, _, err) = cluster.nodes[0].command(&["migrate", "--merge", "notes"]);
    assert!(
        !ok && err.contains("--merge") && err.contains("no `=`"),
        "{err}"
    );
    let (ok, _, err) = cluster.nodes[0].command(&["migrate", "--merge", "notes=column:nope"]);
    assert!(!ok && err.contains("nope"), "{err}");

    // The switch, run next to node 0's sidecar: published, applied here, then everywhere.
    let (ok, out, err) = cluster.nodes[0].command(&["migrate", "--merge", "notes=column"]);
    assert!(
        ok,
        "migrate --merge failed:\n{out}\n{err}\n{}",
        cluster.nodes[0].log_tail()
    );
    assert!(out.contains("table notes merges by column here"), "{out}");
    assert!(out.contains("column = [\"notes\"]"), "{out}");
    for node in &cluster.nodes {
        let mut last = String::new();
        let switched = wait_until(CONVERGE, || {
            last = node.command(&["--schema-status"]).1;
            last.contains("merge notes column\n")
        });
        assert!(
            switched,
            "{} did not switch:\n{last}\n{}",
            node.name,
            node.log_tail()
        );
        assert!(last.contains("merge stock row\n"), "{last}");
    }
    let (ok, out, _) = cluster.nodes[1].command(&["migrate", "--merge", "notes=column"]);
    assert!(ok && out.contains("already merges by column"), "{out}");
    eprintln!("switched after {:?}", started.elapsed());

    // Now concurrent edits of different columns both survive (by row, one would be lost).
    cluster.network.partition(&[0]);
    cluster.nodes[0].exec("UPDATE notes SET title = 'from 0' WHERE id = 1");
    pause();
    cluster.nodes[1].exec("UPDATE notes SET body = 'from 1' WHERE id = 1");
    cluster.wait_published(1);
    cluster.network.heal();
    let expected = vec![note(1, "from 0", "from 1", "x")];
    cluster.converged("notes", CONVERGE, |rows| rows == expected.as_slice());

    // Node 2 restarted with a [merge] that says notes merges by row: refused, naming it.
    cluster.nodes[2].stop();
    cluster.nodes[2].write_config("[merge]\ncolumn = []\n");
    cluster.nodes[2].start();
    let status = cluster.nodes[2].wait_exit(START);
    let log = cluster.nodes[2].log_text();
    assert!(
        status.is_some_and(|s| !s.success()),
        "node 2 started with a disagreeing [merge] ({status:?}):\n{}",
        cluster.nodes[2].log_tail()
    );
    assert!(
        log.contains("table \"notes\" merges by column in this database but the options say row"),
        "{}",
        cluster.nodes[2].log_tail()
    );
    // With a [merge] that agrees it starts and replicates again.
    cluster.nodes[2].write_config("[merge]\ncolumn = [\"notes\"]\n");
    cluster.nodes[2].start();
    cluster.nodes[2].exec("UPDATE notes SET tag = 'from 2' WHERE id = 1");
    let expected = vec![note(1, "from 0", "from 1", "from 2")];
    cluster.converged("notes", CONVERGE, |rows| rows == expected.as_slice());
    cluster.assert_nothing_parked();
    eprintln!("done after {:?}", started.elapsed());
}
