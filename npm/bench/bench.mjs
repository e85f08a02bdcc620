#!/usr/bin/env node
// Prints the figures of the wasm replica and each target's verdict (MET / MISSED, on the
// median); asserts only that every row arrived.
//
//   npm run bench                 (after npm run build)
//   ROWS=20000 npm run bench      smaller run
//   node bench/bench.mjs --quick --json FILE   (what scripts/bench runs: RUNS runs, default 5
//                                 with --json, else 1; --quick = ROWS 5000; figures to FILE)
//
// 1. wasm size, raw and gzip (the shipped, wasm-opt'ed module).
// 2. apply rate in node: one wasm replica captures ROWS rows (batches of 1,000 rows), a
//    second one applies the frames as stream messages (no network): rows/s of apply alone.
// 3. end-to-end apply over NATS WebSocket: a sidecar's application (a separate Python
//    process, 1,000-row transactions) writes ROWS rows while the replica runs; the time runs
//    from the app's first BEGIN until the replica shows the last row (checked on every
//    remote-change notification), and the lag from the app's last COMMIT to that moment.
//    The replica must then hold exactly ROWS rows, or the bench fails.
// 4. offline catch-up: a replica cut off from NATS writes ROWS rows locally (transactions of
//    1,000); time from reconnect until JetStream acknowledged all of them (flush()) and until
//    the sidecar holds them all (converged).

import { spawn } from "node:child_process";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";

import { NatsServer, Sidecar, CutProxy, cleanup, harmonylite, npmDir, tempDir, waitFor } from "../test/helpers.mjs";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const jsonAt = args.indexOf("--json");
const jsonFile = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
if (jsonAt >= 0 && !jsonFile) throw new Error("--json needs a file name");
const ROWS = Number(process.env.ROWS ?? (quick ? 5_000 : 100_000));
const RUNS = Number(process.env.RUNS ?? (jsonFile ? 5 : 1));
// Every run's value of each figure: metric -> { unit, values, target }. A target is
// { at_most: v } or { at_least: v }, judged on the median of the runs.
const figures = new Map();
function record(metric, unit, value, target) {
  if (!figures.has(metric)) figures.set(metric, { unit, values: [], target });
  figures.get(metric).values.push(value);
}
const atMost = (v) => ({ at_most: v });
const atLeast = (v) => ({ at_least: v });
function verdict(target, value) {
  if (target.at_most !== undefined) return value <= target.at_most ? "MET" : "MISSED";
  return value >= target.at_least ? "MET" : "MISSED";
}
function targetText(target) {
  return target.at_most !== undefined ? `<= ${target.at_most}` : `>= ${target.at_least}`;
}
let run = 0;
const SCHEMA = "CREATE TABLE items(id INTEGER PRIMARY KEY, val TEXT NOT NULL, n INTEGER)";

function line(label, value) {
  console.log(`${label.padEnd(58)} ${value}`);
}

async function sizes() {
  const wasm = join(npmDir, "dist", "wasm", "harmonylite_wasm_bg.wasm");
  const raw = statSync(wasm).size;
  const gz = gzipSync(readFileSync(wasm), { level: 9 }).length;
  line("wasm size raw (target <= 1.5 MB)", `${(raw / 1e6).toFixed(3)} MB (${raw} bytes)`);
  record("wasm replica size, raw", "bytes", raw, atMost(1_500_000));
  record("wasm replica size, gzip -9", "bytes", gz, atMost(600_000));
  line("wasm size gzip -9 (target <= 600 KB)", `${(gz / 1e3).toFixed(1)} KB (${gz} bytes)`);
}

