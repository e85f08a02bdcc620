// Tables that merge by column (issue 19), in node: wasm replicas opened with
// `merge: { column, counters }` and native sidecars with the same `[merge]` section.
// Concurrent edits of different columns of one row all survive (one replica offline), the
// later write of one column wins (by write time, not arrival), counters add every replica's
// increments, a replica whose `merge` contradicts the cluster is refused loudly, a running
// cluster switches a table by a replicated migration from a replica, and the cluster case:
// 3 sidecars (embedded NATS cluster) and a wasm replica take 1,000 concurrent decrements,
// one sidecar killed with SIGKILL in the middle and restarted, and all four end at -1,000.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { join } from "node:path";

import { CutProxy, NatsServer, Sidecar, appSql, cleanup, harmonylite, notesCluster, onCleanup, sidecarBinary, sleep, tempDir, waitFor } from "./helpers.mjs";

const SCHEMA =
  "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT, tag TEXT DEFAULT 'none'); " +
  "CREATE TABLE stock(sku TEXT PRIMARY KEY, qty INTEGER NOT NULL DEFAULT 0, name TEXT)";
const MERGE = { column: ["notes"], counters: ["stock.qty"] };
const MERGE_TOML = '[merge]\ncolumn = ["notes"]\ncounters = ["stock.qty"]\n';
const MODES = { notes: { mode: "column", counters: [] }, stock: { mode: "column", counters: ["qty"] } };

afterEach(cleanup);

const nodeNote = (node, id) => node.query("SELECT title, body, tag FROM notes WHERE id = ?", [id])[0] ?? null;
const replicaNote = async (db, id) => {
  const row = (await db.query("SELECT title, body, tag FROM notes WHERE id = ?", [id]))[0];
  return row ? [row.title, row.body, row.tag] : null;
};
const nodeQty = (node, sku) => node.query("SELECT qty FROM stock WHERE sku = ?", [sku])[0]?.[0];
const replicaQty = async (db, sku) => (await db.query("SELECT qty FROM stock WHERE sku = ?", [sku]))[0]?.qty;

async function openReplica(open, options) {
  const db = await open({ reconnectMinMs: 100, reconnectMaxMs: 1000, ...options });
  onCleanup(() => db.close({ flushTimeoutMs: 0 }));
  const errors = [];
  db.on("error", (e) => errors.push(`${e.name}: ${e.message}`));
  return { db, errors };
}

/** Waits until the sidecar and every replica hold `expected` as note `id`. */
async function notesConverge(node, replicas, id, expected, what) {
  const all = async () => [nodeNote(node, id), ...(await Promise.all(replicas.map((db) => replicaNote(db, id))))];
  await waitFor(async () => (await all()).every((n) => JSON.stringify(n) === JSON.stringify(expected)), {
    timeoutMs: 60_000,
    message: async () => `${what}: sidecar, replicas = ${JSON.stringify(await all())}, want ${JSON.stringify(expected)}\n${node.logTail()}`,
  });
}

test("open() checks its merge option and names what is wrong", async () => {
  const { open, InvalidArgumentError } = await harmonylite();
  const refused = async (merge, pattern) => {
    await assert.rejects(open({ name: "bad.db", merge }), (e) => e instanceof InvalidArgumentError && pattern.test(e.message), `merge ${JSON.stringify(merge)}`);
  };
  await refused({ columns: ["notes"] }, /unknown key "columns".*"column" and "counters"/);
  await refused({ counters: ["qty"] }, /counter "qty" must name its table, as "table.column"/);
  await refused({ counters: [".qty"] }, /counter ".qty" must name its table/);
  await refused({ column: "notes" }, /merge\.column: must be an array of strings/);
  await refused({ column: [""] }, /an empty table name in `column`/);
  await refused(["notes"], /merge: must be an object/);
  // A well-formed option opens; absent, it follows the database (row for tables it does not know).
  const db = await open({ name: "good.db", merge: MERGE });
  await db.exec(SCHEMA);
  assert.deepEqual((await db.status()).merge, MODES);
  await db.close();
  const plain = await open({ name: "plain.db" });
  await plain.exec(SCHEMA);
  assert.deepEqual((await plain.status()).merge, { notes: { mode: "row", counters: [] }, stock: { mode: "row", counters: [] } });
  await plain.close();
});

