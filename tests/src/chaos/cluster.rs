//! The processes of a chaos run: per node, a nats-server (one JetStream cluster over the
//! private network) and a `harmonylite` sidecar, both inside the node's network namespace,
//! with the database and the JetStream store on a tmpfs of the node's own (so a full disk can
//! be made and undone). Logs live outside the tmpfs, in the run directory. Every nats-server
//! also listens for WebSocket clients on port [`WS_PORT`], for the run's wasm replica
//! ([`super::wasm`]), which has a namespace of its own.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rusqlite::Connection;

use super::checker::Db;
use super::incidents::{explain_exit, tail, ExitRecord, ProcessKind};
use super::netns::Network;
use super::wasm::{WasmReplica, WS_PORT};
use super::workload::{SCHEMA, TABLES};
use crate::{nats_server_binary, sidecar_binary, stop_child, wait_until};

/// The sidecar binary runs use: `HL_CHAOS_SIDECAR` if set (a fixed build for a long run,
/// immune to edits of the working tree), otherwise the workspace's current build.
pub fn chaos_sidecar_binary() -> PathBuf {
    match std::env::var_os("HL_CHAOS_SIDECAR") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "HL_CHAOS_SIDECAR={} is not a file",
                path.display()
            );
            path
        }
        None => sidecar_binary(),
    }
}

/// Where Debian's libfaketime lives (package `faketime`, installed by scripts/lib/tools.sh).
pub fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("libfaketime not found at {candidates:?}: install Debian's `faketime` (scripts/lib/tools.sh does)")
        })
}

/// Runs a command, panicking with its output when it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One node: its namespace, tmpfs, database, and the two processes.
pub struct ChaosNode {
    /// Index (0-based); its `node_id` is `index + 1`.
    pub index: usize,
    /// Network namespace the processes run in.
    pub namespace: String,
    /// The tmpfs mount holding the database and the JetStream store.
    pub mount: PathBuf,
    /// The replicated database file.
    pub db: PathBuf,
    /// The sidecar's config file.
    pub config: PathBuf,
    /// The sidecar's log.
    pub sidecar_log: PathBuf,
    /// The nats-server's log.
    pub nats_log: PathBuf,
    /// Clock offset of the sidecar, in seconds, while a skew fault is active.
    pub skew_secs: Option<i64>,
    /// Whether the sidecar is stopped with SIGSTOP.
    pub paused: bool,
    /// Whether the tmpfs is shrunk to full.
    pub disk_full: bool,
    /// Every exit of its sidecar or nats-server on its own, recorded when first seen
    /// ([`ChaosNode::sidecar_exited`], [`ChaosNode::nats_exited`]).
    pub exits: Vec<ExitRecord>,
    sidecar_exit_seen: bool,
    nats_exit_seen: bool,
    tmpfs_mb: u64,
    disk_full_log_offset: usize,
    routes: String,
    nats_conf: PathBuf,
    sidecar: Option<Child>,
    nats: Option<Child>,
}

/// Every node of a run and the network between them; torn down on drop.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<ChaosNode>,
    /// The private network.
    pub network: Network,
    /// The wasm replica, when the run has one (its namespace is the network's last member).
    pub wasm: Option<WasmReplica>,
}

fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

