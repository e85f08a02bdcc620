// The replica without NATS: SQL, values, errors, transactions, capture into the outbox,
// change notifications, memory lifetime. Runs the real wasm module in node.

import { test } from "node:test";
import assert from "node:assert/strict";

import { harmonylite } from "./helpers.mjs";

const lib = await harmonylite();
let counter = 0;
const name = () => `local-${process.pid}-${++counter}.db`;

test("values round-trip with their types; named and positional parameters", async () => {
  const db = await lib.open({ name: name() });
  try {
    await db.exec("CREATE TABLE v(id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n)");
    const r = await db.exec("INSERT INTO v(i, r, t, b, n) VALUES (?, ?, ?, ?, ?)", [2n ** 62n, 0.25, "tëxt", new Uint8Array([0, 255]), null]);
    assert.deepEqual(r, { changes: 1, lastInsertRowid: 1 });
    await db.exec("INSERT INTO v(i, t, b) VALUES (:i, @t, $b)", { i: true, t: "named", b: new Uint8Array([7]).buffer });
    const rows = await db.query("SELECT * FROM v ORDER BY id");
    assert.deepEqual(rows, [
      { id: 1, i: 2n ** 62n, r: 0.25, t: "tëxt", b: new Uint8Array([0, 255]), n: null },
      { id: 2, i: 1, r: null, t: "named", b: new Uint8Array([7]), n: null },
    ]);
    assert.deepEqual(await db.query("SELECT count(*) AS c FROM v WHERE t = :t", { t: "named" }), [{ c: 1 }]);
    assert.deepEqual(await db.query("INSERT INTO v(t) VALUES ('returning') RETURNING id"), [{ id: 3 }]);
    assert.equal((await db.status()).outboxRows, 3, "a write through query() is captured too");
  } finally {
    await db.close();
  }
});

test("errors are Error subclasses with stable names", async () => {
  const db = await lib.open({ name: name() });
  try {
    await db.exec("CREATE TABLE e(id INTEGER PRIMARY KEY)");
    await db.exec("INSERT INTO e VALUES (1)");
    const cases = [
      [() => db.exec("INSERT INTO e VALUES (1)"), lib.SqliteError, "SqliteError", "SQLITE_CONSTRAINT"],
      [() => db.exec("SELEKT 1"), lib.SqliteError, "SqliteError", "SQLITE_ERROR"],
      [() => db.query("SELECT 1; SELECT 2"), lib.SqliteError, "SqliteError", "SQLITE_MISUSE"],
      [() => db.query("SELECT ?", [new Date()]), lib.InvalidArgumentError, "InvalidArgumentError"],
      [() => db.query("SELECT ?", []), lib.InvalidArgumentError, "InvalidArgumentError"],
      [() => db.query("SELECT :x", {}), lib.InvalidArgumentError, "InvalidArgumentError"],
      [() => db.query("SELECT ?", [2n ** 70n]), lib.InvalidArgumentError, "InvalidArgumentError"],
    ];
    for (const [run, cls, errorName, code] of cases) {
      await assert.rejects(run(), (e) => {
        assert.ok(e instanceof cls, `${e} is not a ${cls.name}`);
        assert.ok(e instanceof lib.HarmonyliteError);
        assert.equal(e.name, errorName);
        if (code) {
          assert.equal(e.code, code);
        }
        return true;
      });
    }
  } finally {
    await db.close();
  }
  await assert.rejects(db.query("SELECT 1"), (e) => e instanceof lib.ReplicaClosedError && e.name === "ReplicaClosedError");
  await assert.rejects(lib.open({ name: "x", storage: "opfs" }), lib.InvalidArgumentError);
  await assert.rejects(lib.open({ name: "x", servers: "nats://127.0.0.1:4222" }), lib.InvalidArgumentError);
  await assert.rejects(lib.open({ name: "" }), (e) => e instanceof lib.InvalidArgumentError && /name/.test(e.message));
});

