// The change stream deleted and created again under a replica: sequence numbers start over,
// so a replica must not consume the new stream from its old cursor (it would skip the new
// stream's first messages) nor create a new, empty stream itself. It says why in
// `status().streamRefused` and an error event, and `adoptStream()` moves it onto the new
// stream. Real nats-server; the stream is lost by wiping JetStream's store.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { join } from "node:path";

import { NatsServer, cleanup, harmonylite, onCleanup, tempDir, waitFor } from "./helpers.mjs";

const SCHEMA = "CREATE TABLE notes(id INTEGER PRIMARY KEY, val TEXT NOT NULL)";

afterEach(cleanup);

async function openReplica(open, servers, name) {
  const db = await open({ name, servers, reconnectMinMs: 100, reconnectMaxMs: 500 });
  onCleanup(() => db.close({ flushTimeoutMs: 0 }));
  const errors = [];
  db.on("error", (e) => errors.push(e));
  await db.exec(SCHEMA);
  return { db, errors };
}

const ids = async (db) => (await db.query("SELECT id FROM notes ORDER BY id")).map((r) => r.id);

test("a replica refuses a lost or re-created stream, keeps publishing, and adopts it on request", async () => {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  const { open, ReplicationError, InvalidArgumentError } = await harmonylite();

  // Replica A applies the stream's first messages (its own and B's).
  const a = await openReplica(open, nats.wsUrl, "a.db");
  const b1 = await openReplica(open, nats.wsUrl, "b1.db");
  await a.db.exec("INSERT INTO notes(id, val) VALUES (1, 'a'), (2, 'a')");
  await b1.db.exec("INSERT INTO notes(id, val) VALUES (3, 'b')");
  await a.db.flush({ timeoutMs: 30_000 });
  await b1.db.flush({ timeoutMs: 30_000 });
  await a.db.sync({ timeoutMs: 30_000 });
  assert.deepEqual(await ids(a.db), [1, 2, 3]);
  const cursorBefore = (await a.db.status()).cursor;
  assert.ok(cursorBefore >= 2, `cursor ${cursorBefore}`);
  await assert.rejects(a.db.adoptStream(), (e) => e instanceof InvalidArgumentError && /consuming the stream/.test(e.message));
  await b1.db.close({ flushTimeoutMs: 0 });

  // JetStream loses the stream. A, having applied messages of it, does not create a new one.
  await nats.stop();
  rmSync(join(dir, "nats", "store"), { recursive: true, force: true });
  await nats.restart();
  await waitFor(async () => /does not exist/.test((await a.db.status()).streamRefused ?? ""), {
    message: async () => `A to refuse the missing stream; status ${JSON.stringify(await a.db.status())}`,
  });
  assert.ok(a.errors.some((e) => /does not exist/.test(e.message)), "no error event for the missing stream");
  await assert.rejects(a.db.sync({ timeoutMs: 5_000 }), (e) => e instanceof ReplicationError && /does not exist/.test(e.message));

  // A new replica (cursor 0) creates the stream and writes its first messages.
  const b2 = await openReplica(open, nats.wsUrl, "b2.db");
  await b2.db.exec("INSERT INTO notes(id, val) VALUES (10, 'new stream')");
  await b2.db.flush({ timeoutMs: 30_000 });

  // A now finds a stream created at another time than the one its cursor counts in: it
  // applies nothing of it, but its own writes still publish.
  await waitFor(async () => /deleted and created again/.test((await a.db.status()).streamRefused ?? ""), {
    message: async () => `A to refuse the re-created stream; status ${JSON.stringify(await a.db.status())}`,
  });
  assert.match((await a.db.status()).streamRefused, /adoptStream\(\)/);
  await a.db.exec("INSERT INTO notes(id, val) VALUES (4, 'a while refused')");
  await a.db.flush({ timeoutMs: 30_000 });
  await waitFor(async () => (await ids(b2.db)).includes(4), { message: "A's write on B2" });
  assert.deepEqual(await ids(a.db), [1, 2, 3, 4], "A applied messages of a stream it refuses");
  await assert.rejects(a.db.sync({ timeoutMs: 5_000 }), (e) => e instanceof ReplicationError && /created again/.test(e.message));

  // Adopting: A applies the new stream from its first message.
  assert.equal(await a.db.adoptStream(), cursorBefore);
  await waitFor(async () => (await ids(a.db)).includes(10), { message: "B2's write on A after adoptStream()" });
  await a.db.sync({ timeoutMs: 30_000 });
  const status = await a.db.status();
  assert.equal(status.streamRefused, null);
  assert.equal(status.online, true);
  assert.equal(status.outboxFrames, 0);
  assert.deepEqual(await ids(a.db), [1, 2, 3, 4, 10]);
});
