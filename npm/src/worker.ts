/**
 * The harmonylite Worker: runs one replica (OPFS storage) for every tab of the origin that
 * opened it, started by the tab that leads (see `remote.ts`, and `rpc.ts` for the messages).
 * Bundlers pick it up through `new URL("./worker.js", import.meta.url)` in the browser
 * entry; it is also exported as `harmonylite/worker`.
 *
 * Every call comes from a client (one `open()` in some tab) and is answered on the client's
 * inbox. The database is used one call at a time, in arrival order (a queue, `DbQueue`); an
 * explicit transaction holds the queue from `begin` to `commit`/`rollback`, so transactions
 * of different tabs never interleave. Writes are recorded: each write call runs in one
 * SQLite transaction with a row of `__hl_calls` naming it (client id, call id) and holding
 * its result, so a call sent again after a leader change (its answer was lost with the old
 * leader) gets the recorded result instead of running twice. Records go once the client
 * says it has the answer (`Call.low`), and with the client.
 */

import { errorToData, InvalidArgumentError, LeaderChangedError, ReplicaClosedError, toHarmonyliteError } from "./errors.js";
import { openLocal } from "./replica.js";
import type { LocalReplica } from "./replica.js";
import { platform } from "./browser.js";
import { clientLock, inbox } from "./rpc.js";
import { sqlKind } from "./sqlkind.js";
import type { Announcement, Begun, Call, FromWorker, Reply, ToWorker } from "./rpc.js";
import type { CloseOptions, DiscardParkedOptions, ExecResult, MergeSwitch, MigrateOptions, OpenOptions, Row, SqlParams, Transaction, WaitOptions } from "./types.js";

const scope = globalThis as unknown as {
  postMessage(message: unknown): void;
  addEventListener(type: "message", listener: (event: MessageEvent) => void): void;
};

type TxHandle = Transaction & { commit(): void; rollback(): void };

/** The table of recorded write calls (internal: capture and the schema fingerprint skip `__hl_`). */
const CALLS_TABLE =
  "CREATE TABLE IF NOT EXISTS __hl_calls(client TEXT NOT NULL, seq INTEGER NOT NULL, at INTEGER NOT NULL, result TEXT NOT NULL, PRIMARY KEY (client, seq)) WITHOUT ROWID";

/** Thrown where a call must get no answer: its client sends it again to the next leader (or is gone). */
const UNANSWERED = Symbol("unanswered");

/** The database's queue: one holder at a time, first come first served. */
class DbQueue {
  #tail: Promise<void> = Promise.resolve();
  acquire(): Promise<() => void> {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const before = this.#tail;
    this.#tail = before.then(() => held);
    let done = false;
    const once = () => {
      if (!done) {
        done = true;
        release();
      }
    };
    return before.then(() => once);
  }
}

interface Client {
  inbox: BroadcastChannel;
  subscriptions: Map<number, () => void>;
}

interface OpenTx {
  key: string;
  client: string;
  handle: TxHandle;
  release: () => void;
}

let replica: LocalReplica | null = null;
let leader = "";
let base = "";
let shared: BroadcastChannel | null = null;
let calls: BroadcastChannel | null = null;
let stopping = false;
const queue = new DbQueue();
const clients = new Map<string, Client>();
const departed = new Set<string>();
const transactions = new Map<string, OpenTx>();
let nextTx = 1;

function post(message: FromWorker): void {
  scope.postMessage(message);
}

function announce(message: Announcement): void {
  try {
    shared?.postMessage(message);
  } catch {
    // The channel closed (stopped): nobody to tell.
  }
}

function current(): LocalReplica {
  if (!replica) {
    throw new ReplicaClosedError("the replica is not open in this worker");
  }
  return replica;
}

// ---- results kept in __hl_calls -----------------------------------------------------

function encode(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v === "bigint") {
      return { __hl_bigint: v.toString() };
    }
    if (v instanceof Uint8Array) {
      let text = "";
      for (const b of v) {
        text += String.fromCharCode(b);
      }
      return { __hl_bytes: btoa(text) };
    }
    return v === undefined ? null : v;
  });
}

function decode(text: string): unknown {
  return JSON.parse(text, (_key, v: unknown) => {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      const o = v as Record<string, unknown>;
      const keys = Object.keys(o);
      if (keys.length === 1 && typeof o.__hl_bigint === "string") {
        return BigInt(o.__hl_bigint);
      }
      if (keys.length === 1 && typeof o.__hl_bytes === "string") {
        return Uint8Array.from(atob(o.__hl_bytes), (c) => c.charCodeAt(0));
      }
    }
    return v;
  });
}

