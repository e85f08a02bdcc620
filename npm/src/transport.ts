/**
 * NATS over WebSocket, and nothing else: the connection (kept forever, with exponential
 * backoff), making sure the change-log stream exists, reading the stream's state when
 * asked, one ordered consumer from the sequence asked, publishing with `Nats-Msg-Id`, and
 * downloading a snapshot from the object store. Stream and subject names are the sidecar's:
 * `${streamPrefix}-1` and `${subjectPrefix}.1`.
 *
 * The transport decides nothing about replication. Which stream may be consumed, from which
 * sequence, whether a missing stream may be created, gaps, falling behind, when to look at
 * the stream again and when to pause delivery are the replication session's (the wasm
 * module, `core/src/session.rs`): the transport reports what happened to its
 * {@link TransportHooks}, the replica feeds those reports to the session and calls the
 * transport to carry out what the session asks.
 */

import { wsconnect, nanos, tokenAuthenticator } from "@nats-io/nats-core";
import type { NatsConnection, WsSocketFactory } from "@nats-io/nats-core";
import {
  jetstream,
  jetstreamManager,
  DeliverPolicy,
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import type { ConsumerMessages, JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import { Objm } from "@nats-io/obj";

import { ConnectionError, ReplicationError } from "./errors.js";
import { ScopedFeed, tokenSubject } from "./feed.js";

/** Creates WebSocket connections (node passes one built on the `ws` package). */
export type WsFactory = WsSocketFactory;

/** Settings of a {@link Transport}. */
export interface TransportOptions {
  servers: string[];
  user?: string;
  pass?: string;
  token?: string;
  name: string;
  stream: string;
  /** The unscoped subject, `${subjectPrefix}.1`. */
  subject: string;
  /** The subject prefix: frames with a subject of their own go to `${subjectPrefix}.${subject}`. */
  subjectPrefix: string;
  /** A scoped replica (null: a full one): see {@link ScopedOptions}. */
  scoped: ScopedOptions | null;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  publishTimeoutMs: number;
  streamMaxEntries: number;
  streamReplicas: number;
  /** Object store bucket of snapshots (the sidecar's `[snapshot] nats_bucket`); null: none. */
  snapshotBucket: string | null;
  wsFactory?: WsFactory;
}

/**
 * A scoped replica connects with the app's token (its NATS token) and its own inbox
 * prefix, reads through a feed a full node creates for it, and publishes only on its
 * partitions' subjects (NATS refuses the rest).
 */
export interface ScopedOptions {
  /** The app's token for this user, fresh: called before every connection and feed request. */
  getToken: () => string | Promise<string>;
  /** This replica's node id (hex): names its feed. */
  replica: string;
  /** The inbox prefix of user `sub` (core's `Subjects::client_inbox_prefix`). */
  inboxPrefix: (sub: string) => string;
  /** Where user `sub`'s feed for `replica` delivers (core's `Subjects::feed_deliver_subject`). */
  deliverSubject: (sub: string, replica: string) => string;
  /** The feed's idle heartbeat as the full node sets it (ms); silence for three is a failure. */
  heartbeatMs: number;
  /** How long a feed request may take (ms). */
  requestTimeoutMs: number;
}

/** What the transport reports. */
export interface TransportHooks {
  /** Connected with the stream ready; `maxPayload` is the server's payload limit. */
  connected(maxPayload: number): void;
  /** The connection is gone (the transport keeps reconnecting); any consumer is stopped. */
  disconnected(): void;
  /**
   * The stream does not exist: why this replica must not create it, or null to create it
   * (the session decides). While refused, the connection's set-up is retried with backoff
   * and asks again; {@link Transport.retryNow} asks at once.
   */
  refuseToCreateStream(): string | null;
  /** The consumer asked for by {@link Transport.startConsumer} runs. */
  consumerStarted(): void;
  /** Starting the consumer failed, or the running one failed. */
  consumerFailed(error: unknown): void;
  /** The running consumer ended without an error. */
  consumerEnded(): void;
  /**
   * The running consumer's next message; `pending` is how many the stream holds after it.
   * A returned promise pauses delivery until it settles.
   */
  message(seq: number, pending: number, frame: Uint8Array, subject: string): void | Promise<void>;
  /**
   * A scoped replica's feed brought the cluster's scope rules (their data form) and the
   * partitions its token grants (absent from nodes older than that field).
   */
  scopeRules(rules: unknown, partitions: string[] | undefined): void;
  /** JetStream stored outbox frame `id`. */
  acked(id: number): void;
  /** Publishing outbox frame `id` failed. */
  publishFailed(id: number, error: unknown): void;
  /** A background failure worth reporting. */
  error(e: Error): void;
}

/** One refused row a scoped replica asks for again (`key` is opaque, from the wasm core). */
export interface RefetchKey {
  table: string;
  key: string;
}

/** The stream's bounds and identity, as read from the server. */
export interface StreamState {
  /** First sequence the stream still holds. */
  firstSeq: number;
  /** Last sequence stored. */
  lastSeq: number;
  /** Creation time, Unix nanoseconds (beyond 2^53: a bigint). */
  createdNs: bigint;
}

/** A snapshot object from the snapshot bucket. */
export interface SnapshotObject {
  name: string;
  bytes: Uint8Array;
}

/** An RFC 3339 time as JetStream reports it (`2026-11-26T19:14:10.123456789Z`) in Unix nanoseconds. */
export function unixNanos(rfc3339: string): bigint {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?\d*(Z|[+-]\d\d:\d\d)$/.exec(rfc3339);
  const ms = m ? Date.parse(m[1] + m[3]) : NaN;
  if (!m || Number.isNaN(ms)) {
    throw new ReplicationError(`the stream's creation time ${JSON.stringify(rfc3339)} is not an RFC 3339 time`);
  }
  return BigInt(ms) * 1_000_000n + BigInt((m[2] ?? "").padEnd(9, "0"));
}

/** Sleeps that `close()` can cut short. */
class Sleeper {
  #wakers = new Set<() => void>();

  sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#wakers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.#wakers.add(wake);
    });
  }

  wakeAll(): void {
    for (const wake of [...this.#wakers]) {
      wake();
    }
  }
}

