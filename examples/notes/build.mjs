// Bundles the page into public/, as docs/js-api.md "Bundling" describes for esbuild: the app
// (src/app.js) as app.js and the package's OPFS Worker (harmonylite/worker) as worker.js in
// one directory, the wasm module copied to wasm/ beside them (the package finds both with
// `new URL("./worker.js", import.meta.url)` and `new URL("./wasm/...", import.meta.url)`),
// `node:*` imports left out. `node build.mjs` (npm run build), or `build()` from run.mjs and
// the test.

import { copyFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const exampleDir = dirname(fileURLToPath(import.meta.url));

const require = createRequire(import.meta.url);

/** Builds public/ and returns its path. */
export async function build({ outdir = join(exampleDir, "public") } = {}) {
  const esbuild = require("esbuild");
  await esbuild.build({
    absWorkingDir: exampleDir,
    entryPoints: { app: "src/app.js", worker: "harmonylite/worker" },
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "chrome120",
    outdir,
    sourcemap: true,
    logLevel: "warning",
    // @nats-io/obj imports `node:crypto` lazily, only where node's hashing is chosen.
    external: ["node:*"],
  });
  mkdirSync(join(outdir, "wasm"), { recursive: true });
  copyFileSync(require.resolve("harmonylite/wasm"), join(outdir, "wasm", "harmonylite_wasm_bg.wasm"));
  copyFileSync(join(exampleDir, "index.html"), join(outdir, "index.html"));
  return outdir;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(`built ${await build()}`);
}