// ---- calls --------------------------------------------------------------------------

/** Takes the database's queue for a call of `from`; a call of a gone client, or made while stopping, is not answered. */
async function takeQueue(from: string): Promise<() => void> {
  const release = await queue.acquire();
  if (stopping || departed.has(from) || !replica) {
    release();
    throw UNANSWERED;
  }
  return release;
}

async function recordedResult(t: { query: TxHandle["query"] }, call: Call): Promise<{ found: boolean; value: unknown }> {
  const rows = await t.query<{ result: string }>("SELECT result FROM __hl_calls WHERE client = ? AND seq = ?", [call.from, call.id]);
  return rows.length > 0 ? { found: true, value: decode(rows[0]!.result) } : { found: false, value: undefined };
}

async function record(t: TxHandle, call: Call, value: unknown): Promise<void> {
  await t.exec("DELETE FROM __hl_calls WHERE client = ? AND seq < ?", [call.from, call.low]);
  await t.exec("INSERT INTO __hl_calls(client, seq, at, result) VALUES (?, ?, ?, ?)", [call.from, call.id, Date.now(), encode(value)]);
}

/** Runs a write call inside one transaction with its record, or returns its recorded result. */
async function recordedWrite(call: Call, run: (t: TxHandle) => Promise<unknown>): Promise<unknown> {
  const release = await takeQueue(call.from);
  try {
    // Captured with the writes around it, as a plain exec() is.
    const t = current().beginTransaction(true);
    let value: unknown;
    try {
      await t.exec(CALLS_TABLE);
      const prior = await recordedResult(t, call);
      if (prior.found) {
        t.rollback();
        return prior.value;
      }
      value = await run(t);
      await record(t, call, value);
    } catch (e) {
      t.rollback();
      throw e;
    }
    t.commit();
    return value;
  } finally {
    release();
  }
}

/**
 * Runs SQL that cannot run inside a transaction of ours (schema changes, `BEGIN`, pragmas)
 * as is, unless recorded already, and records it right after (in its own transaction).
 */
async function recordedOther(call: Call, run: () => Promise<unknown>): Promise<unknown> {
  const release = await takeQueue(call.from);
  try {
    const r = current();
    await r.exec(CALLS_TABLE);
    const prior = await recordedResult(r, call);
    if (prior.found) {
      return prior.value;
    }
    const value = await run();
    try {
      const t = r.beginTransaction(true);
      try {
        await record(t, call, value);
        t.commit();
      } catch {
        t.rollback();
      }
    } catch {
      // The SQL left a transaction open (an `exec("BEGIN")`): nothing to record it in.
    }
    return value;
  } finally {
    release();
  }
}

/** Runs a call that only reads, in its turn. */
async function inTurn(call: Call, run: () => Promise<unknown>): Promise<unknown> {
  const release = await takeQueue(call.from);
  try {
    return await run();
  } finally {
    release();
  }
}

function openTx(key: unknown, from: string): OpenTx {
  const t = transactions.get(key as string);
  if (!t || t.client !== from) {
    throw new LeaderChangedError("the transaction is not open any more (the tab that ran it changed): it was rolled back, run it again");
  }
  return t;
}

function endTx(t: OpenTx, how: "commit" | "rollback"): void {
  transactions.delete(t.key);
  try {
    if (how === "commit") {
      t.handle.commit();
    } else {
      t.handle.rollback();
    }
  } finally {
    t.release();
  }
}

function client(id: string): Client {
  let c = clients.get(id);
  if (!c) {
    c = { inbox: new BroadcastChannel(inbox(base, id)), subscriptions: new Map() };
    clients.set(id, c);
    // Granted once the client is gone (its lock is released by close() or with its tab).
    void navigator.locks.request(clientLock(base, id), () => forget(id)).catch(() => {});
  }
  return c;
}

/** A client is gone: roll back its transaction, drop its subscriptions and its records. */
async function forget(id: string): Promise<void> {
  departed.add(id);
  const c = clients.get(id);
  clients.delete(id);
  for (const t of [...transactions.values()]) {
    if (t.client === id) {
      endTx(t, "rollback");
    }
  }
  if (c) {
    for (const unsubscribe of c.subscriptions.values()) {
      unsubscribe();
    }
    c.inbox.close();
  }
  if (stopping || !replica) {
    return;
  }
  const release = await queue.acquire();
  try {
    if (!stopping && replica) {
      await replica.exec(CALLS_TABLE);
      await replica.exec("DELETE FROM __hl_calls WHERE client = ?", [id]);
    }
  } catch {
    // Best effort: the next leader forgets clients that are gone when it starts.
  } finally {
    release();
  }
}