/** One NATS connection for one replica. */
export class Transport {
  #options: TransportOptions;
  #hooks: TransportHooks;
  #nc: NatsConnection | null = null;
  #js: JetStreamClient | null = null;
  #jsm: JetStreamManager | null = null;
  #online = false;
  #closing = false;
  #failures = 0;
  #generation = 0;
  /** Id of the consumer whose reports count (0: none); a stopped one's are dropped. */
  #consumer = 0;
  #consumers = 0;
  #messages: ConsumerMessages | null = null;
  #onlineWaiters: Array<() => void> = [];
  #sleeper = new Sleeper();
  #running: Promise<void> | null = null;
  /** A scoped replica's latest token and feed (with the sequence it was asked from). */
  #token = "";
  #feed: ScopedFeed | null = null;
  #feedFrom = 0;

  constructor(options: TransportOptions, hooks: TransportHooks) {
    this.#options = options;
    this.#hooks = hooks;
  }

  /** Whether connected with the stream ready. */
  get online(): boolean {
    return this.#online;
  }

  /** Starts connecting in the background. */
  start(): void {
    this.#running ??= this.#run();
  }

  #backoff(): number {
    const { reconnectMinMs, reconnectMaxMs } = this.#options;
    const delay = Math.min(reconnectMaxMs, reconnectMinMs * 2 ** Math.min(this.#failures, 16));
    this.#failures += 1;
    // Up to 20% jitter so many replicas do not reconnect in lockstep.
    return delay * (0.8 + Math.random() * 0.2);
  }

  async #run(): Promise<void> {
    while (!this.#closing) {
      let nc: NatsConnection;
      try {
        const scoped = this.#options.scoped;
        let inboxPrefix: string | undefined;
        if (scoped) {
          this.#token = await scoped.getToken();
          inboxPrefix = scoped.inboxPrefix(tokenSubject(this.#token));
        }
        nc = await wsconnect({
          servers: this.#options.servers,
          user: this.#options.user,
          pass: this.#options.pass,
          ...(scoped
            ? { authenticator: tokenAuthenticator(() => this.#token), inboxPrefix }
            : { token: this.#options.token }),
          name: this.#options.name,
          reconnect: true,
          maxReconnectAttempts: -1,
          reconnectDelayHandler: () => this.#backoff(),
          wsFactory: this.#options.wsFactory,
          timeout: 5000,
        });
      } catch (e) {
        if (this.#failures === 0) {
          this.#hooks.error(new ConnectionError(`cannot connect to NATS at ${this.#options.servers.join(", ")}: ${String(e)}; retrying`, { cause: e }));
        }
        await this.#sleeper.sleep(this.#backoff());
        continue;
      }
      if (this.#closing) {
        await nc.close().catch(() => {});
        break;
      }
      this.#nc = nc;
      this.#failures = 0;
      const statusWatch = this.#watchStatus(nc);
      this.#setUp(nc);
      const closed = await nc.closed();
      await statusWatch.catch(() => {});
      this.#goOffline();
      this.#nc = null;
      if (closed && !this.#closing) {
        this.#hooks.error(new ConnectionError(`NATS connection closed: ${String(closed)}; reconnecting`, { cause: closed }));
        await this.#sleeper.sleep(this.#backoff());
      }
    }
  }

  async #watchStatus(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      switch (s.type) {
        case "disconnect":
          this.#goOffline();
          // A scoped replica reconnects with a fresh token (the old one may be why).
          if (this.#options.scoped) {
            void Promise.resolve(this.#options.scoped.getToken()).then(
              (token) => (this.#token = token),
              (e: unknown) => this.#hooks.error(new ConnectionError(`getToken() failed: ${String(e)}`, { cause: e })),
            );
          }
          break;
        case "reconnect":
          this.#failures = 0;
          this.#setUp(nc);
          break;
        default:
          break;
      }
    }
  }

  #goOffline(): void {
    this.#generation += 1;
    this.stopConsumer();
    this.#js = null;
    this.#jsm = null;
    if (this.#online) {
      this.#online = false;
      this.#hooks.disconnected();
    }
  }

  /** Makes the stream ready; retried while the connection is up. */
  #setUp(nc: NatsConnection): void {
    const generation = ++this.#generation;
    void (async () => {
      let attempt = 0;
      while (generation === this.#generation && !this.#closing && !nc.isClosed()) {
        try {
          // A scoped replica may not use the JetStream API: it neither checks nor creates
          // the stream (full nodes do), and reads it through its feed.
          const jsm = this.#options.scoped ? null : await jetstreamManager(nc, { timeout: 5000 });
          if (jsm) {
            await this.#ensureStream(jsm);
          }
          if (generation !== this.#generation) {
            return;
          }
          this.#jsm = jsm;
          this.#js = jetstream(nc, { timeout: this.#options.publishTimeoutMs });
          this.#online = true;
          this.#hooks.connected(nc.info?.max_payload ?? 1024 * 1024);
          for (const wake of this.#onlineWaiters.splice(0)) {
            wake();
          }
          return;
        } catch (e) {
          // A refusal to create the stream (ReplicationError) is the session's to report.
          if (attempt === 0 && !(e instanceof ReplicationError)) {
            this.#hooks.error(new ConnectionError(`stream ${this.#options.stream} not ready: ${String(e)}; retrying`, { cause: e }));
          }
          attempt += 1;
          await this.#sleeper.sleep(Math.min(this.#options.reconnectMaxMs, this.#options.reconnectMinMs * 2 ** Math.min(attempt, 16)));
        }
      }
    })();
  }

  async #ensureStream(jsm: JetStreamManager): Promise<void> {
    const { stream, subject } = this.#options;
    try {
      await jsm.streams.info(stream);
      return;
    } catch (e) {
      if (!/not found/i.test(String(e))) {
        throw e;
      }
    }
    const refused = this.#hooks.refuseToCreateStream();
    if (refused !== null) {
      throw new ReplicationError(refused);
    }
    try {
      await jsm.streams.add({
        name: stream,
        subjects: [subject],
        max_msgs: this.#options.streamMaxEntries,
        discard: DiscardPolicy.Old,
        retention: RetentionPolicy.Limits,
        storage: StorageType.File,
        num_replicas: this.#options.streamReplicas,
        duplicate_window: nanos(120_000),
        allow_direct: true,
      });
    } catch (e) {
      // Another node created it at the same moment.
      await jsm.streams.info(stream);
    }
  }

  /**
   * Reads the stream's bounds and creation time (rejects while offline). A scoped replica
   * asks for its feed from `from` here (the answer carries the bounds), and the feed
   * delivers once {@link Transport.startConsumer} asks for the same sequence.
   */
  async readStreamInfo(from = 1): Promise<StreamState> {
    if (this.#options.scoped) {
      return this.#requestFeed(from);
    }
    const jsm = this.#jsm;
    if (!jsm || !this.#online) {
      throw new ConnectionError("offline");
    }
    const info = await jsm.streams.info(this.#options.stream);
    return { firstSeq: info.state.first_seq, lastSeq: info.state.last_seq, createdNs: unixNanos(info.created) };
  }

  /**
   * Starts an ordered consumer delivering from stream sequence `from` (stopping any other);
   * reports `consumerStarted`, then each message, then `consumerEnded` or `consumerFailed`.
   */
  startConsumer(from: number): void {
    if (this.#options.scoped) {
      void this.#startFeed(from);
      return;
    }
    this.stopConsumer();
    const id = ++this.#consumers;
    this.#consumer = id;
    void this.#consume(id, from);
  }

  /** A scoped replica's feed from `from`: subscribed first, then asked of a full node. */
  async #requestFeed(from: number): Promise<StreamState> {
    const scoped = this.#options.scoped!;
    const nc = this.#nc;
    if (!nc || !this.#online) {
      throw new ConnectionError("offline");
    }
    this.stopConsumer();
    this.#token = await scoped.getToken();
    const sub = tokenSubject(this.#token);
    const feed: ScopedFeed = new ScopedFeed(nc, scoped.deliverSubject(sub, scoped.replica), this.#options.subjectPrefix, {
      message: (seq, pending, frame, subject): void | Promise<void> =>
        this.#feed === feed ? this.#hooks.message(seq, pending, frame, subject) : undefined,
      failed: (e) => {
        if (this.#feed === feed && !this.#closing) {
          this.#feed = null;
          this.#hooks.consumerFailed(e);
        }
      },
    });
    this.#feed = feed;
    this.#feedFrom = from;
    try {
      const started = await feed.request(`${this.#options.subjectPrefix}.scope.feed`, this.#token, scoped.replica, from, scoped.requestTimeoutMs);
      if (started.rules !== undefined) {
        this.#hooks.scopeRules(started.rules, started.partitions);
      }
      return { firstSeq: started.first_seq, lastSeq: started.last_seq, createdNs: BigInt(started.created_ns) };
    } catch (e) {
      if (this.#feed === feed) {
        feed.stop();
        this.#feed = null;
      }
      throw e;
    }
  }

  async #startFeed(from: number): Promise<void> {
    try {
      if (!this.#feed || this.#feedFrom !== from) {
        await this.#requestFeed(from);
      }
      const feed = this.#feed;
      if (!feed) {
        throw new ConnectionError("offline");
      }
      this.#hooks.consumerStarted();
      feed.deliver(this.#options.scoped!.heartbeatMs);
    } catch (e) {
      if (!this.#closing) {
        this.#hooks.consumerFailed(e);
      }
    }
  }

  async #consume(id: number, from: number): Promise<void> {
    try {
      const js = this.#js;
      if (!js || !this.#online) {
        throw new ConnectionError("offline");
      }
      const consumer = await js.consumers.get(this.#options.stream, {
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: from,
      });
      if (id !== this.#consumer) {
        return;
      }
      // Pulls expire after 4 s with a heartbeat every 2 s (the library's default: 30 s and
      // 15 s): an ordered consumer whose stream peer went away with a stopped or killed
      // server misses two heartbeats and is recreated within seconds instead of half a
      // minute, as the sidecar's consumer is.
      const messages = await consumer.consume({ max_messages: 1024, expires: 4000, idle_heartbeat: 2000 });
      if (id !== this.#consumer) {
        void Promise.resolve(messages.close()).catch(() => {});
        return;
      }
      this.#messages = messages;
      this.#hooks.consumerStarted();
      for await (const m of messages) {
        if (id !== this.#consumer || this.#closing) {
          break;
        }
        const prefix = `${this.#options.subjectPrefix}.`;
        const subject = m.subject.startsWith(prefix) ? m.subject.slice(prefix.length) : m.subject;
        const wait = this.#hooks.message(m.seq, m.info.pending, m.data, subject);
        if (wait) {
          await wait;
        }
      }
      if (id === this.#consumer && !this.#closing) {
        this.stopConsumer();
        this.#hooks.consumerEnded();
      }
    } catch (e) {
      if (id === this.#consumer && !this.#closing) {
        this.stopConsumer();
        this.#hooks.consumerFailed(e);
      }
    }
  }