impl ChaosNode {
    /// Starts (or restarts) the nats-server.
    pub fn start_nats(&mut self) {
        assert!(
            self.nats.is_none(),
            "nats-server {} already running",
            self.index
        );
        let log = append(&self.nats_log);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace])
            .arg(nats_server_binary())
            .arg("-c")
            .arg(&self.nats_conf)
            .args(["-js", "-a", "0.0.0.0", "-p", "4222", "-sd"])
            .arg(self.mount.join("jetstream"))
            .args([
                "-n",
                &format!("n{}", self.index),
                "--cluster_name",
                "chaos",
                "--cluster",
                "nats://0.0.0.0:6222",
                "--routes",
                &self.routes,
            ])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting nats-server in its namespace");
        self.nats = Some(child);
        self.nats_exit_seen = false;
    }

    /// Kills the nats-server with SIGKILL (recording first whether it had exited on its own).
    pub fn kill_nats(&mut self) {
        self.nats_exited();
        if let Some(mut child) = self.nats.take() {
            stop_child(&mut child, true);
        }
    }

    /// Starts the sidecar, under libfaketime when a skew is set.
    pub fn start_sidecar(&mut self) {
        assert!(
            self.sidecar.is_none(),
            "sidecar {} already running",
            self.index
        );
        let log = append(&self.sidecar_log);
        let mut command = Command::new("ip");
        // A process group of its own: when the harness's group is orphaned (its launching
        // shell exited) the kernel sends SIGHUP and SIGCONT to every group holding a stopped
        // process, so a paused sidecar in the harness's group died of SIGHUP at the next exit
        // of any process in it (seen as an unexplained exit). Alone in its group, whose parent
        // (the harness) is in another group of the same session, it is never orphaned.
        command
            .process_group(0)
            .args(["netns", "exec", &self.namespace])
            .arg(chaos_sidecar_binary())
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("HL_SIDECAR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if let Some(skew) = self.skew_secs {
            command
                .env("LD_PRELOAD", libfaketime())
                .env("FAKETIME", format!("{skew:+}"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        self.sidecar = Some(
            command
                .spawn()
                .expect("starting the sidecar in its namespace"),
        );
        self.paused = false;
        self.sidecar_exit_seen = false;
    }

    /// Kills the sidecar with SIGKILL (continuing it first if paused), recording first whether
    /// it had exited on its own (a heal that restarts it must not hide a crash).
    pub fn kill_sidecar(&mut self) {
        self.sidecar_exited();
        self.resume_sidecar();
        if let Some(mut child) = self.sidecar.take() {
            stop_child(&mut child, true);
        }
    }

    /// Sends SIGSTOP to the sidecar.
    pub fn pause_sidecar(&mut self) {
        if let Some(child) = &self.sidecar {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP);
            self.paused = true;
        }
    }

    /// Sends SIGCONT to the sidecar if it is paused.
    pub fn resume_sidecar(&mut self) {
        if self.paused {
            if let Some(child) = &self.sidecar {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            }
            self.paused = false;
        }
    }

    /// The sidecar's process id, while it runs.
    pub fn sidecar_pid(&self) -> Option<u32> {
        self.sidecar.as_ref().map(|c| c.id())
    }

    /// Whether the sidecar process exited on its own; returns its status text. The first time
    /// it sees an exit it records it in [`ChaosNode::exits`], with the end of the log.
    pub fn sidecar_exited(&mut self) -> Option<String> {
        let status = match self.sidecar.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => status.to_string(),
            _ => return None,
        };
        if !self.sidecar_exit_seen {
            self.sidecar_exit_seen = true;
            let log = std::fs::read_to_string(&self.sidecar_log).unwrap_or_default();
            self.exits.push(ExitRecord {
                process: format!("sidecar {}", self.index),
                status: status.clone(),
                at_ms: super::history::now_ms(),
                explained_by: explain_exit(ProcessKind::Sidecar, self.disk_full, &log),
                log_tail: tail(&log),
            });
        }
        Some(status)
    }

    /// Whether the nats-server exited on its own; returns its status text. The first time it
    /// sees an exit it records it in [`ChaosNode::exits`], with the end of the log and whether
    /// the disk-full fault explains it.
    pub fn nats_exited(&mut self) -> Option<String> {
        let status = match self.nats.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => status.to_string(),
            _ => return None,
        };
        if !self.nats_exit_seen {
            self.nats_exit_seen = true;
            let log = self.nats_log_text();
            let since_fault = log.get(self.disk_full_log_offset..).unwrap_or_default();
            self.exits.push(ExitRecord {
                process: format!("nats-server {}", self.index),
                status: status.clone(),
                at_ms: super::history::now_ms(),
                explained_by: explain_exit(ProcessKind::Nats, self.disk_full, since_fault),
                log_tail: tail(&log),
            });
        }
        Some(status)
    }

    /// Whether a nats-server process was started and not killed by the harness.
    pub fn nats_started(&self) -> bool {
        self.nats.is_some()
    }

    /// Shrinks the node's tmpfs to what it uses, then fills the last bytes: every write fails
    /// with ENOSPC until [`ChaosNode::free_disk`].
    pub fn fill_disk(&mut self) {
        self.disk_full_log_offset = self.nats_log_text().len();
        let used_kb = used_kb(&self.mount);
        let size = format!("remount,size={}k", used_kb + 64);
        run(
            "mount",
            &["-o", &size, "tmpfs", &self.mount.display().to_string()],
        );
        let filler = self.mount.join("filler");
        if let Ok(mut f) = std::fs::File::create(&filler) {
            use std::io::Write;
            let block = vec![0u8; 4096];
            while f.write_all(&block).is_ok() {}
        }
        self.disk_full = true;
    }

    /// Gives the tmpfs its size back and removes the filler. nats-server disables JetStream
    /// when a store write fails ("JetStream out of resources, will be DISABLED"), exits when
    /// it cannot start JetStream, or keeps a stream replica's write error for good ("critical
    /// write error": the replica refuses every later write, and a stream whose leader it is
    /// stalls); in each case only a restart brings it back, an operator's (or supervisor's)
    /// step the harness takes here. Returns whether it restarted the server.
    pub fn free_disk(&mut self) -> bool {
        // Seen (and recorded) while the fault is still in place: the full disk explains it.
        let exited = self.nats_exited().is_some();
        let _ = std::fs::remove_file(self.mount.join("filler"));
        let size = format!("remount,size={}m", self.tmpfs_mb);
        run(
            "mount",
            &["-o", &size, "tmpfs", &self.mount.display().to_string()],
        );
        self.disk_full = false;
        let log = self.nats_log_text().to_lowercase();
        let since = log.get(self.disk_full_log_offset..).unwrap_or_default();
        let disabled = since.contains("jetstream out of resources")
            || since.contains("can't start jetstream")
            || since.contains("critical write error");
        if disabled || exited {
            self.kill_nats();
            self.start_nats();
            return true;
        }
        false
    }

    /// The nats-server's log so far.
    pub fn nats_log_text(&self) -> String {
        std::fs::read_to_string(&self.nats_log).unwrap_or_default()
    }

    fn stop_all(&mut self) {
        self.kill_sidecar();
        self.kill_nats();
    }
}

