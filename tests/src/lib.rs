//! Harness for the integration tests: real `harmonylite` sidecar processes and real
//! `nats-server`s on loopback, each test in its own temp directory on its own ports.
//!
//! Everything a test starts is stopped when its handle drops. A missing `nats-server` or a
//! sidecar that cannot be built fails the test loudly; nothing is skipped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harmonylite_core::value::Value;
use rusqlite::Connection;

pub mod chaos;
pub mod moto;

/// Builds the sidecar binary once per test process (a no-op when it is current) and returns
/// its path: the debug build, or the release build when `HL_SIDECAR_PROFILE=release`.
pub fn sidecar_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace root");
            let release = std::env::var("HL_SIDECAR_PROFILE").is_ok_and(|p| p == "release");
            let mut build = nested_cargo();
            build.args(["build", "-q", "-p", "harmonylite", "--bin", "harmonylite"]);
            if release {
                build.arg("--release");
            }
            let status = build
                .current_dir(workspace)
                .status()
                .expect("running cargo build for the sidecar");
            assert!(status.success(), "building the harmonylite sidecar failed");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join("target"));
            let binary = target
                .join(if release { "release" } else { "debug" })
                .join("harmonylite");
            assert!(
                binary.is_file(),
                "sidecar binary missing at {}",
                binary.display()
            );
            binary
        })
        .clone()
}

/// A `cargo` command for a build nested in a test or bench run. Cargo runs tests and
/// benches with the package's `CARGO_MANIFEST_DIR`, `CARGO_PKG_*` and so on set; build
/// scripts that watch one of those (ring watches `CARGO_MANIFEST_DIR`) would see it change
/// between the nested build and the outer `cargo test`/`cargo bench`, and the two would
/// rebuild each other's dependencies every time (2+ minutes per bench suite). The command
/// runs without them.
pub fn nested_cargo() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_the_target) {
            command.env_remove(name);
        }
    }
    command
}

/// Whether cargo sets `name` for the target it runs (not for itself): see
/// <https://doc.rust-lang.org/cargo/reference/environment-variables.html>.
fn set_by_cargo_for_the_target(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

/// The `nats-server` binary (PATH, or the repository's `.tools/`), or a panic saying how to
/// install it.
pub fn nats_server_binary() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let local = workspace.join(".tools/nats/bin/nats-server");
    if local.is_file() {
        return local;
    }
    harmonylite::nats::server::find_binary(None)
        .unwrap_or_else(|e| panic!("{e}\n(scripts/test installs it)"))
}

/// A TCP port that was free a moment ago on 127.0.0.1, for a server a test starts later.
///
/// Picked below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by
/// default), never twice in one process. A port from `bind(0)` lies inside that range, where
/// every outgoing connection takes its local port: one of the many connections parallel
/// tests open could take it before the server binds it (a cluster test once waited 60 s for
/// a route port that never listened).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&low| low > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral_low - LOWEST;
    // Test binaries of one run start at different places, so they rarely meet.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOWEST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free TCP port on 127.0.0.1 between {LOWEST} and {ephemeral_low}");
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM (or SIGKILL when `kill`) to a child and reaps it.
pub fn stop_child(child: &mut Child, kill: bool) {
    use nix::sys::signal::{kill as send, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(child.id() as i32);
    let _ = send(
        pid,
        if kill {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        },
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A standalone nats-server with JetStream (the "external NATS" of a deployment).
pub struct ExternalNats {
    /// Client port.
    pub port: u16,
    dir: PathBuf,
    /// Configuration file passed with `-c` (auth, TLS ...), if any.
    config: Option<PathBuf>,
    child: Option<Child>,
}

impl ExternalNats {
    /// Starts a server storing JetStream data under `dir`.
    pub fn start(dir: &Path) -> Self {
        let mut server = ExternalNats {
            port: free_port(),
            dir: dir.to_path_buf(),
            config: None,
            child: None,
        };
        server.restart();
        server
    }

    /// Starts a server like [`ExternalNats::start`] that also reads `conf` (nats-server
    /// configuration text: `authorization`, `tls`, operator mode ...), written to
    /// `dir/nats.conf`. The port, JetStream and its store still come from the command line,
    /// which takes precedence over the file.
    pub fn start_with_config(dir: &Path, conf: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("nats.conf");
        std::fs::write(&config, conf).unwrap();
        let mut server = ExternalNats {
            port: free_port(),
            dir: dir.to_path_buf(),
            config: Some(config),
            child: None,
        };
        server.restart();
        server
    }

    /// `tls://127.0.0.1:<port>`, for a server configured with a `tls` block.
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again (same port and store) after [`ExternalNats::stop`].
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))
            .unwrap();
        let mut command = Command::new(nats_server_binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.join("store"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "nats-server did not listen on {port}"
        );
    }

    /// Stops the server (SIGTERM, reaped).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, false);
        }
    }
}

