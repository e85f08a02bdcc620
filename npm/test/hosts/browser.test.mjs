// Headless Chromium: an OPFS replica in the package's dedicated Worker writes while offline,
// the page reloads (the Worker dies with it), the rows and the outbox are still there, and
// once the network is back the browser and a native node (a real `harmonylite` sidecar whose
// embedded nats-server has a WebSocket listener) converge.
//
// The page is the package bundled as an application bundles it (esbuild; "harmonylite" and
// "harmonylite/worker" resolved through package.json `exports`), served from
// http://localhost (a secure context). "Offline" is a TCP proxy in front of the sidecar's
// WebSocket port that drops every connection and refuses new ones.
//
// Replicated schema migrations (the third test): the operator's `harmonylite migrate` on the
// native node reaches the browser replica (schemaStatus, the new column, rows written with
// it), the browser's migrate() reaches the native node (`--schema-status`, the new table,
// rows both ways), and a browser that was offline during a migration — and reloaded
// meanwhile, with a migrate() of its own queued — catches up in stream order on reconnect.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { CutProxy, NatsServer, Sidecar, appSql, cleanup, freePort, harmonylite, onCleanup, tempDir, waitFor } from "../helpers.mjs";
import { bundleBrowserApp, launchChromium, nativeMigrate, nativeSchema, serveStatic } from "./hosts.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const SCHEMA = "CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, val TEXT NOT NULL)";
const HTML = '<!doctype html><meta charset="utf-8"><title>harmonylite</title><script type="module" src="/app.js"></script>\n';
/** Offline writes in the browser: single statements, then transactions of 50. */
const SINGLE = 100;
const IN_TX = 400;

afterEach(cleanup);

/** Whether every row the node's application wrote is in JetStream (nothing left to capture or send). */
function nodePublished(node) {
  return node.query("SELECT (SELECT count(*) FROM __hl_log) + (SELECT count(*) FROM __hl_outbox)")[0][0] === 0;
}