/** At start: drops the records of clients that are gone (no tab holds their lock). */
async function forgetGoneClients(r: LocalReplica): Promise<void> {
  await r.exec(CALLS_TABLE);
  const held = new Set(((await navigator.locks.query()).held ?? []).map((l) => l.name));
  const gone = (await r.query<{ client: string }>("SELECT DISTINCT client FROM __hl_calls"))
    .map((row) => row.client)
    .filter((c) => !held.has(clientLock(base, c)));
  for (const c of gone) {
    await r.exec("DELETE FROM __hl_calls WHERE client = ?", [c]);
  }
}

async function handle(call: Call): Promise<unknown> {
  const a = call.args;
  const me = client(call.from);
  switch (call.method) {
    case "exec": {
      const sql = a[0] as string;
      const params = a[1] as SqlParams | undefined;
      switch (sqlKind(sql)) {
        case "read":
          return inTurn(call, () => current().exec(sql, params));
        case "write":
          return recordedWrite(call, (t) => t.exec(sql, params));
        case "other":
          return recordedOther(call, () => current().exec(sql, params));
      }
      break;
    }
    case "query": {
      const sql = a[0] as string;
      const params = a[1] as SqlParams | undefined;
      switch (sqlKind(sql)) {
        case "read":
          return inTurn(call, () => current().query(sql, params));
        case "write":
          return recordedWrite(call, (t) => t.query(sql, params));
        case "other":
          return recordedOther(call, () => current().query(sql, params));
      }
      break;
    }
    case "begin": {
      // Held until commit or rollback (or until the client is gone).
      const release = await takeQueue(call.from);
      let handleTx: TxHandle;
      try {
        handleTx = current().beginTransaction();
      } catch (e) {
        release();
        throw e;
      }
      const key = `${leader}:${nextTx++}`;
      transactions.set(key, { key, client: call.from, handle: handleTx, release });
      return { tx: key, leader } satisfies Begun;
    }
    case "txExec":
      return openTx(a[0], call.from).handle.exec(a[1] as string, a[2] as SqlParams | undefined) satisfies Promise<ExecResult>;
    case "txQuery":
      return openTx(a[0], call.from).handle.query<Row>(a[1] as string, a[2] as SqlParams | undefined);
    case "commit": {
      const t = transactions.get(a[0] as string);
      if (!t || t.client !== call.from) {
        // Sent again after a leader change: committed by the old leader if it was recorded.
        const r = current();
        await r.exec(CALLS_TABLE);
        const prior = await recordedResult(r, call);
        if (prior.found) {
          return prior.value;
        }
        throw new LeaderChangedError("the tab running the database changed before this transaction committed: it was rolled back, run it again");
      }
      try {
        await t.handle.exec(CALLS_TABLE);
        await record(t.handle, call, null);
      } catch (e) {
        endTx(t, "rollback");
        throw e;
      }
      endTx(t, "commit");
      return null;
    }
    case "rollback": {
      const t = transactions.get(a[0] as string);
      if (t && t.client === call.from) {
        endTx(t, "rollback");
      }
      return null;
    }
    case "subscribe": {
      const id = a[0] as number;
      const tables = a[1] as string[] | null;
      const resumed = a[2] === true;
      me.subscriptions.get(id)?.();
      const r = current();
      me.subscriptions.set(
        id,
        r.subscribe((value) => me.inbox.postMessage({ event: "change", subscription: id, value } satisfies Reply), tables ? { tables } : undefined),
      );
      if (resumed) {
        // Changes made while no leader ran (or before this subscription was back) were not
        // notified: name every table the subscription watches once.
        const watched = tables ? new Set(tables.map((t) => t.toLowerCase())) : null;
        const names = r.replicatedTables().filter((t) => !watched || watched.has(t.toLowerCase()));
        if (names.length > 0) {
          me.inbox.postMessage({ event: "change", subscription: id, value: { tables: names, origin: "remote" } } satisfies Reply);
        }
      }
      return null;
    }
    case "unsubscribe":
      me.subscriptions.get(a[0] as number)?.();
      me.subscriptions.delete(a[0] as number);
      return null;
    case "status":
      return current().status();
    case "flush":
      return current().flush(a[0] as WaitOptions | undefined);
    case "sync":
      return current().sync(a[0] as WaitOptions | undefined);
    case "migrate":
      return inTurn(call, () => current().migrate(a[0] as string | MergeSwitch, a[1] as MigrateOptions | undefined));
    case "schemaStatus":
      return current().schemaStatus();
    case "discardParked":
      return inTurn(call, () => current().discardParked(a[0] as string, a[1] as DiscardParkedOptions | undefined));
    case "adoptStream":
      return inTurn(call, () => current().adoptStream());
  }
  throw new InvalidArgumentError(`unknown call ${JSON.stringify(call.method)}`);
}

