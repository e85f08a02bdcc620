/** Messages between a page and the harmonylite Worker (OPFS storage). */

import type { ErrorData } from "./errors.js";

/** A call from the page. */
export interface Call {
  id: number;
  method:
    | "open"
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
    | "adoptStream"
    | "close";
  args: unknown[];
}

/** The Worker's answer to a call, or an event it pushes. */
export type Reply =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: ErrorData }
  | { event: "change"; subscription: number; value: unknown }
  | { event: "status"; value: unknown }
  | { event: "error"; error: ErrorData };
