#!/usr/bin/env node
// Capture overhead in node, side by side: the harmonylite wasm replica vs cr-sqlite's wasm
// build (@vlcn.io/crsqlite-wasm) vs plain wasm SQLite, same runtime, same schema, same rows.
// Prints figures and asserts only that each workload did what it says (row counts).
//
//   node bench/peers/bench.mjs [--quick] [--json FILE]      (after `cd npm && npm run build`)
//   RUNS=7 node bench/peers/bench.mjs                        more runs
//   HL_WASM_DIR=DIR node bench/peers/bench.mjs               our wasm from DIR instead of npm/dist/wasm
//
// Peers (each in a fresh in-memory database per workload and run):
//   harmonylite          the replica from npm/dist/wasm (rusqlite on sqlite-wasm-rs), table
//                        captured by its triggers; exec() with the statement cache
//   harmonylite+drain    the same, plus the drain after every commit that turns the log into
//                        an outbox message (what the replica does before it can publish)
//   plain (same build)   the same replica with the table in `excludeTables`: no triggers,
//                        the same SQLite, VFS and JS<->wasm calls; the baseline of our ratio
//   cr-sqlite            @vlcn.io/crsqlite-wasm's build, table made a CRR
//                        (`crsql_as_crr`); prepared statements through its async API
//   plain (cr-sqlite build)  the same build and API, table not a CRR: cr-sqlite's baseline
//   sqlite-wasm          @sqlite.org/sqlite-wasm's build (oo1 API, prepared statements), no
//                        replication at all
//
// Workloads (as in core/benches/capture.rs): autocommit INSERTs, INSERTs in 100- and
// 1000-row transactions, 1-column UPDATEs by primary key in 1000-row transactions, DELETEs
// by primary key in 1000-row transactions; ~100-byte rows. Every run runs every peer on
// every workload, in an order rotated per run; each ratio is taken within one run.

