// Harness for the tests that run the package in real JavaScript hosts other than node:
// bundling the built package as an application would (esbuild, resolving "harmonylite"
// through package.json `exports` with the host's conditions), a static HTTP server for
// the browser, headless Chromium through playwright-core, and workerd. A missing host
// (no /usr/bin/chromium, no workerd binary) fails the test with how to install it; nothing
// is skipped.

import { execFileSync, spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, openSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { extname, join, normalize } from "node:path";

import { freePort, npmDir, onCleanup, sidecarBinary, tempDir, waitFor } from "../helpers.mjs";

const require = createRequire(import.meta.url);

/** The Chromium binary (Debian's `chromium`; `HL_CHROMIUM` overrides). */
export function chromiumPath() {
  const path = process.env.HL_CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(path)) {
    throw new Error(
      `Chromium not found at ${path}: install Debian's chromium and chromium-driver ` +
        "(`apt-get install chromium chromium-driver`; scripts/test does this) or set HL_CHROMIUM",
    );
  }
  return path;
}

/** Flags that work on these machines (shared/TOOLCHAIN.md); the profile dir is passed apart. */
export const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * A consumer project in a temp dir whose `node_modules/harmonylite` links to this package,
 * so bundlers resolve `harmonylite` exactly as in an application (package.json `exports`).
 */
function consumerProject() {
  for (const f of ["browser.js", "worker.js", "workerd.js", "wasm/harmonylite_wasm_bg.wasm", "wasm/harmonylite_wasm.js"]) {
    if (!existsSync(join(npmDir, "dist", f))) {
      throw new Error(`npm/dist/${f} is missing: run \`npm run build\` in npm/ first`);
    }
  }
  const dir = tempDir("hl-app-");
  mkdirSync(join(dir, "node_modules"), { recursive: true });
  symlinkSync(npmDir, join(dir, "node_modules", "harmonylite"), "dir");
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  return dir;
}

/** `harmonylite/wasm` resolved from `project` (the shipped module, for bundlers to copy). */
function shippedWasm(project) {
  return createRequire(join(project, "package.json")).resolve("harmonylite/wasm");
}

/**
 * Bundles a browser application: `entry` (a page module importing "harmonylite") as
 * `app.js` and the package's worker (`harmonylite/worker`) as `worker.js` side by side,
 * with the wasm module copied to `wasm/harmonylite_wasm_bg.wasm` — the files that
 * `new URL("./worker.js", import.meta.url)` and `new URL("./wasm/...", import.meta.url)`
 * in the package point at. Returns the output directory.
 */
export async function bundleBrowserApp(entry, html) {
  const esbuild = require("esbuild");
  const project = consumerProject();
  const out = join(project, "public");
  await esbuild.build({
    absWorkingDir: project,
    entryPoints: { app: entry, worker: "harmonylite/worker" },
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "chrome120",
    outdir: out,
    logLevel: "warning",
    nodePaths: [join(project, "node_modules")],
    // @nats-io/obj imports `node:crypto` lazily, only where node's hashing is chosen.
    external: ["node:*"],
  });
  mkdirSync(join(out, "wasm"), { recursive: true });
  copyFileSync(shippedWasm(project), join(out, "wasm", "harmonylite_wasm_bg.wasm"));
  writeFileSync(join(out, "index.html"), html);
  return out;
}

/**
 * Bundles a workerd module worker: `entry` (importing "harmonylite", resolved with the
 * `workerd` condition as Cloudflare's tooling does) as `worker.js`, the wasm module kept as
 * an import of `./wasm/harmonylite_wasm_bg.wasm` next to it. Returns the output directory.
 */
export async function bundleWorker(entry) {
  const esbuild = require("esbuild");
  const project = consumerProject();
  const out = join(project, "worker");
  await esbuild.build({
    absWorkingDir: project,
    entryPoints: { worker: entry },
    bundle: true,
    format: "esm",
    // As Cloudflare's wrangler does: browser resolution (package.json `browser` maps drop
    // node-only modules) with the `workerd` and `worker` conditions first.
    platform: "browser",
    conditions: ["workerd", "worker", "browser"],
    target: "es2022",
    outdir: out,
    logLevel: "warning",
    nodePaths: [join(project, "node_modules")],
    // workerd links `.wasm` modules itself (a `wasm` module in its config); @nats-io/obj
    // imports `node:crypto` lazily, only where node's hashing is chosen.
    external: ["*.wasm", "node:*"],
  });
  mkdirSync(join(out, "wasm"), { recursive: true });
  copyFileSync(shippedWasm(project), join(out, "wasm", "harmonylite_wasm_bg.wasm"));
  return out;
}

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".wasm": "application/wasm",
  ".map": "application/json",
};