test("a script that creates a table and writes to it captures the writes", async () => {
  const db = await lib.open({ name: name() });
  try {
    const changes = [];
    db.subscribe((e) => changes.push(e));
    await db.exec(`
      CREATE TABLE s(id INTEGER PRIMARY KEY, body TEXT);  -- a comment; with a semicolon
      INSERT INTO s(body) VALUES ('a;b'), ('c');
      CREATE TRIGGER s_touch AFTER INSERT ON s BEGIN SELECT 1; SELECT 2; END;
      INSERT INTO s(body) VALUES ('d');
    `);
    const status = await db.status();
    assert.equal(status.outboxRows, 3, "every row written after CREATE TABLE is captured");
    assert.ok(changes.length > 0);
    for (const c of changes) {
      assert.deepEqual(c, { tables: ["s"], origin: "local" });
    }
    assert.deepEqual((await db.query("SELECT body FROM s ORDER BY id")).map((r) => r.body), ["a;b", "c", "d"]);
  } finally {
    await db.close();
  }
});

test("transactions commit or roll back as one; outside calls wait for them", async () => {
  const db = await lib.open({ name: name() });
  try {
    await db.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    const order = [];
    const tx = db.transaction(async (t) => {
      await t.exec("INSERT INTO t VALUES (1, 'in-tx')");
      order.push("tx-write");
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(await t.query("SELECT v FROM t"), [{ v: "in-tx" }]);
      return "done";
    });
    const outside = db.query("SELECT count(*) AS c FROM t").then((rows) => {
      order.push("outside-read");
      return rows;
    });
    assert.equal(await tx, "done");
    assert.deepEqual(await outside, [{ c: 1 }]);
    assert.deepEqual(order, ["tx-write", "outside-read"]);
    await assert.rejects(
      db.transaction(async (t) => {
        await t.exec("INSERT INTO t VALUES (2, 'rolled back')");
        throw new RangeError("no");
      }),
      RangeError,
    );
    assert.deepEqual(await db.query("SELECT id FROM t ORDER BY id"), [{ id: 1 }]);
    assert.equal((await db.status()).outboxRows, 1);
  } finally {
    await db.close();
  }
});

test("transactions started in the same tick run one after the other; no call lands inside another's", async () => {
  const db = await lib.open({ name: name() });
  try {
    await db.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    // Three transactions and an outside write, all started before any of them runs.
    const slow = (id) =>
      db.transaction(async (t) => {
        await t.exec("INSERT INTO t VALUES (?1, 'tx')", [id]);
        await new Promise((r) => setTimeout(r, 20));
        return id;
      });
    const rolledBack = db.transaction(async (t) => {
      await t.exec("INSERT INTO t VALUES (99, 'rolled back')");
      await new Promise((r) => setTimeout(r, 20));
      throw new RangeError("undo");
    });
    const outside = db.exec("INSERT INTO t VALUES (50, 'outside')");
    const results = await Promise.allSettled([slow(1), slow(2), rolledBack, outside, slow(3)]);
    assert.deepEqual(
      results.map((r) => r.status),
      ["fulfilled", "fulfilled", "rejected", "fulfilled", "fulfilled"],
    );
    assert.ok(results[2].reason instanceof RangeError, String(results[2].reason));
    // The outside write was not swallowed by the transaction that rolled back.
    assert.deepEqual(
      (await db.query("SELECT id FROM t ORDER BY id")).map((r) => r.id),
      [1, 2, 3, 50],
    );
  } finally {
    await db.close();
  }
});

test("a memory replica lives as long as it is open; one name is one replica", async () => {
  const dbName = name();
  const db = await lib.open({ name: dbName });
  await db.exec("CREATE TABLE m(id INTEGER PRIMARY KEY)");
  await assert.rejects(lib.open({ name: dbName }), lib.StorageError);
  const status = await db.status();
  assert.match(status.nodeId, /^[0-9a-f]+$/);
  assert.equal(status.online, false);
  await db.close();
  const again = await lib.open({ name: dbName });
  try {
    assert.deepEqual(await again.query("SELECT name FROM sqlite_schema WHERE name = 'm'"), []);
    assert.notEqual((await again.status()).nodeId, status.nodeId);
  } finally {
    await again.close();
  }
  const fixed = await lib.open({ name: name(), nodeId: "abc123" });
  assert.equal((await fixed.status()).nodeId, "abc123");
  await fixed.close();
});