test("two wasm replicas and a sidecar merging by column: concurrent edits of different columns survive an offline replica, the later write of one column wins, counters add up", async () => {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  const node = await Sidecar.start(join(dir, "node1"), "node1", { natsUrl: nats.url, schema: SCHEMA, extra: MERGE_TOML });
  const proxy = await CutProxy.start(nats.wsPort);
  const { open } = await harmonylite();
  const { db: a, errors: aErrors } = await openReplica(open, { name: "a.db", servers: proxy.wsUrl, merge: MERGE });
  const { db: b, errors: bErrors } = await openReplica(open, { name: "b.db", servers: nats.wsUrl, merge: MERGE });
  for (const db of [a, b]) {
    await db.exec(SCHEMA);
    assert.deepEqual((await db.status()).merge, MODES);
  }

  appSql(node.db, "INSERT INTO notes(id, title, body) VALUES (1, 'draft', 'text'); INSERT INTO stock(sku, qty, name) VALUES ('apple', 10, 'Apple')", null);
  await notesConverge(node, [a, b], 1, ["draft", "text", "none"], "the sidecar's note everywhere");
  await waitFor(async () => (await replicaQty(a, "apple")) === 10 && (await replicaQty(b, "apple")) === 10, { message: "the stock row on both replicas" });

  // a goes offline; each of the three edits another column of note 1 and counts the stock.
  await proxy.cut();
  await waitFor(async () => !(await a.status()).online, { message: "a to notice it is offline" });
  await a.exec("UPDATE notes SET title = 'title from a' WHERE id = 1");
  await a.exec("UPDATE stock SET qty = qty + 5 WHERE sku = 'apple'");
  await b.exec("UPDATE notes SET body = 'body from b' WHERE id = 1");
  await b.exec("UPDATE stock SET qty = qty - 2 WHERE sku = 'apple'");
  appSql(node.db, "UPDATE notes SET tag = 'tag from the sidecar' WHERE id = 1; UPDATE stock SET qty = qty - 1 WHERE sku = 'apple'", null);
  // b and the sidecar settle without a (a row merge would have kept only the last writer's row).
  await waitFor(
    async () => JSON.stringify(nodeNote(node, 1)) === JSON.stringify(["draft", "body from b", "tag from the sidecar"]) && JSON.stringify(await replicaNote(b, 1)) === JSON.stringify(["draft", "body from b", "tag from the sidecar"]),
    { message: async () => `b and the sidecar without a: ${JSON.stringify([nodeNote(node, 1), await replicaNote(b, 1)])}` },
  );
  assert.deepEqual(await replicaNote(a, 1), ["title from a", "text", "none"], "a, offline, has only its own edit");
  assert.equal(await replicaQty(a, "apple"), 15);

  await proxy.restore();
  await notesConverge(node, [a, b], 1, ["title from a", "body from b", "tag from the sidecar"], "every column edit on every replica");
  await waitFor(async () => nodeQty(node, "apple") === 12 && (await replicaQty(a, "apple")) === 12 && (await replicaQty(b, "apple")) === 12, {
    message: async () => `qty 10 + 5 - 2 - 1 = 12 everywhere: sidecar ${nodeQty(node, "apple")}, a ${await replicaQty(a, "apple")}, b ${await replicaQty(b, "apple")}`,
  });

  // One column written on two sides while a is offline: the later write wins, whichever
  // arrives last. Title: a first (offline), then b. Body: the sidecar first, then a (offline).
  await proxy.cut();
  await waitFor(async () => !(await a.status()).online, { message: "a to notice it is offline again" });
  await a.exec("UPDATE notes SET title = 'a, earlier' WHERE id = 1");
  await sleep(30);
  await b.exec("UPDATE notes SET title = 'b, later' WHERE id = 1");
  appSql(node.db, "UPDATE notes SET body = 'the sidecar, earlier' WHERE id = 1");
  await waitFor(async () => (await replicaNote(b, 1))?.[1] === "the sidecar, earlier", { message: "the sidecar's body on b" });
  await sleep(30);
  await a.exec("UPDATE notes SET body = 'a, later (offline)' WHERE id = 1");
  await waitFor(() => nodeNote(node, 1)?.[0] === "b, later", { message: "b's title on the sidecar" });
  await proxy.restore();
  await notesConverge(node, [a, b], 1, ["b, later", "a, later (offline)", "tag from the sidecar"], "the later write of each column");

  // A delete hides every column written before it; a later write brings the row back with
  // only the columns written after the delete (the rest take their defaults).
  await a.exec("DELETE FROM notes WHERE id = 1");
  await notesConverge(node, [a, b], 1, null, "the delete everywhere");
  await b.exec("INSERT INTO notes(id, title) VALUES (1, 'again')");
  await notesConverge(node, [a, b], 1, ["again", null, "none"], "the row back with its new column only");

  for (const db of [a, b]) {
    const status = await db.status();
    assert.equal(status.parked, 0);
    assert.deepEqual(status.merge, MODES);
  }
  const unexpected = [...aErrors, ...bErrors].filter((e) => !e.startsWith("ConnectionError"));
  assert.deepEqual(unexpected, [], "background errors other than connection losses");
});

