// The app's web server (node:http, no framework): serves the bundled page and issues the
// tokens the browsers sync with.
//
//   GET  /            the page (public/index.html, app.js, worker.js, wasm/)
//   GET  /config.json { servers }: the NATS WebSocket URLs of the nodes (the page picks one)
//   POST /login       { "user": "alice" } -> an HS256 JWT (text) with sub = the user name,
//                     aud = the cluster's [scopes.auth] audience, exp = now + ttl. The page's
//                     getToken callback calls it before every connection to NATS.
//
// A real app would check a password or a session here; this demo logs anyone in by name.
// The secret is the file every node verifies with (`[scopes.auth] hs256_secret_file`).

import { createHmac } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize, sep } from "node:path";

import { AUDIENCE } from "./src/schema.js";

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".wasm": "application/wasm",
  ".map": "application/json",
};

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 JWT for `sub`, valid for `ttlSeconds`. */
export function issueToken(secret, sub, ttlSeconds) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, aud: AUDIENCE, iat: now, exp: now + ttlSeconds }));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** User names: what the partition's subject token allows without escaping, kept short. */
const USER = /^[A-Za-z0-9_-]{1,32}$/;

function readBody(req, limit = 4096) {
  return new Promise((resolve, reject) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (chunk) => {
      body += chunk;
      if (body.length > limit) {
        reject(new Error("request body too large"));
        req.destroy();
      }
    });
    req.on("end", () => resolve(body));
    req.on("error", reject);
  });
}

/**
 * Starts the server on `host:port` (port 0: any). `root`: the bundle (build.mjs's output);
 * `secretFile`: the HS256 secret; `servers`: the nodes' ws:// URLs. Resolves to
 * `{ url, close }`; open the page at `http://localhost:<port>` (a secure context, which
 * OPFS needs).
 */
export async function startServer({ root, secretFile, servers, port = 0, host = "127.0.0.1", ttlSeconds = 600 }) {
  const secret = readFileSync(secretFile);
  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url, "http://localhost");
      if (req.method === "POST" && url.pathname === "/login") {
        let user;
        try {
          user = JSON.parse(await readBody(req)).user;
        } catch {
          user = undefined;
        }
        if (typeof user !== "string" || !USER.test(user)) {
          res.writeHead(400, { "content-type": "text/plain" }).end("user: 1 to 32 letters, digits, _ or -\n");
          return;
        }
        res.writeHead(200, { "content-type": "application/jwt", "cache-control": "no-store" }).end(issueToken(secret, user, ttlSeconds));
        return;
      }
      if (req.method === "GET" && url.pathname === "/config.json") {
        res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" }).end(JSON.stringify({ servers }));
        return;
      }
      if (req.method !== "GET") {
        res.writeHead(405).end();
        return;
      }
      const path = normalize(decodeURIComponent(url.pathname));
      const file = join(root, path === sep ? "index.html" : path);
      if (!file.startsWith(root + sep) || !existsSync(file)) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
      res.end(readFileSync(file));
    } catch (e) {
      res.writeHead(500, { "content-type": "text/plain" }).end(`${e.message}\n`);
    }
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, resolve);
  });
  return {
    url: `http://localhost:${server.address().port}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
