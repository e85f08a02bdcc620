// The notes example end to end: a 3-node harmonylite cluster (real sidecars, their embedded
// nats-servers routed into one cluster, [scopes] on), the example's server, and two users,
// alice and bob, each in their own headless Chromium (Debian's /usr/bin/chromium through
// playwright-core, a fresh profile each, launched as npm/test/hosts/browser.test.mjs does)
// using the page through its forms. alice's page syncs through node1, bob's through node2.
//
// It checks that each user's browser holds only their own notes; that a board row an app
// writes into a full node's database file reaches both; that alice's notes and edits reach
// the files of all three nodes; that bob's forged row in alice's partition reaches no node
// and changes nothing of alice's, and that bob's page is told and his replica drops them;
// that a third user works through another node; and that alice's edits made while she
// cannot reach NATS (the cluster is down) reach every node once it is back. A missing
// Chromium or nats-server fails the test; nothing is skipped.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { join } from "node:path";

import { CHROMIUM_FLAGS, chromiumPath } from "../../../npm/test/hosts/hosts.mjs";
import { cleanup, onCleanup, tempDir, waitFor } from "../../../npm/test/helpers.mjs";
import { build } from "../build.mjs";
import { appSql, startCluster } from "../cluster.mjs";
import { startServer } from "../server.mjs";

const require = createRequire(import.meta.url);

after(cleanup);

/** Rows of `notes` in a node's database file: [id, owner_id, body], by id. */
const nodeNotes = (node) => node.query("SELECT id, owner_id, body FROM notes ORDER BY id");

/** The notes a page shows: { id, owner, body } in list order. */
const shownNotes = (page) =>
  page.$$eval("#notes li", (lis) => lis.map((li) => ({ id: li.dataset.id, owner: li.dataset.owner, body: li.querySelector(".body")?.textContent })));
/** The board messages a page shows. */
const shownBoard = (page) => page.$$eval("#board li", (lis) => lis.map((li) => li.textContent));

/** Runs `sql` in the user's replica (the app exposes it as window.notesApp.db). */
const inReplica = (user, sql, params = []) => user.page.evaluate(([s, p]) => window.notesApp.db.query(s, p), [sql, params]);

