/** Public types of the harmonylite package. */

/** A value bound to a `?`/`:name` parameter. */
export type SqlValue = null | undefined | boolean | number | bigint | string | Uint8Array | ArrayBuffer;

/** Parameters: an array binds by position, an object by name (`:id`, `@id`, `$id` → `id`). */
export type SqlParams = readonly SqlValue[] | Readonly<Record<string, SqlValue>>;

/** A result row: column name → value (INTEGER beyond 2^53 comes back as `bigint`). */
export type Row = Record<string, null | number | bigint | string | Uint8Array>;

/** Where the database lives. */
export type Storage = "memory" | "opfs";

/** Options of {@link open}. */
export interface OpenOptions {
  /** Database name: the file name in OPFS, a label in memory. Required. */
  name: string;
  /**
   * `"memory"` (default; node, workerd, a browser page) or `"opfs"` (browsers; the database
   * and its outbox survive reloads; runs in a dedicated Worker, started for you when `open`
   * is called outside one).
   */
  storage?: Storage;
  /** NATS WebSocket URLs (`ws://host:port`, `wss://...`). None: the replica stays local. */
  servers?: string | string[];
  /** NATS user name (with `pass`). */
  user?: string;
  /** NATS password. */
  pass?: string;
  /** NATS token. For a scoped replica (`scoped: true`): the app's signed token (JWT) for this user. */
  token?: string;
  /**
   * A scoped replica: it holds and writes only the partitions its token grants, reads them
   * through a feed a full node creates for it, and takes the cluster's scope rules from that
   * node (kept in its database for offline starts). Needs `servers` and `token` or
   * `getToken`. See [security](../docs/security.md#scoped-clients).
   */
  scoped?: boolean;
  /** A scoped replica's fresh token, asked for before every connection and feed request (wins over `token`). */
  getToken?: () => string | Promise<string>;
  /** JetStream stream prefix; the stream is `${streamPrefix}-1` (default `harmonylite-changes`). */
  streamPrefix?: string;
  /** Subject prefix; changes go to `${subjectPrefix}.1` (default `harmonylite-change-log`). */
  subjectPrefix?: string;
  /** A fixed node id (hex). Default: the one stored in the database, else a random one. */
  nodeId?: string;
  /** Publish local writes (default true). `false`: local writes stay local. */
  publish?: boolean;
  /** Apply remote changes (default true). */
  replicate?: boolean;
  /** Tables never replicated. */
  excludeTables?: string[];
  /** Compression of published batches (default `"lz4"`). */
  compression?: "lz4" | "none";
  /** Look for uncaptured local writes at least this often (ms, default 10000; every `exec` asks for a capture at once). */
  pollingIntervalMs?: number;
  /** Most unacknowledged publishes in flight (default 512). */
  publishWindow?: number;
  /** Most stream messages applied per transaction (default 256). */
  applyBatch?: number;
  /** First reconnect delay (ms, default 250); doubles per failed attempt up to `reconnectMaxMs`. */
  reconnectMinMs?: number;
  /** Longest reconnect delay (ms, default 5000). */
  reconnectMaxMs?: number;
  /** Timeout of one publish (ms, default 5000). */
  publishTimeoutMs?: number;
  /** Stream retention in messages when this replica creates the stream (default 1,000,000). */
  streamMaxEntries?: number;
  /** Stream replicas when this replica creates the stream (default 1). */
  streamReplicas?: number;
  /**
   * Start an empty database from the newest snapshot in the object store (default true);
   * `false` replays the stream from its first message.
   */
  snapshots?: boolean;
  /** Object store bucket of snapshots (default `harmonylite-snapshots`, the sidecar's `[snapshot] nats_bucket`). */
  snapshotBucket?: string;
  /** Client name shown by the server (default `harmonylite-js-<node id>`). */
  clientName?: string;
  /** OPFS directory of the SyncAccessHandle pool (default `.harmonylite`). */
  opfsDirectory?: string;
  /**
   * Tables that merge by column instead of by row, and counter columns: the same lists as
   * the sidecars' `[merge]` section (every replica of a cluster must say the same). Absent:
   * each table merges as this database records (a table it does not know yet: by row). A
   * database that records another mode for a table is refused (`InvalidArgumentError`
   * naming the table): switch modes with {@link Replica.migrate}'s `{ merge }` form. See
   * [docs/js-api.md](../docs/js-api.md#column-merge).
   */
  merge?: MergeOptions;
}

/** {@link OpenOptions.merge}: which tables merge by column, and their counter columns. */
export interface MergeOptions {
  /**
   * Tables that merge by column: an UPDATE replicates only the columns it changed, and each
   * column keeps its latest write, so concurrent edits of different columns of a row both
   * survive. A DELETE hides every column write older than it.
   */
  column?: string[];
  /**
   * Counter columns as `"table.column"` (their tables merge by column too): every replica's
   * increments add up, so `UPDATE stock SET qty = qty - 1` on two replicas makes -2 everywhere.
   */
  counters?: string[];
}

