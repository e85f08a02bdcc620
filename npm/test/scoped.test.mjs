// Scoped replicas in node (wasm, memory storage) against a real sidecar with [scopes] on and
// its embedded nats-server (auth callout, WebSocket): each replica connects with its user's
// token, reads only its partition and the shared table through the feed a full node creates
// for it, and its writes reach the sidecar on its partition's subject. Writes outside its
// scope are refused (by the replica itself, or by the full node) and return to the accepted
// state; scope changes, moves between partitions and the scoped bootstrap are covered too.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";

import { Sidecar, appSql, cleanup, freePort, harmonylite, notesScopesToml, notesToken, onCleanup, sidecarBinary, tempDir, waitFor } from "./helpers.mjs";

const SCHEMA =
  "CREATE TABLE notes(id TEXT PRIMARY KEY, owner_id TEXT, body TEXT); CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT); CREATE TABLE projects(id TEXT PRIMARY KEY, team_id TEXT, title TEXT)";

afterEach(cleanup);

const token = notesToken;

async function scopedNode({ maxEntries } = {}) {
  const dir = tempDir("hl-scoped-");
  const extra = [...notesScopesToml(dir, { teams: true }), ...(maxEntries ? ["[replication_log]", `max_entries = ${maxEntries}`] : [])].join("\n");
  const embedded = { port: await freePort(), wsPort: await freePort() };
  const node = new Sidecar(join(dir, "node1"), "node1", undefined, embedded, SCHEMA, extra, await freePort());
  execFileSync(sidecarBinary(), ["--config", node.config, "--scopes-keygen"], { stdio: "ignore" });
  await node.start();
  onCleanup(() => node.stop());
  return { node, wsUrl: `ws://127.0.0.1:${embedded.wsPort}` };
}

async function openScoped(open, wsUrl, user, teams = () => [], name = `${user}.db`) {
  const db = await open({ name, servers: wsUrl, scoped: true, getToken: () => token(user, 600, teams()), reconnectMinMs: 100, reconnectMaxMs: 1000 });
  onCleanup(() => db.close({ flushTimeoutMs: 0 }));
  const errors = [];
  const refused = [];
  db.on("error", (e) => errors.push(e));
  db.on("refused", (r) => refused.push(r));
  await db.exec(SCHEMA);
  return { db, errors, refused };
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

  // A row of bob's written in alice's replica is refused by her replica before it is
  // published (NATS would refuse her bob's subject too): an event names it, the row is gone.
  await alice.db.exec("INSERT INTO notes VALUES ('x1', 'bob', 'forged by alice')");
  await waitFor(() => alice.refused.some((r) => r.table === "notes" && r.key[0] === "x1"), {
    message: () => `no refused event for the forged row: ${JSON.stringify(alice.refused)}; errors ${alice.errors.join("; ")}`,
  });
  assert.match(alice.refused.find((r) => r.key[0] === "x1").reason, /not one this replica's token grants/);
  assert.deepEqual((await notes(alice.db)).map((r) => r[0]), ["a1", "a2", "a3"]);
  await alice.db.flush({ timeoutMs: 30_000 });
  assert.equal((await alice.db.status()).outboxFrames, 0, "nothing refused waits in the outbox");
  assert.equal(node.query("SELECT count(*) FROM notes WHERE id = 'x1'")[0][0], 0, "the forged row reached the full node");
});

