/**
 * Messages of an OPFS replica shared by the tabs of an origin (see `remote.ts` and
 * `worker.ts`).
 *
 * One tab, the leader, holds the Web Lock `harmonylite:<name>` and runs the database in its
 * dedicated Worker; every tab (the leader's included) is a client of that Worker. They talk
 * over BroadcastChannels, whose names all start with the replica's base name:
 *
 * - `<base>` (shared): `who` / `hello` / `bye` (who leads), and the status and error events
 *   every tab receives.
 * - `<base>:to:<leader id>`: calls to the Worker of that leader (a fresh id per Worker).
 * - `<base>:to:<client id>`: replies and change notifications for one client (one `open()`).
 *
 * Each client also holds the Web Lock `<base>:client:<client id>` while it is open; the
 * Worker asks for it, and is granted it once the client is gone (closed, or its tab closed or
 * crashed), which is when it rolls back the client's transaction and drops its state.
 */

import type { ErrorData } from "./errors.js";
import type { CloseOptions, OpenOptions } from "./types.js";

/** What a client may ask the Worker. */
export type Method =
  | "exec"
  | "query"
  | "begin"
  | "txExec"
  | "txQuery"
  | "commit"
  | "rollback"
  | "subscribe"
  | "unsubscribe"
  | "status"
  | "flush"
  | "sync"
  | "migrate"
  | "schemaStatus"
  | "discardParked"
  | "adoptStream";

/**
 * A call from a client (on the leader's inbox). `(from, id)` names the call for good: a
 * write sent again after a leader change is recognised by it and not applied twice. `low`:
 * every call of this client below it has been answered (its record may go).
 */
export interface Call {
  id: number;
  from: string;
  low: number;
  method: Method;
  args: unknown[];
}

/** On a client's inbox: the answer to a call (from the Worker of leader `leader`), or a change notification. */
export type Reply =
  | { id: number; leader: string; ok: true; value: unknown }
  | { id: number; leader: string; ok: false; error: ErrorData }
  | { event: "change"; subscription: number; value: unknown };

/** On the shared channel. */
export type Announcement =
  | { kind: "who" }
  | { kind: "hello"; leader: string }
  | { kind: "bye"; leader: string }
  | { kind: "status"; value: unknown }
  | { kind: "error"; error: ErrorData }
  | { kind: "refused"; value: unknown };

/** From the leader's page to its Worker. */
export type ToWorker =
  // `pageToken`: the options had a `getToken` (a function, which cannot be sent): the Worker
  // asks the page for each token (`getToken` / `token`).
  | { kind: "start"; base: string; leader: string; options: OpenOptions; pageToken: boolean }
  | { kind: "stop"; options?: CloseOptions }
  | { kind: "token"; id: number; token: string }
  | { kind: "tokenFailed"; id: number; error: ErrorData };

/** From the Worker to its page. */
export type FromWorker = { kind: "started" } | { kind: "failed"; error: ErrorData } | { kind: "stopped" } | { kind: "getToken"; id: number };

/** What `begin` answers: the transaction's key and the leader that holds it open. */
export interface Begun {
  tx: string;
  leader: string;
}

/**
 * The base name of a replica's locks and channels: `harmonylite:<name>`, with the OPFS
 * directory in front of the name when it is not the default one.
 */
export function baseName(options: OpenOptions): string {
  const dir = options.opfsDirectory;
  return dir === undefined || dir === ".harmonylite" ? `harmonylite:${options.name}` : `harmonylite:${dir}/${options.name}`;
}

/** The inbox channel of a leader's Worker or of a client. */
export function inbox(base: string, id: string): string {
  return `${base}:to:${id}`;
}

/** The Web Lock a client holds while it is open. */
export function clientLock(base: string, client: string): string {
  return `${base}:client:${client}`;
}
