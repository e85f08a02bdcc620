// A node replica (wasm, memory storage, NATS over WebSocket) and a real harmonylite sidecar
// on one real nats-server replicate both ways, and settle conflicts by write time.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";

import { NatsServer, Sidecar, CutProxy, appSql, cleanup, freePort, harmonylite, onCleanup, sleep, tempDir, waitFor } from "./helpers.mjs";

const SCHEMA = "CREATE TABLE notes(id INTEGER PRIMARY KEY, val TEXT NOT NULL, n REAL, data BLOB)";

afterEach(cleanup);

async function setUp() {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  const node = await Sidecar.start(join(dir, "node1"), "node1", { natsUrl: nats.url, schema: SCHEMA });
  const { open } = await harmonylite();
  return { dir, nats, node, open };
}

async function openReplica(open, servers, name = "replica.db") {
  const db = await open({ name, servers, reconnectMinMs: 100, reconnectMaxMs: 1000 });
  onCleanup(() => db.close({ flushTimeoutMs: 0 }));
  const errors = [];
  db.on("error", (e) => errors.push(e));
  await db.exec(SCHEMA);
  return { db, errors };
}

const nodeVal = (node, id) => node.query("SELECT val FROM notes WHERE id = ?", [id])[0]?.[0];
const replicaVal = async (db, id) => (await db.query("SELECT val FROM notes WHERE id = ?", [id]))[0]?.val;

test("a replica and a sidecar replicate inserts, updates and deletes both ways", async () => {
  const { nats, node, open } = await setUp();
  const { db } = await openReplica(open, nats.wsUrl);
  const changes = [];
  db.subscribe((e) => changes.push(e), { tables: ["NOTES"] });

  // Replica -> sidecar, with every value type.
  await db.exec("INSERT INTO notes(id, val, n, data) VALUES (?, ?, ?, ?)", [1, "from-js", 1.5, new Uint8Array([1, 2, 3])]);
  await db.transaction(async (tx) => {
    await tx.exec("INSERT INTO notes(id, val) VALUES (:id, :val)", { id: 2, val: "tx-a" });
    await tx.exec("INSERT INTO notes(id, val) VALUES (:id, :val)", { id: 3, val: "tx-b" });
  });
  await db.flush({ timeoutMs: 30_000 });
  assert.equal((await db.status()).outboxFrames, 0, "flush resolved with frames still in the outbox");
  await waitFor(() => nodeVal(node, 3) === "tx-b", { message: () => `row 3 on the sidecar:\n${node.logTail()}` });
  assert.deepEqual(node.query("SELECT id, val, n, hex(data) FROM notes ORDER BY id"), [
    [1, "from-js", 1.5, "010203"],
    [2, "tx-a", null, ""],
    [3, "tx-b", null, ""],
  ]);
  assert.ok(changes.some((c) => c.origin === "local" && c.tables.includes("notes")), "no local change notification");

  // Sidecar -> replica: insert, update, delete by the application on the sidecar's file.
  appSql(node.db, "INSERT INTO notes(id, val) VALUES (?, ?)", [10, "from-native"]);
  appSql(node.db, "UPDATE notes SET val = ? WHERE id = ?", ["changed-natively", 1]);
  appSql(node.db, "DELETE FROM notes WHERE id = ?", [2]);
  await waitFor(async () => (await replicaVal(db, 10)) === "from-native" && (await replicaVal(db, 2)) === undefined, {
    message: "sidecar writes on the replica",
  });
  await db.sync({ timeoutMs: 30_000 });
  assert.deepEqual(
    await db.query("SELECT id, val FROM notes ORDER BY id"),
    [
      { id: 1, val: "changed-natively" },
      { id: 3, val: "tx-b" },
      { id: 10, val: "from-native" },
    ],
  );
  assert.ok(changes.some((c) => c.origin === "remote" && c.tables.includes("notes")), "no remote change notification");

  // Replica updates and deletes reach the sidecar.
  await db.exec("UPDATE notes SET val = 'updated-in-js' WHERE id = 10");
  await db.exec("DELETE FROM notes WHERE id = 3");
  await db.flush({ timeoutMs: 30_000 });
  await waitFor(() => nodeVal(node, 10) === "updated-in-js" && nodeVal(node, 3) === undefined, { message: "replica update/delete on the sidecar" });

  const status = await db.status();
  assert.equal(status.online, true);
  assert.equal(status.lag, 0);
  assert.equal(status.parked, 0);
  assert.ok(status.cursor > 0);
});

test("a rolled-back transaction publishes nothing and SQL errors keep their class", async () => {
  const { nats, node, open } = await setUp();
  const { db } = await openReplica(open, nats.wsUrl);
  const { SqliteError, HarmonyliteError, InvalidArgumentError } = await harmonylite();
  await assert.rejects(
    db.transaction(async (tx) => {
      await tx.exec("INSERT INTO notes(id, val) VALUES (100, 'never')");
      throw new Error("abort");
    }),
    /abort/,
  );
  await assert.rejects(db.exec("INSERT INTO notes(id) VALUES (1)"), (e) => e instanceof SqliteError && e instanceof HarmonyliteError && e.code === "SQLITE_CONSTRAINT" && e.name === "SqliteError");
  await assert.rejects(db.query("SELECT ?", [{}]), (e) => e instanceof InvalidArgumentError);
  await db.exec("INSERT INTO notes(id, val) VALUES (101, 'after')");
  await db.flush({ timeoutMs: 30_000 });
  await waitFor(() => nodeVal(node, 101) === "after", { message: "row 101 on the sidecar" });
  assert.equal(nodeVal(node, 100), undefined);
});

