// The app's dedicated Worker: runs the user's replica (OPFS storage works in a dedicated
// Worker, where open() runs the database itself) and answers the page's calls. The page side
// is `workerReplica` in src/app.js. Messages:
//   page -> worker  { kind: "open", user, server }
//                   { kind: "call", id, method, args }    method: exec, query, status, flush, sync, close
//   worker -> page  { kind: "opened" } | { kind: "failed", error }
//                   { kind: "reply", id, ok, value | error }
//                   { kind: "status" | "refused", value } | { kind: "error", error } | { kind: "change", event }

import { openNotes } from "./replica.js";

let db = null;
const errorData = (e) => ({ name: e?.name ?? "Error", message: e?.message ?? String(e) });

self.onmessage = async ({ data }) => {
  if (data.kind === "open") {
    try {
      db = await openNotes(data.user, data.server);
    } catch (e) {
      postMessage({ kind: "failed", error: errorData(e) });
      return;
    }
    db.on("status", (value) => postMessage({ kind: "status", value }));
    db.on("error", (e) => postMessage({ kind: "error", error: errorData(e) }));
    db.on("refused", (value) => postMessage({ kind: "refused", value }));
    db.subscribe((event) => postMessage({ kind: "change", event }));
    postMessage({ kind: "opened" });
    return;
  }
  if (data.kind === "call") {
    try {
      const value = await db[data.method](...data.args);
      postMessage({ kind: "reply", id: data.id, ok: true, value });
    } catch (e) {
      postMessage({ kind: "reply", id: data.id, ok: false, error: errorData(e) });
    }
  }
};