test("a refused write is reported and returns to the accepted state: a shared table, a key taken over", async () => {
  const { node, wsUrl } = await scopedNode();
  appSql(node.db, "INSERT INTO notes VALUES ('b1', 'bob', 'for bob')", []);
  appSql(node.db, "INSERT INTO tags VALUES (1, 'shared tag')", []);
  const { open } = await harmonylite();
  const alice = await openScoped(open, wsUrl, "alice");
  // Alice's second device reads the same partition.
  const phone = await openScoped(open, wsUrl, "alice", () => [], "alice-phone.db");
  await waitFor(async () => (await alice.db.query("SELECT name FROM tags")).length === 1, {
    message: async () => `alice's tags ${JSON.stringify(await alice.db.query("SELECT * FROM tags"))}; errors ${alice.errors.join("; ")}\n${node.logTail()}`,
  });
  assert.deepEqual((await alice.db.status()).scopes?.partitions, ["user.talice"], "status().scopes names the token's partitions");

  // A shared table: only full nodes write it. Refused at once, and the accepted row comes back.
  await alice.db.exec("UPDATE tags SET name = 'alice was here' WHERE id = 1");
  await waitFor(() => alice.refused.some((r) => r.table === "tags"), { message: () => `no refused event for the tag: ${JSON.stringify(alice.refused)}` });
  assert.deepEqual(alice.refused.find((r) => r.table === "tags").key, [1]);
  assert.match(alice.refused.find((r) => r.table === "tags").reason, /shared/);
  await waitFor(async () => (await alice.db.query("SELECT name FROM tags"))[0]?.name === "shared tag", {
    message: async () => `alice's tag ${JSON.stringify(await alice.db.query("SELECT * FROM tags"))}; status ${JSON.stringify(await alice.db.status())}; errors ${alice.errors.join("; ")}`,
  });

  // Bob's key, written as alice's own note: her replica cannot know, so it goes out on her
  // subject; the full node refuses it (the stream gave the key to bob) and tells her.
  await alice.db.exec("INSERT INTO notes VALUES ('b1', 'alice', 'taken over')");
  await waitFor(() => alice.refused.some((r) => r.table === "notes" && r.key[0] === "b1"), {
    message: () => `no refused event for the taken-over key: ${JSON.stringify(alice.refused)}; errors ${alice.errors.join("; ")}\n${node.logTail()}`,
  });
  assert.match(alice.refused.find((r) => r.key[0] === "b1").reason, /belongs to partition/);
  await waitFor(async () => (await notes(alice.db)).length === 0, { message: async () => `alice still holds ${JSON.stringify(await notes(alice.db))}` });
  await waitFor(async () => (await alice.db.status()).scopes?.refetching === 0, { message: async () => JSON.stringify(await alice.db.status()) });
  assert.deepEqual(node.query("SELECT id, owner_id, body FROM notes"), [["b1", "bob", "for bob"]], "the full node keeps bob's row");
  assert.equal(alice.refused.filter((r) => r.key[0] === "b1").length, 1, "one event per refused row");
  // Her phone may have applied the refused row from their shared subject: it drops it too,
  // without an event (it did not write it).
  await phone.db.sync({ timeoutMs: 30_000 });
  await waitFor(async () => (await notes(phone.db)).length === 0 && (await phone.db.status()).scopes?.refetching === 0, {
    message: async () => `alice's phone holds ${JSON.stringify(await notes(phone.db))}; status ${JSON.stringify(await phone.db.status())}`,
  });
  assert.deepEqual(phone.refused, []);

  // Her own writes still go through.
  await alice.db.exec("INSERT INTO notes VALUES ('a1', 'alice', 'mine')");
  await alice.db.flush({ timeoutMs: 30_000 });
  await waitFor(() => node.query("SELECT count(*) FROM notes WHERE id = 'a1'")[0][0] === 1, { message: () => node.logTail() });
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

test("a new token's partitions are bootstrapped and the ones it no longer grants are removed locally", async () => {
  const { node, wsUrl } = await scopedNode();
  appSql(node.db, "INSERT INTO projects VALUES ('p1', 't1', 'team one'), ('p2', 't2', 'team two')", []);
  const { open } = await harmonylite();
  let teams = ["t1"];
  const alice = await openScoped(open, wsUrl, "alice", () => teams);
  const projects = async () => (await alice.db.query("SELECT id FROM projects ORDER BY id")).map((r) => r.id);
  await waitFor(async () => JSON.stringify(await projects()) === '["p1"]', {
    message: async () => `alice's projects ${JSON.stringify(await projects())}; errors ${alice.errors.join("; ")}\n${node.logTail()}`,
  });
  assert.deepEqual((await alice.db.status()).scopes?.partitions, ["team.tt1", "user.talice"]);

  // The app moves alice from team t1 to t2. Her next token says so: the next feed (here
  // after the node restarts and she reconnects) brings t2's rows and takes t1's away.
  teams = ["t2"];
  await node.stop();
  await node.start();
  await waitFor(async () => JSON.stringify(await projects()) === '["p2"]', {
    timeoutMs: 60_000,
    message: async () => `alice's projects ${JSON.stringify(await projects())}; status ${JSON.stringify(await alice.db.status())}; errors ${alice.errors.join("; ")}\n${node.logTail()}`,
  });
  assert.deepEqual((await alice.db.status()).scopes?.partitions, ["team.tt2", "user.talice"]);
  await alice.db.flush({ timeoutMs: 30_000 });
  assert.equal(node.query("SELECT count(*) FROM projects")[0][0], 2, "removing t1's rows locally deleted nothing elsewhere");

  // Later t2 changes reach her; t1's do not.
  appSql(node.db, "INSERT INTO projects VALUES ('p3', 't2', 'more of two'), ('p4', 't1', 'more of one')", []);
  await waitFor(async () => (await projects()).includes("p3"), { message: async () => `alice's projects ${JSON.stringify(await projects())}` });
  await alice.db.sync({ timeoutMs: 30_000 });
  assert.deepEqual(await projects(), ["p2", "p3"]);
});

test("a row moved to another partition leaves the old partition's replicas; a user of both may move it", async () => {
  const { node, wsUrl } = await scopedNode();
  appSql(node.db, "INSERT INTO projects VALUES ('p1', 't1', 'roadmap'), ('p2', 't1', 'budget')", []);
  const { open } = await harmonylite();
  const lead = await openScoped(open, wsUrl, "lead", () => ["t1", "t2"]);
  const member = await openScoped(open, wsUrl, "member", () => ["t1"]);
  const projects = async (db) => (await db.query("SELECT id, team_id FROM projects ORDER BY id")).map((r) => `${r.id}:${r.team_id}`);
  for (const u of [lead, member]) {
    await waitFor(async () => (await projects(u.db)).length === 2, { message: async () => `${JSON.stringify(await projects(u.db))}; ${u.errors.join("; ")}` });
  }

  // The app moves p1 to team t2 on the full node: t1's member no longer has it.
  appSql(node.db, "UPDATE projects SET team_id = 't2' WHERE id = 'p1'", []);
  await waitFor(async () => JSON.stringify(await projects(member.db)) === '["p2:t1"]', { message: async () => `member holds ${JSON.stringify(await projects(member.db))}` });
  await waitFor(async () => JSON.stringify(await projects(lead.db)) === '["p1:t2","p2:t1"]', { message: async () => `lead holds ${JSON.stringify(await projects(lead.db))}` });

  // The lead, in both teams, moves p2 to t2 from her browser: accepted everywhere.
  await lead.db.exec("UPDATE projects SET team_id = 't2' WHERE id = 'p2'");
  await lead.db.flush({ timeoutMs: 30_000 });
  await waitFor(() => node.query("SELECT team_id FROM projects WHERE id = 'p2'")[0][0] === "t2", { message: () => node.logTail() });
  await waitFor(async () => (await projects(member.db)).length === 0, { message: async () => `member holds ${JSON.stringify(await projects(member.db))}` });
  assert.deepEqual(lead.refused, []);

  // The member may not move a t1 row into t2 (a team it is not in): refused, nothing sent.
  appSql(node.db, "INSERT INTO projects VALUES ('p3', 't1', 'hiring')", []);
  await waitFor(async () => (await projects(member.db)).includes("p3:t1"), { message: async () => JSON.stringify(await projects(member.db)) });
  await member.db.exec("UPDATE projects SET team_id = 't2' WHERE id = 'p3'");
  await waitFor(() => member.refused.some((r) => r.table === "projects" && r.key[0] === "p3"), { message: () => JSON.stringify(member.refused) });
  await waitFor(async () => (await projects(member.db)).includes("p3:t1"), { message: async () => `member's p3 back as accepted: ${JSON.stringify(await projects(member.db))}` });
  assert.equal(node.query("SELECT team_id FROM projects WHERE id = 'p3'")[0][0], "t1");
});
