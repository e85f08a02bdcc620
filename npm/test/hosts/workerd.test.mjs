// workerd: a Worker replica (memory storage, the package's "workerd" entry, bundled as
// Cloudflare's tooling bundles it) connects over WebSocket to the embedded nats-server of a
// real `harmonylite` sidecar, catches up with rows the native node wrote before the Worker
// ever ran, answers a query, and writes a row that reaches the native node's SQLite file.
// A Worker's memory replica starts empty on every request, so once the stream no longer
// holds its start it must bootstrap from the native node's snapshot (JetStream object
// store, downloaded over the same WebSocket): the second test.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { Sidecar, appInsertEachCaptured, appInsertMany, cleanup, freePort, sidecarBinary, tempDir, waitFor } from "../helpers.mjs";
import { bundleWorker, startWorkerd } from "./hosts.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const SCHEMA = "CREATE TABLE items(id INTEGER PRIMARY KEY, val TEXT NOT NULL)";
const NATIVE_ROWS = 1000;

afterEach(cleanup);

/** Whether every row the node's application wrote is in JetStream (nothing left to capture or send). */
function nodePublished(node) {
  return node.query("SELECT (SELECT count(*) FROM __hl_log) + (SELECT count(*) FROM __hl_outbox)")[0][0] === 0;
}

/** Calls the Worker; fails with its answer and log unless it answers 200. */
async function ask(workerd, method, path) {
  const res = await fetch(`${workerd.url}${path}`, { method });
  const body = await res.text();
  assert.equal(res.status, 200, `${method} ${path}: ${body}\n--- workerd log ---\n${workerd.logTail()}`);
  return JSON.parse(body);
}

test("a workerd replica catches up with a native node over WebSocket, answers a query and writes back", async () => {
  const dir = tempDir();
  const embedded = { port: await freePort(), wsPort: await freePort() };
  const node = await Sidecar.start(join(dir, "node1"), "node1", { embedded, schema: SCHEMA });
  const ids = Array.from({ length: NATIVE_ROWS }, (_, i) => i + 1);
  appInsertMany(node.db, "items", ids, (id) => `native-${id}`, 100);
  // Every native row is in JetStream before the Worker first runs.
  await waitFor(() => nodePublished(node), { message: () => `the native node to publish its rows:\n${node.logTail()}` });

  const workerd = await startWorkerd(await bundleWorker(join(here, "workerd-worker.mjs")));
  const servers = encodeURIComponent(`ws://127.0.0.1:${embedded.wsPort}`);
  const counted = await ask(workerd, "GET", `/count?servers=${servers}`);
  assert.equal(counted.count, NATIVE_ROWS, JSON.stringify(counted));
  assert.equal(counted.sum, (NATIVE_ROWS * (NATIVE_ROWS + 1)) / 2);
  assert.equal(counted.status.online, true);
  assert.equal(counted.status.lag, 0);
  assert.equal(counted.status.parked, 0);
  assert.ok(counted.status.cursor > 0 && counted.status.cursor === counted.status.streamLastSeq, JSON.stringify(counted.status));
  assert.deepEqual(counted.errors, []);

  const id = NATIVE_ROWS + 1;
  const written = await ask(workerd, "POST", `/write?servers=${servers}&id=${id}`);
  assert.equal(written.status.outboxFrames, 0, "flush() resolved with the write acknowledged");
  assert.deepEqual(written.errors, []);
  await waitFor(() => node.query("SELECT val FROM items WHERE id = ?", [id])[0]?.[0] === `workerd-${id}`, {
    message: () => `the Worker's row on the native node:\n${node.logTail()}`,
  });

  // A new replica sees the native rows and the Worker's own.
  const again = await ask(workerd, "GET", `/count?servers=${servers}`);
  assert.equal(again.count, NATIVE_ROWS + 1);
});

test("a workerd replica bootstraps from the native node's snapshot when the stream no longer holds its start", async () => {
  const dir = tempDir();
  const embedded = { port: await freePort(), wsPort: await freePort() };
  const KEPT = 5;
  const ROWS = 15;
  const node = await Sidecar.start(join(dir, "node1"), "node1", {
    embedded,
    schema: SCHEMA,
    extra: `[replication_log]\nmax_entries = ${KEPT}\n`,
  });
  const meta = (key) => node.query("SELECT value FROM __hl_meta WHERE key = ?", [key])[0]?.[0];
  // One stream message per write: the stream keeps only the last KEPT of ROWS.
  appInsertEachCaptured(node.db, "items", Array.from({ length: ROWS }, (_, i) => [i + 1, `native-${i + 1}`]));
  await waitFor(() => meta("cursor") === ROWS && nodePublished(node), { message: () => `the native node to consume its messages:\n${node.logTail()}` });
  execFileSync(sidecarBinary(), ["--config", node.config, "--save-snapshot"], {
    stdio: ["ignore", "inherit", "inherit"],
    env: { ...process.env, RUST_LOG: "warn" },
  });

  const workerd = await startWorkerd(await bundleWorker(join(here, "workerd-worker.mjs")));
  const servers = encodeURIComponent(`ws://127.0.0.1:${embedded.wsPort}`);
  const counted = await ask(workerd, "GET", `/count?servers=${servers}`);
  // Replaying the stream alone would give at most KEPT rows (and fall behind).
  assert.equal(counted.count, ROWS, JSON.stringify(counted));
  assert.equal(counted.sum, (ROWS * (ROWS + 1)) / 2);
  assert.equal(counted.status.fellBehind, false);
  assert.equal(counted.status.lag, 0);
  assert.equal(counted.status.cursor, ROWS);
  assert.deepEqual(counted.errors, []);
});