test("a replica whose merge option contradicts the cluster is refused loudly: the snapshot is not restored and column changes park", async () => {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  const node = await Sidecar.start(join(dir, "node1"), "node1", {
    natsUrl: nats.url,
    schema: SCHEMA,
    extra: `${MERGE_TOML}[snapshot]\nenable = false\n`,
  });
  appSql(node.db, "INSERT INTO stock(sku, qty) VALUES ('pear', 3)");
  await waitFor(() => node.query("SELECT count(*) FROM __hl_outbox")[0][0] === 0 && node.query("SELECT count(*) FROM __hl_log")[0][0] === 0, {
    message: () => `the sidecar to publish its write:\n${node.logTail()}`,
  });
  execFileSync(sidecarBinary(), ["--config", node.config, "--save-snapshot"], { stdio: ["ignore", "inherit", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
  appSql(node.db, "UPDATE stock SET qty = qty - 1 WHERE sku = 'pear'");

  const { open } = await harmonylite();
  // Counters left out: `stock` merges by row here, by column (counter qty) in the cluster.
  const { db, errors } = await openReplica(open, { name: "contrary.db", servers: nats.wsUrl, merge: { column: ["notes"] } });
  await db.exec(SCHEMA);
  assert.equal((await db.status()).merge.stock.mode, "row");
  await waitFor(() => errors.some((e) => /restoring snapshot .* failed \(table "stock" merges by column \(counters: qty\) in the snapshot but the options say row/.test(e)), {
    message: () => `the snapshot refused, naming the table: ${JSON.stringify(errors)}`,
  });
  await waitFor(() => errors.some((e) => /parked stream message \d+ \(merge_mode\).*"stock"/.test(e)), {
    message: () => `the sidecar's column changes parked, naming the table: ${JSON.stringify(errors)}`,
  });
  assert.equal(await replicaQty(db, "pear"), undefined, "nothing of stock applied by row");
  assert.ok((await db.status()).parked > 0);
  assert.deepEqual((await db.schemaStatus()).parkedByTable.stock > 0, true);

  // The same snapshot restores into a replica whose option agrees, which then counts along.
  const { db: agreeing, errors: agreeingErrors } = await openReplica(open, { name: "agreeing.db", servers: nats.wsUrl, merge: MERGE });
  await agreeing.exec(SCHEMA);
  await waitFor(async () => (await replicaQty(agreeing, "pear")) === 2, { message: async () => `qty 3 - 1 = 2 on the restored replica (${await replicaQty(agreeing, "pear")}): ${JSON.stringify(agreeingErrors)}` });
  await agreeing.exec("UPDATE stock SET qty = qty + 10 WHERE sku = 'pear'");
  appSql(node.db, "UPDATE stock SET qty = qty - 1 WHERE sku = 'pear'");
  await waitFor(async () => nodeQty(node, "pear") === 11 && (await replicaQty(agreeing, "pear")) === 11, { message: async () => `qty 2 + 10 - 1 = 11: ${nodeQty(node, "pear")}, ${await replicaQty(agreeing, "pear")}` });
  assert.deepEqual(agreeingErrors.filter((e) => !e.startsWith("ConnectionError")), [], "the agreeing replica restored the snapshot without complaint");
  assert.deepEqual((await agreeing.status()).merge, MODES);
});

test("a replica's migrate({ merge }) switches a running cluster's table to column merging, counters included", async () => {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  // No [merge] section: the sidecar follows what its database records.
  const node = await Sidecar.start(join(dir, "node1"), "node1", { natsUrl: nats.url, schema: SCHEMA });
  const { open, InvalidArgumentError, MigrationError } = await harmonylite();
  const { db, errors } = await openReplica(open, { name: "switcher.db", servers: nats.wsUrl });
  await db.exec(SCHEMA);
  appSql(node.db, "INSERT INTO notes(id, title, body) VALUES (1, 't', 'b'); INSERT INTO stock(sku, qty) VALUES ('kiwi', 7)", null);
  await waitFor(async () => (await replicaQty(db, "kiwi")) === 7 && (await replicaNote(db, 1)) !== null, { message: "the sidecar's rows on the replica" });
  assert.equal((await db.status()).merge.notes.mode, "row");

  // Checked before anything is published.
  await assert.rejects(db.migrate({ merge: { table: "notes", mode: "sideways" } }), InvalidArgumentError);
  await assert.rejects(db.migrate({ merge: { table: "notes", mode: "row", counters: ["title"] } }), InvalidArgumentError);
  await assert.rejects(db.migrate({ merge: { table: "notes", mode: "column", extra: 1 } }), /unknown key "extra"/);
  await assert.rejects(db.migrate({ merge: { table: "missing", mode: "column" } }), (e) => e instanceof MigrationError && /"missing" is not replicated here/.test(e.message));
  await assert.rejects(db.migrate({ merge: { table: "stock", mode: "column", counters: ["nope"] } }), (e) => e instanceof MigrationError && /nope/.test(e.message));

  const notes = await db.migrate({ merge: { table: "notes", mode: "column" } }, { timeoutMs: 60_000 });
  const stock = await db.migrate({ merge: { table: "STOCK", mode: "column", counters: ["qty"] } }, { timeoutMs: 60_000 });
  assert.ok(stock.version > notes.version && notes.version > 0, JSON.stringify([notes, stock]));
  assert.deepEqual((await db.status()).merge, MODES);

  // From now on concurrent edits of different columns both survive, and counters add up.
  appSql(node.db, "UPDATE notes SET title = 'from the sidecar' WHERE id = 1; UPDATE stock SET qty = qty - 1 WHERE sku = 'kiwi'", null);
  await db.exec("UPDATE notes SET body = 'from the replica' WHERE id = 1");
  await db.exec("UPDATE stock SET qty = qty - 2 WHERE sku = 'kiwi'");
  await notesConverge(node, [db], 1, ["from the sidecar", "from the replica", "none"], "both column edits after the switch");
  await waitFor(async () => nodeQty(node, "kiwi") === 4 && (await replicaQty(db, "kiwi")) === 4, {
    message: async () => `qty 7 - 1 - 2 = 4: sidecar ${nodeQty(node, "kiwi")}, replica ${await replicaQty(db, "kiwi")}\n${node.logTail()}`,
  });
  const unexpected = errors.filter((e) => !e.startsWith("ConnectionError"));
  assert.deepEqual(unexpected, []);
});

/**
 * The application of a sidecar: `count` decrements of `sku`, each its own transaction on its
 * own connection to the node's database file (Python's sqlite3), `pauseMs` apart. Resolves
 * when done; `progress()` says how many committed so far.
 */
function appDecrements(db, sku, count, pauseMs) {
  const script = `
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 60000")
for i in range(int(sys.argv[3])):
    conn.execute("UPDATE stock SET qty = qty - 1 WHERE sku = ?", (sys.argv[2],))
    print(i + 1, flush=True)
    time.sleep(float(sys.argv[4]) / 1000)
`;
  const child = spawn("python3", ["-c", script, db, sku, String(count), String(pauseMs)], { stdio: ["ignore", "pipe", "pipe"] });
  let done = 0;
  let stderr = "";
  child.stdout.on("data", (chunk) => {
    const lines = chunk.toString().trim().split("\n");
    done = Number(lines.at(-1));
  });
  child.stderr.on("data", (chunk) => (stderr += chunk));
  onCleanup(() => child.exitCode === null && child.kill());
  const finished = new Promise((resolve, reject) => {
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`the application on ${db} failed (${code}): ${stderr}`))));
  });
  return { finished, progress: () => done };
}