/** How a table merges, in {@link Status.merge}. */
export interface TableMergeMode {
  /** `"row"`: the latest write of the row wins whole; `"column"`: each column's latest write wins. */
  mode: "row" | "column";
  /** Counter columns (mode `"column"` only). */
  counters: string[];
}

/**
 * A replicated switch of one table's merge mode, for {@link Replica.migrate}: every replica
 * switches at the same point of the change stream.
 */
export interface MergeSwitch {
  merge: {
    /** A replicated table. */
    table: string;
    /** The new mode. */
    mode: "row" | "column";
    /** Its counter columns (names of the table's columns; mode `"column"` only). */
    counters?: string[];
  };
}

/** Replication state, from {@link Replica.status} and the `status` event. */
export interface Status {
  /** Connected to NATS with the stream ready. */
  online: boolean;
  /** This replica's node id (hex). */
  nodeId: string;
  /** Outbox frames waiting for a JetStream ack. */
  outboxFrames: number;
  /** Row changes in those frames. */
  outboxRows: number;
  /** Last stream sequence applied. */
  cursor: number;
  /** Last stream sequence known to exist (0 until known). */
  streamLastSeq: number;
  /** Stream messages not applied yet (`streamLastSeq - cursor`, never negative). */
  lag: number;
  /** Messages that could not be applied and wait for a retry. */
  parked: number;
  /** The stream no longer holds messages this replica needs (see docs). */
  fellBehind: boolean;
  /**
   * Why this replica applies nothing from the change stream, or null: the stream was
   * deleted and created again, ends before this replica's cursor, or is missing (this
   * replica does not create a stream it has applied messages of). See {@link Replica.adoptStream}.
   */
  streamRefused: string | null;
  /** Version of the last replicated migration applied here (0: none). */
  migrationVersion: number;
  /** CRC-32 of the application's schema (8 hex digits); equal on two replicas = same schema. */
  schemaFingerprint: string;
  /** How each replicated table merges, by table name (as this database records it). */
  merge: Record<string, TableMergeMode>;
  /**
   * Only for an OPFS replica opened from a page (shared by the tabs of the origin): whether
   * this tab runs the database (`"leader"`: the Worker runs in this tab) or forwards its
   * calls to the tab that does (`"follower"`). Absent elsewhere.
   */
  tab?: "leader" | "follower";
  /** Only for a scoped replica (`scoped: true`): what its token grants, see {@link ScopeStatus}. */
  scopes?: ScopeStatus;
}

/** A scoped replica's scope, in {@link Status.scopes}. */
export interface ScopeStatus {
  /**
   * The partitions its token grants as a full node last named them (e.g. `"user.tu1"`: rule,
   * then each value as a subject token), or null before it first connected.
   */
  partitions: string[] | null;
  /** Refused rows waiting to be fetched again from a full node (see the `refused` event). */
  refetching: number;
}

/**
 * A write of a scoped replica that the cluster does not accept: a row of a partition its
 * token does not grant, a shared or hidden table, or a key the stream gave to another
 * partition. Nothing of it reached any other replica, and the local row returns to the
 * state the cluster accepted (it is removed, then fetched again if this replica may see it).
 */
export interface RefusedWrite {
  /** The table. */
  table: string;
  /** The row's primary-key values, in key order (as `query` returns values). */
  key: unknown[];
  /** Why it was refused. */
  reason: string;
}

/** The local schema, from {@link Replica.schemaStatus}. */
export interface SchemaStatus {
  /** CRC-32 of the application's schema (8 hex digits). */
  fingerprint: string;
  /** Version of the last replicated migration applied here (0: none). */
  migrationVersion: number;
  /** Migrations parked here (failed, or waiting behind one that failed). */
  parkedMigrations: number;
  /** Parked messages by the table they are about (`""`: about no single table). */
  parkedByTable: Record<string, number>;
}

/** Options of {@link Replica.discardParked}. */
export interface DiscardParkedOptions {
  /**
   * Discard even when the table exists here (its parked changes then wait for a column or a
   * primary key this replica lacks, and are lost). Default false: refused.
   */
  force?: boolean;
}

/** Options of {@link Replica.migrate}. */
export interface MigrateOptions extends WaitOptions {
  /** Allow destructive statements: `DROP TABLE`, `ALTER TABLE … DROP COLUMN` (default false). */
  allowDestructive?: boolean;
}

/** What {@link Replica.migrate} did. */
export interface MigrationResult {
  /** The migration's id (hex). */
  id: string;
  /** The version it was applied under here (the same on every replica). */
  version: number;
  /** Statements it holds. */
  statements: number;
  /** Whether it holds destructive statements. */
  destructive: boolean;
}

