/**
 * harmonylite for workerd (Cloudflare Workers): memory storage, the wasm module imported as
 * a compiled module, NATS over the runtime's WebSocket.
 */

import wasmModule from "./wasm/harmonylite_wasm_bg.wasm";
import { initSync, openReplica, scopeClientInboxPrefix, scopeFeedDeliverSubject } from "./wasm/harmonylite_wasm.js";
import { InvalidArgumentError } from "./errors.js";
import { openLocal } from "./replica.js";
import type { Platform, WasmModule } from "./replica.js";
import type { OpenOptions, Replica } from "./types.js";

export * from "./errors.js";
export type * from "./types.js";

let loaded: WasmModule | null = null;

const platform: Platform = {
  async loadWasm() {
    if (!loaded) {
      initSync({ module: wasmModule });
      loaded = { openReplica, scopeClientInboxPrefix, scopeFeedDeliverSubject } as unknown as WasmModule;
    }
    return loaded;
  },
};

/** Opens a replica (memory storage) and starts replicating when `servers` are given. */
export async function open(options: OpenOptions): Promise<Replica> {
  if (options?.storage === "opfs") {
    throw new InvalidArgumentError('storage "opfs" exists only in browsers; use "memory" in workerd');
  }
  return openLocal(options, platform);
}