async function applyRate() {
  await harmonylite();
  const wasm = await import(join(npmDir, "dist", "wasm", "harmonylite_wasm.js"));
  wasm.initSync({ module: readFileSync(join(npmDir, "dist", "wasm", "harmonylite_wasm_bg.wasm")) });
  const random = () => globalThis.crypto.getRandomValues(new Uint8Array(24));
  const now = () => [performance.now(), Date.now()];
  const writer = await wasm.openReplica({ name: `bench-writer-${run}.db`, random: random(), replicate: false });
  const reader = await wasm.openReplica({ name: `bench-reader-${run}.db`, random: random() });
  for (const r of [writer, reader]) {
    r.exec(SCHEMA, undefined, ...now());
    r.pollOutputs();
  }
  // Inputs as host-wasm's handleInputs takes them: kinds, nums, pending counts, payloads.
  const none = Float64Array.of(0);
  writer.handleInputs(...now(), Uint8Array.of(4), Float64Array.of(1 << 20), none, []);
  const frames = [];
  const take = () => {
    for (const o of writer.pollOutputs()) {
      if (o.type === "publish") {
        frames.push(o.frame);
        writer.handleInputs(...now(), Uint8Array.of(2), Float64Array.of(o.id), none, []);
      }
    }
  };
  const captureStart = performance.now();
  for (let i = 0; i < ROWS; i += 1000) {
    writer.exec("BEGIN", undefined, ...now());
    for (let j = i; j < Math.min(ROWS, i + 1000); j++) {
      writer.exec("INSERT INTO items(id, val, n) VALUES (?, ?, ?)", [j, `value-${j}`, j * 7], ...now());
    }
    writer.exec("COMMIT", undefined, ...now());
    writer.handleInputs(...now(), Uint8Array.of(0), none, none, []);
    take();
  }
  const captureMs = performance.now() - captureStart;
  line(`local writes + capture in wasm (${ROWS} rows, 1k/tx)`, `${Math.round(ROWS / (captureMs / 1000))} rows/s`);
  record(`wasm replica: local writes + capture + drain (${ROWS} rows, 1000-row tx)`, "rows/s", ROWS / (captureMs / 1000));

  // The reader's session consumes once connected (it asks for the stream's state), told the
  // stream's state (it asks for a consumer) and the consumer runs.
  const stream = { firstSeq: 1, lastSeq: frames.length, createdNs: BigInt(Date.now()) * 1_000_000n };
  reader.handleInputs(...now(), Uint8Array.of(4), Float64Array.of(1 << 20), none, []);
  reader.handleInputs(...now(), Uint8Array.of(7, 9), new Float64Array(2), new Float64Array(2), [stream]);
  if (!reader.wantsMessages()) throw new Error(`the reader does not consume: ${JSON.stringify(reader.status())}`);
  reader.pollOutputs();
  const applyStart = performance.now();
  const kinds = new Uint8Array(frames.length).fill(1);
  const seqs = Float64Array.from(frames, (_, i) => i + 1);
  const pending = Float64Array.from(frames, (_, i) => frames.length - i - 1);
  // Feed as the host does: up to 1,024 messages per call.
  for (let i = 0; i < frames.length; i += 1024) {
    reader.handleInputs(...now(), kinds.subarray(i, i + 1024), seqs.subarray(i, i + 1024), pending.subarray(i, i + 1024), frames.slice(i, i + 1024));
    reader.pollOutputs();
  }
  const applyMs = performance.now() - applyStart;
  const count = reader.query("SELECT count(*) AS c FROM items", undefined)[0].c;
  line(`apply rate of the wasm replica in node (${count} rows, ${frames.length} messages; target >= 40k)`, `${Math.round(count / (applyMs / 1000))} rows/s`);
  if (count !== ROWS) throw new Error(`the reader applied ${count} rows, expected ${ROWS}`);
  record(`wasm replica: apply rate in node (${ROWS} rows, 1000-row batches)`, "rows/s", count / (applyMs / 1000), atLeast(40_000));
  writer.close();
  reader.close();
}

/** Wall-clock time in ms (epoch), sub-millisecond, comparable with Python's time.time(). */
const wallMs = () => performance.timeOrigin + performance.now();

/**
 * Resolves with the wall-clock time (ms) at which the replica first held `rows` rows
 * (`count()`), checked after every remote-change notification and every 200 ms besides;
 * rejects with the count it reached after `timeoutMs`.
 */
