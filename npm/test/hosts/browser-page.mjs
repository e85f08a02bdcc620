// The page of the browser test: an application module that imports the package as any app
// would (bundled by esbuild with the "browser" condition) and hands a small driver to the
// test (playwright evaluates calls on `window.app`). The replica itself runs in the
// package's dedicated Worker (OPFS storage), started by `open` in the tab that leads; the
// other tabs of the origin that open it forward their calls to that tab's Worker.

import { open, HarmonyliteError, LeaderChangedError, StorageError } from "harmonylite";

let db = null;
const errors = [];
const changes = [];
/** What a stream of writes (`startStream`) did: values attempted, acknowledged, refused. */
let stream = null;
/** A transaction held open by `holdTx` until `releaseTx`. */
let held = null;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const failure = (e) => ({ ok: false, name: e.name, message: e.message, leaderChanged: e instanceof LeaderChangedError, harmonyliteError: e instanceof HarmonyliteError });

window.app = {
  async open(options) {
    db = await open(options);
    db.on("error", (e) => errors.push(`${e.name}: ${e.message}`));
    return db.status();
  },
  exec: (sql, params) => db.exec(sql, params),
  query: (sql, params) => db.query(sql, params),
  status: () => db.status(),
  flush: (options) => db.flush(options),
  sync: (options) => db.sync(options),
  migrate: (sql, options) => db.migrate(sql, options),
  schemaStatus: () => db.schemaStatus(),
  close: (options) => db.close(options),
  // Each row in its own transaction, or `perTx` rows per transaction.
  async insertMany(ids, valueOf, perTx) {
    for (let i = 0; i < ids.length; i += perTx) {
      const chunk = ids.slice(i, i + perTx);
      if (chunk.length === 1) {
        await db.exec("INSERT INTO items(id, val) VALUES (?, ?)", [chunk[0], `${valueOf}${chunk[0]}`]);
        continue;
      }
      await db.transaction(async (tx) => {
        for (const id of chunk) {
          await tx.exec("INSERT INTO items(id, val) VALUES (?, ?)", [id, `${valueOf}${id}`]);
        }
      });
    }
  },
  errors: () => errors.slice(),
  // open(), reporting a failure as data (its class survives the Worker boundary).
  async tryOpen(options) {
    try {
      await window.app.open(options);
      return { ok: true };
    } catch (e) {
      return { ok: false, name: e.name, message: e.message, storageError: e instanceof StorageError, harmonyliteError: e instanceof HarmonyliteError };
    }
  },
  // migrate(), reporting a failure as data (name and message).
  async tryMigrate(sql, options) {
    try {
      return { ok: true, ...(await db.migrate(sql, options)) };
    } catch (e) {
      return { ok: false, name: e.name, message: e.message, harmonyliteError: e instanceof HarmonyliteError };
    }
  },
  secure: () => globalThis.isSecureContext,

  // ---- several tabs ----
  tab: async () => (await db.status()).tab,
  subscribe(tables) {
    db.subscribe((event) => changes.push(event), tables ? { tables } : undefined);
  },
  changes: () => changes.slice(),
  // Writes `count` values into log(v) (id assigned by SQLite, so a write applied twice shows
  // as two rows): each `txEvery`-th one as a transaction of two rows (`<v>:a`, `<v>:b`),
  // the others as single statements. Runs in the background; `streamState()` reports.
  startStream(prefix, count, txEvery) {
    stream = { attempted: [], acked: [], failed: [], done: false };
    const s = stream;
    void (async () => {
      for (let i = 0; i < count; i++) {
        const v = `${prefix}${i}`;
        s.attempted.push(v);
        try {
          if (txEvery > 0 && i % txEvery === 0) {
            await db.transaction(async (tx) => {
              await tx.exec("INSERT INTO log(v) VALUES (?)", [`${v}:a`]);
              await tx.exec("INSERT INTO log(v) VALUES (?)", [`${v}:b`]);
            });
          } else {
            await db.exec("INSERT INTO log(v) VALUES (?)", [v]);
          }
          s.acked.push(v);
        } catch (e) {
          s.failed.push({ v, ...failure(e) });
        }
      }
      s.done = true;
    })();
  },
  streamState: () => (stream ? { attempted: stream.attempted.length, acked: stream.acked.slice(), failed: stream.failed.slice(), done: stream.done } : null),
  // A transaction that inserts `first`, waits for releaseTx(), then inserts `second`.
  holdTx(first, second) {
    let release;
    const gate = new Promise((r) => (release = r));
    held = { release, outcome: null, inside: false };
    const h = held;
    void db
      .transaction(async (tx) => {
        await tx.exec("INSERT INTO items(id, val) VALUES (?, ?)", [first, "held"]);
        h.inside = true;
        await gate;
        await tx.exec("INSERT INTO items(id, val) VALUES (?, ?)", [second, "held"]);
      })
      .then(
        () => (h.outcome = { ok: true }),
        (e) => (h.outcome = failure(e)),
      );
  },
  heldInside: () => held?.inside === true,
  releaseTx: () => held.release(),
  heldOutcome: () => held?.outcome ?? null,
  // A transaction of `count` rows tagged `tag` into seq(n, tag), pausing between rows.
  async slowTx(tag, count, pauseMs) {
    await db.transaction(async (tx) => {
      for (let i = 0; i < count; i++) {
        await tx.exec("INSERT INTO seq(tag) VALUES (?)", [tag]);
        await sleep(pauseMs);
      }
    });
  },
  // Speaks the tabs' protocol by hand as a client would after a leader change: each call is
  // sent to the leader's Worker, and once answered sent again with the same id (as if its
  // answer had been lost). Returns both answers of each call.
  async sendTwice(name, calls) {
    const base = `harmonylite:${name}`;
    const id = crypto.randomUUID();
    // A client holds its lock while open (the Worker forgets clients whose lock is free).
    await new Promise((granted) => navigator.locks.request(`${base}:client:${id}`, () => (granted(), new Promise(() => {}))));
    const shared = new BroadcastChannel(base);
    const leader = await new Promise((resolve) => {
      shared.onmessage = (e) => e.data.kind === "hello" && resolve(e.data.leader);
      shared.postMessage({ kind: "who" });
    });
    const inbox = new BroadcastChannel(`${base}:to:${id}`);
    const toLeader = new BroadcastChannel(`${base}:to:${leader}`);
    const answers = [];
    let n = 1;
    for (const [method, args] of calls) {
      const call = { id: n++, from: id, low: 1, method, args };
      const pair = [];
      for (let i = 0; i < 2; i++) {
        pair.push(
          await new Promise((resolve) => {
            inbox.onmessage = (e) => e.data.id === call.id && resolve(e.data);
            toLeader.postMessage(call);
          }),
        );
      }
      answers.push(pair.map((r) => (r.ok ? { ok: true, value: r.value } : { ok: false, name: r.error.name, message: r.error.message })));
    }
    shared.close();
    inbox.close();
    toLeader.close();
    return answers;
  },
  async tryExec(sql, params) {
    try {
      return { ok: true, ...(await db.exec(sql, params)) };
    } catch (e) {
      return failure(e);
    }
  },
};
window.appReady = true;