test("notes: two users, scoped replicas in headless Chromium, a 3-node cluster", { timeout: 240_000 }, async (t) => {
  const dir = tempDir("hl-notes-");
  const executablePath = chromiumPath(); // throws with how to install it when missing
  const cluster = await startCluster(join(dir, "cluster"));
  onCleanup(() => cluster.stop());
  const [node1, node2, node3] = cluster.nodes;
  const nodes = cluster.nodes;
  const server = await startServer({ root: await build({ outdir: join(dir, "public") }), secretFile: cluster.secretFile, servers: nodes.map((n) => n.wsUrl) });
  onCleanup(() => server.close());
  const { chromium } = require("playwright-core");
  const users = [];

  /** A user's own browser (fresh profile), the page opened on `node` and logged in through the form. */
  async function logIn(name, node, query = "") {
    const context = await chromium.launchPersistentContext(tempDir("hl-notes-chromium-"), {
      executablePath,
      headless: true,
      args: CHROMIUM_FLAGS.filter((f) => f !== "--headless"),
    });
    onCleanup(() => context.close());
    const page = context.pages()[0] ?? (await context.newPage());
    const user = { name, context, page, log: [] };
    page.on("console", (m) => user.log.push(`${new Date().toISOString()} console.${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => user.log.push(`${new Date().toISOString()} pageerror: ${e.message}`));
    users.push(user);
    await page.goto(`${server.url}/?node=${node}${query}`);
    await page.fill("#login input[name=user]", name);
    await page.click("#login button");
    await page.waitForSelector("body[data-state=ready], body[data-state=failed]", { timeout: 60_000 });
    if ((await page.getAttribute("body", "data-state")) === "failed") {
      throw new Error(`${name}'s page failed to start: ${JSON.stringify(await page.evaluate(() => window.notesApp.errors))}`);
    }
    return user;
  }

  /** What to print when a wait fails: the pages' errors and logs, the nodes' log tails. */
  async function diagnostics() {
    const parts = [];
    for (const u of users) {
      const errors = await u.page.evaluate(() => window.notesApp?.errors ?? []).catch((e) => [`(page gone: ${e.message})`]);
      const status = await u.page.evaluate(() => window.notesApp?.db?.status()).catch((e) => `(no status: ${e.message})`);
      parts.push(`--- ${u.name}: status ${JSON.stringify(status)}\nerrors ${JSON.stringify(errors)}\n${u.log.slice(-20).join("\n")}`);
    }
    for (const n of nodes) {
      parts.push(`--- ${n.name} (${n.log}):\n${n.logTail(2000)}`);
    }
    return parts.join("\n");
  }
  const until = (check, what, timeoutMs = 30_000) => waitFor(check, { timeoutMs, message: async () => `${typeof what === "function" ? await what() : what}\n${await diagnostics()}` });

  async function addNote(user, body) {
    await user.page.fill("#add input[name=body]", body);
    await user.page.click("#add button");
    await until(async () => (await shownNotes(user.page)).some((n) => n.body === body), `${user.name}'s page to show "${body}"`);
    return (await shownNotes(user.page)).find((n) => n.body === body).id;
  }

  async function editNote(user, id, body) {
    const item = user.page.locator(`#notes li[data-id="${id}"]`);
    await item.locator("button.edit").click();
    await item.locator(".edit-form input").fill(body);
    await item.locator(".edit-form button").click();
    await until(async () => (await shownNotes(user.page)).some((n) => n.id === id && n.body === body), `${user.name}'s page to show the edit "${body}"`);
  }

  /** Waits until every node in `on` holds exactly `rows` ([id, owner, body]) for `owner`. */
  async function nodesHold(owner, rows, on = nodes, timeoutMs = 30_000) {
    const expected = JSON.stringify([...rows].sort((a, b) => (a[0] < b[0] ? -1 : 1)));
    const actual = (n) => JSON.stringify(nodeNotes(n).filter((r) => r[1] === owner));
    await until(() => on.every((n) => actual(n) === expected), () => `${owner}'s notes on ${on.map((n) => n.name)} to be ${expected}; they hold ${on.map((n) => `${n.name} ${actual(n)}`).join(", ")}`, timeoutMs);
  }

  const alice = await logIn("alice", 1);
  const bob = await logIn("bob", 2);
  const aliceNotes = new Map(); // id -> body: what alice's partition must hold everywhere
  const aliceRows = () => [...aliceNotes].map(([id, body]) => [id, "alice", body]);

  await t.test("each user sees only their own notes", async () => {
    aliceNotes.set(await addNote(alice, "alice: buy milk"), "alice: buy milk");
    aliceNotes.set(await addNote(alice, "alice: call bob"), "alice: call bob");
    const bobsNote = await addNote(bob, "bob: fix the bike");
    // The app writes a note for each of them on a full node (say, from an email gateway).
    appSql(node3.db, "INSERT INTO notes(id, owner_id, body) VALUES ('srv-alice', 'alice', 'alice: from the server'), ('srv-bob', 'bob', 'bob: from the server')");
    aliceNotes.set("srv-alice", "alice: from the server");

    await until(async () => (await shownNotes(alice.page)).length === 3 && (await shownNotes(bob.page)).length === 2, async () => `alice's page ${JSON.stringify(await shownNotes(alice.page))}, bob's ${JSON.stringify(await shownNotes(bob.page))}`);
    assert.deepEqual((await shownNotes(alice.page)).map((n) => n.body).sort(), ["alice: buy milk", "alice: call bob", "alice: from the server"]);
    assert.deepEqual((await shownNotes(bob.page)).map((n) => n.body).sort(), ["bob: fix the bike", "bob: from the server"]);
    assert.ok((await shownNotes(alice.page)).every((n) => n.owner === "alice"));
    assert.ok((await shownNotes(bob.page)).every((n) => n.owner === "bob"));
    // Not just hidden by the page: bob's OPFS database has no row of alice's.
    assert.deepEqual(await inReplica(bob, "SELECT id, owner_id FROM notes WHERE owner_id <> 'bob'"), []);
    assert.deepEqual(await inReplica(alice, "SELECT id, owner_id FROM notes WHERE owner_id <> 'alice'"), []);
    // Every full node holds everyone's notes.
    await nodesHold("alice", aliceRows());
    await nodesHold("bob", [[bobsNote, "bob", "bob: fix the bike"], ["srv-bob", "bob", "bob: from the server"]]);
  });

  await t.test("a board row written into a full node's database reaches both users", async () => {
    appSql(node2.db, "INSERT INTO board(id, message) VALUES (1, 'Welcome to the board')");
    for (const u of [alice, bob]) {
      await until(async () => (await shownBoard(u.page)).includes("Welcome to the board"), `the board row on ${u.name}'s page`);
    }
    assert.deepEqual(node1.query("SELECT id, message FROM board"), [[1, "Welcome to the board"]]);
  });

  await t.test("alice's new and edited notes reach the files of all three nodes", async () => {
    const milk = [...aliceNotes].find(([, body]) => body === "alice: buy milk")[0];
    await editNote(alice, milk, "alice: buy oat milk");
    aliceNotes.set(milk, "alice: buy oat milk");
    aliceNotes.set(await addNote(alice, "alice: book the train"), "alice: book the train");
    await nodesHold("alice", aliceRows());
  });

  await t.test("bob's rows forged into alice's partition reach no node and change nothing of alice's", async () => {
    // What a tampered page could do. The package refuses it before publishing (the token
    // grants bob no partition of alice's); were it published, on alice's partition's
    // subject, NATS would refuse bob's user, and every full node would drop it.
    await bob.page.evaluate(() => window.notesApp.db.exec("INSERT INTO notes(id, owner_id, body) VALUES ('x', 'alice', 'forged')"));
    // Subtler: a row of his own partition under the key of one of alice's notes (his replica
    // never saw it). It is published on bob's subject; the full nodes refuse it, since the
    // key belongs to alice's partition, and alice's note stays as it is.
    await bob.page.evaluate(() => window.notesApp.db.exec("INSERT INTO notes(id, owner_id, body) VALUES ('srv-alice', 'bob', 'taken over')"));

    // bob's page is told about both (one `refused` event per row) and his replica no longer
    // holds either: the first refused by his own replica before publishing, the second once
    // the full nodes' notice is back.
    for (const id of ["x", "srv-alice"]) {
      await until(async () => (await bob.page.evaluate(() => window.notesApp.refused)).some((r) => r.table === "notes" && r.key[0] === id), `bob's refused event for ${id}`);
      await until(async () => (await inReplica(bob, "SELECT id FROM notes WHERE id = ?", [id])).length === 0, `bob's replica to drop ${id}`);
    }

    // Later writes go through (a note of alice's, a board row bob must receive), so the
    // forged one had every chance to arrive; it never does.
    aliceNotes.set(await addNote(alice, "alice: after the forgery"), "alice: after the forgery");
    const bobAfter = await addNote(bob, "bob: after the forgery");
    await until(() => nodes.every((n) => n.query("SELECT count(*) FROM notes WHERE id = ?", [bobAfter])[0][0] === 1), "bob's own later note (after the refused one) on every node");
    appSql(node1.db, "INSERT INTO board(id, message) VALUES (2, 'Board row after the forgery')");
    await until(async () => (await shownBoard(bob.page)).includes("Board row after the forgery"), "the second board row on bob's page");
    await nodesHold("alice", aliceRows());
    for (const n of nodes) {
      assert.deepEqual(n.query("SELECT id, owner_id, body FROM notes WHERE id = 'x' OR body IN ('forged', 'taken over')"), [], `a forged row reached ${n.name}`);
    }
    assert.deepEqual(
      (await shownNotes(alice.page)).map((n) => [n.id, n.body]).sort(),
      [...aliceNotes].sort(),
      "alice's page after bob's forgery",
    );
    assert.deepEqual(await inReplica(alice, "SELECT id FROM notes WHERE id = 'x'"), []);
  });

  await t.test("a third user through the third node: her note reaches every node", async () => {
    const carol = await logIn("carol", 3);
    const id = await addNote(carol, "carol: through node3");
    await until(() => nodes.every((n) => n.query("SELECT count(*) FROM notes WHERE id = ?", [id])[0][0] === 1), "carol's note on every node");
    assert.deepEqual((await shownNotes(carol.page)).map((n) => n.id), [id], "carol sees only her own note");
  });

  await t.test("alice's edits made while she cannot reach NATS reach every node once it is back", async () => {
    // The whole cluster goes down: stopping only alice's node would not take her offline,
    // since her NATS client learned the other nodes' WebSocket URLs from the cluster and
    // moves to one of them.
    await cluster.stop();
    await until(async () => (await alice.page.getAttribute("#sync", "data-online")) === "false", "alice's page to show she is offline");
    const call = [...aliceNotes].find(([, body]) => body === "alice: call bob")[0];
    await editNote(alice, call, "alice: call bob (edited offline)");
    aliceNotes.set(call, "alice: call bob (edited offline)");
    aliceNotes.set(await addNote(alice, "alice: written offline"), "alice: written offline");
    await until(async () => Number(await alice.page.getAttribute("#sync", "data-waiting")) === 2, "alice's page to count 2 changes waiting");
    // Meanwhile the app writes to the board on node3 (its sidecar sends it when it starts).
    appSql(node3.db, "INSERT INTO board(id, message) VALUES (3, 'Written while the cluster was down')");
    for (const n of nodes) {
      assert.equal(n.query("SELECT count(*) FROM notes WHERE body LIKE '%offline%'")[0][0], 0, `an offline edit is on ${n.name}`);
    }

    await cluster.start();
    await until(async () => (await alice.page.getAttribute("#sync", "data-online")) === "true", "alice's page to be online again", 60_000);
    await nodesHold("alice", aliceRows());
    for (const u of [alice, bob]) {
      await until(async () => (await shownBoard(u.page)).includes("Written while the cluster was down"), `the board row written meanwhile on ${u.name}'s page`);
    }
    await until(async () => Number(await alice.page.getAttribute("#sync", "data-waiting")) === 0, "alice's outbox to be empty");
    assert.deepEqual((await shownNotes(alice.page)).map((n) => [n.id, n.body]).sort(), [...aliceNotes].sort());
  });
});
