//! The wasm replica of a chaos run: the built npm package (`npm/dist`, memory storage) in a
//! node process, driven by `tests/chaos-wasm/replica.mjs` over JSON lines on its stdin and
//! stdout. It lives in a network namespace of its own, bridged like the nodes', and talks NATS
//! over WebSocket to node 0's nats-server. It writes the same kind of random transactions as
//! the native application threads.
//!
//! Node has memory storage only, so a restart is a new replica: a fresh database with a fresh
//! node id that bootstraps from the newest snapshot or replays the stream. Each start is
//! therefore an *incarnation* with a history node index of its own (`nodes`, `nodes + 1`, ...).
//! What survives a `kill -9` is what JetStream acknowledged: the driver reports `flush()`
//! results, commits they cover are recorded as acknowledged, the rest of a killed incarnation
//! as uncertain (either outcome accepted). Every commit of the incarnation still running at
//! the end is acknowledged: a live replica must publish all of them.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harmonylite_core::value::Value;
use serde_json::json;

use super::history::{now_ms, Commit, History, Outcome, RowWrite};
use super::incidents::{explain_exit, tail, ExitRecord, ProcessKind};
use super::workload::SCHEMA;
use crate::stop_child;

/// The WebSocket port every nats-server of a chaos run listens on (inside its namespace).
pub const WS_PORT: u16 = 8080;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

/// The `node` binary (`HL_NODE`, else `PATH`), or a panic saying what is missing.
pub fn node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HL_NODE") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "HL_NODE={} is not a file", path.display());
        return path;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("node"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("node not found on PATH: the chaos run's wasm replica runs the npm package in node (>= 20); install node or pass --no-wasm to the long mode")
        })
}

/// The built npm package's node entry point, or a panic saying how to build it.
pub fn package_entry() -> PathBuf {
    let npm = workspace().join("npm");
    let entry = npm.join("dist/node.js");
    for needed in [
        entry.clone(),
        npm.join("dist/wasm/harmonylite_wasm_bg.wasm"),
        npm.join("node_modules/ws/package.json"),
    ] {
        assert!(
            needed.is_file(),
            "{} is missing: the chaos run's wasm replica needs the built npm package (`cd npm && npm ci && npm run build`; scripts/test builds it before the tests)",
            needed.display()
        );
    }
    entry
}

