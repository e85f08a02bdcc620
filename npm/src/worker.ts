/**
 * The harmonylite Worker: runs one replica (OPFS storage) for a page that opened it with
 * `open({ storage: "opfs" })`, answering the page's calls (see `rpc.ts`). Bundlers pick it
 * up through `new URL("./worker.js", import.meta.url)` in the browser entry; it is also
 * exported as `harmonylite/worker`.
 */

import { errorToData, InvalidArgumentError, ReplicaClosedError } from "./errors.js";
import { openLocal } from "./replica.js";
import type { LocalReplica } from "./replica.js";
import { platform } from "./browser.js";
import type { Call, Reply } from "./rpc.js";
import type { OpenOptions, SqlParams, Transaction, WaitOptions, CloseOptions, MigrateOptions, DiscardParkedOptions } from "./types.js";

const scope = globalThis as unknown as {
  postMessage(message: unknown): void;
  addEventListener(type: "message", listener: (event: MessageEvent) => void): void;
};

let replica: LocalReplica | null = null;
const subscriptions = new Map<number, () => void>();
const transactions = new Map<number, Transaction & { commit(): void; rollback(): void }>();
let nextTx = 1;

function post(reply: Reply): void {
  scope.postMessage(reply);
}

function current(): LocalReplica {
  if (!replica) {
    throw new ReplicaClosedError("the replica is not open in this worker");
  }
  return replica;
}

function tx(id: unknown) {
  const t = transactions.get(id as number);
  if (!t) {
    throw new InvalidArgumentError("the transaction has ended");
  }
  return t;
}

async function handle(call: Call): Promise<unknown> {
  const a = call.args;
  switch (call.method) {
    case "open": {
      if (replica) {
        throw new InvalidArgumentError("this worker already runs a replica");
      }
      const options = { ...(a[0] as OpenOptions), storage: "opfs" as const };
      replica = await openLocal(options, platform);
      replica.on("status", (value) => post({ event: "status", value }));
      replica.on("error", (e) => post({ event: "error", error: errorToData(e) }));
      return null;
    }
    case "exec":
      return current().exec(a[0] as string, a[1] as SqlParams | undefined);
    case "query":
      return current().query(a[0] as string, a[1] as SqlParams | undefined);
    case "begin": {
      const r = current();
      // The page runs one transaction at a time; this one stays open until commit/rollback.
      const handleTx = r.beginTransaction();
      const id = nextTx++;
      transactions.set(id, handleTx);
      return id;
    }
    case "txExec":
      return tx(a[0]).exec(a[1] as string, a[2] as SqlParams | undefined);
    case "txQuery":
      return tx(a[0]).query(a[1] as string, a[2] as SqlParams | undefined);
    case "commit": {
      const t = tx(a[0]);
      transactions.delete(a[0] as number);
      t.commit();
      return null;
    }
    case "rollback": {
      const t = tx(a[0]);
      transactions.delete(a[0] as number);
      t.rollback();
      return null;
    }
    case "subscribe": {
      const id = a[0] as number;
      const tables = a[1] as string[] | null;
      subscriptions.set(
        id,
        current().subscribe((value) => post({ event: "change", subscription: id, value }), tables ? { tables } : undefined),
      );
      return null;
    }
    case "unsubscribe":
      subscriptions.get(a[0] as number)?.();
      subscriptions.delete(a[0] as number);
      return null;
    case "status":
      return current().status();
    case "flush":
      return current().flush(a[0] as WaitOptions | undefined);
    case "migrate":
      return current().migrate(a[0] as string, a[1] as MigrateOptions | undefined);
    case "schemaStatus":
      return current().schemaStatus();
    case "discardParked":
      return current().discardParked(a[0] as string, a[1] as DiscardParkedOptions | undefined);
    case "adoptStream":
      return current().adoptStream();
    case "sync":
      return current().sync(a[0] as WaitOptions | undefined);
    case "close": {
      const r = replica;
      replica = null;
      await r?.close(a[0] as CloseOptions | undefined);
      return null;
    }
  }
}

scope.addEventListener("message", (event: MessageEvent) => {
  const call = event.data as Call;
  void handle(call).then(
    (value) => post({ id: call.id, ok: true, value }),
    (e: unknown) => post({ id: call.id, ok: false, error: errorToData(e) }),
  );
});