/// Kilobytes used on the filesystem at `path` (`df`).
fn used_kb(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=used", "-k"])
        .arg(path)
        .output()
        .expect("running df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot read df output for {}", path.display()))
}

impl Cluster {
    /// Creates the network (with one more namespace, the last, for a wasm replica when
    /// `wasm_namespace`), mounts a `tmpfs_mb` tmpfs per node under `root`, writes the schema
    /// and configs, starts every nats-server and sidecar and waits until each sidecar has
    /// installed capture (so no application write goes unrecorded).
    pub fn start(
        root: &Path,
        tag: &str,
        subnet: u8,
        nodes: usize,
        tmpfs_mb: u64,
        wasm_namespace: bool,
    ) -> Cluster {
        let network = Network::create(tag, subnet, nodes + usize::from(wasm_namespace));
        let mut cluster = Cluster {
            nodes: Vec::new(),
            network,
            wasm: None,
        };
        let nats_conf = root.join("nats-websocket.conf");
        std::fs::write(
            &nats_conf,
            format!("websocket {{\n  listen: \"0.0.0.0:{WS_PORT}\"\n  no_tls: true\n}}\n"),
        )
        .unwrap();
        for i in 0..nodes {
            let mount = root.join(format!("node{i}"));
            std::fs::create_dir_all(&mount).unwrap();
            run(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={tmpfs_mb}m"),
                    "tmpfs",
                    &mount.display().to_string(),
                ],
            );
            let db = mount.join("app.db");
            let conn = Connection::open(&db).unwrap();
            conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            drop(conn);
            let config = root.join(format!("node{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "db_path = {db:?}\nnode_id = {id}\npolling_interval = 200\n\n[nats]\nurls = [\"nats://127.0.0.1:4222\"]\nreconnect_wait_seconds = 1\nconnect_timeout_seconds = 2\n\n[replication_log]\nreplicas = {replicas}\n",
                    db = db.display().to_string(),
                    id = i + 1,
                    replicas = nodes.min(3),
                ),
            )
            .unwrap();
            let routes: Vec<String> = (0..nodes)
                .filter(|j| *j != i)
                .map(|j| format!("nats://{}:6222", cluster.network.address(j)))
                .collect();
            cluster.nodes.push(ChaosNode {
                index: i,
                namespace: cluster.network.namespace(i),
                mount,
                db,
                config,
                sidecar_log: root.join(format!("node{i}.sidecar.log")),
                nats_log: root.join(format!("node{i}.nats.log")),
                skew_secs: None,
                paused: false,
                disk_full: false,
                exits: Vec::new(),
                sidecar_exit_seen: false,
                nats_exit_seen: false,
                tmpfs_mb,
                disk_full_log_offset: 0,
                routes: routes.join(","),
                nats_conf: nats_conf.clone(),
                sidecar: None,
                nats: None,
            });
        }
        for node in &mut cluster.nodes {
            node.start_nats();
        }
        for node in &mut cluster.nodes {
            node.start_sidecar();
        }
        for node in &mut cluster.nodes {
            let db = node.db.clone();
            let installed = wait_until(Duration::from_secs(60), || {
                Connection::open(&db)
                    .and_then(|c| {
                        c.query_row("SELECT count(*) FROM __hl_tables", [], |r| {
                            r.get::<_, i64>(0)
                        })
                    })
                    .is_ok_and(|n| n == 2)
            });
            if !installed {
                let log = std::fs::read_to_string(&node.sidecar_log).unwrap_or_default();
                panic!(
                    "sidecar {} did not install capture within 60 s:\n{log}",
                    node.index
                );
            }
        }
        cluster
    }

