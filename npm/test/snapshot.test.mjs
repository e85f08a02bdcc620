// Bootstrap: a replica with an empty database starts from the newest snapshot the sidecar
// uploaded to the object store, then replays the stream after it; without snapshots it
// would have fallen behind the stream's retention.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";

import { NatsServer, Sidecar, appSql, cleanup, harmonylite, onCleanup, sidecarBinary, tempDir, waitFor } from "./helpers.mjs";

const SCHEMA = "CREATE TABLE notes(id INTEGER PRIMARY KEY, val TEXT NOT NULL)";

afterEach(cleanup);

test("an empty replica bootstraps from the newest snapshot, then follows the stream", async () => {
  const dir = tempDir();
  const nats = await NatsServer.start(join(dir, "nats"));
  const node = await Sidecar.start(join(dir, "node1"), "node1", {
    natsUrl: nats.url,
    schema: SCHEMA,
    // Snapshots are taken by hand below (`--save-snapshot`), at a known point.
    extra: "[replication_log]\nmax_entries = 10\n[snapshot]\nenable = false\n",
  });
  const meta = (key) => node.query("SELECT value FROM __hl_meta WHERE key = ?", [key])[0]?.[0];
  // 30 writes, each captured as its own batch: 30 stream messages, of which the stream
  // keeps the last 10.
  const ROWS = 30;
  for (let i = 1; i <= ROWS; i++) {
    appSql(node.db, "INSERT INTO notes(id, val) VALUES (?, ?)", [i, `native-${i}`]);
    await waitFor(() => meta("next_batch") === i + 1, { message: () => `the sidecar to capture write ${i}:\n${node.logTail()}` });
  }
  await waitFor(() => meta("cursor") === ROWS, { message: () => `the sidecar to consume its ${ROWS} messages:\n${node.logTail()}` });
  // A snapshot covering all 30 (the stream keeps 21..30).
  execFileSync(sidecarBinary(), ["--config", node.config, "--save-snapshot"], {
    stdio: ["ignore", "inherit", "inherit"],
    env: { ...process.env, RUST_LOG: "warn" },
  });

  const { open } = await harmonylite();
  // Without snapshots, an empty replica cannot catch up: the stream starts after 20.
  const plain = await open({ name: "no-snapshots.db", servers: nats.wsUrl, snapshots: false, reconnectMinMs: 100 });
  onCleanup(() => plain.close({ flushTimeoutMs: 0 }));
  await waitFor(async () => (await plain.status()).fellBehind, { message: "the replica without snapshots to report it fell behind" });

  const db = await open({ name: "bootstrapped.db", servers: nats.wsUrl, reconnectMinMs: 100 });
  onCleanup(() => db.close({ flushTimeoutMs: 0 }));
  const errors = [];
  db.on("error", (e) => errors.push(e.message));
  await db.sync({ timeoutMs: 60_000 });
  const rows = await db.query("SELECT id, val FROM notes ORDER BY id");
  assert.equal(rows.length, ROWS, `rows after bootstrap (errors: ${errors.join("; ")})`);
  assert.deepEqual(rows.at(-1), { id: ROWS, val: `native-${ROWS}` });
  const status = await db.status();
  assert.equal(status.fellBehind, false);
  assert.equal(status.lag, 0);

  // It replicates like any other replica afterwards, both ways.
  appSql(node.db, "INSERT INTO notes(id, val) VALUES (100, 'after')");
  await waitFor(async () => (await db.query("SELECT val FROM notes WHERE id = 100"))[0]?.val === "after", { message: "row 100" });
  await db.exec("INSERT INTO notes(id, val) VALUES (101, 'from-js')");
  await db.flush({ timeoutMs: 30_000 });
  await waitFor(() => node.query("SELECT val FROM notes WHERE id = 101")[0]?.[0] === "from-js", { message: () => `row 101 on the sidecar:\n${node.logTail()}` });
});