function whenReplicaHolds(db, count, rows, timeoutMs) {
  return new Promise((resolve, reject) => {
    let done = false;
    let checking = false;
    let again = false;
    const finish = (fn, value) => {
      if (done) return;
      done = true;
      unsubscribe();
      clearInterval(poll);
      clearTimeout(deadline);
      fn(value);
    };
    const check = async () => {
      // The moment the notification arrived: the rows were applied before it fired.
      const at = wallMs();
      if (checking) {
        again = true;
        return;
      }
      checking = true;
      try {
        const c = await count();
        if (c >= rows) finish(resolve, at);
      } catch (e) {
        finish(reject, e);
      } finally {
        checking = false;
        if (again && !done) {
          again = false;
          check();
        }
      }
    };
    const unsubscribe = db.subscribe((e) => e.origin === "remote" && check(), { tables: ["items"] });
    // Neither timer keeps node alive if the app's writes fail first.
    const poll = setInterval(check, 200).unref();
    const deadline = setTimeout(async () => {
      let c = "?";
      try {
        c = await count();
      } catch {}
      finish(reject, new Error(`end-to-end: after ${timeoutMs} ms the replica holds ${c} of the app's ${rows} rows`));
    }, timeoutMs).unref();
  });
}

/**
 * The sidecar's application: a Python process writes `ids` into `items` of `dbPath`, `perTx`
 * rows per transaction, without blocking this process (the replica applies meanwhile).
 * Resolves with the wall-clock times (ms) of its first BEGIN and after its last COMMIT.
 */
function appWrite(dbPath, ids, perTx) {
  const script = `
import json, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 30000")
req = json.loads(sys.stdin.read())
rows, per = req["rows"], req["per"]
first = time.time()
for i in range(0, len(rows), per):
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO items(id, val) VALUES (?, ?)", rows[i:i + per])
    conn.execute("COMMIT")
last = time.time()
print(json.dumps({"first_begin": first * 1000, "last_commit": last * 1000}))
`;
  return new Promise((resolve, reject) => {
    const child = spawn("python3", ["-c", script, dbPath], { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code !== 0) return reject(new Error(`the app's writes failed (exit ${code}): ${err}`));
      const t = JSON.parse(out);
      resolve({ firstBegin: t.first_begin, lastCommit: t.last_commit });
    });
    child.stdin.end(JSON.stringify({ rows: ids.map((id) => [id, `native-${id}`]), per: perTx }));
  });
}

