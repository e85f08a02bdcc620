// The wasm replica of a chaos run: the built npm package (memory storage) in node, connected
// over WebSocket to one node's nats-server, writing the same kind of random transactions as
// the native application threads (tests/src/chaos/workload.rs). Driven by the harness
// (tests/src/chaos/wasm.rs) over JSON lines:
//
//   stdin  (commands)  {"id": 1, "op": "start" | "stop" | "insert" | "query" | "flush", ...}
//   stdout (events)    {"ev": "ready", "node_id", "now_ms"}     once the replica is open
//                      {"ev": "intent", "seq", "writes"}        about to COMMIT these writes
//                      {"ev": "commit", "seq", "begin_ms", "end_ms", "outcome", "writes"}
//                      {"ev": "failed", "error"}                 a transaction rolled back
//                      {"ev": "flushed", "seq"}                  commits 1..=seq are in JetStream
//                      {"re": id, "ok": ..., "error": ...}       the answer to command `id`
//
// Everything else (the package's errors, diagnostics) goes to stderr. Values are tagged so
// the harness gets SQLite's types back: null, {"i": "<integer>"}, {"r": <real>},
// {"s": "<text>"}, {"b": "<hex>"}. The process exits when stdin closes.
//
// usage: node replica.mjs <package entry (npm/dist/node.js)> <json options>
//   options: { server, node, seed, replicas, schema }

import { pathToFileURL } from "node:url";
import { createInterface } from "node:readline";

const [entry, optionsJson] = process.argv.slice(2);
if (!entry || !optionsJson) {
  process.stderr.write("usage: node replica.mjs <npm/dist/node.js> <json options>\n");
  process.exit(2);
}
const options = JSON.parse(optionsJson);
const { open } = await import(pathToFileURL(entry).href);

