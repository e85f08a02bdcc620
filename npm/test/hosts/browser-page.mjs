// The page of the browser test: an application module that imports the package as any app
// would (bundled by esbuild with the "browser" condition) and hands a small driver to the
// test (playwright evaluates calls on `window.app`). The replica itself runs in the
// package's dedicated Worker (OPFS storage), started by `open`.

import { open, HarmonyliteError, StorageError } from "harmonylite";

let db = null;
const errors = [];

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
};
window.appReady = true;