test("cluster: 3 sidecars and a wasm replica take 1,000 concurrent decrements, one sidecar killed with SIGKILL and restarted, all end at -1,000", { timeout: 600_000 }, async () => {
  const { nodes, wsPorts } = await notesCluster({ schema: SCHEMA, scopes: false, extra: MERGE_TOML });
  const { open } = await harmonylite();
  // The wasm replica talks to node1's WebSocket listener; node2 is the one killed.
  const { db, errors } = await openReplica(open, { name: "counter.db", servers: `ws://127.0.0.1:${wsPorts[0]}`, merge: MERGE });
  await db.exec(SCHEMA);
  appSql(nodes[0].db, "INSERT INTO stock(sku, qty, name) VALUES ('apple', 0, 'Apple')");
  const qtys = async () => [...nodes.map((n) => nodeQty(n, "apple")), await replicaQty(db, "apple")];
  await waitFor(async () => (await qtys()).every((q) => q === 0), { timeoutMs: 120_000, message: async () => `the stock row on all four: ${JSON.stringify(await qtys())}` });

  const PER = 250;
  const started = Date.now();
  const apps = nodes.map((n) => appDecrements(n.db, "apple", PER, 10));
  const wasm = (async () => {
    for (let i = 0; i < PER; i++) {
      await db.exec("UPDATE stock SET qty = qty - 1 WHERE sku = 'apple'");
      await sleep(10);
    }
  })();

  // node2 crashes once its application made about 100 of its decrements, stays down while
  // the application keeps writing to its file, and comes back.
  await waitFor(() => apps[1].progress() >= 100, { timeoutMs: 120_000, message: () => `node2's application to make 100 decrements (${apps[1].progress()})` });
  await nodes[1].kill();
  const killedAt = apps[1].progress();
  await waitFor(() => apps[1].progress() >= Math.min(PER, killedAt + 50), { timeoutMs: 120_000, message: "node2's application to write while its sidecar is down" });
  await nodes[1].start();
  await Promise.all([...apps.map((a) => a.finished), wasm]);
  const written = Date.now() - started;

  await waitFor(async () => (await qtys()).every((q) => q === -4 * PER), {
    timeoutMs: 300_000,
    message: async () => `-1000 on all four (node1, node2, node3, wasm): ${JSON.stringify(await qtys())}\n${nodes[1].logTail()}`,
  });
  console.log(`cluster counter: ${4 * PER} decrements written in ${written} ms (node2 killed after ${killedAt} of its ${PER}), converged ${Date.now() - started - written} ms later`);
  const status = await db.status();
  assert.equal(status.parked, 0);
  assert.deepEqual(status.merge, MODES);
  // While node2 is down the cluster's JetStream elects new leaders: a publish may fail then
  // (e.g. "jetstream is not enabled") and is sent again, which the counter totals absorb.
  const unexpected = errors.filter((e) => !e.startsWith("ConnectionError") && !/^ReplicationError: publishing outbox frame \d+ failed: .*; it is sent again$/.test(e));
  assert.deepEqual(unexpected, [], "background errors other than connection losses and retried publishes");
});