// Calls into the replica one at a time. The package serialises calls made while a transaction
// is open, but two transaction() calls made in the same turn of the event loop with none open
// both start one, and the second fails with "a transaction is already open".
let chain = Promise.resolve();
function locked(fn) {
  const run = chain.then(fn);
  chain = run.then(
    () => undefined,
    () => undefined,
  );
  return run;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const send = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const log = (...parts) => process.stderr.write(`${new Date().toISOString()} ${parts.join(" ")}\n`);

function enc(v) {
  if (v === null || v === undefined) {
    return null;
  }
  if (typeof v === "bigint") {
    return { i: v.toString() };
  }
  if (typeof v === "number") {
    return Number.isInteger(v) ? { i: String(v) } : { r: v };
  }
  if (typeof v === "string") {
    return { s: v };
  }
  if (v instanceof Uint8Array) {
    return { b: Buffer.from(v).toString("hex") };
  }
  throw new Error(`unexpected value ${String(v)}`);
}

const encRow = (row) => Object.fromEntries(Object.entries(row).map(([k, v]) => [k, enc(v)]));

// A small seeded generator (mulberry32): the choices are the seed's, timings are not.
let state = (Number(BigInt.asUintN(32, BigInt(options.seed))) ^ Math.imul(options.node + 1, 0x9e3779b9)) >>> 0;
function below(n) {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return (((t ^ (t >>> 14)) >>> 0) % n);
}

const db = await open({
  name: "chaos.db",
  servers: [options.server],
  reconnectMinMs: 100,
  reconnectMaxMs: 1000,
  streamReplicas: options.replicas,
});
db.on("error", (e) => log(`replica error: ${e?.name}: ${e?.message}`));
let lastOnline = null;
let caughtUp = null;
db.on("status", (s) => {
  const upToDate = s.online && s.lag === 0 && s.outboxFrames === 0;
  if (s.online !== lastOnline || upToDate !== caughtUp) {
    lastOnline = s.online;
    caughtUp = upToDate;
    log(`online=${s.online} outboxRows=${s.outboxRows} cursor=${s.cursor} lag=${s.lag}${upToDate ? " (up to date)" : ""}`);
  }
});
await db.exec(options.schema);
const nodeId = (await db.status()).nodeId;
log(`open: node ${options.node}, node id ${nodeId}, server ${options.server}`);

// ---- the workload -----------------------------------------------------------------------

const HOT_ROWS = 5;
let seq = 0; // commits reported so far
let counter = 0;

async function itemImage(tx, id) {
  const rows = await tx.query("SELECT id, owner, val, note FROM items WHERE id = ?", [id]);
  return rows.length === 0 ? null : encRow(rows[0]);
}

async function randomItem(tx) {
  const [{ n }] = await tx.query("SELECT count(*) AS n FROM items");
  if (n === 0) {
    return null;
  }
  const rows = await tx.query("SELECT id FROM items ORDER BY id LIMIT 1 OFFSET ?", [below(n)]);
  return rows.length === 0 ? null : rows[0].id;
}

// The last image of each row a transaction wrote, in write order (as workload.rs records).
function record(writes, table, key, image) {
  const i = writes.findIndex((w) => w.table === table && JSON.stringify(w.key) === JSON.stringify(key));
  if (i >= 0) {
    writes.splice(i, 1);
  }
  writes.push({ table, key, image });
}

async function oneWrite(tx, writes) {
  counter += 1;
  const tag = `n${options.node}-${counter}`;
  const roll = below(100);
  if (roll < 30) {
    await tx.exec("INSERT INTO items(id, owner, val, note) VALUES (?, ?, ?, ?)", [tag, `n${options.node}`, below(1000), tag]);
    record(writes, "items", enc(tag), await itemImage(tx, tag));
  } else if (roll < 50) {
    const id = await randomItem(tx);
    if (id !== null) {
      await tx.exec("UPDATE items SET val = ?, note = ? WHERE id = ?", [below(1000), tag, id]);
      record(writes, "items", enc(id), await itemImage(tx, id));
    }
  } else if (roll < 60) {
    const id = await randomItem(tx);
    if (id !== null) {
      await tx.exec("DELETE FROM items WHERE id = ?", [id]);
      record(writes, "items", enc(id), null);
    }
  } else if (roll < 70) {
    const id = await randomItem(tx);
    if (id !== null) {
      await tx.exec("UPDATE items SET id = ? WHERE id = ?", [tag, id]);
      record(writes, "items", enc(id), null);
      record(writes, "items", enc(tag), await itemImage(tx, tag));
    }
  } else {
    const id = below(HOT_ROWS);
    await tx.exec(
      "INSERT INTO hot(id, val, n) VALUES (?, ?, 1) ON CONFLICT(id) DO UPDATE SET val = excluded.val, n = n + 1",
      [id, tag],
    );
    const [row] = await tx.query("SELECT id, val, n FROM hot WHERE id = ?", [id]);
    record(writes, "hot", enc(id), encRow(row));
  }
}

/** Runs `body(tx, writes)` as one transaction and reports it. */
async function transaction(body) {
  const begin = Date.now();
  const writes = [];
  let bodyDone = false;
  let outcome = "ok";
  try {
    await locked(() =>
      db.transaction(async (tx) => {
        await body(tx, writes);
        bodyDone = true;
        // Said before COMMIT (stdout is a pipe: synchronous on Linux), so a kill -9 between
        // the commit and its report leaves the harness knowing the writes may be published.
        send({ ev: "intent", seq: seq + 1, writes });
      }),
    );
  } catch (e) {
    if (!bodyDone) {
      send({ ev: "failed", error: String(e?.message ?? e) });
      return;
    }
    // COMMIT itself failed: SQLite rolled back, but the outcome counts as uncertain.
    outcome = "uncertain";
  }
  seq += 1;
  send({ ev: "commit", seq, begin_ms: begin, end_ms: Date.now(), outcome, writes });
}

let running = null;
let stopping = false;

async function workload() {
  while (!stopping) {
    await transaction(async (tx, writes) => {
      const ops = 1 + below(3);
      for (let i = 0; i < ops; i++) {
        await oneWrite(tx, writes);
      }
    });
    await sleep(5 + below(25));
  }
}

// flush() under the lock until it has captured the committed writes (its synchronous part runs
// before the next timer), then waits for JetStream without holding the lock.
async function flush(timeoutMs) {
  const { upTo, done } = await locked(async () => {
    const upTo = seq;
    const done = db.flush({ timeoutMs });
    done.catch(() => undefined);
    await sleep(0);
    return { upTo, done };
  });
  await done;
  send({ ev: "flushed", seq: upTo });
  return upTo;
}

// Reports which commits JetStream has acknowledged: a commit is durable for a memory replica
// only once flush() covered it (a kill -9 loses the rest).
async function flushLoop() {
  for (;;) {
    try {
      await flush(2000);
      await sleep(200);
    } catch (e) {
      if (e?.name !== "TimeoutError") {
        log(`flush: ${e?.name}: ${e?.message}`);
        await sleep(200);
      }
    }
  }
}
flushLoop();

// ---- commands ---------------------------------------------------------------------------

async function handle(cmd) {
  switch (cmd.op) {
    case "start":
      if (!running) {
        stopping = false;
        running = workload();
      }
      return true;
    case "stop":
      stopping = true;
      if (running) {
        await running;
        running = null;
      }
      return seq;
    case "insert":
      await transaction(async (tx, writes) => {
        await tx.exec("INSERT INTO items(id, owner, val, note) VALUES (?, ?, 0, 'warm-up')", [cmd.key, `n${options.node}`]);
        record(writes, "items", enc(cmd.key), await itemImage(tx, cmd.key));
      });
      return seq;
    case "query": {
      const rows = await locked(() => db.query(cmd.sql, cmd.params ?? []));
      return rows.map((row) => Object.entries(row).map(([k, v]) => [k, enc(v)]));
    }
    case "flush":
      return await flush(cmd.timeout_ms ?? 10_000);
    case "status":
      return await db.status();
    default:
      throw new Error(`unknown op ${JSON.stringify(cmd.op)}`);
  }
}

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (line.trim() === "") {
    return;
  }
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    log(`bad command ${line}: ${e}`);
    return;
  }
  handle(cmd).then(
    (ok) => send({ re: cmd.id, ok }),
    (e) => send({ re: cmd.id, error: `${e?.name ?? "Error"}: ${e?.message ?? e}` }),
  );
});
// The harness went away: stop at once (nothing here is durable beyond what flush reported).
lines.on("close", () => process.exit(0));

send({ ev: "ready", node_id: nodeId, now_ms: Date.now() });