/** A static file server for `root` on 127.0.0.1; pages are opened as http://localhost (a secure context). */
export async function serveStatic(root) {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://localhost").pathname));
    const file = join(root, path === "/" ? "index.html" : path);
    if (!file.startsWith(root) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
    res.end(readFileSync(file));
  });
  const port = await freePort();
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  onCleanup(() => new Promise((resolve) => server.close(resolve)));
  // Keep-alive connections would hold close() up; the browser is gone by then anyway.
  onCleanup(() => server.closeAllConnections());
  return `http://localhost:${port}`;
}

/**
 * Headless Chromium (Debian's, through playwright-core) with a fresh profile directory: a
 * persistent context, so OPFS outlives page reloads exactly as in a user's browser.
 */
export async function launchChromium() {
  const executablePath = chromiumPath();
  const { chromium } = require("playwright-core");
  const profile = tempDir("hl-chromium-");
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    // playwright adds its own headless flag (`headless: true`).
    args: CHROMIUM_FLAGS.filter((f) => f !== "--headless"),
  });
  onCleanup(() => context.close());
  return context;
}

/** The workerd binary from the npm package `workerd` (a devDependency). */
export function workerdBinary() {
  let path;
  try {
    path = require("workerd").default;
  } catch (e) {
    throw new Error(`the npm package workerd is missing (a devDependency): run \`npm ci\` in npm/ (${e.message})`);
  }
  if (typeof path !== "string" || !existsSync(path)) {
    throw new Error(`workerd binary missing at ${path}: run \`npm ci\` in npm/`);
  }
  return path;
}

/**
 * Runs `worker.js` of `dir` (from {@link bundleWorker}) in workerd on a loopback port, with
 * outbound network access to loopback (NATS over WebSocket). Returns its base URL.
 */
export async function startWorkerd(dir) {
  const port = await freePort();
  const config = join(dir, "config.capnp");
  writeFileSync(
    config,
    `using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    # Outbound fetch()/WebSocket of the worker. The default allows only public addresses;
    # the NATS server of the test listens on loopback ("local").
    (name = "network", network = (allow = ["public", "local"])),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:${port}", http = (), service = "main") ],
);

const worker :Workerd.Worker = (
  modules = [
    (name = "worker.js", esModule = embed "worker.js"),
    (name = "wasm/harmonylite_wasm_bg.wasm", wasm = embed "wasm/harmonylite_wasm_bg.wasm"),
  ],
  compatibilityDate = "2025-09-01",
  globalOutbound = "network",
);
`,
  );
  const logPath = join(dir, "workerd.log");
  const log = openSync(logPath, "a");
  const child = spawn(workerdBinary(), ["serve", config, "--verbose"], { cwd: dir, stdio: ["ignore", log, log] });
  onCleanup(
    () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) {
          resolve();
          return;
        }
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  );
  const url = `http://127.0.0.1:${port}`;
  const tail = () => readFileSync(logPath, "utf8").slice(-4000);
  await waitFor(
    async () => {
      if (child.exitCode !== null) {
        throw new Error(`workerd exited (${child.exitCode}):\n${tail()}`);
      }
      try {
        return (await fetch(`${url}/ping`)).status === 200;
      } catch {
        return false;
      }
    },
    { timeoutMs: 30_000, message: () => `workerd to serve on ${url}:\n${tail()}` },
  );
  return { url, logTail: tail };
}

/** Runs the sidecar binary once with the node's config and `args` (the operator's CLI); returns its stdout. */
export function sidecarCommand(node, args) {
  return execFileSync(sidecarBinary(), [...args, "--config", node.config], {
    encoding: "utf8",
    env: { ...process.env, RUST_LOG: "warn" },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

/** `harmonylite migrate <file>` on the node's database, with `sql` written to `file`. */
export function nativeMigrate(node, file, sql) {
  writeFileSync(file, sql);
  return sidecarCommand(node, ["migrate", file]);
}

/** The node's `--schema-status`: `{ fingerprint, version, parkedMigrations, migrations }`. */
export function nativeSchema(node) {
  const out = sidecarCommand(node, ["--schema-status"]);
  const value = (key) => out.match(new RegExp(`^${key} (\\S+)$`, "m"))?.[1];
  return {
    fingerprint: value("schema_fingerprint"),
    version: Number(value("migration_version")),
    parkedMigrations: Number(value("parked_migrations")),
    migrations: [...out.matchAll(/^migration (\d+) seq \d+ (.*)$/gm)].map((m) => [Number(m[1]), m[2]]),
    out,
  };
}