    /// Looks at every process once more (recording an exit since the last look), then returns
    /// every exit on its own so far, oldest first, and every log as (process, file name,
    /// text): what [`super::incidents::assess`] judges.
    pub fn exits_and_logs(&mut self) -> (Vec<ExitRecord>, Vec<(String, String, String)>) {
        for node in &mut self.nodes {
            node.sidecar_exited();
            node.nats_exited();
        }
        if let Some(wasm) = self.wasm.as_mut() {
            wasm.exited();
        }
        let mut exits: Vec<ExitRecord> = self.nodes.iter().flat_map(|n| n.exits.clone()).collect();
        exits.extend(self.wasm.iter().flat_map(|w| w.exits.clone()));
        exits.sort_by_key(|e| e.at_ms);
        let read = |process: String, path: &Path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                process,
                name,
                std::fs::read_to_string(path).unwrap_or_default(),
            )
        };
        let mut logs = Vec::new();
        for node in &self.nodes {
            logs.push(read(format!("sidecar {}", node.index), &node.sidecar_log));
            logs.push(read(format!("nats-server {}", node.index), &node.nats_log));
        }
        if let Some(wasm) = &self.wasm {
            logs.push(read("the wasm replica".into(), &wasm.log));
        }
        (exits, logs)
    }

    /// Every replica the checker compares: the nodes' database files, then the wasm replica.
    pub fn dbs(&self) -> Vec<Db<'_>> {
        self.nodes
            .iter()
            .map(|n| Db::File(&n.db))
            .chain(self.wasm.as_ref().map(Db::Wasm))
            .collect()
    }

    /// Writes the wasm replica's tables (it has no file) to `wasm-tables.txt` under `root`
    /// (kept on failure).
    pub fn keep_wasm_tables(&self, root: &Path) {
        if let Some(wasm) = &self.wasm {
            let mut out = String::new();
            for table in TABLES {
                let db = Db::Wasm(wasm);
                out.push_str(&format!("{table}: {:#?}\n", db.dump_table(table)));
                out.push_str(&format!(
                    "{table} versions: {:?}\n",
                    db.dump_versions(table)
                ));
            }
            out.push_str(&format!(
                "incarnations (node id, node, skew): {:x?}\n",
                wasm.incarnations
            ));
            let _ = std::fs::write(root.join("wasm-tables.txt"), out);
        }
    }

    /// Copies every node's database files next to the logs under `root` (kept on failure).
    pub fn keep_databases(&self, root: &Path) {
        for node in &self.nodes {
            for suffix in ["", "-wal", "-shm"] {
                let mut from = node.db.as_os_str().to_owned();
                from.push(suffix);
                let to = root.join(format!("node{}.db{suffix}", node.index));
                let _ = std::fs::copy(PathBuf::from(from), to);
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.wasm = None;
        for node in &mut self.nodes {
            node.stop_all();
        }
        for node in &self.nodes {
            let _ = Command::new("umount").arg("-l").arg(&node.mount).status();
        }
    }
}
