//! `dns://` cluster peers: three sidecars whose only peer setting is one name that resolves
//! to all three of their route addresses form one NATS cluster (a replicas = 3 stream needs
//! all of them) and replicate.
//!
//! The name lives in the `/etc/hosts` of a network namespace this test creates (`ip netns
//! exec` mounts `/etc/netns/<ns>/hosts` over `/etc/hosts`); the three nodes listen on
//! 127.0.0.1, .2 and .3 inside it. Needs root and iproute2, which the test machines have.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harmonylite_tests::{dump, nats_server_binary, sidecar_binary, stop_child, wait_until};
use rusqlite::Connection;

const PEER_NAME: &str = "peers.harmonylite.test";

/// A network namespace with loopback up and its own hosts file; removed on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create(hosts: &str) -> Self {
        let name = format!("hl-dns-{}", std::process::id());
        let etc = Path::new("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).expect("creating /etc/netns/<ns> (this test needs root)");
        std::fs::write(etc.join("hosts"), hosts).unwrap();
        run(&["ip", "netns", "add", &name]);
        let ns = Namespace { name };
        run(&[
            "ip", "netns", "exec", &ns.name, "ip", "link", "set", "lo", "up",
        ]);
        ns
    }

    /// A command that runs `program` inside the namespace.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("running {args:?} (iproute2 is required): {e}"));
    assert!(status.success(), "{args:?} failed: {status}");
}

struct Sidecar {
    db: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        stop_child(&mut self.child, false);
    }
}

fn start(ns: &Namespace, dir: &Path, i: u8) -> Sidecar {
    let dir = dir.join(format!("node{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE items(id INTEGER PRIMARY KEY, origin TEXT);",
        )
        .unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "db_path = {db:?}\nnode_id = {i}\npolling_interval = 200\n\
             [replication_log]\nreplicas = 3\n\
             [nats]\nbind_address = \"127.0.0.{i}:4222\"\ncluster_addr = \"127.0.0.{i}:6222\"\n\
             cluster_peers = [\"dns://{PEER_NAME}:6222\"]\nserver_binary = {server:?}\n",
            db = db.display().to_string(),
            server = nats_server_binary().display().to_string(),
        ),
    )
    .unwrap();
    let log = dir.join("sidecar.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = ns
        .command(&sidecar_binary())
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("starting the sidecar in the namespace");
    Sidecar { db, log, child }
}

#[test]
fn a_dns_name_with_several_addresses_forms_one_cluster() {
    let hosts = format!(
        "127.0.0.1 localhost\n127.0.0.1 {PEER_NAME}\n127.0.0.2 {PEER_NAME}\n127.0.0.3 {PEER_NAME}\n"
    );
    let ns = Namespace::create(&hosts);
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Sidecar> = (1..=3).map(|i| start(&ns, dir.path(), i)).collect();
    // Ready once capture is installed and the stream (replicas = 3: the whole cluster) exists.
    for node in &nodes {
        let ready = wait_until(Duration::from_secs(90), || {
            std::fs::read_to_string(&node.log)
                .is_ok_and(|log| log.contains("consuming the change stream"))
        });
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        assert!(ready, "{} never became ready:\n{log}", node.log.display());
    }
    for (i, node) in nodes.iter().enumerate() {
        let conn = Connection::open(&node.db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute(
            "INSERT INTO items VALUES (?1, ?2)",
            (i as i64 + 1, format!("node{}", i + 1)),
        )
        .unwrap();
    }
    let mut last = Vec::new();
    let converged = wait_until(Duration::from_secs(60), || {
        last = nodes.iter().map(|n| dump(&n.db, "items")).collect();
        last.iter().all(|rows| rows.len() == 3)
    });
    if !converged {
        let logs: String = nodes
            .iter()
            .map(|n| {
                format!(
                    "\n--- {}\n{}",
                    n.log.display(),
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                )
            })
            .collect();
        panic!("the three nodes did not converge: {last:?}{logs}");
    }
    assert!(last.windows(2).all(|w| w[0] == w[1]), "{last:?}");
    let log = std::fs::read_to_string(&nodes[0].log).unwrap();
    assert!(
        log.contains("cluster peers resolved") && log.contains("nats://127.0.0.3:6222"),
        "node1 resolved the name to every peer:\n{log}"
    );
}