impl Drop for ExternalNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One sidecar with its database, config and log in a directory of its own.
pub struct Node {
    /// Name used in messages (`node1` ...).
    pub name: String,
    /// The replicated database file.
    pub db: PathBuf,
    /// The sidecar's config file.
    pub config: PathBuf,
    /// Port of the health endpoint.
    pub health_port: u16,
    log: PathBuf,
    child: Option<Child>,
    /// The sidecar runs under `unshare` in a PID namespace of its own.
    namespaced: bool,
}

impl Node {
    /// Prepares a node in `dir`: runs `schema` on a new database and writes a config made of
    /// the common keys plus `extra` TOML (which may add sections).
    pub fn new(dir: &Path, name: &str, schema: &str, extra: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let db = dir.join(format!("{name}.db"));
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        conn.execute_batch(schema).unwrap();
        let health_port = free_port();
        let config = dir.join(format!("{name}.toml"));
        let (top, sections) = split_sections(extra);
        std::fs::write(
            &config,
            format!(
                "db_path = {db:?}\npolling_interval = 200\n{top}\n[health_check]\nenable = true\nbind = \"127.0.0.1:{health_port}\"\n\n[logging]\nverbose = {verbose}\n{sections}\n",
                verbose = std::env::var("HL_SIDECAR_LOG").is_err(),
                db = db.display().to_string(),
            ),
        )
        .unwrap();
        Node {
            name: name.into(),
            db,
            config,
            health_port,
            log: dir.join(format!("{name}.log")),
            child: None,
            namespaced: false,
        }
    }

