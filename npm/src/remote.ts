/**
 * A {@link Replica} whose database lives in a dedicated Worker (OPFS storage opened from a
 * page). Every call is a message to the Worker; results, change notifications and status
 * events come back as messages. Errors keep their class.
 */

import { InvalidArgumentError, ReplicaClosedError, errorToData, toHarmonyliteError } from "./errors.js";
import type { Call, Reply } from "./rpc.js";
import type {
  ChangeEvent,
  CloseOptions,
  DiscardParkedOptions,
  ExecResult,
  MigrateOptions,
  MigrationResult,
  OpenOptions,
  Replica,
  ReplicaEvents,
  Row,
  SchemaStatus,
  SqlParams,
  Status,
  SubscribeOptions,
  Transaction,
  WaitOptions,
} from "./types.js";

/** The part of `Worker` this module uses. */
export interface WorkerLike {
  postMessage(message: unknown): void;
  addEventListener(type: "message", listener: (event: MessageEvent) => void): void;
  addEventListener(type: "error", listener: (event: Event) => void): void;
  terminate(): void;
}

/** Starts a Worker with `spawn`, opens the replica inside it and returns its proxy. */
export async function openInWorker(options: OpenOptions, spawn: () => WorkerLike): Promise<Replica> {
  const replica = new WorkerReplica(spawn());
  try {
    await replica.call("open", [options]);
  } catch (e) {
    replica.terminate();
    throw e;
  }
  return replica;
}

class WorkerReplica implements Replica {
  #worker: WorkerLike;
  #next = 1;
  #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #subscriptions = new Map<number, (event: ChangeEvent) => void>();
  #listeners: { [K in keyof ReplicaEvents]: Set<(value: ReplicaEvents[K]) => void> } = {
    status: new Set(),
    error: new Set(),
  };
  #closed = false;
  #tx: Promise<void> | null = null;

  constructor(worker: WorkerLike) {
    this.#worker = worker;
    worker.addEventListener("message", (event: MessageEvent) => this.#onMessage(event.data as Reply));
    worker.addEventListener("error", (event: Event) => {
      const message = (event as ErrorEvent).message ?? "the harmonylite worker failed";
      const error = toHarmonyliteError({ name: "StorageError", message });
      for (const p of this.#pending.values()) {
        p.reject(error);
      }
      this.#pending.clear();
      for (const cb of this.#listeners.error) {
        cb(error);
      }
    });
  }

  #onMessage(reply: Reply): void {
    if ("id" in reply) {
      const p = this.#pending.get(reply.id);
      if (!p) {
        return;
      }
      this.#pending.delete(reply.id);
      if (reply.ok) {
        p.resolve(reply.value);
      } else {
        p.reject(toHarmonyliteError(reply.error));
      }
      return;
    }
    switch (reply.event) {
      case "change":
        this.#subscriptions.get(reply.subscription)?.(reply.value as ChangeEvent);
        break;
      case "status":
        for (const cb of this.#listeners.status) {
          cb(reply.value as Status);
        }
        break;
      case "error":
        for (const cb of this.#listeners.error) {
          cb(toHarmonyliteError(reply.error));
        }
        break;
    }
  }

  /** Sends one call and waits for its answer. */
  call(method: Call["method"], args: unknown[]): Promise<unknown> {
    if (this.#closed) {
      return Promise.reject(new ReplicaClosedError());
    }
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      try {
        this.#worker.postMessage({ id, method, args } satisfies Call);
      } catch (e) {
        this.#pending.delete(id);
        reject(toHarmonyliteError({ ...errorToData(e), name: "InvalidArgumentError" }));
      }
    });
  }

  terminate(): void {
    this.#closed = true;
    this.#worker.terminate();
  }

  async #idle(): Promise<void> {
    while (this.#tx) {
      await this.#tx;
    }
  }

  async exec(sql: string, params?: SqlParams): Promise<ExecResult> {
    await this.#idle();
    return (await this.call("exec", [sql, params])) as ExecResult;
  }

  async query<T extends Row = Row>(sql: string, params?: SqlParams): Promise<T[]> {
    await this.#idle();
    return (await this.call("query", [sql, params])) as T[];
  }

  async transaction<T>(fn: (tx: Transaction) => Promise<T> | T): Promise<T> {
    await this.#idle();
    let release!: () => void;
    this.#tx = new Promise((resolve) => (release = resolve));
    try {
      const txId = (await this.call("begin", [])) as number;
      let open = true;
      const inside = () => {
        if (!open) {
          throw new InvalidArgumentError("the transaction has ended");
        }
      };
      const tx: Transaction = {
        exec: async (sql, params) => {
          inside();
          return (await this.call("txExec", [txId, sql, params])) as ExecResult;
        },
        query: async <R extends Row = Row>(sql: string, params?: SqlParams) => {
          inside();
          return (await this.call("txQuery", [txId, sql, params])) as R[];
        },
      };
      let result: T;
      try {
        result = await fn(tx);
      } catch (e) {
        open = false;
        await this.call("rollback", [txId]).catch(() => {});
        throw e;
      }
      open = false;
      await this.call("commit", [txId]);
      return result;
    } finally {
      this.#tx = null;
      release();
    }
  }

  subscribe(cb: (event: ChangeEvent) => void, options?: SubscribeOptions): () => void {
    const id = this.#next++;
    this.#subscriptions.set(id, cb);
    void this.call("subscribe", [id, options?.tables ?? null]).catch(() => {});
    return () => {
      this.#subscriptions.delete(id);
      void this.call("unsubscribe", [id]).catch(() => {});
    };
  }

  on<K extends keyof ReplicaEvents>(event: K, cb: (value: ReplicaEvents[K]) => void): () => void {
    const set = this.#listeners[event] as Set<(value: ReplicaEvents[K]) => void> | undefined;
    if (!set) {
      throw new InvalidArgumentError(`unknown event ${JSON.stringify(event)} (use "status" or "error")`);
    }
    set.add(cb);
    return () => {
      set.delete(cb);
    };
  }

  async status(): Promise<Status> {
    return (await this.call("status", [])) as Status;
  }

  async flush(options?: WaitOptions): Promise<void> {
    await this.#idle();
    await this.call("flush", [options]);
  }

  async migrate(sql: string, options?: MigrateOptions): Promise<MigrationResult> {
    await this.#idle();
    return (await this.call("migrate", [sql, options])) as MigrationResult;
  }

  async schemaStatus(): Promise<SchemaStatus> {
    return (await this.call("schemaStatus", [])) as SchemaStatus;
  }

  async discardParked(table: string, options?: DiscardParkedOptions): Promise<number> {
    await this.#idle();
    return (await this.call("discardParked", [table, options])) as number;
  }

  async adoptStream(): Promise<number> {
    await this.#idle();
    return (await this.call("adoptStream", [])) as number;
  }

  async sync(options?: WaitOptions): Promise<void> {
    await this.#idle();
    await this.call("sync", [options]);
  }

  async close(options?: CloseOptions): Promise<void> {
    if (this.#closed) {
      return;
    }
    await this.#idle();
    await this.call("close", [options]).catch(() => {});
    this.terminate();
  }
}
