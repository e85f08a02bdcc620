// Scoped replicas in node (wasm, memory storage) against a real sidecar with [scopes] on and
// its embedded nats-server (auth callout, WebSocket): each replica connects with its user's
// token, reads only its partition and the shared table through the feed a full node creates
// for it, and its writes reach the sidecar on its partition's subject. A write into another
// user's partition is refused by NATS and never reaches the sidecar.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { Sidecar, appSql, cleanup, freePort, harmonylite, onCleanup, sidecarBinary, tempDir, waitFor } from "./helpers.mjs";

const SCHEMA = "CREATE TABLE notes(id TEXT PRIMARY KEY, owner_id TEXT, body TEXT); CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT)";
const AUDIENCE = "notes-app";
const SECRET = "the notes app's HS256 secret";

afterEach(cleanup);

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 token for user `sub`, as the app's login would issue it. */
function token(sub, ttlSeconds = 600) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, aud: AUDIENCE, iat: now, exp: now + ttlSeconds }));
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

async function scopedNode({ maxEntries } = {}) {
  const dir = tempDir("hl-scoped-");
  writeFileSync(join(dir, "hs256.secret"), SECRET);
  const seed = join(dir, "callout.nk");
  const extra = [
    "[scopes]",
    'shared = ["tags"]',
    "[[scopes.partition]]",
    'name = "user"',
    'claims = ["sub"]',
    'tables = { notes = "owner_id" }',
    "[scopes.auth]",
    `audience = "${AUDIENCE}"`,
    `hs256_secret_file = ${JSON.stringify(join(dir, "hs256.secret"))}`,
    `callout_seed_file = ${JSON.stringify(seed)}`,
    ...(maxEntries ? ["[replication_log]", `max_entries = ${maxEntries}`] : []),
  ].join("\n");
  const embedded = { port: await freePort(), wsPort: await freePort() };
  const node = new Sidecar(join(dir, "node1"), "node1", undefined, embedded, SCHEMA, extra, await freePort());
  execFileSync(sidecarBinary(), ["--config", node.config, "--scopes-keygen"], { stdio: "ignore" });
  await node.start();
  onCleanup(() => node.stop());
  return { node, wsUrl: `ws://127.0.0.1:${embedded.wsPort}` };
}

async function openScoped(open, wsUrl, user) {
  const db = await open({ name: `${user}.db`, servers: wsUrl, scoped: true, getToken: () => token(user), reconnectMinMs: 100, reconnectMaxMs: 1000 });
  onCleanup(() => db.close({ flushTimeoutMs: 0 }));
  const errors = [];
  db.on("error", (e) => errors.push(e));
  await db.exec(SCHEMA);
  return { db, errors };
}

const notes = async (db) => (await db.query("SELECT id, owner_id, body FROM notes ORDER BY id")).map((r) => [r.id, r.owner_id, r.body]);