/// The driver script.
fn driver() -> PathBuf {
    let path = workspace().join("tests/chaos-wasm/replica.mjs");
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// A SQLite value from the driver's tagged JSON (`null`, `{"i"}`, `{"r"}`, `{"s"}`, `{"b"}`).
pub fn decode_value(v: &serde_json::Value) -> Result<Value, String> {
    let tagged = |tag: &str| v.get(tag);
    if v.is_null() {
        Ok(Value::Null)
    } else if let Some(i) = tagged("i").and_then(|i| i.as_str()) {
        i.parse()
            .map(Value::Integer)
            .map_err(|e| format!("integer {i:?}: {e}"))
    } else if let Some(r) = tagged("r").and_then(|r| r.as_f64()) {
        Ok(Value::Real(r))
    } else if let Some(s) = tagged("s").and_then(|s| s.as_str()) {
        Ok(Value::Text(s.to_string()))
    } else if let Some(b) = tagged("b").and_then(|b| b.as_str()) {
        (0..b.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(b.get(i..i + 2).unwrap_or("?"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map(Value::Blob)
            .map_err(|e| format!("blob {b:?}: {e}"))
    } else {
        Err(format!("untagged value {v}"))
    }
}

/// One row of a driver query: columns in order, with their values.
pub type QueryRow = Vec<(String, Value)>;

fn decode_rows(v: &serde_json::Value) -> Result<Vec<QueryRow>, String> {
    v.as_array()
        .ok_or_else(|| format!("rows expected, got {v}"))?
        .iter()
        .map(|row| {
            row.as_array()
                .ok_or_else(|| format!("row expected, got {row}"))?
                .iter()
                .map(|pair| {
                    let name = pair[0].as_str().ok_or("column name")?.to_string();
                    Ok((name, decode_value(&pair[1])?))
                })
                .collect()
        })
        .collect()
}

fn decode_write(w: &serde_json::Value) -> Result<RowWrite, String> {
    let image = match &w["image"] {
        serde_json::Value::Null => None,
        serde_json::Value::Object(m) => Some(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), decode_value(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => return Err(format!("bad image {other}")),
    };
    Ok(RowWrite {
        table: w["table"].as_str().ok_or("table")?.to_string(),
        key: decode_value(&w["key"])?,
        image,
    })
}

/// The `writes` array of an `intent` or `commit` event.
fn decode_writes(event: &serde_json::Value) -> Result<Vec<RowWrite>, String> {
    event["writes"]
        .as_array()
        .ok_or_else(|| "writes".to_string())?
        .iter()
        .map(decode_write)
        .collect()
}

/// What the reader thread shares with the harness.
#[derive(Default)]
struct Shared {
    /// Commits not yet covered by a flush: (driver seq, commit, driver outcome).
    pending: VecDeque<(u64, Commit)>,
    /// A transaction about to commit whose outcome was not reported yet: if the process
    /// dies now, it may or may not have committed (and been published).
    intent: Option<Commit>,
    /// Answers to commands, by id.
    replies: HashMap<u64, Result<serde_json::Value, String>>,
    /// The `ready` event: (node id, the driver's wall clock then, ms).
    ready: Option<(String, i64)>,
    /// The driver's stdout closed.
    eof: bool,
}

/// One running node process.
struct Incarnation {
    index: usize,
    child: Child,
    stdin: Mutex<ChildStdin>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    reader: Option<JoinHandle<()>>,
    next_id: Mutex<u64>,
}

/// Handles the driver's output: commits wait in `pending` until a flush covers them.
fn read_events(
    stdout: impl std::io::Read,
    index: usize,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    history: History,
) {
    let (lock, cvar) = &*shared;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            eprintln!("wasm replica {index}: unexpected output {line:?}");
            continue;
        };
        let mut s = lock.lock().unwrap();
        if let Some(id) = event.get("re").and_then(|id| id.as_u64()) {
            let answer = match event.get("error") {
                Some(e) => Err(e.as_str().unwrap_or("error").to_string()),
                None => Ok(event.get("ok").cloned().unwrap_or_default()),
            };
            s.replies.insert(id, answer);
        } else {
            match event["ev"].as_str() {
                Some("ready") => {
                    s.ready = Some((
                        event["node_id"].as_str().unwrap_or_default().to_string(),
                        event["now_ms"].as_i64().unwrap_or_default(),
                    ));
                }
                Some("intent") => {
                    let writes = decode_writes(&event)
                        .unwrap_or_else(|e| panic!("wasm replica {index}: bad intent {line}: {e}"));
                    let now = now_ms();
                    s.intent = Some(Commit {
                        node: index,
                        begin_ms: now,
                        end_ms: now,
                        writes,
                        outcome: Outcome::Uncertain,
                    });
                }
                Some("commit") => {
                    s.intent = None;
                    let writes = decode_writes(&event)
                        .unwrap_or_else(|e| panic!("wasm replica {index}: bad commit {line}: {e}"));
                    // Wall time as the harness sees it: the driver's clock may be skewed.
                    let end_ms = now_ms();
                    let took = event["end_ms"].as_i64().unwrap_or_default()
                        - event["begin_ms"].as_i64().unwrap_or_default();
                    let outcome = if event["outcome"] == "ok" {
                        Outcome::Acknowledged
                    } else {
                        Outcome::Uncertain
                    };
                    s.pending.push_back((
                        event["seq"].as_u64().unwrap_or_default(),
                        Commit {
                            node: index,
                            begin_ms: end_ms - took.max(0),
                            end_ms,
                            writes,
                            outcome,
                        },
                    ));
                }
                Some("flushed") => {
                    let upto = event["seq"].as_u64().unwrap_or_default();
                    while s.pending.front().is_some_and(|(seq, _)| *seq <= upto) {
                        let (_, commit) = s.pending.pop_front().unwrap();
                        history.commit(commit);
                    }
                }
                Some("failed") => {
                    s.intent = None;
                    history.failed();
                }
                _ => eprintln!("wasm replica {index}: unexpected event {line:?}"),
            }
        }
        cvar.notify_all();
    }
    lock.lock().unwrap().eof = true;
    cvar.notify_all();
}

/// The wasm replica of a run, across its incarnations.
pub struct WasmReplica {
    /// Network namespace its node process runs in.
    pub namespace: String,
    /// Its member index in the run's [`super::netns::Network`] (for partitions).
    pub member: usize,
    /// `ws://` URL of the nats-server it talks to.
    pub server: String,
    /// The driver's stderr (the package's errors, connection changes), all incarnations.
    pub log: PathBuf,
    /// Clock offset of the node process, in seconds, while a skew fault is active.
    pub skew_secs: Option<i64>,
    /// Every incarnation so far: (node id, history node index, skew).
    pub incarnations: Vec<(u128, usize, Option<i64>)>,
    /// Every exit of a node process on its own, recorded when first seen
    /// ([`WasmReplica::exited`]).
    pub exits: Vec<ExitRecord>,
    exit_seen: bool,
    next_index: usize,
    seed: u64,
    replicas: usize,
    history: History,
    workload: bool,
    current: Option<Incarnation>,
}

impl WasmReplica {
    /// Prepares the replica (nothing runs yet): `first_index` is the history node index of its
    /// first incarnation (the number of native nodes).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        namespace: String,
        member: usize,
        server: String,
        log: PathBuf,
        first_index: usize,
        seed: u64,
        replicas: usize,
        history: History,
    ) -> Self {
        // Fail before anything starts when node or the package is missing.
        node_binary();
        package_entry();
        driver();
        WasmReplica {
            namespace,
            member,
            server,
            log,
            skew_secs: None,
            incarnations: Vec::new(),
            exits: Vec::new(),
            exit_seen: false,
            next_index: first_index,
            seed,
            replicas,
            history,
            workload: false,
            current: None,
        }
    }

    /// The history node index of the running incarnation.
    pub fn index(&self) -> Option<usize> {
        self.current.as_ref().map(|c| c.index)
    }

    /// `node <index>` of the running incarnation, for the history.
    pub fn label(&self) -> String {
        match self.index() {
            Some(index) => format!("node {index}"),
            None => "not running".into(),
        }
    }

    /// Whether a node process runs.
    pub fn running(&self) -> bool {
        self.current.is_some()
    }

    /// Starts a new incarnation (under libfaketime when a skew is set), waits until its
    /// replica is open, and starts its workload when the workload phase is on.
    pub fn start(&mut self) {
        assert!(self.current.is_none(), "the wasm replica already runs");
        let index = self.next_index;
        self.next_index += 1;
        let options = json!({
            "server": self.server,
            "node": index,
            "seed": self.seed,
            "replicas": self.replicas,
            "schema": SCHEMA,
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the wasm replica's log");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(node_binary())
            .arg(driver())
            .arg(package_entry())
            .arg(options.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(skew) = self.skew_secs {
            command
                .env("LD_PRELOAD", super::cluster::libfaketime())
                .env("FAKETIME", format!("{skew:+}"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        let mut child = command
            .spawn()
            .expect("starting node for the wasm replica in its namespace");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let reader = {
            let shared = shared.clone();
            let history = self.history.clone();
            std::thread::Builder::new()
                .name(format!("wasm-{index}"))
                .spawn(move || read_events(stdout, index, shared, history))
                .expect("spawning the wasm replica's reader")
        };
        let incarnation = Incarnation {
            index,
            child,
            stdin: Mutex::new(stdin),
            shared,
            reader: Some(reader),
            next_id: Mutex::new(0),
        };
        let (lock, cvar) = &*incarnation.shared;
        let started = Instant::now();
        let guard = cvar
            .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(60), |s| {
                s.ready.is_none() && !s.eof
            })
            .unwrap()
            .0;
        let ready = guard.ready.clone();
        drop(guard);
        let log_tail = || {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            text[text.len().saturating_sub(3000)..].to_string()
        };
        let Some((node_id, driver_ms)) = ready else {
            panic!(
                "the wasm replica (node {index}) did not open within {:?}:\n{}",
                started.elapsed(),
                log_tail()
            );
        };
        // The skew must be what the replica's HLC sees, or the fault tests nothing.
        let offset_ms = driver_ms - now_ms();
        let expected_ms = self.skew_secs.unwrap_or(0) * 1000;
        assert!(
            (offset_ms - expected_ms).abs() < 5_000,
            "the wasm replica's clock is {offset_ms} ms off the host's, expected {expected_ms} ms (libfaketime under node?)"
        );
        let id = u128::from_str_radix(&node_id, 16)
            .unwrap_or_else(|e| panic!("the wasm replica's node id {node_id:?}: {e}"));
        self.incarnations.push((id, index, self.skew_secs));
        self.history.fault(format!(
            "wasm replica started as node {index} (node id {node_id}, clock {:+} s)",
            self.skew_secs.unwrap_or(0)
        ));
        self.current = Some(incarnation);
        self.exit_seen = false;
        if self.workload {
            self.request(json!({ "op": "start" }), Duration::from_secs(30))
                .expect("starting the wasm replica's workload");
        }
    }

    /// Sends one command and waits for its answer.
    pub fn request(
        &self,
        mut command: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let current = self
            .current
            .as_ref()
            .ok_or("the wasm replica is not running")?;
        let id = {
            let mut next = current.next_id.lock().unwrap();
            *next += 1;
            *next
        };
        command["id"] = id.into();
        {
            let mut stdin = current.stdin.lock().unwrap();
            writeln!(stdin, "{command}")
                .and_then(|_| stdin.flush())
                .map_err(|e| format!("writing to the wasm replica: {e}"))?;
        }
        let (lock, cvar) = &*current.shared;
        let mut s = cvar
            .wait_timeout_while(lock.lock().unwrap(), timeout, |s| {
                !s.replies.contains_key(&id) && !s.eof
            })
            .unwrap()
            .0;
        match s.replies.remove(&id) {
            Some(answer) => answer,
            None if s.eof => Err("the wasm replica exited".into()),
            None => Err(format!(
                "the wasm replica did not answer within {timeout:?}"
            )),
        }
    }

    /// Rows of `sql` on the replica's database.
    pub fn query(&self, sql: &str, params: &[&str]) -> Result<Vec<QueryRow>, String> {
        let answer = self.request(
            json!({ "op": "query", "sql": sql, "params": params }),
            Duration::from_secs(30),
        )?;
        decode_rows(&answer)
    }

    /// Writes the warm-up row `key` (recorded like any commit).
    pub fn insert(&self, key: &str) -> Result<(), String> {
        self.request(
            json!({ "op": "insert", "key": key }),
            Duration::from_secs(30),
        )
        .map(|_| ())
    }

    /// Starts the random workload (now, and in every later incarnation).
    pub fn start_workload(&mut self) {
        self.workload = true;
        if self.current.is_some() {
            self.request(json!({ "op": "start" }), Duration::from_secs(30))
                .expect("starting the wasm replica's workload");
        }
    }

    /// Stops the workload after the transaction in progress.
    pub fn stop_workload(&mut self) {
        self.workload = false;
        if self.current.is_some() {
            if let Err(e) = self.request(json!({ "op": "stop" }), Duration::from_secs(30)) {
                self.history
                    .fault(format!("stopping the wasm replica's workload: {e}"));
            }
        }
    }

    /// Whether the node process exited on its own; returns its status text. The first time it
    /// sees an exit it records it in [`WasmReplica::exits`], with the end of the log.
    pub fn exited(&mut self) -> Option<String> {
        let status = match self.current.as_mut().map(|c| c.child.try_wait()) {
            Some(Ok(Some(status))) => status.to_string(),
            _ => return None,
        };
        if !self.exit_seen {
            self.exit_seen = true;
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            self.exits.push(ExitRecord {
                process: format!("wasm replica ({})", self.label()),
                status: status.clone(),
                at_ms: now_ms(),
                explained_by: explain_exit(ProcessKind::Wasm, false, &log),
                log_tail: tail(&log),
            });
        }
        Some(status)
    }

    /// Kills the node process with SIGKILL: its commits no flush covered become uncertain
    /// (a memory replica loses what JetStream had not acknowledged). Returns how many.
    pub fn kill(&mut self) -> usize {
        // A heal that restarts it must not hide an exit on its own: look first.
        self.exited();
        match self.current.take() {
            Some(current) => self.end(current),
            None => 0,
        }
    }

    /// At the end of a run (workload stopped, nodes converged): every commit of the running
    /// incarnation is acknowledged, flushed or not — a live replica must publish them all.
    pub fn finish(&mut self) {
        if let Some(current) = &self.current {
            let pending = std::mem::take(&mut current.shared.0.lock().unwrap().pending);
            for (_, commit) in pending {
                self.history.commit(commit);
            }
        }
    }

    fn end(&mut self, mut current: Incarnation) -> usize {
        stop_child(&mut current.child, true);
        if let Some(reader) = current.reader.take() {
            let _ = reader.join();
        }
        let (pending, intent) = {
            let mut shared = current.shared.0.lock().unwrap();
            (std::mem::take(&mut shared.pending), shared.intent.take())
        };
        let uncertain = pending.len() + usize::from(intent.is_some());
        for (_, mut commit) in pending {
            commit.outcome = Outcome::Uncertain;
            self.history.commit(commit);
        }
        // Killed between COMMIT and its report: the writes may be in the stream.
        if let Some(commit) = intent {
            self.history.commit(commit);
        }
        uncertain
    }
}

impl Drop for WasmReplica {
    fn drop(&mut self) {
        if let Some(mut current) = self.current.take() {
            stop_child(&mut current.child, true);
        }
    }
}
