/**
 * harmonylite for node (>= 20): memory storage, NATS over WebSocket through the `ws`
 * package (node 20 has no global WebSocket).
 *
 * ```js
 * import { open } from "harmonylite";
 * const db = await open({ name: "app.db", servers: "ws://127.0.0.1:8080" });
 * ```
 */

import { readFile } from "node:fs/promises";
import { WebSocket as NodeWebSocket } from "ws";

import { initSync, openReplica, scopeClientInboxPrefix, scopeFeedDeliverSubject } from "./wasm/harmonylite_wasm.js";
import { InvalidArgumentError } from "./errors.js";
import { openLocal } from "./replica.js";
import type { Platform, WasmModule } from "./replica.js";
import type { OpenOptions, Replica } from "./types.js";

export * from "./errors.js";
export type * from "./types.js";

let loaded: Promise<WasmModule> | null = null;

const platform: Platform = {
  loadWasm() {
    loaded ??= (async () => {
      const bytes = await readFile(new URL("./wasm/harmonylite_wasm_bg.wasm", import.meta.url));
      initSync({ module: bytes });
      return { openReplica, scopeClientInboxPrefix, scopeFeedDeliverSubject } as unknown as WasmModule;
    })();
    return loaded;
  },
  wsFactory: async (url: string) => ({
    socket: new NodeWebSocket(url) as unknown as WebSocket,
    encrypted: url.startsWith("wss://"),
  }),
};

/** Opens a replica (memory storage) and starts replicating when `servers` are given. */
export async function open(options: OpenOptions): Promise<Replica> {
  if (options?.storage === "opfs") {
    throw new InvalidArgumentError('storage "opfs" exists only in browsers; use "memory" in node');
  }
  return openLocal(options, platform);
}