test("each scoped replica reads and writes only its partition and the shared table", async () => {
  const { node, wsUrl } = await scopedNode();
  appSql(node.db, "INSERT INTO notes VALUES ('a1', 'alice', 'for alice'), ('b1', 'bob', 'for bob')", []);
  appSql(node.db, "INSERT INTO tags VALUES (1, 'shared tag')", []);
  const { open } = await harmonylite();
  const alice = await openScoped(open, wsUrl, "alice");
  const bob = await openScoped(open, wsUrl, "bob");

  await alice.db.sync({ timeoutMs: 30_000 });
  await bob.db.sync({ timeoutMs: 30_000 });
  await waitFor(async () => (await notes(alice.db)).length === 1 && (await notes(bob.db)).length === 1, {
    message: async () => `alice ${JSON.stringify(await notes(alice.db))}, bob ${JSON.stringify(await notes(bob.db))}; errors ${alice.errors.concat(bob.errors).join("; ")}\n${node.logTail()}`,
  });
  assert.deepEqual(await notes(alice.db), [["a1", "alice", "for alice"]]);
  assert.deepEqual(await notes(bob.db), [["b1", "bob", "for bob"]]);
  for (const { db } of [alice, bob]) {
    assert.deepEqual((await db.query("SELECT name FROM tags")).map((r) => r.name), ["shared tag"]);
  }

  // Their own writes reach the full node; each other's never reach them.
  await alice.db.exec("INSERT INTO notes VALUES ('a2', 'alice', 'written by alice')");
  await bob.db.exec("INSERT INTO notes VALUES ('b2', 'bob', 'written by bob')");
  await alice.db.flush({ timeoutMs: 30_000 });
  await bob.db.flush({ timeoutMs: 30_000 });
  await waitFor(() => node.query("SELECT count(*) FROM notes")[0][0] === 4, { message: () => `sidecar notes ${JSON.stringify(node.query("SELECT * FROM notes"))}\n${node.logTail()}` });
  appSql(node.db, "INSERT INTO notes VALUES ('a3', 'alice', 'later, for alice')", []);
  await waitFor(async () => (await notes(alice.db)).length === 3, { message: async () => `alice ${JSON.stringify(await notes(alice.db))}` });
  await bob.db.sync({ timeoutMs: 30_000 });
  assert.deepEqual((await notes(bob.db)).map((r) => r[0]), ["b1", "b2"], "bob holds only his partition");

  // A row of bob's written in alice's replica goes to bob's subject, which NATS refuses her.
  await alice.db.exec("INSERT INTO notes VALUES ('x1', 'bob', 'forged by alice')");
  await waitFor(() => alice.errors.some((e) => /x1|publish|Permissions|permission/i.test(String(e))), {
    message: () => `no publish error for the forged row: ${alice.errors.join("; ")}`,
  });
  assert.equal(node.query("SELECT count(*) FROM notes WHERE id = 'x1'")[0][0], 0, "the forged row reached the full node");
});

test("a new scoped replica starts from a bootstrap of its partitions when the stream no longer holds their history", async () => {
  const { node, wsUrl } = await scopedNode({ maxEntries: 5 });
  for (let i = 0; i < 20; i++) {
    appSql(node.db, "INSERT INTO notes VALUES (?, ?, ?)", [`a${i}`, "alice", `alice's note ${i}`]);
    appSql(node.db, "INSERT INTO notes VALUES (?, ?, ?)", [`b${i}`, "bob", `bob's note ${i}`]);
  }
  appSql(node.db, "DELETE FROM notes WHERE id = 'a0'", []);
  appSql(node.db, "INSERT INTO tags VALUES (1, 'shared tag')", []);
  // Everything captured and acknowledged by the stream (which keeps only the last 5).
  await waitFor(() => node.query("SELECT (SELECT count(*) FROM __hl_log) + (SELECT count(*) FROM __hl_outbox)")[0][0] === 0, { message: () => node.logTail() });
  const { open } = await harmonylite();
  const alice = await openScoped(open, wsUrl, "alice");
  await waitFor(async () => (await notes(alice.db)).length === 19 && (await alice.db.query("SELECT * FROM tags")).length === 1, {
    message: async () => `alice ${JSON.stringify((await notes(alice.db)).map((r) => r[0]))}; errors ${alice.errors.join("; ")}\n${node.logTail()}`,
  });
  const ids = (await notes(alice.db)).map((r) => r[0]);
  assert.ok(ids.every((id) => id.startsWith("a")), `another user's row reached alice: ${ids}`);
  assert.ok(!ids.includes("a0"), "the deleted note came back");
  assert.ok(!(await alice.db.status()).fellBehind, "a bootstrapped replica is not behind");
  // And it keeps following its feed from where the bootstrap left it.
  appSql(node.db, "INSERT INTO notes VALUES ('a99', 'alice', 'after the bootstrap')", []);
  await waitFor(async () => (await notes(alice.db)).some((r) => r[0] === "a99"), { message: () => `a99 never reached alice: ${alice.errors.join("; ")}` });
});
