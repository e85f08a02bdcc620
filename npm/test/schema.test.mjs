// Replicated migrations between a wasm replica (node, memory storage, NATS over WebSocket)
// and a real harmonylite sidecar: `harmonylite migrate` reaches the replica, the replica's
// migrate() reaches the sidecar, destructive or broken SQL is refused, and the schema status
// agrees on both sides.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { NatsServer, Sidecar, cleanup, harmonylite, onCleanup, sidecarBinary, tempDir, waitFor } from "./helpers.mjs";

const SCHEMA = "CREATE TABLE notes(id INTEGER PRIMARY KEY, val TEXT NOT NULL)";

afterEach(cleanup);

/** Runs the sidecar binary once with the node's config and `args`; returns its stdout. */
function sidecarCommand(node, args) {
  return execFileSync(sidecarBinary(), [...args, "--config", node.config], {
    encoding: "utf8",
    env: { ...process.env, RUST_LOG: "info" },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

test("migrations reach a wasm replica and a sidecar, exactly once and before the data that needs them", async () => {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  const node = await Sidecar.start(join(dir, "node1"), "node1", { natsUrl: nats.url, schema: SCHEMA });
  const { open, MigrationError } = await harmonylite();
  const db = await open({ name: "schema.db", servers: nats.wsUrl, reconnectMinMs: 100, reconnectMaxMs: 1000 });
  onCleanup(() => db.close({ flushTimeoutMs: 0 }));
  await db.exec(SCHEMA);
  await db.exec("INSERT INTO notes VALUES (1, 'from js')");
  await db.flush({ timeoutMs: 30_000 });
  await waitFor(() => node.query("SELECT count(*) FROM notes")[0][0] === 1, { message: () => node.logTail() });

  // `harmonylite migrate` on the sidecar's node: the replica applies it.
  const file = join(dir, "add-tag.sql");
  writeFileSync(file, "ALTER TABLE notes ADD COLUMN tag TEXT DEFAULT 'untagged';");
  const out = sidecarCommand(node, ["migrate", file]);
  assert.match(out, /applied here as version 1/);
  await waitFor(async () => (await db.schemaStatus()).migrationVersion === 1, {
    message: () => "the replica did not apply the sidecar's migration",
  });
  assert.deepEqual(await db.query("SELECT id, val, tag FROM notes"), [{ id: 1, val: "from js", tag: "untagged" }]);
  // Data written with the new column after the migration reaches the replica.
  await waitFor(() => node.query("SELECT count(*) FROM notes")[0][0] === 1);
  execFileSync("python3", ["-c", `import sqlite3; c = sqlite3.connect(${JSON.stringify(node.db)}); c.execute("INSERT INTO notes(id, val, tag) VALUES (2, 'native', 'red')"); c.commit()`]);
  await waitFor(async () => (await db.query("SELECT tag FROM notes WHERE id = 2"))[0]?.tag === "red", {
    message: () => node.logTail(),
  });

  // The replica's migrate(): applied here (resolves with its version), then on the sidecar.
  const result = await db.migrate("CREATE TABLE tags(name TEXT PRIMARY KEY, color TEXT)", { timeoutMs: 30_000 });
  assert.equal(result.version, 2);
  assert.equal(result.statements, 1);
  assert.equal(result.destructive, false);
  await db.exec("INSERT INTO tags VALUES ('red', '#f00')");
  await db.flush({ timeoutMs: 30_000 });
  await waitFor(() => node.query("SELECT count(*) FROM sqlite_schema WHERE name = 'tags'")[0][0] === 1 && node.query("SELECT count(*) FROM tags")[0]?.[0] === 1, {
    message: () => `the sidecar did not get the replica's migration and row:\n${node.logTail()}`,
  });
  assert.deepEqual(node.query("SELECT name, color FROM tags"), [["red", "#f00"]]);

  // Refused before publishing: destructive without the flag, transaction control, broken SQL.
  await assert.rejects(db.migrate("DROP TABLE tags"), (e) => e instanceof MigrationError && /allowDestructive/.test(e.message));
  await assert.rejects(db.migrate("BEGIN; CREATE TABLE x(id INTEGER PRIMARY KEY); COMMIT"), MigrationError);
  await assert.rejects(db.migrate("ALTER TABLE nope ADD COLUMN c"), (e) => e instanceof MigrationError && /no such table/.test(e.message));

  // Both sides report the same schema and version; status() carries them too.
  await waitFor(() => sidecarCommand(node, ["--schema-status"]).includes("migration_version 2\n"));
  const native = sidecarCommand(node, ["--schema-status"]);
  const schema = await db.schemaStatus();
  assert.equal(schema.migrationVersion, 2);
  assert.equal(schema.parkedMigrations, 0);
  assert.deepEqual(schema.parkedByTable, {});
  assert.match(native, new RegExp(`^schema_fingerprint ${schema.fingerprint}\\n`));
  const status = await db.status();
  assert.equal(status.migrationVersion, 2);
  assert.equal(status.schemaFingerprint, schema.fingerprint);
});

test("a replica parks changes for a table it lacks and applies them once its application creates it", async () => {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  const node = await Sidecar.start(join(dir, "node1"), "node1", { natsUrl: nats.url, schema: SCHEMA });
  const { open } = await harmonylite();
  const db = await open({ name: "parks.db", servers: nats.wsUrl, reconnectMinMs: 100, reconnectMaxMs: 1000 });
  onCleanup(() => db.close({ flushTimeoutMs: 0 }));
  await db.exec(SCHEMA);
  // The sidecar's application creates a table and writes to it at once.
  execFileSync("python3", [
    "-c",
    `import sqlite3; c = sqlite3.connect(${JSON.stringify(node.db)}); c.execute("CREATE TABLE extra(id INTEGER PRIMARY KEY, v TEXT)"); c.execute("INSERT INTO extra VALUES (1, 'early')"); c.commit()`,
  ]);
  await waitFor(async () => ((await db.schemaStatus()).parkedByTable.extra ?? 0) > 0, {
    message: () => `the replica did not park the new table's change:\n${node.logTail()}`,
  });
  // Creating the table here retries the parked change within the same call (the schema
  // change is noticed by the drain exec() asks for), not at the next periodic retry.
  await db.exec("CREATE TABLE extra(id INTEGER PRIMARY KEY, v TEXT)");
  assert.deepEqual(await db.query("SELECT v FROM extra WHERE id = 1"), [{ v: "early" }]);
  assert.deepEqual((await db.schemaStatus()).parkedByTable, {});
});

test("discardParked() drops the parked changes of a table dropped on purpose, for good, and refuses the risky cases", async () => {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  const node = await Sidecar.start(join(dir, "node1"), "node1", { natsUrl: nats.url, schema: SCHEMA });
  const { open, InvalidArgumentError } = await harmonylite();
  const db = await open({ name: "discard.db", servers: nats.wsUrl, reconnectMinMs: 100, reconnectMaxMs: 1000 });
  onCleanup(() => db.close({ flushTimeoutMs: 0 }));
  await db.exec(SCHEMA);
  const sidecarSql = (sql) =>
    execFileSync("python3", ["-c", `import sqlite3; c = sqlite3.connect(${JSON.stringify(node.db)}); c.executescript(${JSON.stringify(sql)}); c.commit()`]);
  const parked = async () => (await db.schemaStatus()).parkedByTable;
  // The sidecar's application has a table `gone` this replica does not want (it dropped it).
  sidecarSql("CREATE TABLE gone(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO gone VALUES (1, 'a');");
  await waitFor(async () => ((await parked()).gone ?? 0) === 1, { message: () => node.logTail() });
  // One transaction writing both tables: parked whole, so the notes row waits too.
  sidecarSql("BEGIN; INSERT INTO gone VALUES (2, 'b'); INSERT INTO notes VALUES (10, 'with gone'); COMMIT;");
  await waitFor(async () => ((await parked()).gone ?? 0) === 2, { message: () => node.logTail() });
  assert.deepEqual(await db.query("SELECT id FROM notes WHERE id = 10"), []);

  // A misspelt name is refused; so is a table that exists here (its change waits for a column).
  await assert.rejects(db.discardParked("gnoe"), (e) => e instanceof InvalidArgumentError && /nothing parked/.test(e.message));
  sidecarSql("ALTER TABLE notes ADD COLUMN tag TEXT; INSERT INTO notes VALUES (20, 'tagged', 'red');");
  await waitFor(async () => ((await parked()).notes ?? 0) === 1, { message: () => node.logTail() });
  await assert.rejects(db.discardParked("notes"), (e) => e instanceof InvalidArgumentError && /exists here/.test(e.message));
  assert.deepEqual(await parked(), { gone: 2, notes: 1 });

  // Discarding gone: both messages held its changes; the notes row they also held applies at once.
  assert.equal(await db.discardParked("gone"), 2);
  assert.deepEqual(await db.query("SELECT id, val FROM notes WHERE id = 10"), [{ id: 10, val: "with gone" }]);
  assert.deepEqual(await parked(), { notes: 1 });
  assert.equal(await db.discardParked("notes", { force: true }), 1);
  assert.deepEqual(await parked(), {});
  assert.equal((await db.status()).parked, 0);

  // Creating the table later does not bring the discarded changes back.
  await db.exec("CREATE TABLE gone(id INTEGER PRIMARY KEY, v TEXT)");
  assert.deepEqual(await db.query("SELECT count(*) AS n FROM gone"), [{ n: 0 }]);
  assert.deepEqual(await parked(), {});
});