    /// Prepares a node in `dir` like [`Node::new`], but without a database file: a new
    /// node joining the cluster.
    pub fn without_database(dir: &Path, name: &str, extra: &str) -> Self {
        let node = Node::new(dir, name, "", extra);
        for suffix in ["", "-wal", "-shm"] {
            let mut path = node.db.as_os_str().to_owned();
            path.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(path));
        }
        node
    }

    /// Starts the sidecar process.
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the sidecar process with extra environment variables (e.g. a failpoint).
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let child = self
            .sidecar_command(Command::new(sidecar_binary()))
            .envs(env.iter().copied())
            .spawn()
            .expect("starting the sidecar");
        self.child = Some(child);
    }

    /// Starts the sidecar in a PID namespace of its own (`unshare --pid --fork
    /// --mount-proc`), as in a container beside the application's: it cannot see the
    /// application's processes. SIGTERM to the `unshare` process reaches the sidecar.
    pub fn start_in_own_pid_namespace(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let mut unshare = Command::new("unshare");
        unshare
            .args(["--pid", "--fork", "--kill-child=SIGTERM", "--mount-proc"])
            .arg(sidecar_binary());
        let child = self.sidecar_command(unshare).spawn().expect(
            "unshare (util-linux) must be installed to run a sidecar in its own PID namespace",
        );
        self.child = Some(child);
        self.namespaced = true;
    }

    /// `command` (the sidecar binary, or a wrapper that runs it) with this node's config,
    /// nats-server on `PATH`, `RUST_LOG`, and its output appended to the node's log.
    fn sidecar_command(&self, mut command: Command) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        command
            .arg("--config")
            .arg(&self.config)
            .env("PATH", path_with_nats_server())
            .env(
                "RUST_LOG",
                std::env::var("HL_SIDECAR_LOG").unwrap_or_else(|_| "info,harmonylite=debug".into()),
            )
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        command
    }

    /// The sidecar's own process id (inside a PID namespace: its id as this namespace
    /// sees it), while it runs.
    pub fn sidecar_pid(&self) -> Option<u32> {
        let pid = self.child.as_ref()?.id();
        if !self.namespaced {
            return Some(pid);
        }
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok());
            found.is_some()
        });
        found
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the sidecar process.
    pub fn signal(&self, signal: &str) {
        let pid = self.sidecar_pid().expect("the sidecar runs");
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Runs the sidecar binary once with this node's config and `args` (e.g.
    /// `--save-snapshot`) and extra environment, appending its output to the node's log;
    /// returns whether it succeeded. Gives up (kills it) after `timeout`.
    pub fn run_command(&self, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> bool {
        let mut child = self.spawn_command(args, env);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() >= deadline {
                stop_child(&mut child, true);
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the sidecar binary with this node's config and `args`, logging to the node's
    /// log; the caller waits for or kills it.
    pub fn spawn_command(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        self.sidecar_command(Command::new(sidecar_binary()))
            .args(args)
            .envs(env.iter().copied())
            .spawn()
            .expect("starting the sidecar binary")
    }

    /// Waits until the node's log contains `needle`; panics with the log otherwise.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let ok = wait_until(timeout, || {
            std::fs::read_to_string(&self.log).is_ok_and(|log| log.contains(needle))
        });
        assert!(
            ok,
            "{} never logged {needle:?} within {timeout:?}:\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// The whole log of this node so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the health endpoint answers 200, or panics with the log.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let ok = wait_until(timeout, || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{} exited with {status} while starting:\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
            }
            self.health().map(|(code, _)| code == 200).unwrap_or(false)
        });
        assert!(
            ok,
            "{} not healthy after {timeout:?}:\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// `GET /health`: status code and JSON body.
    pub fn health(&self) -> Option<(u16, serde_json::Value)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.health_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split("\r\n\r\n").nth(1)?;
        Some((code, serde_json::from_str(body).ok()?))
    }

    /// Stops the sidecar cleanly (SIGTERM).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, false);
        }
    }

    /// Kills the sidecar without warning (SIGKILL).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, true);
        }
    }

    /// The sidecar's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the sidecar process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// A new application connection (WAL, 5 s busy timeout), as an unchanged app would use.
    pub fn app(&self) -> Connection {
        let conn = Connection::open(&self.db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    /// The last 60 lines of the sidecar's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An application as its own process: a Python `sqlite3` program that holds one connection
/// open on a database and inserts a row into `items(id, origin, body)` every `interval`,
/// printing each id after its commit returned (an acknowledged write).
pub struct App {
    child: Child,
    acked: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

const APP_SCRIPT: &str = r#"
import signal, sqlite3, sys, time
db, first, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
conn = sqlite3.connect(db, timeout=30, isolation_level=None)
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
i = first
while not stop:
    try:
        conn.execute("INSERT INTO items(id, origin, body) VALUES (?, 'app', x'00')", (i,))
        print(i, flush=True)
        i += 1
    except sqlite3.Error as e:
        print(f"app write {i} failed: {e}", file=sys.stderr, flush=True)
    time.sleep(interval)
conn.close()
"#;

impl App {
    /// Starts the application writing to `db` with ids from `first_id`.
    pub fn start(db: &Path, first_id: i64, interval: Duration) -> Self {
        let mut child = Command::new("python3")
            .args(["-c", APP_SCRIPT])
            .arg(db)
            .arg(first_id.to_string())
            .arg(interval.as_secs_f64().to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed for the application process");
        let stdout = child.stdout.take().unwrap();
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = acked.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(id) = line.trim().parse() {
                    sink.lock().unwrap().push(id);
                }
            }
        });
        App {
            child,
            acked,
            reader: Some(reader),
        }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the application (SIGTERM: it closes its connection) and returns the ids of
    /// every write it got success for.
    pub fn stop(mut self) -> Vec<i64> {
        stop_child(&mut self.child, false);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Splits extra TOML into top-level keys and the sections that follow them.
fn split_sections(extra: &str) -> (String, String) {
    match extra
        .find("\n[")
        .or_else(|| extra.starts_with('[').then_some(0))
    {
        Some(i) => (extra[..i].to_string(), extra[i..].to_string()),
        None => (extra.to_string(), String::new()),
    }
}

/// `PATH` with the directory of the nats-server binary first.
fn path_with_nats_server() -> String {
    let binary = nats_server_binary();
    let dir = binary.parent().unwrap().display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

/// Every row of `table` ordered by its first column, as plain values.
pub fn dump(db: &Path, table: &str) -> Vec<Vec<Value>> {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY 1, 2"))
        .unwrap();
    let width = stmt.column_count();
    stmt.query_map([], |r| (0..width).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Waits until `table` has the same content on every node and `ready` holds for it; panics
/// with each node's content and log otherwise.
pub fn wait_converged(
    nodes: &[&Node],
    table: &str,
    timeout: Duration,
    ready: impl Fn(&[Vec<Value>]) -> bool,
) -> Vec<Vec<Value>> {
    let mut last = Vec::new();
    let ok = wait_until(timeout, || {
        last = nodes.iter().map(|n| dump(&n.db, table)).collect();
        last.windows(2).all(|w| w[0] == w[1]) && ready(&last[0])
    });
    if !ok {
        let mut report = String::new();
        for (node, rows) in nodes.iter().zip(&last) {
            report.push_str(&format!(
                "\n--- {} ({} rows): {:?}\n{}\n",
                node.name,
                rows.len(),
                rows.iter().take(5).collect::<Vec<_>>(),
                node.log_tail()
            ));
        }
        panic!("{table} did not converge within {timeout:?}:{report}");
    }
    last.remove(0)
}

/// Ports for an n-node embedded cluster: client and route port of each node.
pub fn cluster_ports(n: usize) -> Vec<(u16, u16)> {
    (0..n).map(|_| (free_port(), free_port())).collect()
}

/// `GET path` on 127.0.0.1:`port`: status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

/// The TOML that makes node `i` of an embedded cluster route to the others.
pub fn embedded_cluster_toml(ports: &[(u16, u16)], i: usize, node_id: u64) -> String {
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, (_, route))| format!("\"nats://127.0.0.1:{route}\""))
        .collect();
    format!(
        "node_id = {node_id}\n[replication_log]\nreplicas = {replicas}\n[nats]\nbind_address = \"127.0.0.1:{client}\"\ncluster_addr = \"127.0.0.1:{route}\"\ncluster_peers = [{peers}]\n",
        replicas = std::env::var("HL_STREAM_REPLICAS").ok().and_then(|r| r.parse().ok()).unwrap_or(ports.len().min(3)),
        client = ports[i].0,
        route = ports[i].1,
        peers = peers.join(", ")
    )
}

/// The scope rules of the scoped tests and benches: `notes` partitioned by `owner_id` (rule
/// `user`, claim `sub`), `tags` shared (the `[scopes]` their sidecars are configured with).
pub fn notes_scope_rules() -> harmonylite_core::scope::ScopeRules {
    harmonylite_core::scope::ScopeRules::new(
        vec![harmonylite_core::scope::PartitionRule {
            name: "user".into(),
            claims: vec!["sub".into()],
            tables: [("notes".to_owned(), vec!["owner_id".to_owned()])].into(),
        }],
        ["tags".to_owned()],
        [],
    )
    .unwrap()
}

/// The TOML that points a node at an external server.
pub fn external_toml(url: &str, node_id: u64) -> String {
    format!("node_id = {node_id}\n[nats]\nurls = [\"{url}\"]\n")
}

/// Builds a replicated database of about `mib` MiB at `path` for the snapshot benchmarks:
/// rows of 1 KiB blobs with their version rows, capture installed for `node`, a cursor set;
/// closed with the WAL checkpointed.
pub fn build_replicated_database(path: &Path, mib: usize, node: harmonylite_core::hlc::NodeId) {
    use harmonylite_core::sqlite::{meta, Store, StoreOptions};
    let rows = mib * 1024 * 1024 / 1400;
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;
         CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, body BLOB);",
    )
    .unwrap();
    let batch = 50_000;
    let mut done = 0;
    while done < rows {
        let n = batch.min(rows - done);
        conn.execute(
            "WITH RECURSIVE r(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM r WHERE i < ?2)
             INSERT INTO items SELECT i, hex(randomblob(8)), randomblob(1000) FROM r",
            [done as i64 + 1, (done + n) as i64],
        )
        .unwrap();
        done += n;
    }
    let store = Store::open(conn, StoreOptions::new(node)).unwrap();
    let conn = store.connection();
    conn.execute_batch(
        "INSERT INTO __hl_v1 SELECT id, randomblob(24), 0 FROM items; PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
    meta::set(conn, meta::keys::CURSOR, 123_456i64).unwrap();
}
