/**
 * harmonylite for browsers. `storage: "memory"` runs in the calling thread (page or
 * worker). `storage: "opfs"` needs a dedicated Worker: called inside one it runs there;
 * called from a page it is shared by every tab of the origin that opens it: the tab that
 * leads starts the package's worker (`harmonylite/worker`), and every tab gets a replica
 * that forwards its calls to that worker (see `remote.ts`).
 */

import init, { openReplica, scopeClientInboxPrefix, scopeFeedDeliverSubject } from "./wasm/harmonylite_wasm.js";
import { openLocal } from "./replica.js";
import type { Platform, WasmModule } from "./replica.js";
import { openShared } from "./remote.js";
import type { OpenOptions, Replica } from "./types.js";

export * from "./errors.js";
export type * from "./types.js";

let loaded: Promise<WasmModule> | null = null;

/** Loads the wasm module next to this file (bundlers follow the `new URL` pattern). */
export const platform: Platform = {
  loadWasm() {
    loaded ??= init({ module_or_path: new URL("./wasm/harmonylite_wasm_bg.wasm", import.meta.url) }).then(
      () => ({ openReplica, scopeClientInboxPrefix, scopeFeedDeliverSubject }) as unknown as WasmModule,
    );
    return loaded;
  },
};

/** Whether this code runs in a dedicated Worker (where OPFS sync access handles exist). */
export function inDedicatedWorker(): boolean {
  const scope = (globalThis as { DedicatedWorkerGlobalScope?: new () => unknown }).DedicatedWorkerGlobalScope;
  return typeof scope === "function" && globalThis instanceof scope;
}

/** Opens a replica and starts replicating when `servers` are given. */
export async function open(options: OpenOptions): Promise<Replica> {
  if (options?.storage === "opfs" && !inDedicatedWorker()) {
    return openShared(options, () => new Worker(new URL("./worker.js", import.meta.url), { type: "module", name: `harmonylite:${options.name}` }));
  }
  return openLocal(options, platform);
}