  /** Stops the running consumer; what it still delivers is dropped. */
  stopConsumer(): void {
    this.#feed?.stop();
    this.#feed = null;
    this.#consumer = 0;
    const messages = this.#messages;
    this.#messages = null;
    if (messages) {
      void Promise.resolve(messages.close()).catch(() => {});
    }
  }

  /**
   * The newest complete snapshot of this stream in the snapshot bucket, if any (null also
   * without a bucket); rejects while offline.
   */
  async newestSnapshot(): Promise<SnapshotObject | null> {
    const bucket = this.#options.snapshotBucket;
    // A scoped replica never reads the whole database's snapshots.
    if (bucket === null || this.#options.scoped) {
      return null;
    }
    const nc = this.#nc;
    const jsm = this.#jsm;
    if (!nc || !jsm || !this.#online) {
      throw new ConnectionError("offline");
    }
    try {
      await jsm.streams.info(`OBJ_${bucket}`);
    } catch (e) {
      if (/not found/i.test(String(e))) {
        return null;
      }
      throw e;
    }
    const store = await new Objm(nc).open(bucket);
    const prefix = `${this.#options.stream}/`;
    // Names sort by the sequence they cover: <stream>/<covered, 20 digits>-<ms>-<node>.hlsnap
    const names = (await store.list())
      .filter((o) => !o.deleted && o.name.startsWith(prefix) && o.name.endsWith(".hlsnap"))
      .map((o) => o.name)
      .sort();
    const name = names.at(-1);
    if (!name) {
      return null;
    }
    const result = await store.get(name);
    if (!result) {
      return null;
    }
    const chunks: Uint8Array[] = [];
    let size = 0;
    const reader = result.data.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        break;
      }
      chunks.push(value);
      size += value.length;
    }
    const error = await result.error;
    if (error) {
      throw error;
    }
    const bytes = new Uint8Array(size);
    let at = 0;
    for (const c of chunks) {
      bytes.set(c, at);
      at += c.length;
    }
    return { name, bytes };
  }

  /** Publishes one outbox frame; the outcome arrives as `acked` or `publishFailed`. */
  publish(id: number, msgId: string, frame: Uint8Array, subject: string | null = null): void {
    const js = this.#js;
    if (!js || !this.#online) {
      queueMicrotask(() => this.#hooks.publishFailed(id, new ConnectionError("offline")));
      return;
    }
    const to = subject === null ? this.#options.subject : `${this.#options.subjectPrefix}.${subject}`;
    const timeout = this.#options.publishTimeoutMs;
    js.publish(to, frame, { msgID: msgId, timeout })
      .then(async (ack) => {
        // De-duplication is by message id across the whole stream, and other clients can
        // read ids: a "duplicate" may be someone else's message under this frame's id. The
        // frame goes out again under a fresh id (harmless when it was ours: applying a
        // frame twice changes nothing).
        if (ack.duplicate) {
          const fresh = `${msgId}-r${Math.floor(Math.random() * 2 ** 48).toString(16)}`;
          await js.publish(to, frame, { msgID: fresh, timeout });
        }
      })
      .then(
        () => this.#hooks.acked(id),
        (e: unknown) => this.#hooks.publishFailed(id, e),
      );
  }

  /**
   * A scoped replica's bootstrap: asks any full node for one page of its partitions
   * (`after`: the previous page's `next`) and returns the raw answer (a postcard
   * `BootstrapReply` the wasm replica imports).
   */
  async bootstrapPage(after: string | null): Promise<Uint8Array> {
    const scoped = this.#options.scoped;
    const nc = this.#nc;
    if (!scoped || !nc || !this.#online) {
      throw new ConnectionError("offline");
    }
    this.#token = await scoped.getToken();
    const body = JSON.stringify(after === null ? { token: this.#token } : { token: this.#token, after });
    const reply = await nc.request(`${this.#options.subjectPrefix}.scope.bootstrap`, body, { timeout: scoped.requestTimeoutMs * 4 });
    return reply.data;
  }

  /**
   * A scoped replica asks any full node for the current versions of refused rows (the
   * bootstrap service with `keys`); resolves with the postcard `BootstrapReply`.
   */
  async refetch(keys: RefetchKey[]): Promise<Uint8Array> {
    const scoped = this.#options.scoped;
    const nc = this.#nc;
    if (!scoped || !nc || !this.#online) {
      throw new ConnectionError("offline");
    }
    this.#token = await scoped.getToken();
    const body = JSON.stringify({ token: this.#token, keys });
    const reply = await nc.request(`${this.#options.subjectPrefix}.scope.bootstrap`, body, { timeout: scoped.requestTimeoutMs * 4 });
    return reply.data;
  }

  /** Resolves once online. */
  whenOnline(): Promise<void> {
    if (this.#online) {
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#onlineWaiters.push(resolve));
  }

  /** The stream's last sequence, asked from the server (waits until online). */
  async streamLastSeq(): Promise<number> {
    for (;;) {
      await this.whenOnline();
      const jsm = this.#jsm;
      if (!jsm) {
        continue;
      }
      try {
        const info = await jsm.streams.info(this.#options.stream);
        return info.state.last_seq;
      } catch (e) {
        if (this.#closing) {
          throw e;
        }
        await this.#sleeper.sleep(this.#options.reconnectMinMs);
      }
    }
  }

  /** Retries a waiting connection set-up (a stream it was refused to create) now. */
  retryNow(): void {
    this.#sleeper.wakeAll();
  }

  /** Closes the connection for good. */
  async close(): Promise<void> {
    this.#closing = true;
    this.#sleeper.wakeAll();
    this.#goOffline();
    const nc = this.#nc;
    if (nc) {
      await nc.close().catch(() => {});
    }
    await this.#running?.catch(() => {});
  }
}
