#!/usr/bin/env node
// Builds the npm package from the repository: the wasm replica (cargo, profile `wasm`),
// its JS bindings (wasm-bindgen-cli at exactly the Cargo.lock version of wasm-bindgen),
// wasm-opt -Oz (npm `binaryen`), then the TypeScript (tsc). Output: npm/dist/.
//
//   npm run build            everything
//   npm run build -- --fast  skip wasm-opt (a larger, equally correct module; for local work)

import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const npmDir = join(dirname(fileURLToPath(import.meta.url)), "..");
const repo = join(npmDir, "..");
const fast = process.argv.includes("--fast");
const wasmOut = join(npmDir, "src", "wasm");
const dist = join(npmDir, "dist");

function run(cmd, args, cwd = repo) {
  console.log(`==> ${cmd} ${args.join(" ")}`);
  execFileSync(cmd, args, { cwd, stdio: "inherit" });
}

function lockedVersion(name) {
  const lock = readFileSync(join(repo, "Cargo.lock"), "utf8");
  const m = lock.match(new RegExp(`\\[\\[package\\]\\]\\nname = "${name}"\\nversion = "([^"]+)"`));
  if (!m) {
    throw new Error(`${name} is not in Cargo.lock`);
  }
  return m[1];
}

const wanted = lockedVersion("wasm-bindgen");
let installed = "";
try {
  installed = execFileSync("wasm-bindgen", ["--version"], { encoding: "utf8" }).trim().split(/\s+/)[1];
} catch {
  installed = "";
}
if (installed !== wanted) {
  console.error(
    `wasm-bindgen-cli ${wanted} is required (Cargo.lock), found ${installed || "none"}.\n` +
      `Install it with: cargo install wasm-bindgen-cli --version ${wanted}\n(scripts/test does this for you)`,
  );
  process.exit(1);
}

run("cargo", ["build", "-p", "harmonylite-wasm", "--target", "wasm32-unknown-unknown", "--profile", "wasm"]);
const targetDir = process.env.CARGO_TARGET_DIR ?? join(repo, "target");
const raw = join(targetDir, "wasm32-unknown-unknown", "wasm", "harmonylite_wasm.wasm");

rmSync(wasmOut, { recursive: true, force: true });
rmSync(dist, { recursive: true, force: true });
run("wasm-bindgen", ["--target", "web", "--out-dir", wasmOut, "--out-name", "harmonylite_wasm", raw]);

mkdirSync(join(dist, "wasm"), { recursive: true });
const bound = join(wasmOut, "harmonylite_wasm_bg.wasm");
const shipped = join(dist, "wasm", "harmonylite_wasm_bg.wasm");
if (fast) {
  copyFileSync(bound, shipped);
} else {
  // Features rustc enables by default for wasm32-unknown-unknown; wasm-opt must know them.
  run(join(npmDir, "node_modules", ".bin", "wasm-opt"), [
    "-Oz",
    "--enable-bulk-memory",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-reference-types",
    "--enable-multivalue",
    "--strip-debug",
    "--strip-producers",
    bound,
    "-o",
    shipped,
  ]);
}
for (const f of ["harmonylite_wasm.js", "harmonylite_wasm.d.ts"]) {
  copyFileSync(join(wasmOut, f), join(dist, "wasm", f));
}

run(join(npmDir, "node_modules", ".bin", "tsc"), ["-p", "tsconfig.json"], npmDir);

const size = statSync(shipped).size;
const gz = gzipSync(readFileSync(shipped), { level: 9 }).length;
console.log(`==> built npm/dist (wasm ${(size / 1e6).toFixed(2)} MB raw, ${(gz / 1e3).toFixed(0)} KB gzip${fast ? ", not optimized" : ""})`);