import { readFileSync, writeFileSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import os from "node:os";

import * as WaSQLite from "@vlcn.io/wa-sqlite";
import { SQLite3 as CrSQLite3 } from "@vlcn.io/crsqlite-wasm";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const jsonAt = args.indexOf("--json");
const jsonFile = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
if (jsonAt >= 0 && !jsonFile) throw new Error("--json needs a file name");
const RUNS = Number(process.env.RUNS ?? 5);
const SCALE = Number(process.env.SCALE ?? 1) * (quick ? 0.1 : 1);
const n = (base, min) => Math.max(min, Math.round(base * SCALE));

const here = new URL(".", import.meta.url);
const repo = fileURLToPath(new URL("../../", import.meta.url));
// HL_WASM_DIR: another build of ours (wasm-bindgen --target web output), e.g. to compare two.
const ourWasmDir = process.env.HL_WASM_DIR ?? join(repo, "npm", "dist", "wasm");

const SCHEMA = "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, name TEXT, qty INTEGER, price REAL, data BLOB)";
const INSERT = "INSERT INTO t(id, name, qty, price, data) VALUES (?, ?, ?, ?, ?)";
const UPDATE = "UPDATE t SET qty = ? WHERE id = ?";
const DELETE = "DELETE FROM t WHERE id = ?";

const WORKLOADS = [
  { name: "insert, autocommit", op: "insert", rows: n(5000, 200), tx: 1 },
  { name: "insert, 100-row tx", op: "insert", rows: n(20000, 1000), tx: 100 },
  { name: "insert, 1000-row tx", op: "insert", rows: n(20000, 2000), tx: 1000 },
  { name: "update 1 col by pk, 1000-row tx", op: "update", rows: n(20000, 2000), tx: 1000 },
  { name: "delete by pk, 1000-row tx", op: "delete", rows: n(20000, 2000), tx: 1000 },
];

function blob(id) {
  const b = new Uint8Array(64);
  for (let i = 0; i < 64; i++) b[i] = i;
  new DataView(b.buffer).setBigInt64(0, BigInt(id), true);
  return b;
}
function rowValues(id) {
  return [id, `name-${String(id).padStart(16, "0")}`, id, id * 0.5, blob(id)];
}
function params(op, id) {
  if (op === "insert") return rowValues(id);
  if (op === "update") return [id * 7, id];
  return [id];
}

// ---------------------------------------------------------------------------------------
// Peers: each exposes open(captured) -> db with sync-or-async run(sql, params), exec(sql),
// count(), captured() (change rows recorded, or null), close().
// ---------------------------------------------------------------------------------------

async function loadOurs() {
  const wasm = await import(join(ourWasmDir, "harmonylite_wasm.js"));
  wasm.initSync({ module: readFileSync(join(ourWasmDir, "harmonylite_wasm_bg.wasm")) });
  let seq = 0;
  const now = () => [performance.now(), Date.now()];
  return (variant) => ({
    async open() {
      const options = { name: `bench-${process.pid}-${seq++}.db`, random: globalThis.crypto.getRandomValues(new Uint8Array(24)) };
      if (variant === "plain") options.excludeTables = ["t"];
      const r = await wasm.openReplica(options);
      r.exec(SCHEMA, undefined, ...now());
      r.pollOutputs();
      // Ack the start-up so the engine is idle.
      r.handleInputs(...now(), Uint8Array.of(4), Float64Array.of(0), Float64Array.of(0), []);
      r.pollOutputs();
      const drain = variant === "drain";
      const kinds = Uint8Array.of(0);
      const seqs = Float64Array.of(0);
      const pending = Float64Array.of(0);
      return {
        run(sql, p) {
          r.exec(sql, p, ...now());
        },
        exec(sql) {
          r.exec(sql, undefined, ...now());
        },
        // Called after every commit (and every autocommit statement).
        committed() {
          if (drain) {
            r.handleInputs(...now(), kinds, seqs, pending, []);
            r.pollOutputs();
          }
        },
        count: () => r.query("SELECT count(*) AS c FROM t", undefined)[0].c,
        captured: () =>
          variant === "plain"
            ? 0
            : drain
              ? r.query("SELECT count(*) AS c FROM __hl_outbox", undefined)[0].c
              : r.query("SELECT count(*) AS c FROM __hl_log", undefined)[0].c,
        close: () => r.close(),
      };
    },
  });
}

async function loadCr() {
  const dist = new URL("node_modules/@vlcn.io/crsqlite-wasm/dist/", here);
  // The package's initWasm() fetches its wasm by URL, which node's fetch cannot do for
  // files: hand emscripten the bytes instead (same module, same wasm).
  const { default: factory } = await import(new URL("crsqlite.mjs", dist));
  const module = await factory({ wasmBinary: readFileSync(new URL("crsqlite.wasm", dist)) });
  const sqlite = new CrSQLite3(WaSQLite.Factory(module));
  return (variant) => ({
    async open() {
      const db = await sqlite.open();
      await db.exec(SCHEMA);
      if (variant === "crr") await db.exec("SELECT crsql_as_crr('t')");
      const stmts = new Map();
      return {
        async run(sql, p) {
          let st = stmts.get(sql);
          if (!st) {
            st = await db.prepare(sql);
            stmts.set(sql, st);
          }
          await st.run(null, ...p);
        },
        exec: (sql) => db.exec(sql),
        committed() {},
        count: async () => (await db.execA("SELECT count(*) FROM t"))[0][0],
        captured: async () => (variant === "crr" ? (await db.execA("SELECT count(*) FROM crsql_changes"))[0][0] : 0),
        async close() {
          for (const st of stmts.values()) await st.finalize(null);
          await db.close();
        },
      };
    },
  });
}

async function loadOfficial() {
  const jswasm = new URL("node_modules/@sqlite.org/sqlite-wasm/sqlite-wasm/jswasm/", here);
  // This build expects a browser global scope; node needs `self` and `location`.
  globalThis.self ??= globalThis;
  globalThis.location ??= new URL(import.meta.url);
  const warn = console.warn;
  console.warn = () => {}; // "Ignoring inability to install OPFS sqlite3_vfs" in node
  const { default: init } = await import(new URL("sqlite3.mjs", jswasm));
  const sqlite3 = await init({ wasmBinary: readFileSync(new URL("sqlite3.wasm", jswasm)), print: () => {}, printErr: () => {} });
  console.warn = warn;
  return () => ({
    async open() {
      const db = new sqlite3.oo1.DB(":memory:", "c");
      db.exec(SCHEMA);
      const stmts = new Map();
      return {
        run(sql, p) {
          let st = stmts.get(sql);
          if (!st) {
            st = db.prepare(sql);
            stmts.set(sql, st);
          }
          st.bind(p).stepReset();
        },
        exec: (sql) => db.exec(sql),
        committed() {},
        count: () => db.selectValue("SELECT count(*) FROM t"),
        captured: () => 0,
        close() {
          for (const st of stmts.values()) st.finalize();
          db.close();
        },
      };
    },
  });
}

// ---------------------------------------------------------------------------------------

async function prepare(peer, w) {
  const db = await peer.open();
  if (w.op !== "insert") {
    await db.exec("BEGIN");
    for (let id = 1; id <= w.rows; id++) await db.run(INSERT, rowValues(id));
    await db.exec("COMMIT");
    await db.committed();
  }
  return db;
}

async function timed(db, w) {
  const sql = w.op === "insert" ? INSERT : w.op === "update" ? UPDATE : DELETE;
  const args = Array.from({ length: w.rows }, (_, i) => params(w.op, i + 1));
  const start = performance.now();
  for (let i = 0; i < w.rows; ) {
    const stop = Math.min(w.rows, i + w.tx);
    if (w.tx > 1) await db.exec("BEGIN");
    for (; i < stop; i++) {
      await db.run(sql, args[i]);
      if (w.tx === 1) await db.committed();
    }
    if (w.tx > 1) {
      await db.exec("COMMIT");
      await db.committed();
    }
  }
  return performance.now() - start;
}

function stats(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  return { runs: s.length, min: s[0], median, max: s[s.length - 1] };
}

function sizeOf(path) {
  const raw = statSync(path).size;
  const gzip = gzipSync(readFileSync(path), { level: 9 }).length;
  return { raw, gzip };
}

async function main() {
  const ours = await loadOurs();
  const cr = await loadCr();
  const official = await loadOfficial();
  const peers = [
    { name: "harmonylite", api: ours("capture") },
    { name: "harmonylite+drain", api: ours("drain") },
    { name: "plain (same build)", api: ours("plain") },
    { name: "cr-sqlite", api: cr("crr") },
    { name: "plain (cr-sqlite build)", api: cr("plain") },
    { name: "sqlite-wasm", api: official() },
  ];
  const figures = [];
  const add = (metric, unit, peer, values) => {
    const s = stats(values);
    figures.push({ metric, value: s.median, unit, peer, ...s });
  };
  console.log(`harmonylite peers bench (node ${process.version}, ${RUNS} runs${quick ? ", quick" : ""}, ${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(2)})`);

  // Sizes (deterministic: one measurement).
  const wasmFiles = {
    harmonylite: join(ourWasmDir, "harmonylite_wasm_bg.wasm"),
    "cr-sqlite": fileURLToPath(new URL("node_modules/@vlcn.io/crsqlite-wasm/dist/crsqlite.wasm", here)),
    "sqlite-wasm": fileURLToPath(new URL("node_modules/@sqlite.org/sqlite-wasm/sqlite-wasm/jswasm/sqlite3.wasm", here)),
  };
  for (const [peer, path] of Object.entries(wasmFiles)) {
    const { raw, gzip } = sizeOf(path);
    add("wasm size, raw", "bytes", peer, [raw]);
    add("wasm size, gzip -9", "bytes", peer, [gzip]);
    console.log(`  wasm ${peer.padEnd(14)} raw ${(raw / 1e6).toFixed(3)} MB, gzip ${(gzip / 1e3).toFixed(1)} KB`);
  }

  for (const w of WORKLOADS) {
    const rates = Object.fromEntries(peers.map((p) => [p.name, []]));
    const times = Object.fromEntries(peers.map((p) => [p.name, []]));
    for (let run = 0; run < RUNS; run++) {
      // Rotate the order so no peer always goes first (JIT warm-up, GC, heap growth).
      const order = peers.map((_, i) => peers[(i + run) % peers.length]);
      for (const p of order) {
        const db = await prepare(p.api, w);
        const ms = await timed(db, w);
        const expected = w.op === "delete" ? 0 : w.rows;
        const count = await db.count();
        if (count !== expected) throw new Error(`${p.name}, ${w.name}: ${count} rows, expected ${expected}`);
        const captured = await db.captured();
        if (p.name !== "plain (same build)" && p.name !== "plain (cr-sqlite build)" && p.name !== "sqlite-wasm" && !(captured > 0)) {
          throw new Error(`${p.name}, ${w.name}: nothing captured`);
        }
        await db.close();
        times[p.name].push(ms);
        rates[p.name].push(w.rows / (ms / 1000));
      }
    }
    const label = `${w.name} (${w.rows} rows)`;
    for (const p of peers) add(`${label}: rate`, "rows/s", p.name, rates[p.name]);
    const ratio = (a, b) => times[a].map((t, i) => t / times[b][i]);
    add(`${label}: time ratio harmonylite / plain (same build)`, "x", "harmonylite vs plain (same build)", ratio("harmonylite", "plain (same build)"));
    add(`${label}: time ratio harmonylite+drain / plain (same build)`, "x", "harmonylite+drain vs plain (same build)", ratio("harmonylite+drain", "plain (same build)"));
    add(`${label}: time ratio cr-sqlite / plain (cr-sqlite build)`, "x", "cr-sqlite vs plain (cr-sqlite build)", ratio("cr-sqlite", "plain (cr-sqlite build)"));
    add(`${label}: time ratio harmonylite / cr-sqlite`, "x", "harmonylite vs cr-sqlite", ratio("harmonylite", "cr-sqlite"));
    add(`${label}: time ratio harmonylite+drain / cr-sqlite`, "x", "harmonylite+drain vs cr-sqlite", ratio("harmonylite+drain", "cr-sqlite"));
    add(`${label}: time ratio harmonylite / sqlite-wasm`, "x", "harmonylite vs sqlite-wasm", ratio("harmonylite", "sqlite-wasm"));
    const med = (name) => stats(rates[name]).median;
    console.log(`  ${label.padEnd(44)} ` + peers.map((p) => `${p.name} ${Math.round(med(p.name))}`).join(" | ") + " rows/s");
  }

  if (jsonFile) {
    const doc = {
      suite: "peers",
      quick,
      node: process.version,
      versions: {
        "cr-sqlite": JSON.parse(readFileSync(new URL("node_modules/@vlcn.io/crsqlite-wasm/package.json", here))).version,
        "sqlite-wasm": JSON.parse(readFileSync(new URL("node_modules/@sqlite.org/sqlite-wasm/package.json", here))).version,
      },
      figures,
    };
    writeFileSync(jsonFile, JSON.stringify(doc, null, 2));
    console.log(`figures written to ${jsonFile}`);
  }
}

await main();
