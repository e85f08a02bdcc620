// Headless Chromium: an OPFS replica in the package's dedicated Worker writes while offline,
// the page reloads (the Worker dies with it), the rows and the outbox are still there, and
// once the network is back the browser and a native node (a real `harmonylite` sidecar whose
// embedded nats-server has a WebSocket listener) converge.
//
// The page is the package bundled as an application bundles it (esbuild; "harmonylite" and
// "harmonylite/worker" resolved through package.json `exports`), served from
// http://localhost (a secure context). "Offline" is a TCP proxy in front of the sidecar's
// WebSocket port that drops every connection and refuses new ones.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { CutProxy, Sidecar, appSql, cleanup, freePort, tempDir, waitFor } from "../helpers.mjs";
import { bundleBrowserApp, launchChromium, serveStatic } from "./hosts.mjs";

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
