/**
 * A {@link Replica} for a page whose database lives in a dedicated Worker (OPFS storage),
 * shared by every tab of the origin that opens the same replica.
 *
 * The tab holding the Web Lock `harmonylite:<name>` leads: it starts the package's Worker,
 * which opens the database and serves every tab. The other tabs follow: each waits in the
 * lock's queue and, meanwhile, sends its calls to the leader's Worker over BroadcastChannels
 * (`rpc.ts`). Every tab, the leader's included, is a client of that Worker, so the app sees
 * the same `Replica` either way (`status().tab` says which).
 *
 * When the leader goes (its tab closed, crashed or navigated away, or `close()` called in
 * it), the lock passes to a waiting tab, which starts its own Worker on the same OPFS files
 * and says hello; every client then sends its unanswered calls again and subscribes again.
 * Writes sent again are recognised by the Worker (their id is recorded with them) and
 * answered with the recorded result instead of running twice. A transaction open at the old
 * leader was rolled back there: it fails with `LeaderChangedError`, as do `migrate`,
 * `discardParked` and `adoptStream` calls whose answer was lost (their outcome is unknown).
 */

import { InvalidArgumentError, LeaderChangedError, ReplicaClosedError, StorageError, errorToData, toHarmonyliteError } from "./errors.js";
import { baseName, clientLock, inbox } from "./rpc.js";
import type { Announcement, Begun, Call, FromWorker, Method, Reply, ToWorker } from "./rpc.js";
import type {
  ChangeEvent,
  CloseOptions,
  DiscardParkedOptions,
  ExecResult,
  MergeSwitch,
  MigrateOptions,
  MigrationResult,
  OpenOptions,
  RefusedWrite,
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

/** Calls whose outcome is unknown when their leader went: never sent again. */
const NOT_RESENT: ReadonlySet<Method> = new Set(["txExec", "txQuery", "migrate", "discardParked", "adoptStream"]);

/** How long a stopping leader's Worker gets beyond `flushTimeoutMs` before it is terminated. */
const STOP_GRACE_MS = 5000;

interface Pending {
  id: number;
  method: Method;
  args: unknown[];
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  /** The leader it was last sent to (null: not sent yet). */
  sentTo: string | null;
}

interface Subscription {
  cb: (event: ChangeEvent) => void;
  tables: string[] | null;
}

/** The transaction this client has open: its key and the leader holding it. */
interface OpenTx {
  key: string;
  leader: string;
  aborted: boolean;
}

function locks(): LockManager {
  const manager = (globalThis.navigator as Navigator | undefined)?.locks;
  if (!manager || typeof BroadcastChannel !== "function") {
    throw new StorageError('storage "opfs" from a page needs the Web Locks API and BroadcastChannel (shared by the tabs of an origin)');
  }
  return manager;
}

function randomId(): string {
  return globalThis.crypto.randomUUID();
}

/**
 * Opens an OPFS replica from a page: leads (starts the Worker with `spawn`) when no other tab
 * of the origin runs this replica, follows the tab that does otherwise.
 */
export async function openShared(options: OpenOptions, spawn: () => WorkerLike): Promise<Replica> {
  if (typeof options !== "object" || options === null) {
    throw new InvalidArgumentError("options must be an object");
  }
  if (typeof options.name !== "string" || options.name === "") {
    throw new InvalidArgumentError("name must be a non-empty string");
  }
  const replica = new TabReplica(options, spawn, locks());
  await replica.ready();
  return replica;
}

class TabReplica implements Replica {
  readonly #options: OpenOptions;
  readonly #spawn: () => WorkerLike;
  readonly #locks: LockManager;
  readonly #base: string;
  readonly #id = randomId();
  readonly #shared: BroadcastChannel;
  readonly #inbox: BroadcastChannel;
  /** The current leader's inbox (null: no leader known right now). */
  #toLeader: BroadcastChannel | null = null;
  /** The leader calls go to (null between a leader's bye and the next hello). */
  #leader: string | null = null;
  /** The last leader heard of (a hello from another one is a leader change). */
  #known: string | null = null;
  #next = 1;
  #pending = new Map<number, Pending>();
  #subscriptions = new Map<number, Subscription>();
  #listeners: { [K in keyof ReplicaEvents]: Set<(value: ReplicaEvents[K]) => void> } = {
    status: new Set(),
    error: new Set(),
    refused: new Set(),
  };
  #closed = false;
  /** Held while the app runs a transaction through this handle: its other calls wait. */
  #tx: Promise<void> | null = null;
  #openTx: OpenTx | null = null;
  #ready: Promise<void>;
  #readyDone = false;
  #readyResolve!: () => void;
  #readyReject!: (e: Error) => void;
  #releaseClientLock: (() => void) | null = null;
  #abortLeadership = new AbortController();
  /** While this tab leads: its Worker, the leader id it was started with, and how to give the lock back. */
  #worker: WorkerLike | null = null;
  #workerLeader: string | null = null;
  #stopped: (() => void) | null = null;
  #resign: (() => void) | null = null;

  constructor(options: OpenOptions, spawn: () => WorkerLike, manager: LockManager) {
    this.#options = options;
    this.#spawn = spawn;
    this.#locks = manager;
    this.#base = baseName(options);
    this.#ready = new Promise<void>((resolve, reject) => {
      this.#readyResolve = resolve;
      this.#readyReject = reject;
    });
    this.#shared = new BroadcastChannel(this.#base);
    this.#inbox = new BroadcastChannel(inbox(this.#base, this.#id));
    this.#shared.onmessage = (event: MessageEvent) => this.#onAnnouncement(event.data as Announcement);
    this.#inbox.onmessage = (event: MessageEvent) => this.#onReply(event.data as Reply);
  }

  /** Resolves once a leader (this tab or another) answers; rejects when this tab had to lead and could not open the database. */
  async ready(): Promise<void> {
    // This client's own lock first: the Worker watches it to know when the client is gone.
    await new Promise<void>((granted, failed) => {
      this.#locks
        .request(clientLock(this.#base, this.#id), () => {
          granted();
          return new Promise<void>((release) => (this.#releaseClientLock = release));
        })
        .catch(failed);
    });
    // Wait in the leader lock's queue for as long as this client is open.
    this.#locks
      .request(this.#base, { signal: this.#abortLeadership.signal }, () => this.#lead())
      .catch(() => {
        // Aborted by close().
      });
    this.#shared.postMessage({ kind: "who" } satisfies Announcement);
    try {
      await this.#ready;
    } catch (e) {
      await this.#shutDown();
      throw e;
    }
  }

  // ---- leading ------------------------------------------------------------------------

  /** Holds the leader lock: starts the Worker, then keeps the lock until this client closes. */
  async #lead(): Promise<void> {
    let delay = 250;
    for (;;) {
      if (this.#closed) {
        return;
      }
      const leader = randomId();
      try {
        this.#worker = await this.#startWorker(leader);
        this.#workerLeader = leader;
        break;
      } catch (e) {
        const error = toHarmonyliteError(e);
        if (!this.#readyDone) {
          // This tab's own open(): fail it (and give the lock to the next tab).
          this.#readyDone = true;
          this.#readyReject(error);
          return;
        }
        // Taking over from a leader that went: the files may still be held for a moment by
        // the old Worker, or by another replica in the same OPFS directory. Keep trying.
        const message = new StorageError(`taking over the replica from the tab that ran it failed (${error.message}); retrying`, { cause: error });
        this.#emitError(message);
        this.#announce({ kind: "error", error: errorToData(message) });
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5000);
      }
    }
    if (this.#closed) {
      // Closed while the Worker started: stop it again.
      await this.#stepDown(undefined);
      return;
    }
    await new Promise<void>((resolve) => (this.#resign = resolve));
  }

  /** Starts the Worker and opens the database in it; resolves once it serves calls. */
  #startWorker(leader: string): Promise<WorkerLike> {
    const worker = this.#spawn();
    return new Promise<WorkerLike>((resolve, reject) => {
      let started = false;
      let settled = false;
      worker.addEventListener("message", (event: MessageEvent) => {
        const message = event.data as FromWorker;
        if (message.kind === "started") {
          started = settled = true;
          resolve(worker);
        } else if (message.kind === "failed" && !settled) {
          settled = true;
          worker.terminate();
          reject(toHarmonyliteError(message.error));
        } else if (message.kind === "stopped") {
          this.#stopped?.();
        } else if (message.kind === "getToken") {
          void this.#tokenFor(worker, message.id);
        }
      });
      worker.addEventListener("error", (event: Event) => {
        const error = new StorageError((event as ErrorEvent).message || "the harmonylite worker failed");
        if (!settled) {
          settled = true;
          worker.terminate();
          reject(error);
          return;
        }
        if (started) {
          this.#emitError(error);
          this.#announce({ kind: "error", error: errorToData(error) });
        }
      });
      try {
        // A function cannot be sent: the Worker asks this page for each token instead.
        const { getToken, ...options } = this.#options;
        worker.postMessage({ kind: "start", base: this.#base, leader, options, pageToken: getToken !== undefined } satisfies ToWorker);
      } catch (e) {
        settled = true;
        worker.terminate();
        reject(new InvalidArgumentError(`the options cannot be sent to the harmonylite worker: ${String(e)}`, { cause: e }));
      }
    });
  }

  /** Answers the Worker's request `id` for a token with the app's `getToken()`. */
  async #tokenFor(worker: WorkerLike, id: number): Promise<void> {
    let reply: ToWorker;
    try {
      reply = { kind: "token", id, token: await this.#options.getToken!() };
    } catch (e) {
      reply = { kind: "tokenFailed", id, error: errorToData(e) };
    }
    try {
      worker.postMessage(reply);
    } catch {
      // The Worker is gone.
    }
  }

  /** Stops this tab's Worker (closing the database) and gives the leader lock to the next tab. */
  async #stepDown(options: CloseOptions | undefined): Promise<void> {
    const worker = this.#worker;
    if (worker) {
      const stopped = new Promise<void>((resolve) => (this.#stopped = resolve));
      const grace = (options?.flushTimeoutMs ?? 2000) + STOP_GRACE_MS;
      let timer: ReturnType<typeof setTimeout> | undefined;
      worker.postMessage({ kind: "stop", options } satisfies ToWorker);
      await Promise.race([stopped, new Promise<void>((resolve) => (timer = setTimeout(resolve, grace)))]);
      clearTimeout(timer);
      worker.terminate();
      this.#worker = null;
    }
    this.#resign?.();
    this.#resign = null;
  }

  // ---- messages -----------------------------------------------------------------------

  #announce(message: Announcement): void {
    try {
      this.#shared.postMessage(message);
    } catch {
      // Closed.
    }
  }

  #onAnnouncement(message: Announcement): void {
    if (this.#closed) {
      return;
    }
    switch (message.kind) {
      case "hello":
        this.#onHello(message.leader);
        break;
      case "bye":
        if (this.#leader === message.leader) {
          this.#leader = null;
          this.#toLeader?.close();
          this.#toLeader = null;
        }
        break;
      case "status":
        if (this.#listeners.status.size > 0) {
          const status = this.#withTab(message.value as Status);
          for (const cb of this.#listeners.status) {
            try {
              cb(status);
            } catch {
              // A listener's own failure is not ours to report.
            }
          }
        }
        break;
      case "error":
        this.#emitError(toHarmonyliteError(message.error));
        break;
      case "refused":
        for (const cb of this.#listeners.refused) {
          try {
            cb(message.value as RefusedWrite);
          } catch {
            // A listener's own failure is not ours to report.
          }
        }
        break;
      case "who":
        break;
    }
  }

  /** A leader serves calls: send everything waiting to it; after a leader change, resume. */
  #onHello(leader: string): void {
    if (leader === this.#leader) {
      return;
    }
    const previous = this.#known;
    this.#known = this.#leader = leader;
    this.#toLeader?.close();
    this.#toLeader = new BroadcastChannel(inbox(this.#base, leader));
    if (previous !== null && previous !== leader) {
      this.#resume(leader);
    }
    for (const p of this.#pending.values()) {
      if (p.sentTo !== leader) {
        this.#send(p);
      }
    }
    if (!this.#readyDone) {
      this.#readyDone = true;
      this.#readyResolve();
    }
  }

  /** The leader changed: settle what cannot be sent again, and subscribe again. */
  #resume(leader: string): void {
    if (this.#openTx && this.#openTx.leader !== leader) {
      this.#openTx.aborted = true;
    }
    for (const p of [...this.#pending.values()]) {
      if (p.sentTo === null || p.sentTo === leader) {
        continue;
      }
      if (NOT_RESENT.has(p.method)) {
        this.#pending.delete(p.id);
        p.reject(
          new LeaderChangedError(
            p.method === "txExec" || p.method === "txQuery"
              ? "the tab running the database went away during this transaction: it was rolled back, run it again"
              : `the tab running the database went away during ${p.method}(): its outcome is unknown, check status()/schemaStatus()`,
          ),
        );
      } else if (p.method === "rollback" || p.method === "subscribe" || p.method === "unsubscribe") {
        // Rolled back with the old leader; subscriptions are made again below.
        this.#pending.delete(p.id);
        p.resolve(null);
      }
    }
    for (const [id, s] of this.#subscriptions) {
      this.#fire("subscribe", [id, s.tables, true]);
    }
  }

  #onReply(message: Reply): void {
    if ("event" in message) {
      if (message.event === "change") {
        const s = this.#subscriptions.get(message.subscription);
        if (s) {
          try {
            s.cb(message.value as ChangeEvent);
          } catch (e) {
            this.#emitError(e instanceof Error ? e : new Error(String(e)));
          }
        }
      }
      return;
    }
    const p = this.#pending.get(message.id);
    // An answer from a leader the call is no longer waiting on (it was sent again) is dropped.
    if (!p || p.sentTo !== message.leader) {
      return;
    }
    this.#pending.delete(message.id);
    if (message.ok) {
      p.resolve(message.value);
    } else {
      p.reject(toHarmonyliteError(message.error));
    }
  }

  #send(p: Pending): void {
    if (!this.#toLeader || this.#leader === null) {
      p.sentTo = null;
      return;
    }
    let low = p.id;
    for (const id of this.#pending.keys()) {
      low = Math.min(low, id);
    }
    try {
      this.#toLeader.postMessage({ id: p.id, from: this.#id, low, method: p.method, args: p.args } satisfies Call);
      p.sentTo = this.#leader;
    } catch (e) {
      this.#pending.delete(p.id);
      p.reject(toHarmonyliteError({ ...errorToData(e), name: "InvalidArgumentError" }));
    }
  }

  /** Sends one call and waits for its answer (sent again to a new leader when its leader goes). */
  #call(method: Method, args: unknown[]): Promise<unknown> {
    if (this.#closed) {
      return Promise.reject(new ReplicaClosedError());
    }
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      const p: Pending = { id, method, args, resolve, reject, sentTo: null };
      this.#pending.set(id, p);
      this.#send(p);
    });
  }

  /** A call whose answer nobody waits for. */
  #fire(method: Method, args: unknown[]): void {
    void this.#call(method, args).catch(() => {});
  }

  #emitError(e: Error): void {
    for (const cb of this.#listeners.error) {
      try {
        cb(e);
      } catch {
        // Ignored, as above.
      }
    }
  }

  #withTab(status: Status): Status {
    const leads = this.#worker !== null && this.#workerLeader !== null && this.#workerLeader === this.#leader;
    return { ...status, tab: leads ? "leader" : "follower" };
  }

  // ---- the Replica --------------------------------------------------------------------

  async #idle(): Promise<void> {
    while (this.#tx) {
      await this.#tx;
    }
  }

  async exec(sql: string, params?: SqlParams): Promise<ExecResult> {
    await this.#idle();
    return (await this.#call("exec", [sql, params])) as ExecResult;
  }

  async query<T extends Row = Row>(sql: string, params?: SqlParams): Promise<T[]> {
    await this.#idle();
    return (await this.#call("query", [sql, params])) as T[];
  }

  async transaction<T>(fn: (tx: Transaction) => Promise<T> | T): Promise<T> {
    do await this.#idle(); while (this.#tx);
    let release!: () => void;
    this.#tx = new Promise((resolve) => (release = resolve));
    try {
      const begun = (await this.#call("begin", [])) as Begun;
      const state: OpenTx = { key: begun.tx, leader: begun.leader, aborted: begun.leader !== this.#known };
      this.#openTx = state;
      let open = true;
      const inside = () => {
        if (!open) {
          throw new InvalidArgumentError("the transaction has ended");
        }
        if (state.aborted) {
          throw new LeaderChangedError("the tab running the database went away during this transaction: it was rolled back, run it again");
        }
      };
      const tx: Transaction = {
        exec: async (sql, params) => {
          inside();
          return (await this.#call("txExec", [state.key, sql, params])) as ExecResult;
        },
        query: async <R extends Row = Row>(sql: string, params?: SqlParams) => {
          inside();
          return (await this.#call("txQuery", [state.key, sql, params])) as R[];
        },
      };
      let result: T;
      try {
        result = await fn(tx);
      } catch (e) {
        open = false;
        if (!state.aborted) {
          await this.#call("rollback", [state.key]).catch(() => {});
        }
        throw e;
      }
      open = false;
      if (state.aborted) {
        throw new LeaderChangedError("the tab running the database went away during this transaction: it was rolled back, run it again");
      }
      // Sent again after a leader change: the new leader answers from the commit's record.
      await this.#call("commit", [state.key]);
      return result;
    } finally {
      this.#openTx = null;
      this.#tx = null;
      release();
    }
  }

  subscribe(cb: (event: ChangeEvent) => void, options?: SubscribeOptions): () => void {
    if (typeof cb !== "function") {
      throw new InvalidArgumentError("subscribe needs a callback");
    }
    if (this.#closed) {
      throw new ReplicaClosedError();
    }
    const id = this.#next++;
    const tables = options?.tables ?? null;
    this.#subscriptions.set(id, { cb, tables });
    this.#fire("subscribe", [id, tables, false]);
    return () => {
      if (this.#subscriptions.delete(id) && !this.#closed) {
        this.#fire("unsubscribe", [id]);
      }
    };
  }

  on<K extends keyof ReplicaEvents>(event: K, cb: (value: ReplicaEvents[K]) => void): () => void {
    const set = this.#listeners[event] as Set<(value: ReplicaEvents[K]) => void> | undefined;
    if (!set) {
      throw new InvalidArgumentError(`unknown event ${JSON.stringify(event)} (use "status", "error" or "refused")`);
    }
    set.add(cb);
    return () => {
      set.delete(cb);
    };
  }

  async status(): Promise<Status> {
    return this.#withTab((await this.#call("status", [])) as Status);
  }

  async flush(options?: WaitOptions): Promise<void> {
    await this.#idle();
    await this.#call("flush", [options]);
  }

  async sync(options?: WaitOptions): Promise<void> {
    await this.#idle();
    await this.#call("sync", [options]);
  }

  async migrate(sql: string | MergeSwitch, options?: MigrateOptions): Promise<MigrationResult> {
    await this.#idle();
    return (await this.#call("migrate", [sql, options])) as MigrationResult;
  }

  async schemaStatus(): Promise<SchemaStatus> {
    return (await this.#call("schemaStatus", [])) as SchemaStatus;
  }

  async discardParked(table: string, options?: DiscardParkedOptions): Promise<number> {
    await this.#idle();
    return (await this.#call("discardParked", [table, options])) as number;
  }

  async adoptStream(): Promise<number> {
    await this.#idle();
    return (await this.#call("adoptStream", [])) as number;
  }

  /**
   * Closes this tab's handle. In the leading tab it also stops the Worker (closing the
   * database) and passes the lead to another tab that has the replica open, if any.
   */
  async close(options?: CloseOptions): Promise<void> {
    if (this.#closed) {
      return;
    }
    await this.#idle();
    if (this.#closed) {
      return;
    }
    // Unsubscribe while calls still go out (a follower's subscriptions would otherwise stay
    // until the Worker notices this client is gone).
    for (const id of this.#subscriptions.keys()) {
      this.#fire("unsubscribe", [id]);
    }
    this.#subscriptions.clear();
    await this.#shutDown(options);
  }

  async #shutDown(options?: CloseOptions): Promise<void> {
    this.#closed = true;
    this.#abortLeadership.abort();
    // A Worker still starting is stopped by #lead once it has started (it sees #closed).
    if (this.#worker || this.#resign) {
      await this.#stepDown(options);
    }
    const closed = new ReplicaClosedError();
    for (const p of this.#pending.values()) {
      p.reject(closed);
    }
    this.#pending.clear();
    this.#subscriptions.clear();
    this.#toLeader?.close();
    this.#toLeader = null;
    this.#shared.close();
    this.#inbox.close();
    this.#releaseClientLock?.();
    this.#releaseClientLock = null;
  }
}
