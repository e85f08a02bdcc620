// Scoped replicas at scale, in node: a 3-node native cluster (embedded nats-servers routed
// together, [scopes] on, auth callout) and 20 scoped replicas (wasm, memory storage) of 10
// users, spread over the three nodes' WebSocket listeners, all writing at once while the
// full nodes' applications write too; a third of the replicas are cut off for a while and
// keep writing. Checked against a model of every write: every node ends with every row,
// each replica with exactly its user's rows and the shared table, and nothing acknowledged
// is lost or duplicated.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";

import { CutProxy, appSql, cleanup, harmonylite, notesCluster, notesToken as token, onCleanup, waitFor } from "./helpers.mjs";

const SCHEMA = "CREATE TABLE notes(id TEXT PRIMARY KEY, owner_id TEXT, body TEXT); CREATE TABLE tags(id TEXT PRIMARY KEY, name TEXT)";
const USERS = 10;
const REPLICAS = 20;
const WRITES = 15;

afterEach(cleanup);

const rows = (list) => list.map((r) => `${r.id}|${r.owner_id}|${r.body}`).sort();

test("20 scoped replicas of 10 users and 3 full nodes writing at once, some offline for a while, converge to the model", { timeout: 600_000 }, async () => {
  const { nodes, wsPorts } = await notesCluster({ schema: SCHEMA, scopes: true });
  const { open } = await harmonylite();

  // The model: every row written anywhere, by id.
  const model = new Map();
  const tags = new Map();
  appSql(nodes[0].db, "INSERT INTO tags VALUES ('t0', 'before')", []);
  tags.set("t0", "before");

  const replicas = [];
  for (let r = 0; r < REPLICAS; r++) {
    const user = `u${r % USERS}`;
    // Every third replica goes through a proxy that is cut for a while.
    const proxy = r % 3 === 0 ? await CutProxy.start(wsPorts[r % 3]) : null;
    const servers = proxy ? proxy.wsUrl : `ws://127.0.0.1:${wsPorts[r % 3]}`;
    const db = await open({ name: `r${r}.db`, servers, scoped: true, getToken: () => token(user), reconnectMinMs: 100, reconnectMaxMs: 1000 });
    onCleanup(() => db.close({ flushTimeoutMs: 0 }));
    const errors = [];
    const refused = [];
    db.on("error", (e) => errors.push(String(e)));
    db.on("refused", (w) => refused.push(w));
    await db.exec(SCHEMA);
    replicas.push({ r, user, db, proxy, errors, refused });
  }
  await Promise.all(replicas.map(({ db }) => db.sync({ timeoutMs: 60_000 })));

  // Cut a third of them off; everyone writes, full nodes included.
  for (const { proxy } of replicas) {
    await proxy?.cut();
  }
  const writers = replicas.map(async ({ r, user, db }) => {
    for (let i = 0; i < WRITES; i++) {
      const id = `r${r}-${i}`;
      await db.exec("INSERT INTO notes VALUES (?, ?, ?)", [id, user, `note ${i} of replica ${r}`]);
      model.set(id, { id, owner_id: user, body: `note ${i} of replica ${r}` });
      if (i % 5 === 4) {
        // An edit of an earlier note of its own.
        const earlier = `r${r}-${i - 2}`;
        await db.exec("UPDATE notes SET body = ? WHERE id = ?", [`edited by replica ${r}`, earlier]);
        model.set(earlier, { id: earlier, owner_id: user, body: `edited by replica ${r}` });
      }
    }
  });
  for (let i = 0; i < WRITES; i++) {
    const node = nodes[i % 3];
    const user = `u${i % USERS}`;
    const id = `n${i}`;
    appSql(node.db, "INSERT INTO notes VALUES (?, ?, ?)", [id, user, `from ${node.name}`]);
    model.set(id, { id, owner_id: user, body: `from ${node.name}` });
    if (i % 4 === 0) {
      appSql(node.db, "INSERT INTO tags VALUES (?, ?)", [`t${i + 1}`, `tag ${i}`]);
      tags.set(`t${i + 1}`, `tag ${i}`);
    }
  }
  await Promise.all(writers);
  for (const { proxy } of replicas) {
    await proxy?.restore();
  }

  // Everything acknowledged, everything applied.
  await Promise.all(replicas.map(({ db }) => db.flush({ timeoutMs: 120_000 })));
  const expected = rows([...model.values()]);
  for (const node of nodes) {
    await waitFor(() => JSON.stringify(rows(node.query("SELECT id, owner_id, body FROM notes").map(([id, owner_id, body]) => ({ id, owner_id, body })))) === JSON.stringify(expected), {
      timeoutMs: 120_000,
      message: () => `${node.name} holds ${node.query("SELECT count(*) FROM notes")[0][0]} notes of ${expected.length}\n${node.logTail()}`,
    });
    assert.equal(node.query("SELECT count(*) FROM tags")[0][0], tags.size);
  }
  await Promise.all(replicas.map(({ db }) => db.sync({ timeoutMs: 120_000 })));
  for (const { r, user, db, errors, refused } of replicas) {
    const mine = rows([...model.values()].filter((row) => row.owner_id === user));
    await waitFor(async () => JSON.stringify(rows(await db.query("SELECT id, owner_id, body FROM notes"))) === JSON.stringify(mine), {
      timeoutMs: 60_000,
      message: async () => `replica ${r} (${user}) holds ${JSON.stringify(rows(await db.query("SELECT id, owner_id, body FROM notes")))}, expected ${JSON.stringify(mine)}; errors ${errors.slice(-5).join("; ")}`,
    });
    const tagRows = (await db.query("SELECT id, name FROM tags")).map((t) => `${t.id}|${t.name}`).sort();
    assert.deepEqual(tagRows, [...tags].map(([id, name]) => `${id}|${name}`).sort(), `replica ${r}'s shared table`);
    assert.deepEqual(refused, [], `replica ${r} wrote only its own rows`);
    const status = await db.status();
    assert.equal(status.outboxFrames, 0);
    assert.deepEqual(status.scopes?.partitions, [`user.t${user}`]);
  }
});
