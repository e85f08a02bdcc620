/**
 * Errors thrown by harmonylite. Every error is an instance of {@link HarmonyliteError} and of
 * one subclass with a stable `name`; match on the class (`instanceof`) or on `name`, never
 * on the message.
 */

/** Base class of every harmonylite error. */
export class HarmonyliteError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "HarmonyliteError";
  }
}

/** An option or argument is not usable (unknown storage, unsupported parameter type...). */
export class InvalidArgumentError extends HarmonyliteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "InvalidArgumentError";
  }
}

/** SQLite refused the SQL. `code` is the primary result code name, e.g. `SQLITE_CONSTRAINT`. */
export class SqliteError extends HarmonyliteError {
  /** Primary result code name (`SQLITE_CONSTRAINT`, `SQLITE_ERROR`, ...). */
  readonly code: string;
  /** SQLite's extended result code (e.g. 1555 for a primary-key constraint). */
  readonly extendedCode: number;
  constructor(message: string, code: string, extendedCode: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "SqliteError";
    this.code = code;
    this.extendedCode = extendedCode;
  }
}

/** The database could not be opened (OPFS unavailable, damaged harmonylite metadata...). */
export class StorageError extends HarmonyliteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StorageError";
  }
}

/** The replica was closed. */
export class ReplicaClosedError extends HarmonyliteError {
  constructor(message = "the replica is closed", options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ReplicaClosedError";
  }
}

/** `flush()` or `sync()` did not finish within its `timeoutMs`. */
export class TimeoutError extends HarmonyliteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TimeoutError";
  }
}

/** Talking to NATS failed in a way that needs attention (reported through `on("error")`). */
export class ConnectionError extends HarmonyliteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ConnectionError";
  }
}

/** The replica applied a stream message it could not use, or the engine hit a database error. */
export class ReplicationError extends HarmonyliteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ReplicationError";
  }
}

/** `migrate()` refused the SQL (destructive without `allowDestructive`, transaction control, or it fails here), or this replica could not apply it. */
export class MigrationError extends HarmonyliteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MigrationError";
  }
}

/**
 * An OPFS replica shared by several tabs changed leader (the tab running the database was
 * closed, crashed or navigated away, or closed its replica) while this call was in flight,
 * and the call cannot be sent again safely: an explicit transaction (rolled back, never
 * half-applied: run it again), or a `migrate()`, `discardParked()` or `adoptStream()` whose
 * outcome is unknown (check with `schemaStatus()` / `status()`).
 */
export class LeaderChangedError extends HarmonyliteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "LeaderChangedError";
  }
}

/** Plain-data form of an error, as it crosses a Worker boundary. */
export interface ErrorData {
  name: string;
  message: string;
  code?: string;
  extendedCode?: number;
}

/** Serializes an error for `postMessage`. */
export function errorToData(e: unknown): ErrorData {
  if (e instanceof Error) {
    const any = e as Error & { code?: unknown; extendedCode?: unknown };
    return {
      name: e.name,
      message: e.message,
      code: typeof any.code === "string" ? any.code : undefined,
      extendedCode: typeof any.extendedCode === "number" ? any.extendedCode : undefined,
    };
  }
  return { name: "HarmonyliteError", message: String(e) };
}

/** Turns an error thrown by the wasm module (or its plain-data form) into its class. */
export function toHarmonyliteError(e: unknown): Error {
  if (e instanceof HarmonyliteError) {
    return e;
  }
  const data = e instanceof Error || (typeof e === "object" && e !== null) ? (e as ErrorData) : undefined;
  const message = data?.message ?? String(e);
  const cause = e instanceof Error ? e : undefined;
  switch (data?.name) {
    case "InvalidArgumentError":
      return new InvalidArgumentError(message, { cause });
    case "SqliteError":
      return new SqliteError(message, data.code ?? "SQLITE_ERROR", data.extendedCode ?? 1, { cause });
    case "StorageError":
      return new StorageError(message, { cause });
    case "ReplicaClosedError":
      return new ReplicaClosedError(message, { cause });
    case "TimeoutError":
      return new TimeoutError(message, { cause });
    case "ConnectionError":
      return new ConnectionError(message, { cause });
    case "ReplicationError":
      return new ReplicationError(message, { cause });
    case "MigrationError":
      return new MigrationError(message, { cause });
    case "LeaderChangedError":
      return new LeaderChangedError(message, { cause });
    default:
      // Not ours (e.g. an exception thrown by a transaction callback): pass it through.
      return e instanceof Error ? e : new HarmonyliteError(message);
  }
}
