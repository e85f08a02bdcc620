#!/usr/bin/env node
// Converged write throughput of 20 edge replicas (wasm, in node) on a 3-node native cluster:
// once as scoped replicas of 10 users ([scopes] on, auth callout, feeds, every scoped change
// validated by every node), once as full replicas of the same cluster without scopes. Each
// replica writes ROWS_PER_REPLICA rows of its user in transactions of TX rows, all at once;
// the time runs from the first write until all three nodes' databases hold every row.
// Prints rows/s for both runs and their ratio; asserts only that every row arrived.
//
//   npm run bench:scoped              (after npm run build)
//   ROWS_PER_REPLICA=200 npm run bench:scoped

import { cleanup, harmonylite, notesCluster, notesToken, waitFor } from "../test/helpers.mjs";

const SCHEMA = "CREATE TABLE notes(id TEXT PRIMARY KEY, owner_id TEXT, body TEXT); CREATE TABLE tags(id TEXT PRIMARY KEY, name TEXT)";
const REPLICAS = 20;
const USERS = 10;
const ROWS_PER_REPLICA = Number(process.env.ROWS_PER_REPLICA ?? 1000);
const TX = Number(process.env.TX ?? 50);

async function run(scoped) {
  const { nodes, wsPorts } = await notesCluster({ schema: SCHEMA, scopes: scoped });
  const { open } = await harmonylite();
  const replicas = [];
  for (let r = 0; r < REPLICAS; r++) {
    const user = `u${r % USERS}`;
    const servers = `ws://127.0.0.1:${wsPorts[r % 3]}`;
    const db = await open({
      name: `r${r}.db`,
      servers,
      snapshots: false,
      ...(scoped ? { scoped: true, getToken: () => notesToken(user) } : {}),
    });
    await db.exec(SCHEMA);
    replicas.push({ r, user, db });
  }
  await Promise.all(replicas.map(({ db }) => db.sync({ timeoutMs: 60_000 })));
  const total = REPLICAS * ROWS_PER_REPLICA;
  const started = performance.now();
  await Promise.all(
    replicas.map(async ({ r, user, db }) => {
      for (let i = 0; i < ROWS_PER_REPLICA; i += TX) {
        await db.transaction(async (tx) => {
          for (let j = i; j < Math.min(i + TX, ROWS_PER_REPLICA); j++) {
            await tx.exec("INSERT INTO notes VALUES (?, ?, ?)", [`r${r}-${j}`, user, `row ${j} of replica ${r}`]);
          }
        });
      }
    }),
  );
  const written = performance.now();
  for (const node of nodes) {
    await waitFor(() => node.query("SELECT count(*) FROM notes")[0][0] === total, {
      timeoutMs: 600_000,
      message: () => `${node.name} holds ${node.query("SELECT count(*) FROM notes")[0][0]} of ${total}\n${node.logTail()}`,
    });
  }
  const converged = performance.now();
  for (const { db } of replicas) {
    await db.close({ flushTimeoutMs: 0 });
  }
  await cleanup();
  return { total, writeMs: written - started, convergedMs: converged - started };
}

const full = await run(false);
const scoped = await run(true);
const rate = (r) => (r.total / r.convergedMs) * 1000;
console.log(`${REPLICAS} replicas x ${ROWS_PER_REPLICA} rows (transactions of ${TX}), 3 nodes, loopback`);
for (const [name, r] of [["full replicas", full], ["scoped replicas", scoped]]) {
  console.log(`${name.padEnd(16)} ${r.total} rows converged on all 3 nodes in ${(r.convergedMs / 1000).toFixed(2)} s: ${Math.round(rate(r))} rows/s (writes done after ${(r.writeMs / 1000).toFixed(2)} s)`);
}
console.log(`scoped / full: ${(rate(scoped) / rate(full)).toFixed(2)}x`);