/** What {@link Replica.exec} did. */
export interface ExecResult {
  /** Rows changed by the last INSERT/UPDATE/DELETE statements run (summed). */
  changes: number;
  /** `last_insert_rowid()` afterwards. */
  lastInsertRowid: number | bigint;
}

/** A notification to {@link Replica.subscribe}rs. */
export interface ChangeEvent {
  /** Tables whose rows changed. */
  tables: string[];
  /** `"local"`: this replica's writes were captured; `"remote"`: changes from others applied. */
  origin: "local" | "remote";
}

/** Options of {@link Replica.subscribe}. */
export interface SubscribeOptions {
  /** Only changes to these tables (case-insensitive). Default: every table. */
  tables?: string[];
}

/** Options of {@link Replica.flush} and {@link Replica.sync}. */
export interface WaitOptions {
  /** Reject with `TimeoutError` after this many milliseconds (default: wait forever). */
  timeoutMs?: number;
}

/** Options of {@link Replica.close}. */
export interface CloseOptions {
  /** When online, wait up to this long for the outbox to be acknowledged (ms, default 2000). */
  flushTimeoutMs?: number;
}

/** SQL access inside {@link Replica.transaction}. */
export interface Transaction {
  /** Runs SQL inside the transaction. */
  exec(sql: string, params?: SqlParams): Promise<ExecResult>;
  /** Runs a query inside the transaction. */
  query<T extends Row = Row>(sql: string, params?: SqlParams): Promise<T[]>;
}

/** Events of {@link Replica.on}. */
export interface ReplicaEvents {
  /** Online state, outbox depth, cursor or lag changed. */
  status: Status;
  /** Something went wrong in the background (connection, parked message, database retry). */
  error: Error;
  /** A scoped replica's write was refused (one event per row); see {@link RefusedWrite}. */
  refused: RefusedWrite;
}

/** A local SQLite replica that replicates through NATS JetStream. */
export interface Replica {
  /** Runs SQL (several statements when there are no params). */
  exec(sql: string, params?: SqlParams): Promise<ExecResult>;
  /** Runs one query and returns its rows as plain objects. */
  query<T extends Row = Row>(sql: string, params?: SqlParams): Promise<T[]>;
  /**
   * Runs `fn` inside `BEGIN IMMEDIATE` ... `COMMIT` (`ROLLBACK` if it throws). Use the `tx`
   * argument for SQL inside; calls on the replica itself wait until the transaction ends.
   */
  transaction<T>(fn: (tx: Transaction) => Promise<T> | T): Promise<T>;
  /** Calls `cb` after local writes are captured and after remote changes are applied. */
  subscribe(cb: (event: ChangeEvent) => void, options?: SubscribeOptions): () => void;
  /** Current replication state. */
  status(): Promise<Status>;
  /** Listens to `status`, `error` or `refused` events; returns the unsubscribe function. */
  on<K extends keyof ReplicaEvents>(event: K, cb: (value: ReplicaEvents[K]) => void): () => void;
  /** Resolves when every local write made so far is acknowledged by JetStream. */
  flush(options?: WaitOptions): Promise<void>;
  /** Resolves when everything in the stream as of the call has been applied here. */
  sync(options?: WaitOptions): Promise<void>;
  /**
   * Publishes `sql` as a replicated schema migration: every replica applies it exactly
   * once, in stream order. Checked and tried here first (`MigrationError` if refused);
   * resolves once this replica applied it. Needs `servers`.
   *
   * `{ merge: { table, mode, counters } }` instead of SQL switches how a table merges
   * (`"column"` with its counter columns, or `"row"`), as a replicated migration: every
   * replica switches at the same point of the stream. Refused (`MigrationError`) when the
   * table is not replicated here or a counter is not one of its columns.
   */
  migrate(sql: string | MergeSwitch, options?: MigrateOptions): Promise<MigrationResult>;
  /** The local schema fingerprint, migration version and parked messages by table. */
  schemaStatus(): Promise<SchemaStatus>;
  /**
   * Discards the parked changes for `table` (one dropped on purpose, whose parked changes
   * would otherwise wait forever) in one transaction; resolves with how many parked messages
   * held changes for it. Refused (`InvalidArgumentError`) when the table exists here unless
   * `force`, and for a name that is neither a table here nor has anything parked. Discarded
   * changes never come back, even if the table is created later.
   */
  discardParked(table: string, options?: DiscardParkedOptions): Promise<number>;
  /**
   * Applies the change stream from its first message from now on, whatever stream that is:
   * for a stream deleted and created again on purpose, which this replica refuses
   * (`status().streamRefused`). Resolves with the cursor given up. Local writes not yet
   * acknowledged are kept and published to the new stream; changes already here are
   * applied again, harmlessly (last-writer-wins). Refused (`InvalidArgumentError`) while
   * the replica is consuming its stream.
   */
  adoptStream(): Promise<number>;
  /** Stops replicating and closes the database. */
  close(options?: CloseOptions): Promise<void>;
}
