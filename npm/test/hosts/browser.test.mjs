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

import { CutProxy, Sidecar, appSql, cleanup, freePort, tempDir, waitFor } from "../helpers.mjs";
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

test("a second tab gets a StorageError while another holds the OPFS directory, and opens once it is closed", async () => {
  const base = await serveStatic(await bundleBrowserApp(join(here, "browser-page.mjs"), HTML));
  const context = await launchChromium();
  const first = context.pages()[0] ?? (await context.newPage());
  const second = await context.newPage();
  for (const page of [first, second]) {
    await page.goto(`${base}/`);
    await page.waitForFunction(() => window.appReady === true);
  }
  const call = (page, method, ...args) => page.evaluate(([m, a]) => window.app[m](...a), [method, args]);
  assert.deepEqual(await call(first, "tryOpen", { name: "tabs.db", storage: "opfs" }), { ok: true });
  await call(first, "exec", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'first tab')");

  for (const name of ["tabs.db", "other.db"]) {
    const refused = await call(second, "tryOpen", { name, storage: "opfs" });
    assert.equal(refused.ok, false, `a second replica of ${name} opened in the same OPFS directory`);
    assert.equal(refused.name, "StorageError");
    assert.ok(refused.storageError && refused.harmonyliteError, JSON.stringify(refused));
    assert.match(refused.message, /OPFS directory ".harmonylite" is in use by another replica/);
  }

  await call(first, "close");
  assert.deepEqual(await call(second, "tryOpen", { name: "tabs.db", storage: "opfs" }), { ok: true });
  assert.deepEqual(await call(second, "query", "SELECT id, v FROM t"), [{ id: 1, v: "first tab" }]);
  await call(second, "close");
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
