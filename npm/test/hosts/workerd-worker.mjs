// The worker of the workerd test: a module worker that imports the package as a Cloudflare
// Worker would (bundled with the "workerd" condition). Each request opens its own replica
// (memory storage) against the NATS WebSocket URL given in the query string, catches up
// with the stream, answers, and closes the replica before responding: a Worker's
// WebSocket and timers belong to the request that made them.
//
//   GET  /ping                     200 "ok"
//   GET  /count?servers=ws://...   {"count", "sum", "status", "errors"} after sync()
//   POST /write?servers=...&id=N   inserts (N, 'workerd-N'), flush()es, {"status", "errors"}
//   POST /run?servers=...          runs the body's steps in order on one replica, each one of
//                                  {"sync": true}, {"flush": true}, {"schemaStatus": true},
//                                  {"exec": sql, "params"}, {"query": sql, "params"},
//                                  {"migrate": sql, "options"}; {"results", "status", "errors"}

import { open } from "harmonylite";

const SCHEMA = "CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, val TEXT NOT NULL)";

async function withReplica(servers, fn) {
  const db = await open({ name: `workerd-${crypto.randomUUID()}`, servers, reconnectMinMs: 100, reconnectMaxMs: 1000 });
  const errors = [];
  db.on("error", (e) => errors.push(`${e.name}: ${e.message}`));
  try {
    await db.exec(SCHEMA);
    const result = await fn(db);
    return { ...result, status: await db.status(), errors };
  } finally {
    await db.close({ flushTimeoutMs: 0 });
  }
}

export default {
  async fetch(request) {
    const url = new URL(request.url);
    const servers = url.searchParams.get("servers");
    try {
      switch (`${request.method} ${url.pathname}`) {
        case "GET /ping":
          return new Response("ok");
        case "GET /count":
          return Response.json(
            await withReplica(servers, async (db) => {
              await db.sync({ timeoutMs: 30_000 });
              const [row] = await db.query("SELECT count(*) AS count, total(id) AS sum FROM items");
              return { count: row.count, sum: row.sum };
            }),
          );
        case "POST /write": {
          const id = Number(url.searchParams.get("id"));
          return Response.json(
            await withReplica(servers, async (db) => {
              await db.exec("INSERT INTO items(id, val) VALUES (?, ?)", [id, `workerd-${id}`]);
              await db.flush({ timeoutMs: 30_000 });
              return {};
            }),
          );
        }
        case "POST /run": {
          const { steps } = await request.json();
          return Response.json(
            await withReplica(servers, async (db) => {
              const results = [];
              for (const step of steps) {
                if (step.sync) {
                  results.push(await db.sync({ timeoutMs: 30_000 }));
                } else if (step.flush) {
                  results.push(await db.flush({ timeoutMs: 30_000 }));
                } else if (step.schemaStatus) {
                  results.push(await db.schemaStatus());
                } else if (step.exec !== undefined) {
                  results.push({ changes: (await db.exec(step.exec, step.params)).changes });
                } else if (step.query !== undefined) {
                  results.push(await db.query(step.query, step.params));
                } else if (step.migrate !== undefined) {
                  results.push(await db.migrate(step.migrate, { timeoutMs: 30_000, ...step.options }));
                } else {
                  throw new Error(`unknown step ${JSON.stringify(step)}`);
                }
              }
              return { results };
            }),
          );
        }
        default:
          return new Response("not found", { status: 404 });
      }
    } catch (e) {
      return Response.json({ error: `${e?.name}: ${e?.message}`, stack: String(e?.stack) }, { status: 500 });
    }
  },
};
