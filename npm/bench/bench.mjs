#!/usr/bin/env node
// Prints the figures of the wasm replica; asserts nothing.
//
//   npm run bench                 (after npm run build)
//   ROWS=20000 npm run bench      smaller run
//   node bench/bench.mjs --quick --json FILE   (what scripts/bench runs: RUNS runs, default 5
//                                 with --json, else 1; --quick = ROWS 5000; figures to FILE)
//
// 1. wasm size, raw and gzip (the shipped, wasm-opt'ed module).
// 2. apply rate in node: one wasm replica captures ROWS rows (batches of 1,000 rows), a
//    second one applies the frames as stream messages (no network): rows/s of apply alone.
// 3. end-to-end apply over NATS WebSocket: a sidecar's application writes ROWS rows; time
//    until the replica has applied them all (sync()).
// 4. offline catch-up: a replica cut off from NATS writes ROWS rows locally (transactions of
//    1,000); time from reconnect until JetStream acknowledged all of them (flush()) and until
//    the sidecar holds them all (converged).

import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";

import { NatsServer, Sidecar, CutProxy, appInsertMany, cleanup, harmonylite, npmDir, tempDir, waitFor } from "../test/helpers.mjs";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const jsonAt = args.indexOf("--json");
const jsonFile = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
if (jsonAt >= 0 && !jsonFile) throw new Error("--json needs a file name");
const ROWS = Number(process.env.ROWS ?? (quick ? 5_000 : 100_000));
const RUNS = Number(process.env.RUNS ?? (jsonFile ? 5 : 1));
// Every run's value of each figure: metric -> { unit, values }.
const figures = new Map();
function record(metric, unit, value) {
  if (!figures.has(metric)) figures.set(metric, { unit, values: [] });
  figures.get(metric).values.push(value);
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
  record("wasm replica size, raw", "bytes", raw);
  record("wasm replica size, gzip -9", "bytes", gz);
  line("wasm size gzip -9 (target <= 600 KB)", `${(gz / 1e3).toFixed(1)} KB (${gz} bytes)`);
}

async function applyRate() {
  await harmonylite();
  const wasm = await import(join(npmDir, "dist", "wasm", "harmonylite_wasm.js"));
  wasm.initSync({ module: readFileSync(join(npmDir, "dist", "wasm", "harmonylite_wasm_bg.wasm")) });
  const random = () => globalThis.crypto.getRandomValues(new Uint8Array(24));
  const now = () => [performance.now(), Date.now()];
  const writer = await wasm.openReplica({ name: `bench-writer-${run}.db`, random: random() });
  const reader = await wasm.openReplica({ name: `bench-reader-${run}.db`, random: random() });
  for (const r of [writer, reader]) {
    r.exec(SCHEMA, undefined, ...now());
    r.pollOutputs();
  }
  writer.handleInputs(...now(), Uint8Array.of(4), Float64Array.of(0), []);
  const frames = [];
  const take = () => {
    for (const o of writer.pollOutputs()) {
      if (o.type === "publish") {
        frames.push(o.frame);
        writer.handleInputs(...now(), Uint8Array.of(2), Float64Array.of(o.id), []);
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
    writer.handleInputs(...now(), Uint8Array.of(0), Float64Array.of(0), []);
    take();
  }
  const captureMs = performance.now() - captureStart;
  line(`local writes + capture in wasm (${ROWS} rows, 1k/tx)`, `${Math.round(ROWS / (captureMs / 1000))} rows/s`);
  record(`wasm replica: local writes + capture + drain (${ROWS} rows, 1000-row tx)`, "rows/s", ROWS / (captureMs / 1000));

  const applyStart = performance.now();
  const kinds = new Uint8Array(frames.length).fill(1);
  const seqs = Float64Array.from(frames, (_, i) => i + 1);
  // Feed as the host does: up to 1,024 messages per call.
  for (let i = 0; i < frames.length; i += 1024) {
    reader.handleInputs(...now(), kinds.subarray(i, i + 1024), seqs.subarray(i, i + 1024), frames.slice(i, i + 1024));
    reader.pollOutputs();
  }
  const applyMs = performance.now() - applyStart;
  const count = reader.query("SELECT count(*) AS c FROM items", undefined)[0].c;
  line(`apply rate of the wasm replica in node (${count} rows, ${frames.length} messages; target >= 40k)`, `${Math.round(count / (applyMs / 1000))} rows/s`);
  if (count !== ROWS) throw new Error(`the reader applied ${count} rows, expected ${ROWS}`);
  record(`wasm replica: apply rate in node (${ROWS} rows, 1000-row batches)`, "rows/s", count / (applyMs / 1000));
  writer.close();
  reader.close();
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

  // 3. Sidecar writes, replica applies over WebSocket.
  const ids = Array.from({ length: ROWS }, (_, i) => 1_000_000 + i);
  appInsertMany(node.db, "items", ids, (id) => `native-${id}`, 1000);
  await waitFor(() => node.query("SELECT count(*) FROM items")[0][0] === ROWS, { timeoutMs: 300_000, message: "sidecar capture" });
  const e2eStart = performance.now();
  await db.sync({ timeoutMs: 600_000 });
  const e2eMs = performance.now() - e2eStart;
  line(`end-to-end apply over NATS WebSocket (${ROWS} rows from a sidecar)`, `${Math.round(ROWS / (e2eMs / 1000))} rows/s (${(e2eMs / 1000).toFixed(2)} s)`);
  record(`wasm replica: end-to-end apply over NATS WebSocket (${ROWS} rows from a sidecar)`, "rows/s", ROWS / (e2eMs / 1000));

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
  record(`wasm replica offline for ${ROWS} writes: reconnect -> converged on the sidecar`, "s", convergedMs / 1000);
  await db.close({ flushTimeoutMs: 0 });
}

function writeJson(path) {
  const out = [];
  for (const [metric, { unit, values }] of figures) {
    const s = [...values].sort((a, b) => a - b);
    const mid = s.length >> 1;
    const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
    out.push({ metric, value: median, unit, peer: "harmonylite", runs: s.length, min: s[0], median, max: s[s.length - 1] });
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
  if (jsonFile) writeJson(jsonFile);
} finally {
  await cleanup();
}