async function endToEnd() {
  const dir = tempDir("hl-bench-");
  const nats = await NatsServer.start(join(dir, "nats"));
  const node = await Sidecar.start(join(dir, "node1"), "node1", { natsUrl: nats.url, schema: SCHEMA });
  const proxy = await CutProxy.start(nats.wsPort);
  const { open } = await harmonylite();
  const db = await open({ name: `bench-e2e-${run}.db`, servers: proxy.wsUrl, reconnectMinMs: 100, reconnectMaxMs: 500 });
  await db.exec(SCHEMA);
  await waitFor(async () => (await db.status()).online, { message: "online" });

  // 3. The sidecar's app writes while the replica runs; from the app's first BEGIN to the
  //    last row visible in the replica.
  const ids = Array.from({ length: ROWS }, (_, i) => 1_000_000 + i);
  const countRemote = async () => (await db.query("SELECT count(*) AS c FROM items WHERE id >= 1000000"))[0].c;
  const visible = whenReplicaHolds(db, countRemote, ROWS, 300_000);
  visible.catch(() => {}); // awaited below; not an unhandled rejection if the app fails first
  const app = await appWrite(node.db, ids, 1000);
  const visibleAt = await visible;
  const held = await countRemote();
  if (held !== ROWS) throw new Error(`end-to-end: the replica holds ${held} of the app's ${ROWS} rows`);
  const e2eMs = visibleAt - app.firstBegin;
  const lagMs = visibleAt - app.lastCommit;
  line(
    `end-to-end: app's first write -> last row in the replica (${ROWS} rows)`,
    `${Math.round(ROWS / (e2eMs / 1000))} rows/s (${(e2eMs / 1000).toFixed(3)} s; the app alone wrote at ${Math.round(ROWS / ((app.lastCommit - app.firstBegin) / 1000))} rows/s)`,
  );
  line(`end-to-end: app's last commit -> last row in the replica`, `${(lagMs / 1000).toFixed(3)} s`);
  record(
    `wasm replica: end-to-end apply over NATS WebSocket (${ROWS} rows from a sidecar's app, app's first write -> last row in the replica)`,
    "rows/s",
    ROWS / (e2eMs / 1000),
  );
  record(`wasm replica: end-to-end over NATS WebSocket (${ROWS} rows), app's last commit -> last row in the replica`, "s", lagMs / 1000);
  // The app's own write rate bounds the end-to-end figure: shown beside it.
  record(
    `wasm replica: end-to-end over NATS WebSocket (${ROWS} rows), the sidecar's app alone writing (1000-row tx)`,
    "rows/s",
    ROWS / ((app.lastCommit - app.firstBegin) / 1000),
  );

  // 4. Offline writes, then reconnect.
  await proxy.cut();
  await waitFor(async () => !(await db.status()).online, { message: "offline" });
  const writeStart = performance.now();
  for (let i = 0; i < ROWS; i += 1000) {
    await db.transaction(async (tx) => {
      for (let j = i; j < Math.min(ROWS, i + 1000); j++) {
        await tx.exec("INSERT INTO items(id, val, n) VALUES (?, ?, ?)", [j, `js-${j}`, j]);
      }
    });
  }
  const writeMs = performance.now() - writeStart;
  line(`offline local writes through the API (${ROWS} rows, 1k/tx)`, `${Math.round(ROWS / (writeMs / 1000))} rows/s`);
  record(`wasm replica: offline local writes through the API (${ROWS} rows, 1000-row tx)`, "rows/s", ROWS / (writeMs / 1000));
  const reconnectStart = performance.now();
  await proxy.restore();
  await db.flush({ timeoutMs: 600_000 });
  const flushedMs = performance.now() - reconnectStart;
  await waitFor(() => node.query("SELECT count(*) FROM items")[0][0] === 2 * ROWS, { timeoutMs: 600_000, message: "sidecar convergence" });
  const convergedMs = performance.now() - reconnectStart;
  await db.sync({ timeoutMs: 600_000 });
  line(`offline replica with ${ROWS} writes: reconnect -> all acked (flush)`, `${(flushedMs / 1000).toFixed(2)} s`);
  line(`offline replica with ${ROWS} writes: reconnect -> converged (target <= 10 s)`, `${(convergedMs / 1000).toFixed(2)} s`);
  record(`wasm replica offline for ${ROWS} writes: reconnect -> all acked`, "s", flushedMs / 1000);
  record(`wasm replica offline for ${ROWS} writes: reconnect -> converged on the sidecar`, "s", convergedMs / 1000, atMost(10));
  await db.close({ flushTimeoutMs: 0 });
}

function stats(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return { min: s[0], median: s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2, max: s[s.length - 1] };
}

/** Each target's verdict on the median of the runs (what the JSON carries too). */
function printVerdicts() {
  console.log("targets (on the median of the runs):");
  for (const [metric, { unit, values, target }] of figures) {
    if (!target) continue;
    const { median } = stats(values);
    line(`  ${metric}: ${targetText(target)} ${unit}`, `${verdict(target, median)} (${Number(median.toPrecision(4))} ${unit})`);
  }
}

function writeJson(path) {
  const out = [];
  for (const [metric, { unit, values, target }] of figures) {
    const { min, median, max } = stats(values);
    const figure = { metric, value: median, unit, peer: "harmonylite", runs: values.length, min, median, max };
    if (target) Object.assign(figure, { target, verdict: verdict(target, median) });
    out.push(figure);
  }
  writeFileSync(path, JSON.stringify({ suite: "npm", quick, rows: ROWS, node: process.version, figures: out }, null, 2));
  console.log(`figures written to ${path}`);
}

try {
  console.log(`harmonylite npm benchmark (node ${process.version}, ROWS=${ROWS}, ${RUNS} run(s))`);
  await sizes();
  for (run = 0; run < RUNS; run++) {
    await applyRate();
    await endToEnd();
  }
  printVerdicts();
  if (jsonFile) writeJson(jsonFile);
} finally {
  await cleanup();
}
