// Packaging: `npm pack` the real tarball, install it into a fresh project, import it from
// node and use it.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { cleanup, npmDir, tempDir } from "./helpers.mjs";

afterEach(cleanup);

test("the packed tarball installs into a fresh project and works from node", async () => {
  const dir = tempDir("hl-pack-");
  const packed = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", dir], { cwd: npmDir, encoding: "utf8" }));
  const { filename, files } = packed[0];
  const paths = files.map((f) => f.path);
  for (const required of [
    "package.json",
    "README.md",
    "dist/node.js",
    "dist/node.d.ts",
    "dist/browser.js",
    "dist/worker.js",
    "dist/workerd.js",
    "dist/types.d.ts",
    "dist/wasm/harmonylite_wasm.js",
    "dist/wasm/harmonylite_wasm_bg.wasm",
  ]) {
    assert.ok(paths.includes(required), `${required} missing from the tarball (has ${paths.join(", ")})`);
  }
  assert.ok(!paths.some((p) => p.startsWith("src/") || p.startsWith("test/") || p.startsWith("bench/")), `sources in the tarball: ${paths.join(", ")}`);

  const project = join(dir, "app");
  execFileSync("mkdir", ["-p", project]);
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", join(dir, filename)], { cwd: project, stdio: "inherit" });
  writeFileSync(
    join(project, "check.mjs"),
    `
import { open, SqliteError, HarmonyliteError } from "harmonylite";
const db = await open({ name: "packaged.db" });
await db.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
await db.exec("INSERT INTO t(v) VALUES (?), (?)", ["a", "b"]);
let error = null;
try { await db.exec("INSERT INTO t(id) VALUES (1)"); } catch (e) { error = e; }
const status = await db.status();
console.log(JSON.stringify({
  rows: await db.query("SELECT id, v FROM t ORDER BY id"),
  errorClass: error instanceof SqliteError && error instanceof HarmonyliteError ? error.name : String(error),
  online: status.online,
  outboxRows: status.outboxRows,
}));
await db.close();
`,
  );
  const out = JSON.parse(execFileSync("node", ["check.mjs"], { cwd: project, encoding: "utf8" }));
  assert.deepEqual(out, {
    rows: [
      { id: 1, v: "a" },
      { id: 2, v: "b" },
    ],
    errorClass: "SqliteError",
    online: false,
    outboxRows: 2,
  });
});
