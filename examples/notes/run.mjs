// `npm start`: builds the page, starts the 3-node cluster (data in .data/, kept between
// runs so the browsers' OPFS replicas and the cluster stay the same database; `--fresh`
// starts over) and the web server, and prints the URL to open. Ctrl-C stops everything.
//
// Ports (loopback only): the page on 8000 (PORT overrides), node N's NATS client port
// 174N1, routes 174N2, WebSocket 174N3, health 174N4.

import { rmSync } from "node:fs";
import { join } from "node:path";

import { build } from "./build.mjs";
import { exampleDir, startCluster } from "./cluster.mjs";
import { startServer } from "./server.mjs";

const data = join(exampleDir, ".data");
if (process.argv.includes("--fresh")) {
  rmSync(data, { recursive: true, force: true });
}
const port = Number(process.env.PORT ?? 8000);
const ports = [1, 2, 3].map((n) => ({ client: 17400 + n * 10 + 1, route: 17400 + n * 10 + 2, ws: 17400 + n * 10 + 3, health: 17400 + n * 10 + 4 }));

const root = await build();
console.log("starting 3 nodes (sidecar logs in .data/node*/sidecar.log) ...");
const cluster = await startCluster(data, { ports });
const server = await startServer({ root, secretFile: cluster.secretFile, servers: cluster.nodes.map((n) => n.wsUrl), port });

console.log(`
notes example running: open ${server.url}/ and log in (two browser profiles, or
${server.url}/?user=alice and ${server.url}/?user=bob&node=2 in two browsers: OPFS is per origin).

  nodes' databases: ${cluster.nodes.map((n) => n.db).join("\n                    ")}
  write to the board as an app on a full node would, e.g.
    sqlite3 ${cluster.nodes[1].db} "INSERT INTO board(message) VALUES ('hello from node2')"
  and look at everyone's notes on a full node:
    sqlite3 ${cluster.nodes[2].db} "SELECT owner_id, body FROM notes"

Ctrl-C stops the nodes and the server.`);

let stopping = false;
async function stop() {
  if (stopping) {
    return;
  }
  stopping = true;
  console.log("\nstopping ...");
  await server.close();
  await cluster.stop();
  process.exit(0);
}
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
