// Offline-first: a replica cut off from NATS keeps accepting writes; the sidecar keeps
// writing too; after reconnecting both converge, with nothing lost and nothing doubled.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";

import { NatsServer, Sidecar, CutProxy, appInsertMany, cleanup, harmonylite, onCleanup, tempDir, waitFor } from "./helpers.mjs";

const SCHEMA = "CREATE TABLE items(id INTEGER PRIMARY KEY, val TEXT NOT NULL)";
const ROWS = 10_000;

afterEach(cleanup);

test("10k offline writes on each side converge after reconnecting", async () => {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  const node = await Sidecar.start(join(dir, "node1"), "node1", { natsUrl: nats.url, schema: SCHEMA });
  const proxy = await CutProxy.start(nats.wsPort);
  const { open } = await harmonylite();
  const db = await open({ name: "offline.db", servers: proxy.wsUrl, reconnectMinMs: 100, reconnectMaxMs: 1000 });
  onCleanup(() => db.close({ flushTimeoutMs: 0 }));
  await db.exec(SCHEMA);
  await waitFor(async () => (await db.status()).online, { message: "the replica to come online" });

  await proxy.cut();
  await waitFor(async () => !(await db.status()).online, { message: "the replica to notice it is offline" });

  // Replica: 10k rows while offline, in transactions of 100 and single statements.
  for (let i = 0; i < ROWS; i += 100) {
    if (i % 1000 === 0) {
      for (let j = i; j < i + 100; j++) {
        await db.exec("INSERT INTO items(id, val) VALUES (?, ?)", [j, `js-${j}`]);
      }
      continue;
    }
    await db.transaction(async (tx) => {
      for (let j = i; j < i + 100; j++) {
        await tx.exec("INSERT INTO items(id, val) VALUES (?, ?)", [j, `js-${j}`]);
      }
    });
  }
  // Sidecar application: 10k other rows meanwhile (published while the replica is away).
  const nativeIds = Array.from({ length: ROWS }, (_, i) => 100_000 + i);
  appInsertMany(node.db, "items", nativeIds, (id) => `native-${id}`, 100);

  const offline = await db.status();
  assert.equal(offline.online, false);
  assert.equal(offline.outboxRows, ROWS, "every offline write waits in the outbox");

  await waitFor(() => node.query("SELECT count(*) FROM items")[0][0] === ROWS, {
    message: () => `the sidecar's own rows (${node.query("SELECT count(*) FROM items")[0][0]})`,
  });

  await proxy.restore();
  await db.flush({ timeoutMs: 120_000 });
  await db.sync({ timeoutMs: 120_000 });
  await waitFor(() => node.query("SELECT count(*) FROM items")[0][0] === 2 * ROWS, {
    timeoutMs: 120_000,
    message: () => `the sidecar to hold ${2 * ROWS} rows (has ${node.query("SELECT count(*) FROM items")[0][0]})\n${node.logTail()}`,
  });

  const replicaRows = await db.query("SELECT id, val FROM items ORDER BY id");
  const nodeRows = node.query("SELECT id, val FROM items ORDER BY id");
  assert.equal(replicaRows.length, 2 * ROWS);
  assert.equal(nodeRows.length, 2 * ROWS);
  for (let i = 0; i < nodeRows.length; i++) {
    const [id, val] = nodeRows[i];
    assert.deepEqual(replicaRows[i], { id, val }, `row ${i} differs`);
    assert.equal(val, id >= 100_000 ? `native-${id}` : `js-${id}`);
  }
  const status = await db.status();
  assert.equal(status.outboxFrames, 0);
  assert.equal(status.lag, 0);
  assert.equal(status.parked, 0);
});