test("a conflict settles by write time on both sides", async () => {
  const { nats, node, open } = await setUp();
  const proxy = await CutProxy.start(nats.wsPort);
  const { db } = await openReplica(open, proxy.wsUrl);
  await db.exec("INSERT INTO notes(id, val) VALUES (1, 'start'), (2, 'start')");
  await db.flush({ timeoutMs: 30_000 });
  await waitFor(() => nodeVal(node, 2) === "start", { message: "initial rows on the sidecar" });

  // The replica is cut off; each side writes both rows, in this wall-clock order:
  // row 1: sidecar first, replica later  -> the replica's value wins everywhere
  // row 2: replica first, sidecar later  -> the sidecar's value wins everywhere
  await proxy.cut();
  await waitFor(async () => !(await db.status()).online, { message: "the replica to notice it is offline" });
  appSql(node.db, "UPDATE notes SET val = 'native-early' WHERE id = 1");
  await sleep(30);
  await db.exec("UPDATE notes SET val = 'js-late' WHERE id = 1");
  await db.exec("UPDATE notes SET val = 'js-early' WHERE id = 2");
  await sleep(30);
  appSql(node.db, "UPDATE notes SET val = 'native-late' WHERE id = 2");
  // Let the sidecar publish its writes first: the replica's older write to row 2 then
  // arrives later in stream order and must still lose.
  await sleep(1000);

  await proxy.restore();
  await db.flush({ timeoutMs: 60_000 });
  await db.sync({ timeoutMs: 60_000 });
  const expected = [
    [1, "js-late"],
    [2, "native-late"],
  ];
  await waitFor(() => JSON.stringify(node.query("SELECT id, val FROM notes ORDER BY id")) === JSON.stringify(expected), {
    message: () => `sidecar rows ${JSON.stringify(node.query("SELECT id, val FROM notes ORDER BY id"))}`,
  });
  assert.deepEqual(
    (await db.query("SELECT id, val FROM notes ORDER BY id")).map((r) => [r.id, r.val]),
    expected,
  );
});

test("a replica replicates through a sidecar's embedded nats-server (websocket_bind)", async () => {
  const dir = tempDir();
  const embedded = { port: await freePort(), wsPort: await freePort() };
  const node = await Sidecar.start(join(dir, "node1"), "node1", { embedded, schema: SCHEMA });
  const { open } = await harmonylite();
  const { db } = await openReplica(open, `ws://127.0.0.1:${embedded.wsPort}`);
  await db.exec("INSERT INTO notes(id, val) VALUES (1, 'js')");
  appSql(node.db, "INSERT INTO notes(id, val) VALUES (2, 'native')");
  await db.flush({ timeoutMs: 30_000 });
  await waitFor(() => nodeVal(node, 1) === "js", { message: () => `row 1 on the sidecar:\n${node.logTail()}` });
  await waitFor(async () => (await replicaVal(db, 2)) === "native", { message: "row 2 on the replica" });
  await db.sync({ timeoutMs: 30_000 });
  assert.equal((await db.status()).lag, 0);
});

test("replicas reconnect after the nats-server restarts and send what they wrote meanwhile", async () => {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  const { open } = await harmonylite();
  const { db: a } = await openReplica(open, nats.wsUrl, "restart-a.db");
  const { db: b } = await openReplica(open, nats.wsUrl, "restart-b.db");
  const seen = [];
  a.on("status", (s) => seen.push(s.online));
  await a.exec("INSERT INTO notes(id, val) VALUES (1, 'before')");
  await a.flush({ timeoutMs: 30_000 });
  await b.sync({ timeoutMs: 30_000 });
  assert.equal(await replicaVal(b, 1), "before");

  await nats.stop();
  await waitFor(async () => !(await a.status()).online, { message: "the replica to notice the server is gone" });
  await a.exec("INSERT INTO notes(id, val) VALUES (2, 'while-down')");
  await b.exec("INSERT INTO notes(id, val) VALUES (3, 'while-down-b')");
  await assert.rejects(a.flush({ timeoutMs: 300 }), (e) => e.name === "TimeoutError");
  assert.equal((await a.status()).outboxRows, 1);

  await nats.restart();
  await a.flush({ timeoutMs: 60_000 });
  await b.flush({ timeoutMs: 60_000 });
  await a.sync({ timeoutMs: 60_000 });
  await b.sync({ timeoutMs: 60_000 });
  for (const db of [a, b]) {
    assert.deepEqual(
      (await db.query("SELECT id, val FROM notes ORDER BY id")).map((r) => [r.id, r.val]),
      [
        [1, "before"],
        [2, "while-down"],
        [3, "while-down-b"],
      ],
    );
  }
  await waitFor(() => seen.includes(false) && seen.at(-1) === true, { message: () => `status events ${JSON.stringify(seen)}` });
});