function onCall(call: Call): void {
  if (stopping || !replica || departed.has(call.from)) {
    return;
  }
  void handle(call).then(
    (value) => reply(call, { id: call.id, leader, ok: true, value }),
    (e: unknown) => {
      // While stopping, a call that failed (the replica closed under it) is sent again to
      // the next leader by its client rather than answered with this leader's failure.
      if (e !== UNANSWERED && !stopping) {
        reply(call, { id: call.id, leader, ok: false, error: errorToData(e) });
      }
    },
  );
}

function reply(call: Call, message: Reply): void {
  const c = clients.get(call.from);
  if (!c) {
    return;
  }
  try {
    c.inbox.postMessage(message);
  } catch (e) {
    // A value that cannot be cloned (should not happen: rows are plain data).
    c.inbox.postMessage({ id: call.id, leader, ok: false, error: errorToData(e) } satisfies Reply);
  }
}

// ---- tokens from the page --------------------------------------------------------------

/** Token requests sent to the page, by id. */
const tokenRequests = new Map<number, { resolve: (token: string) => void; reject: (e: Error) => void }>();
let nextTokenRequest = 1;

/** The app's `getToken()`, run on the page that started this Worker (functions cannot be sent). */
function tokenFromPage(): Promise<string> {
  const id = nextTokenRequest++;
  return new Promise<string>((resolve, reject) => {
    tokenRequests.set(id, { resolve, reject });
    post({ kind: "getToken", id });
  });
}

// ---- start and stop -----------------------------------------------------------------

async function start(message: Extract<ToWorker, { kind: "start" }>): Promise<void> {
  if (replica || stopping) {
    post({ kind: "failed", error: errorToData(new InvalidArgumentError("this worker already runs a replica")) });
    return;
  }
  leader = message.leader;
  base = message.base;
  let r: LocalReplica;
  try {
    const options: OpenOptions = { ...(message.options as OpenOptions), storage: "opfs" as const };
    if (message.pageToken) {
      options.getToken = tokenFromPage;
    }
    r = await openLocal(options, platform);
  } catch (e) {
    post({ kind: "failed", error: errorToData(e) });
    return;
  }
  try {
    await forgetGoneClients(r);
  } catch {
    // Best effort (records of gone clients only take room).
  }
  replica = r;
  shared = new BroadcastChannel(base);
  calls = new BroadcastChannel(inbox(base, leader));
  calls.onmessage = (event: MessageEvent) => onCall(event.data as Call);
  shared.onmessage = (event: MessageEvent) => {
    if ((event.data as Announcement).kind === "who" && !stopping) {
      announce({ kind: "hello", leader });
    }
  };
  r.on("status", (value) => announce({ kind: "status", value }));
  r.on("error", (e) => announce({ kind: "error", error: errorToData(e) }));
  r.on("refused", (value) => announce({ kind: "refused", value }));
  post({ kind: "started" });
  announce({ kind: "hello", leader });
}

async function stop(options: CloseOptions | undefined): Promise<void> {
  if (stopping) {
    return;
  }
  stopping = true;
  announce({ kind: "bye", leader });
  // Transactions still open are rolled back; their clients are told when the next leader says hello.
  for (const t of [...transactions.values()]) {
    endTx(t, "rollback");
  }
  // Wait for the call holding the queue; the ones queued behind it are left for the next leader.
  const release = await queue.acquire();
  const r = replica;
  replica = null;
  try {
    await r?.close(options);
  } catch {
    // Closing is best effort: the files are released with this worker anyway.
  }
  calls?.close();
  shared?.close();
  for (const c of clients.values()) {
    c.inbox.close();
  }
  release();
  post({ kind: "stopped" });
}

scope.addEventListener("message", (event: MessageEvent) => {
  const message = event.data as ToWorker;
  if (message.kind === "start") {
    void start(message);
  } else if (message.kind === "stop") {
    void stop(message.options);
  } else if (message.kind === "token" || message.kind === "tokenFailed") {
    const request = tokenRequests.get(message.id);
    tokenRequests.delete(message.id);
    if (message.kind === "token") {
      request?.resolve(message.token);
    } else {
      request?.reject(toHarmonyliteError(message.error));
    }
  }
});