test("an OPFS replica writes offline, keeps rows and outbox across a reload, then converges with a native node", async () => {
  const dir = tempDir();
  const embedded = { port: await freePort(), wsPort: await freePort() };
  const node = await Sidecar.start(join(dir, "node1"), "node1", { embedded, schema: SCHEMA });
  const proxy = await CutProxy.start(embedded.wsPort);
  const base = await serveStatic(await bundleBrowserApp(join(here, "browser-page.mjs"), HTML));
  const context = await launchChromium();
  const page = context.pages()[0] ?? (await context.newPage());
  const log = [];
  page.on("console", (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
  page.on("worker", (w) => log.push(`worker started: ${w.url()}`));
  const call = (method, ...args) => page.evaluate(([m, a]) => window.app[m](...a), [method, args]);
  const browserRows = async () => (await call("query", "SELECT id, val FROM items ORDER BY id")).map((r) => [r.id, r.val]);
  const nodeRows = () => node.query("SELECT id, val FROM items ORDER BY id");
  const ready = () => page.waitForFunction(() => window.appReady === true);
  const options = { name: "browser.db", storage: "opfs", servers: proxy.wsUrl, reconnectMinMs: 100, reconnectMaxMs: 1000 };

  try {
    await page.goto(`${base}/`);
    await ready();
    assert.equal(await page.evaluate(() => globalThis.isSecureContext), true, "http://localhost is a secure context");
    await call("open", options);
    await call("exec", SCHEMA);
    await waitFor(async () => (await call("status")).online, { message: "the browser replica to come online" });

    // Online: a row each way.
    await call("exec", "INSERT INTO items(id, val) VALUES (1, 'browser-online')");
    await call("flush", { timeoutMs: 30_000 });
    await waitFor(() => node.query("SELECT val FROM items WHERE id = 1")[0]?.[0] === "browser-online", {
      message: () => `row 1 on the native node:\n${node.logTail()}`,
    });
    appSql(node.db, "INSERT INTO items(id, val) VALUES (2, 'native-online')");
    await waitFor(async () => (await browserRows()).some(([id]) => id === 2), { message: "row 2 in the browser" });

    // Offline: the browser writes, so does the native node.
    await proxy.cut();
    await waitFor(async () => !(await call("status")).online, { message: "the browser replica to notice it is offline" });
    const singles = Array.from({ length: SINGLE }, (_, i) => 1000 + i);
    const batched = Array.from({ length: IN_TX }, (_, i) => 2000 + i);
    await call("insertMany", singles, "browser-offline-", 1);
    await call("insertMany", batched, "browser-offline-", 50);
    appSql(node.db, "INSERT INTO items(id, val) VALUES (3, 'native-offline')");
    const offline = await call("status");
    assert.equal(offline.online, false);
    assert.equal(offline.outboxRows, SINGLE + IN_TX, "every offline write waits in the outbox");
    // The native row is in JetStream before the browser comes back, so sync() must bring it.
    await waitFor(() => nodePublished(node), { message: () => `the native node to publish row 3:\n${node.logTail()}` });
    assert.equal(node.query("SELECT count(*) FROM items WHERE id >= 1000")[0][0], 0, "offline writes reached the native node");

    // Reload: the Worker is terminated with the page, without close().
    await page.reload();
    await ready();
    const reopened = await call("open", options);
    assert.equal(reopened.nodeId, offline.nodeId, "the node id is kept in OPFS");
    const afterReload = await call("status");
    assert.equal(afterReload.online, false, "the proxy is still cut");
    assert.equal(afterReload.outboxRows, SINGLE + IN_TX, "the outbox survived the reload");
    const kept = await browserRows();
    assert.deepEqual(
      kept,
      [
        [1, "browser-online"],
        [2, "native-online"],
        ...[...singles, ...batched].map((id) => [id, `browser-offline-${id}`]),
      ],
      "the rows survived the reload in OPFS",
    );

    // Back online: the outbox goes out, the native row comes in.
    await proxy.restore();
    await call("flush", { timeoutMs: 60_000 });
    await call("sync", { timeoutMs: 60_000 });
    const expected = [
      [1, "browser-online"],
      [2, "native-online"],
      [3, "native-offline"],
      ...[...singles, ...batched].map((id) => [id, `browser-offline-${id}`]),
    ];
    assert.deepEqual(await browserRows(), expected, "the browser after reconnecting");
    await waitFor(() => JSON.stringify(nodeRows()) === JSON.stringify(expected), {
      message: () => `the native node to hold every row (has ${nodeRows().length} of ${expected.length}):\n${node.logTail()}`,
    });
    const done = await call("status");
    assert.equal(done.online, true);
    assert.equal(done.outboxFrames, 0);
    assert.equal(done.outboxRows, 0);
    assert.equal(done.lag, 0);
    assert.equal(done.parked, 0);
    const unexpected = (await call("errors")).filter((e) => !e.startsWith("ConnectionError"));
    assert.deepEqual(unexpected, [], "background errors other than connection losses");
    await call("close");
  } catch (e) {
    e.message += `\n--- browser log ---\n${log.join("\n")}`;
    throw e;
  }
});

/** Opens `count` tabs of `base` in `context` (the first reuses the context's blank page), each with the app loaded. */
async function openTabs(context, base, count, log) {
  const pages = [];
  for (let i = 0; i < count; i++) {
    const page = i === 0 ? (context.pages()[0] ?? (await context.newPage())) : await context.newPage();
    const n = i + 1;
    page.on("console", (m) => log.push(`tab ${n} console.${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => log.push(`tab ${n} pageerror: ${e.message}`));
    await page.goto(`${base}/`);
    await page.waitForFunction(() => window.appReady === true);
    pages.push(page);
  }
  return pages;
}

const tabCall = (page, method, ...args) => page.evaluate(([m, a]) => window.app[m](...a), [method, args]);

/** The tab that leads, waiting until exactly one of `pages` does. */
async function leaderOf(pages) {
  let leader = null;
  await waitFor(
    async () => {
      const roles = await Promise.all(pages.map((p) => tabCall(p, "tab")));
      const leading = pages.filter((_, i) => roles[i] === "leader");
      leader = leading.length === 1 && roles.every((r) => r === "leader" || r === "follower") ? leading[0] : null;
      return leader !== null;
    },
    { timeoutMs: 30_000, message: "exactly one tab to lead" },
  );
  return leader;
}

test("tabs of one origin share an OPFS replica: two and three tabs write and read, followers see changes, transactions do not interleave, close hands over", async () => {
  const base = await serveStatic(await bundleBrowserApp(join(here, "browser-page.mjs"), HTML));
  const context = await launchChromium();
  const log = [];
  const [first, second, third] = await openTabs(context, base, 3, log);
  const options = { name: "tabs.db", storage: "opfs" };
  const rows = async (page) => (await tabCall(page, "query", "SELECT id, val FROM items ORDER BY id")).map((r) => [r.id, r.val]);

  try {
    // Two tabs: the first to open leads, the second follows; both write and read.
    assert.deepEqual(await tabCall(first, "tryOpen", options), { ok: true });
    assert.deepEqual(await tabCall(second, "tryOpen", options), { ok: true });
    assert.equal(await tabCall(first, "tab"), "leader");
    assert.equal(await tabCall(second, "tab"), "follower");
    await tabCall(first, "exec", SCHEMA);
    await tabCall(first, "exec", "INSERT INTO items(id, val) VALUES (1, 'first tab')");
    const inserted = await tabCall(second, "exec", "INSERT INTO items(id, val) VALUES (2, 'second tab')");
    assert.equal(inserted.changes, 1);
    assert.equal(inserted.lastInsertRowid, 2);
    const two = [[1, "first tab"], [2, "second tab"]];
    assert.deepEqual(await rows(first), two);
    assert.deepEqual(await rows(second), two);
    assert.equal((await tabCall(first, "status")).nodeId, (await tabCall(second, "status")).nodeId, "one replica");

    // A third tab; a follower's subscription sees the leader's writes, the leader's sees a follower's.
    assert.deepEqual(await tabCall(third, "tryOpen", options), { ok: true });
    assert.equal(await tabCall(third, "tab"), "follower");
    for (const page of [first, second, third]) {
      await tabCall(page, "subscribe", ["items"]);
    }
    await tabCall(first, "exec", "INSERT INTO items(id, val) VALUES (3, 'leader')");
    await tabCall(third, "exec", "INSERT INTO items(id, val) VALUES (4, 'third tab')");
    await tabCall(second, "exec", "INSERT INTO items(id, val) VALUES (5, 'second tab')");
    for (const page of [first, second, third]) {
      await waitFor(async () => (await tabCall(page, "changes")).some((c) => c.origin === "local" && c.tables.includes("items")), {
        timeoutMs: 10_000,
        message: "a change notification in every tab",
      });
    }
    const five = [...two, [3, "leader"], [4, "third tab"], [5, "second tab"]];
    for (const page of [first, second, third]) {
      assert.deepEqual(await rows(page), five);
    }
    // A failing statement keeps its class across tabs.
    const refused = await tabCall(third, "tryExec", "INSERT INTO items(id, val) VALUES (1, 'duplicate')");
    assert.equal(refused.ok, false);
    assert.equal(refused.name, "SqliteError");

    // Transactions of three tabs at once run one after the other.
    await tabCall(first, "exec", "CREATE TABLE seq(n INTEGER PRIMARY KEY, tag TEXT NOT NULL)");
    await Promise.all([tabCall(first, "slowTx", "a", 5, 15), tabCall(second, "slowTx", "b", 5, 15), tabCall(third, "slowTx", "c", 5, 15)]);
    const tags = (await tabCall(second, "query", "SELECT tag FROM seq ORDER BY n")).map((r) => r.tag).join("");
    assert.equal(tags.length, 15);
    assert.match(tags, /^(a{5}|b{5}|c{5}){3}$/, `interleaved transactions: ${tags}`);
    assert.equal(new Set(tags).size, 3);

    // Another database in the same OPFS directory is still refused while this one runs.
    const other = await tabCall(second, "tryOpen", { name: "other.db", storage: "opfs" });
    assert.equal(other.ok, false, "a second replica opened in the same OPFS directory");
    assert.equal(other.name, "StorageError");
    assert.ok(other.storageError && other.harmonyliteError, JSON.stringify(other));
    assert.match(other.message, /OPFS directory ".harmonylite" is in use by another replica/);
    // (tryOpen replaced the second tab's handle only on success: it still has tabs.db.)
    assert.equal(await tabCall(second, "tab"), "follower");

    // A follower's close() closes only its handle.
    await tabCall(third, "close");
    await tabCall(second, "exec", "INSERT INTO items(id, val) VALUES (6, 'after third closed')");
    assert.equal((await rows(first)).length, 6);

    // The leader's close() hands the replica over to the remaining tab.
    await tabCall(first, "close");
    await waitFor(async () => (await tabCall(second, "tab")) === "leader", { timeoutMs: 30_000, message: "the second tab to take over" });
    await tabCall(second, "exec", "INSERT INTO items(id, val) VALUES (7, 'new leader')");
    assert.deepEqual((await rows(second)).map(([id]) => id), [1, 2, 3, 4, 5, 6, 7]);
    await waitFor(async () => (await tabCall(second, "changes")).some((c) => c.origin === "remote" && c.tables.includes("items")), {
      timeoutMs: 10_000,
      message: "the resumed subscription's refresh after the handover",
    });

    // The last tab's close() closes the database; it opens again (from OPFS) in another tab.
    await tabCall(second, "close");
    assert.deepEqual(await tabCall(first, "tryOpen", options), { ok: true });
    assert.equal(await tabCall(first, "tab"), "leader");
    assert.deepEqual((await rows(first)).map(([id]) => id), [1, 2, 3, 4, 5, 6, 7]);
    const calls = await tabCall(first, "query", "SELECT count(*) AS n FROM __hl_calls");
    assert.equal(calls[0].n, 0, "records of closed tabs are dropped");
    const unexpected = (await tabCall(first, "errors")).concat(await tabCall(second, "errors"));
    assert.deepEqual(unexpected, []);
    await tabCall(first, "close");
  } catch (e) {
    e.message += `\n--- browser log ---\n${log.join("\n")}`;
    throw e;
  }
});

test("a follower's transaction open when the leader tab goes away is rolled back and fails with LeaderChangedError", async () => {
  const base = await serveStatic(await bundleBrowserApp(join(here, "browser-page.mjs"), HTML));
  const context = await launchChromium();
  const log = [];
  const [first, second] = await openTabs(context, base, 2, log);
  const options = { name: "held.db", storage: "opfs" };
  try {
    await tabCall(first, "open", options);
    await tabCall(second, "open", options);
    await tabCall(second, "exec", SCHEMA);
    await tabCall(second, "holdTx", 10, 11);
    await waitFor(() => tabCall(second, "heldInside"), { timeoutMs: 10_000, message: "the transaction to have written its first row" });
    // The leader's tab is closed (no close()): its Worker dies with the transaction open.
    await first.close();
    await waitFor(async () => (await tabCall(second, "tab")) === "leader", { timeoutMs: 30_000, message: "the follower to take over" });
    await tabCall(second, "releaseTx");
    await waitFor(async () => (await tabCall(second, "heldOutcome")) !== null, { timeoutMs: 10_000, message: "the transaction to end" });
    const outcome = await tabCall(second, "heldOutcome");
    assert.equal(outcome.ok, false);
    assert.equal(outcome.name, "LeaderChangedError", JSON.stringify(outcome));
    assert.ok(outcome.leaderChanged && outcome.harmonyliteError);
    assert.match(outcome.message, /rolled back, run it again/);
    assert.deepEqual(await tabCall(second, "query", "SELECT id FROM items"), [], "nothing of the interrupted transaction was applied");
    // The app runs it again.
    await tabCall(second, "exec", "INSERT INTO items(id, val) VALUES (10, 'again'), (11, 'again')");
    assert.deepEqual(await tabCall(second, "query", "SELECT id FROM items ORDER BY id"), [{ id: 10 }, { id: 11 }]);

    // A call sent again with the same id (its answer lost with a leader) is answered from its
    // record and not applied twice: a row write, a write that returns rows, a schema change,
    // and a commit whose transaction the Worker does not know.
    const answers = await tabCall(second, "sendTwice", "held.db", [
      ["exec", ["INSERT INTO items(val) VALUES (?)", ["sent twice"]]],
      ["query", ["INSERT INTO items(val) VALUES ('returning') RETURNING id, val", []]],
      ["exec", ["CREATE TABLE once(id INTEGER PRIMARY KEY)", undefined]],
      ["commit", ["no-such-leader:1"]],
    ]);
    const [insert, returning, ddl, commit] = answers;
    assert.deepEqual(insert, [{ ok: true, value: { changes: 1, lastInsertRowid: 12 } }, { ok: true, value: { changes: 1, lastInsertRowid: 12 } }]);
    assert.deepEqual(returning, [{ ok: true, value: [{ id: 13, val: "returning" }] }, { ok: true, value: [{ id: 13, val: "returning" }] }]);
    assert.equal(ddl[0].ok, true, JSON.stringify(ddl));
    assert.deepEqual(ddl[1], ddl[0], "the schema change is not run again (it would fail: the table exists)");
    for (const answer of commit) {
      assert.equal(answer.ok, false);
      assert.equal(answer.name, "LeaderChangedError");
    }
    assert.deepEqual(
      await tabCall(second, "query", "SELECT val, count(*) AS n FROM items WHERE id > 11 GROUP BY val ORDER BY val"),
      [{ val: "returning", n: 1 }, { val: "sent twice", n: 1 }],
    );
    await tabCall(second, "close");
  } catch (e) {
    e.message += `\n--- browser log ---\n${log.join("\n")}`;
    throw e;
  }
});

test("the leader tab closed during followers' streams of writes: nothing lost, nothing applied twice, a new leader takes over and replication continues", async (t) => {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  const { open } = await harmonylite();
  const LOG = "CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY, v TEXT NOT NULL)";
  const node = await open({ name: "observer", servers: nats.wsUrl, reconnectMinMs: 100, reconnectMaxMs: 1000 });
  onCleanup(() => node.close({ flushTimeoutMs: 0 }));
  await node.exec(LOG);
  const base = await serveStatic(await bundleBrowserApp(join(here, "browser-page.mjs"), HTML));
  const context = await launchChromium();
  const log = [];
  const pages = await openTabs(context, base, 3, log);
  const [first, ...followers] = pages;
  const options = { name: "stream.db", storage: "opfs", servers: nats.wsUrl, reconnectMinMs: 100, reconnectMaxMs: 1000 };
  const COUNT = 400;
  try {
    for (const page of pages) {
      await tabCall(page, "open", options);
    }
    assert.equal(await tabCall(first, "tab"), "leader");
    await tabCall(first, "exec", LOG);
    await waitFor(async () => (await tabCall(first, "status")).online, { message: "the browser replica to come online" });

    // Both followers write (single statements, and a two-row transaction every 5th / 7th
    // value); the leader's tab is closed while they do.
    await tabCall(followers[0], "startStream", "x", COUNT, 5);
    await tabCall(followers[1], "startStream", "y", COUNT, 7);
    await waitFor(async () => (await tabCall(followers[0], "streamState")).acked.length >= 60, { message: "the first writes" });
    await first.close();
    const atClose = await Promise.all(followers.map((p) => tabCall(p, "streamState")));
    assert.ok(atClose.every((st) => !st.done && st.acked.length < COUNT), "the streams were still writing when the leader went");
    const states = [];
    for (const page of followers) {
      await waitFor(async () => (await tabCall(page, "streamState")).done, { timeoutMs: 120_000, message: "a stream to finish" });
      states.push(await tabCall(page, "streamState"));
    }
    const leader = await leaderOf(followers);

    const counts = new Map((await tabCall(leader, "query", "SELECT v, count(*) AS n FROM log GROUP BY v")).map((r) => [r.v, r.n]));
    const expected = new Set();
    for (const [i, state] of states.entries()) {
      const every = i === 0 ? 5 : 7;
      assert.equal(state.attempted, COUNT);
      assert.equal(state.acked.length + state.failed.length, COUNT);
      for (const f of state.failed) {
        // Only a transaction may fail (rolled back at the old leader); single writes are sent again.
        const n = Number(f.v.slice(1));
        assert.equal(n % every, 0, `a single write failed: ${JSON.stringify(f)}`);
        assert.equal(f.name, "LeaderChangedError", JSON.stringify(f));
        assert.ok(f.leaderChanged);
        assert.equal(counts.get(`${f.v}:a`), undefined, `a rolled back transaction was applied: ${f.v}`);
        assert.equal(counts.get(`${f.v}:b`), undefined, `a rolled back transaction was applied: ${f.v}`);
      }
      for (const v of state.acked) {
        const n = Number(v.slice(1));
        for (const key of n % every === 0 ? [`${v}:a`, `${v}:b`] : [v]) {
          expected.add(key);
          assert.equal(counts.get(key), 1, `acknowledged write ${key} is there exactly once (found ${counts.get(key) ?? 0})`);
        }
      }
    }
    const unexpected = [...counts].filter(([v, n]) => !expected.has(v) || n !== 1);
    assert.deepEqual(unexpected, [], "rows that no acknowledged write made, or made twice");
    assert.equal(counts.size, expected.size);
    t.diagnostic(
      `acknowledged when the leader tab closed: ${atClose.map((st) => st.acked.length).join(", ")}; ` +
        `transactions rolled back by the leader change: ${states.map((st) => st.failed.length).join(", ")}`,
    );

    // Replication goes on from the new leader: everything reaches the node replica.
    await tabCall(leader, "exec", "INSERT INTO log(v) VALUES ('after takeover')");
    await tabCall(leader, "flush", { timeoutMs: 60_000 });
    await waitFor(async () => (await node.query("SELECT count(*) AS n FROM log"))[0].n === expected.size + 1, {
      message: async () => `the node replica to hold every row (has ${(await node.query("SELECT count(*) AS n FROM log"))[0].n} of ${expected.size + 1})`,
    });
    const nodeValues = (await node.query("SELECT v FROM log ORDER BY v")).map((r) => r.v);
    assert.deepEqual(nodeValues, [...expected, "after takeover"].sort());
    for (const page of followers) {
      const errors = (await tabCall(page, "errors")).filter((e) => !e.startsWith("ConnectionError") && !/taking over the replica/.test(e));
      assert.deepEqual(errors, [], "background errors other than connection losses and take-over retries");
    }
    for (const page of followers) {
      await tabCall(page, "close");
    }
  } catch (e) {
    e.message += `\n--- browser log ---\n${log.join("\n")}`;
    throw e;
  }
});

test("replicated migrations reach an OPFS replica online and after an offline reload, and its own migrate() reaches the native node", async () => {
  const dir = tempDir();
  const embedded = { port: await freePort(), wsPort: await freePort() };
  const node = await Sidecar.start(join(dir, "node1"), "node1", { embedded, schema: SCHEMA });
  const proxy = await CutProxy.start(embedded.wsPort);
  const base = await serveStatic(await bundleBrowserApp(join(here, "browser-page.mjs"), HTML));
  const context = await launchChromium();
  const page = context.pages()[0] ?? (await context.newPage());
  const log = [];
  page.on("console", (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
  const call = (method, ...args) => page.evaluate(([m, a]) => window.app[m](...a), [method, args]);
  const ready = () => page.waitForFunction(() => window.appReady === true);
  const columns = async (table) => (await call("query", `SELECT name FROM pragma_table_info('${table}') ORDER BY cid`)).map((r) => r.name);
  const browserVersion = async () => (await call("schemaStatus")).migrationVersion;
  const itemsSql = "SELECT id, val, tag, prio FROM items ORDER BY id";
  const options = { name: "migrations.db", storage: "opfs", servers: proxy.wsUrl, reconnectMinMs: 100, reconnectMaxMs: 1000 };

  try {
    await page.goto(`${base}/`);
    await ready();
    await call("open", options);
    await call("exec", SCHEMA);
    await waitFor(async () => (await call("status")).online, { message: "the browser replica to come online" });
    await call("exec", "INSERT INTO items(id, val) VALUES (1, 'before')");
    await call("flush", { timeoutMs: 30_000 });
    await waitFor(() => node.query("SELECT val FROM items WHERE id = 1")[0]?.[0] === "before", { message: () => node.logTail() });
    const start = await call("schemaStatus");
    assert.equal(start.migrationVersion, 0);
    assert.equal(start.fingerprint, nativeSchema(node).fingerprint, "the same application schema on both sides to start with");

    // 1. The operator's `harmonylite migrate` on the native node reaches the browser.
    const v1 = nativeMigrate(node, join(dir, "add-tag.sql"), "ALTER TABLE items ADD COLUMN tag TEXT NOT NULL DEFAULT 'untagged';\n");
    assert.match(v1, /applied here as version 1 /);
    await waitFor(async () => (await browserVersion()) === 1, { message: "the browser to apply the native migration" });
    assert.deepEqual(await columns("items"), ["id", "val", "tag"]);
    assert.deepEqual(await call("query", "SELECT id, val, tag FROM items"), [{ id: 1, val: "before", tag: "untagged" }]);
    assert.equal((await call("schemaStatus")).fingerprint, nativeSchema(node).fingerprint, "the same schema after migration 1");
    // Rows written after the migration with the new column, both ways.
    appSql(node.db, "INSERT INTO items(id, val, tag) VALUES (2, 'native', 'red')");
    await waitFor(async () => (await call("query", "SELECT tag FROM items WHERE id = 2"))[0]?.tag === "red", {
      message: () => `the native row with the new column in the browser:\n${node.logTail()}`,
    });
    await call("exec", "INSERT INTO items(id, val, tag) VALUES (3, 'browser', 'blue')");
    await call("flush", { timeoutMs: 30_000 });
    await waitFor(() => node.query("SELECT tag FROM items WHERE id = 3")[0]?.[0] === "blue", { message: () => node.logTail() });

    // 2. The browser's migrate() reaches the native node (a new table and an index on the new column).
    const v2 = await call("migrate", "CREATE TABLE tags(name TEXT PRIMARY KEY, color TEXT);\nCREATE INDEX items_tag ON items(tag);", { timeoutMs: 30_000 });
    assert.equal(v2.version, 2);
    assert.equal(v2.statements, 2);
    assert.equal(v2.destructive, false);
    await call("exec", "INSERT INTO tags(name, color) VALUES ('red', '#f00')");
    await call("flush", { timeoutMs: 30_000 });
    await waitFor(() => nativeSchema(node).version === 2, { message: () => `the native node to apply the browser's migration:\n${node.logTail()}` });
    await waitFor(() => node.query("SELECT count(*) FROM sqlite_schema WHERE name = 'tags'")[0][0] === 1 && node.query("SELECT count(*) FROM tags")[0][0] === 1, {
      message: () => `the browser's row in the migrated table on the native node:\n${node.logTail()}`,
    });
    assert.deepEqual(node.query("SELECT name, color FROM tags"), [["red", "#f00"]]);
    assert.deepEqual(node.query("SELECT name FROM sqlite_schema WHERE type = 'index' AND name = 'items_tag'"), [["items_tag"]]);
    // The native node captures the table the migration created: its application's row comes back.
    appSql(node.db, "INSERT INTO tags(name, color) VALUES ('blue', '#00f')");
    await waitFor(async () => (await call("query", "SELECT color FROM tags WHERE name = 'blue'"))[0]?.color === "#00f", {
      message: () => `the native row of the migrated table in the browser:\n${node.logTail()}`,
    });
    assert.equal((await call("schemaStatus")).fingerprint, nativeSchema(node).fingerprint, "the same schema after migration 2");

    // 3. Offline: the native node migrates and writes with the new column; the browser writes
    //    with its old schema and queues a migration of its own; the page reloads.
    await proxy.cut();
    await waitFor(async () => !(await call("status")).online, { message: "the browser replica to notice it is offline" });
    const v3 = nativeMigrate(node, join(dir, "add-prio.sql"), "ALTER TABLE items ADD COLUMN prio INTEGER NOT NULL DEFAULT 0;\n");
    assert.match(v3, /applied here as version 3 /);
    appSql(node.db, "INSERT INTO items(id, val, tag, prio) VALUES (4, 'native-offline', 'green', 7)");
    await waitFor(() => nodePublished(node), { message: () => `the native node to publish row 4:\n${node.logTail()}` });
    await call("exec", "INSERT INTO items(id, val, tag) VALUES (5, 'browser-offline', 'grey')");
    const queued = await call("tryMigrate", "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)", { timeoutMs: 300 });
    assert.equal(queued.ok, false, "migrate() cannot be applied here while offline");
    assert.equal(queued.name, "TimeoutError", JSON.stringify(queued));
    assert.equal(queued.harmonyliteError, true, "the TimeoutError keeps its class across the Worker boundary");
    assert.deepEqual(await columns("notes"), [], "an offline migrate() is only tried here (rolled back) until it comes back from the stream");
    await page.reload();
    await ready();
    await call("open", options);
    const reopened = await call("schemaStatus");
    assert.equal((await call("status")).online, false, "the proxy is still cut");
    assert.equal(reopened.migrationVersion, 2, "the offline browser cannot have migration 3 yet");
    assert.deepEqual(await columns("items"), ["id", "val", "tag"]);

    // Back online: migration 3 and the row that needs it arrive; the browser's row (without
    // the new column) and its queued migration reach the native node.
    await proxy.restore();
    await call("flush", { timeoutMs: 60_000 });
    await call("sync", { timeoutMs: 60_000 });
    await waitFor(async () => (await browserVersion()) === 4, { message: "the browser to apply migrations 3 and 4" });
    assert.deepEqual(await columns("items"), ["id", "val", "tag", "prio"]);
    assert.deepEqual(await columns("notes"), ["id", "body"]);
    const expected = [
      [1, "before", "untagged", 0],
      [2, "native", "red", 0],
      [3, "browser", "blue", 0],
      [4, "native-offline", "green", 7],
      [5, "browser-offline", "grey", 0],
    ];
    assert.deepEqual((await call("query", itemsSql)).map((r) => [r.id, r.val, r.tag, r.prio]), expected, "the browser after catching up");
    await waitFor(() => nativeSchema(node).version === 4 && JSON.stringify(node.query(itemsSql)) === JSON.stringify(expected), {
      message: () => `the native node to hold every row and migration 4 (has ${JSON.stringify(node.query(itemsSql))}):\n${node.logTail()}`,
    });
    const native = nativeSchema(node);
    const browser = await call("schemaStatus");
    assert.deepEqual(
      native.migrations,
      [
        [1, "ALTER TABLE items ADD COLUMN tag TEXT NOT NULL DEFAULT 'untagged';"],
        [2, "CREATE TABLE tags(name TEXT PRIMARY KEY, color TEXT);"],
        [3, "ALTER TABLE items ADD COLUMN prio INTEGER NOT NULL DEFAULT 0;"],
        [4, "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)"],
      ],
      native.out,
    );
    assert.equal(native.parkedMigrations, 0);
    assert.equal(browser.fingerprint, native.fingerprint, "the same schema on both sides at the end");
    assert.equal(browser.parkedMigrations, 0);
    assert.deepEqual(browser.parkedByTable, {});
    assert.deepEqual(await call("query", "SELECT name, color FROM tags ORDER BY name"), [{ name: "blue", color: "#00f" }, { name: "red", color: "#f00" }]);
    const done = await call("status");
    assert.equal(done.migrationVersion, 4);
    assert.equal(done.schemaFingerprint, native.fingerprint);
    assert.equal(done.parked, 0);
    assert.equal(done.outboxFrames, 0);
    const unexpected = (await call("errors")).filter((e) => !e.startsWith("ConnectionError"));
    assert.deepEqual(unexpected, [], "background errors other than connection losses");
    await call("close");
  } catch (e) {
    e.message += `\n--- browser log ---\n${log.join("\n")}`;
    throw e;
  }
});

test("column merge in the browser: an OPFS replica (the package's Worker) and a page's memory replica opened with merge converge a counter and column edits with a native node; reopening with a contradicting merge is refused", async () => {
  const MERGE_SCHEMA =
    "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT, tag TEXT DEFAULT 'none'); " +
    "CREATE TABLE IF NOT EXISTS stock(sku TEXT PRIMARY KEY, qty INTEGER NOT NULL DEFAULT 0, name TEXT)";
  const merge = { column: ["notes"], counters: ["stock.qty"] };
  const modes = { notes: { mode: "column", counters: [] }, stock: { mode: "column", counters: ["qty"] } };
  const dir = tempDir();
  const embedded = { port: await freePort(), wsPort: await freePort() };
  const node = await Sidecar.start(join(dir, "node1"), "node1", { embedded, schema: MERGE_SCHEMA, extra: '[merge]\ncolumn = ["notes"]\ncounters = ["stock.qty"]\n' });
  const proxy = await CutProxy.start(embedded.wsPort);
  const base = await serveStatic(await bundleBrowserApp(join(here, "browser-page.mjs"), HTML));
  const context = await launchChromium();
  const log = [];
  const [opfsTab, memoryTab] = await openTabs(context, base, 2, log);
  const nodeNote = () => node.query("SELECT title, body, tag FROM notes WHERE id = 1")[0] ?? null;
  const nodeQty = () => node.query("SELECT qty FROM stock WHERE sku = 'apple'")[0]?.[0];
  const tabNote = async (page) => {
    const row = (await tabCall(page, "query", "SELECT title, body, tag FROM notes WHERE id = 1"))[0];
    return row ? [row.title, row.body, row.tag] : null;
  };
  const tabQty = async (page) => (await tabCall(page, "query", "SELECT qty FROM stock WHERE sku = 'apple'"))[0]?.qty;
  const opfs = { name: "merge.db", storage: "opfs", servers: proxy.wsUrl, reconnectMinMs: 100, reconnectMaxMs: 1000 };

  try {
    // The OPFS replica (its Worker gets the option with the others) and a memory one in the page.
    assert.deepEqual(await tabCall(opfsTab, "tryOpen", { ...opfs, merge }), { ok: true });
    await tabCall(opfsTab, "exec", MERGE_SCHEMA);
    assert.deepEqual((await tabCall(opfsTab, "status")).merge, modes);
    assert.deepEqual(await tabCall(memoryTab, "tryOpen", { name: "memory.db", servers: `ws://127.0.0.1:${embedded.wsPort}`, merge, reconnectMinMs: 100 }), { ok: true });
    await tabCall(memoryTab, "exec", MERGE_SCHEMA);
    assert.deepEqual((await tabCall(memoryTab, "status")).merge, modes);
    const bad = await tabCall(memoryTab, "tryOpen", { name: "bad.db", merge: { counters: ["qty"] } });
    assert.equal(bad.ok, false);
    assert.equal(bad.name, "InvalidArgumentError");
    assert.match(bad.message, /counter "qty" must name its table, as "table.column"/);

    appSql(node.db, "INSERT INTO notes(id, title, body) VALUES (1, 'draft', 'text'); INSERT INTO stock(sku, qty, name) VALUES ('apple', 10, 'Apple')", null);
    for (const page of [opfsTab, memoryTab]) {
      await waitFor(async () => (await tabQty(page)) === 10 && (await tabNote(page)) !== null, { message: "the native rows in the browser" });
    }

    // The OPFS replica goes offline; each replica edits its own column and counts the stock.
    await proxy.cut();
    await waitFor(async () => !(await tabCall(opfsTab, "status")).online, { message: "the OPFS replica to notice it is offline" });
    await tabCall(opfsTab, "exec", "UPDATE notes SET title = 'title from opfs' WHERE id = 1");
    await tabCall(opfsTab, "exec", "UPDATE stock SET qty = qty - 3 WHERE sku = 'apple'");
    await tabCall(memoryTab, "exec", "UPDATE notes SET tag = 'tag from the page' WHERE id = 1");
    await tabCall(memoryTab, "exec", "UPDATE stock SET qty = qty + 1 WHERE sku = 'apple'");
    appSql(node.db, "UPDATE notes SET body = 'body from the node' WHERE id = 1; UPDATE stock SET qty = qty - 4 WHERE sku = 'apple'", null);
    await waitFor(() => nodeQty() === 7 && nodeNote()?.[2] === "tag from the page", { message: () => `the page's edits on the native node:\n${node.logTail()}` });
    await proxy.restore();

    const want = ["title from opfs", "body from the node", "tag from the page"];
    const all = async () => [[nodeNote(), nodeQty()], [await tabNote(opfsTab), await tabQty(opfsTab)], [await tabNote(memoryTab), await tabQty(memoryTab)]];
    await waitFor(async () => (await all()).every(([note, qty]) => JSON.stringify(note) === JSON.stringify(want) && qty === 4), {
      message: async () => `every column edit and qty 10 - 3 + 1 - 4 = 4 everywhere (native, opfs, page): ${JSON.stringify(await all())}\n${node.logTail()}`,
    });
    for (const page of [opfsTab, memoryTab]) {
      const status = await tabCall(page, "status");
      assert.equal(status.parked, 0);
      assert.deepEqual(status.merge, modes);
      const unexpected = (await tabCall(page, "errors")).filter((e) => !e.startsWith("ConnectionError"));
      assert.deepEqual(unexpected, [], "background errors other than connection losses");
    }

    // The OPFS database records the modes: opening it with another merge option is refused,
    // naming the table; without the option it follows the database.
    await tabCall(opfsTab, "close");
    const contrary = await tabCall(opfsTab, "tryOpen", { ...opfs, merge: { column: ["notes"] } });
    assert.equal(contrary.ok, false, "opened with stock merging by row");
    assert.equal(contrary.name, "InvalidArgumentError", JSON.stringify(contrary));
    assert.match(contrary.message, /table "stock" merges by column \(counters: qty\) in this database but the options say row/);
    assert.deepEqual(await tabCall(opfsTab, "tryOpen", opfs), { ok: true });
    assert.deepEqual((await tabCall(opfsTab, "status")).merge, modes);
    assert.deepEqual(await tabNote(opfsTab), want);
    await tabCall(opfsTab, "close");
    await tabCall(memoryTab, "close");
  } catch (e) {
    e.message += `\n--- browser log ---\n${log.join("\n")}`;
    throw e;
  }
});
