// workerd: a Worker replica (memory storage, the package's "workerd" entry, bundled as
// Cloudflare's tooling bundles it) connects over WebSocket to the embedded nats-server of a
// real `harmonylite` sidecar, catches up with rows the native node wrote before the Worker
// ever ran, answers a query, and writes a row that reaches the native node's SQLite file.
// A Worker's memory replica starts empty on every request, so once the stream no longer
// holds its start it must bootstrap from the native node's snapshot (JetStream object
// store, downloaded over the same WebSocket): the second test. The third: a migration the
// operator ran natively (`harmonylite migrate`) reaches a Worker replica catching up with
// the stream, with the rows written before and after it, and a Worker's own migrate()
// reaches the native node and every later Worker replica.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { Sidecar, appInsertEachCaptured, appInsertMany, appSql, cleanup, freePort, sidecarBinary, tempDir, waitFor } from "../helpers.mjs";
import { bundleWorker, nativeMigrate, nativeSchema, startWorkerd } from "./hosts.mjs";

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

/** Runs `steps` on one fresh Worker replica (see workerd-worker.mjs `POST /run`). */
async function run(workerd, servers, steps) {
  const res = await fetch(`${workerd.url}/run?servers=${servers}`, { method: "POST", body: JSON.stringify({ steps }) });
  const body = await res.text();
  assert.equal(res.status, 200, `POST /run ${JSON.stringify(steps)}: ${body}\n--- workerd log ---\n${workerd.logTail()}`);
  return JSON.parse(body);
}

test("a native migration reaches a workerd replica catching up, with the rows around it, and a Worker's migrate() reaches the native node", async () => {
  const dir = tempDir();
  const embedded = { port: await freePort(), wsPort: await freePort() };
  const node = await Sidecar.start(join(dir, "node1"), "node1", { embedded, schema: SCHEMA });
  // Before the migration: rows without the new column.
  const OLD = 50;
  appInsertMany(node.db, "items", Array.from({ length: OLD }, (_, i) => i + 1), (id) => `native-${id}`, 25);
  // The operator's migration: a column and a table.
  const file = join(dir, "add-tag.sql");
  const out = nativeMigrate(node, file, "ALTER TABLE items ADD COLUMN tag TEXT NOT NULL DEFAULT 'untagged';\nCREATE TABLE IF NOT EXISTS tags(name TEXT PRIMARY KEY, color TEXT);\n");
  assert.match(out, /applied here as version 1 /);
  // After it: rows that need it.
  appSql(node.db, "INSERT INTO items(id, val, tag) VALUES (51, 'native-51', 'red'), (52, 'native-52', 'green'); INSERT INTO tags VALUES ('red', '#f00')", null);
  await waitFor(() => nodePublished(node), { message: () => `the native node to publish its rows:\n${node.logTail()}` });
  const native1 = nativeSchema(node);
  assert.equal(native1.version, 1, native1.out);

  const workerd = await startWorkerd(await bundleWorker(join(here, "workerd-worker.mjs")));
  const servers = encodeURIComponent(`ws://127.0.0.1:${embedded.wsPort}`);
  const caught = await run(workerd, servers, [
    { sync: true },
    { schemaStatus: true },
    { query: "SELECT name FROM pragma_table_info('items') ORDER BY cid" },
    { query: "SELECT tag, count(*) AS n, total(id) AS sum FROM items GROUP BY tag ORDER BY tag" },
    { query: "SELECT id, val, tag FROM items WHERE id > ? ORDER BY id", params: [OLD] },
    { query: "SELECT name, color FROM tags" },
  ]);
  const [, schema, columns, byTag, tagged, tags] = caught.results;
  assert.equal(schema.migrationVersion, 1, JSON.stringify(caught));
  assert.equal(schema.fingerprint, native1.fingerprint, "the Worker's schema is the native node's");
  assert.equal(schema.parkedMigrations, 0);
  assert.deepEqual(schema.parkedByTable, {});
  assert.deepEqual(columns.map((c) => c.name), ["id", "val", "tag"]);
  assert.deepEqual(byTag, [
    { tag: "green", n: 1, sum: 52 },
    { tag: "red", n: 1, sum: 51 },
    { tag: "untagged", n: OLD, sum: (OLD * (OLD + 1)) / 2 },
  ]);
  assert.deepEqual(tagged, [
    { id: 51, val: "native-51", tag: "red" },
    { id: 52, val: "native-52", tag: "green" },
  ]);
  assert.deepEqual(tags, [{ name: "red", color: "#f00" }]);
  assert.equal(caught.status.migrationVersion, 1);
  assert.equal(caught.status.parked, 0);
  assert.equal(caught.status.lag, 0);
  assert.deepEqual(caught.errors, []);

  // A Worker migrates and writes a row that needs its migration.
  const migrated = await run(workerd, servers, [
    { sync: true },
    { migrate: "ALTER TABLE items ADD COLUMN prio INTEGER NOT NULL DEFAULT 0" },
    { exec: "INSERT INTO items(id, val, tag, prio) VALUES (53, 'workerd-53', 'blue', 3)" },
    { flush: true },
  ]);
  const result = migrated.results[1];
  assert.equal(result.version, 2, JSON.stringify(migrated));
  assert.equal(result.statements, 1);
  assert.equal(result.destructive, false);
  assert.equal(migrated.status.outboxFrames, 0, "flush() resolved with the migration and the row acknowledged");
  assert.deepEqual(migrated.errors, []);
  await waitFor(() => nativeSchema(node).version === 2 && node.query("SELECT count(*) FROM items WHERE id = 53")[0][0] === 1, {
    message: () => `the Worker's migration and row on the native node:\n${node.logTail()}`,
  });
  assert.deepEqual(node.query("SELECT id, val, tag, prio FROM items WHERE id IN (1, 53) ORDER BY id"), [
    [1, "native-1", "untagged", 0],
    [53, "workerd-53", "blue", 3],
  ]);
  const native2 = nativeSchema(node);
  assert.deepEqual(native2.migrations.map(([v]) => v), [1, 2], native2.out);
  assert.equal(native2.migrations[1][1], "ALTER TABLE items ADD COLUMN prio INTEGER NOT NULL DEFAULT 0");

  // A later Worker replica replays both migrations in order.
  const later = await run(workerd, servers, [{ sync: true }, { schemaStatus: true }, { query: "SELECT count(*) AS n, total(prio) AS prio FROM items" }]);
  assert.equal(later.results[1].migrationVersion, 2);
  assert.equal(later.results[1].fingerprint, native2.fingerprint);
  assert.deepEqual(later.results[2], [{ n: OLD + 3, prio: 3 }]);
  assert.deepEqual(later.errors, []);
});
