/**
 * NATS over WebSocket: the connection (kept forever, with exponential backoff), the
 * change-log stream, ordered consumption from the replica's cursor and publishing with
 * `Nats-Msg-Id`. Stream and subject names are the sidecar's: `${streamPrefix}-1` and
 * `${subjectPrefix}.1`.
 *
 * The transport decides nothing about replication; it reports to its {@link TransportHooks}
 * and the replica feeds those reports to the engine.
 */

import { wsconnect, nanos } from "@nats-io/nats-core";
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
  subject: string;
  replicate: boolean;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  publishTimeoutMs: number;
  streamMaxEntries: number;
  streamReplicas: number;
  /** Object store bucket of snapshots (the sidecar's `[snapshot] nats_bucket`); null: none. */
  snapshotBucket: string | null;
  wsFactory?: WsFactory;
}

/** What the transport reports. */
export interface TransportHooks {
  /** Connected with the stream ready; `maxPayload` is the server's payload limit. */
  connected(maxPayload: number): void;
  /** The connection is gone (the transport keeps reconnecting). */
  disconnected(): void;
  /** The next stream message; the returned promise (if any) pauses consumption. */
  message(seq: number, frame: Uint8Array, streamLastSeq: number): void | Promise<void>;
  /** JetStream stored outbox frame `id`. */
  acked(id: number): void;
  /** Publishing outbox frame `id` failed. */
  publishFailed(id: number, error: unknown): void;
  /** The last stream sequence learned from the server. */
  streamLastSeq(seq: number): void;
  /** The stream no longer holds messages after `cursor` that this replica has not applied. */
  fellBehind(first: number, last: number): void;
  /**
   * Checks that the stream (created at `createdNs`, Unix nanoseconds) is the one the
   * replica's cursor counts in; resolves with why not, or null. Nothing is consumed while
   * it refuses; the check is repeated every 30 s and after {@link Transport.recheck}.
   */
  checkStream(createdNs: bigint, lastSeq: number): Promise<string | null>;
  /**
   * Why nothing is consumed (the stream is not the one the cursor counts in, or it is
   * missing and this replica will not create it), or null once a consumer runs.
   */
  streamRefused(reason: string | null): void;
  /** Where to consume from: the engine's cursor. */
  cursor(): number;
  /** Whether the database is empty, so it may start from a snapshot. */
  wantsSnapshot(): boolean;
  /** Adopts a snapshot (a `.hlsnap` object); `streamLastSeq` is the stream's last sequence. */
  restore(snapshot: Uint8Array, name: string, streamLastSeq: number): Promise<void>;
  /** A background failure worth reporting. */
  error(e: Error): void;
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
  #messages: ConsumerMessages | null = null;
  #onlineWaiters: Array<() => void> = [];
  #sleeper = new Sleeper();
  #running: Promise<void> | null = null;

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
        nc = await wsconnect({
          servers: this.#options.servers,
          user: this.#options.user,
          pass: this.#options.pass,
          token: this.#options.token,
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
    this.#stopConsumer();
    this.#js = null;
    this.#jsm = null;
    if (this.#online) {
      this.#online = false;
      this.#hooks.disconnected();
    }
  }

  /** Makes the stream ready and starts consuming; retried while the connection is up. */
  #setUp(nc: NatsConnection): void {
    const generation = ++this.#generation;
    void (async () => {
      let attempt = 0;
      while (generation === this.#generation && !this.#closing && !nc.isClosed()) {
        try {
          const jsm = await jetstreamManager(nc, { timeout: 5000 });
          await this.#ensureStream(jsm);
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
          if (this.#options.replicate) {
            void this.#consumeLoop(generation);
          }
          return;
        } catch (e) {
          // A refusal (ReplicationError) was reported through streamRefused already.
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
    const cursor = this.#hooks.cursor();
    if (cursor > 0) {
      // A new, empty stream starts at sequence 1: every replica would skip its first
      // `cursor` messages.
      const reason =
        `the change stream ${stream} does not exist, but this replica has applied its messages up to ${cursor}: ` +
        "JetStream lost it or it was deleted. Not creating a new, empty one, whose first messages every replica " +
        "would skip. If a new stream is intended, call adoptStream() (docs/js-api.md)";
      this.#hooks.streamRefused(reason);
      throw new ReplicationError(reason);
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

  #stopConsumer(): void {
    const messages = this.#messages;
    this.#messages = null;
    if (messages) {
      void Promise.resolve(messages.close()).catch(() => {});
    }
  }

  /** Consumes from the cursor; recreated after gaps, failures and reconnects. */
  async #consumeLoop(generation: number): Promise<void> {
    while (generation === this.#generation && !this.#closing) {
      const js = this.#js;
      const jsm = this.#jsm;
      if (!js || !jsm) {
        return;
      }
      let retryIn = 0;
      try {
        const info = await jsm.streams.info(this.#options.stream);
        const { first_seq: first, last_seq: last } = info.state;
        if (last > 0 && this.#options.snapshotBucket !== null && this.#hooks.wantsSnapshot()) {
          const snapshot = await this.#newestSnapshot(jsm);
          if (snapshot && generation === this.#generation) {
            await this.#hooks.restore(snapshot.bytes, snapshot.name, last);
          }
        }
        const refused = await this.#hooks.checkStream(unixNanos(info.created), last);
        if (generation !== this.#generation) {
          return;
        }
        if (refused === null) {
          // Another stream's sequence numbers mean nothing to this replica's status.
          this.#hooks.streamLastSeq(last);
        }
        const start = this.#hooks.cursor() + 1;
        if (refused !== null) {
          this.#hooks.streamRefused(refused);
          retryIn = 30_000;
        } else if (last >= first && first > start) {
          this.#hooks.fellBehind(first, last);
          retryIn = 30_000;
        } else {
          const consumer = await js.consumers.get(this.#options.stream, {
            deliver_policy: DeliverPolicy.StartSequence,
            opt_start_seq: start,
          });
          if (generation !== this.#generation) {
            return;
          }
          const messages = await consumer.consume({ max_messages: 1024 });
          this.#messages = messages;
          this.#hooks.streamRefused(null);
          let expected = start;
          let gap = false;
          for await (const m of messages) {
            if (generation !== this.#generation || this.#closing) {
              break;
            }
            const seq = m.seq;
            if (seq < expected) {
              continue;
            }
            if (seq > expected) {
              gap = true;
              break;
            }
            expected = seq + 1;
            const pending = m.info.pending;
            const wait = this.#hooks.message(seq, m.data, seq + pending);
            if (wait) {
              await wait;
            }
          }
          if (this.#messages === messages) {
            this.#stopConsumer();
          }
          retryIn = gap ? 0 : 1000;
        }
      } catch (e) {
        if (generation !== this.#generation || this.#closing) {
          return;
        }
        this.#hooks.error(new ConnectionError(`stream consumer failed: ${String(e)}; recreating it`, { cause: e }));
        retryIn = 1000;
      }
      if (retryIn > 0) {
        await this.#sleeper.sleep(retryIn);
      }
    }
  }

  /** The newest complete snapshot of this stream in the snapshot bucket, if any. */
  async #newestSnapshot(jsm: JetStreamManager): Promise<{ name: string; bytes: Uint8Array } | null> {
    const bucket = this.#options.snapshotBucket!;
    const nc = this.#nc;
    if (!nc) {
      return null;
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
  publish(id: number, msgId: string, frame: Uint8Array): void {
    const js = this.#js;
    if (!js || !this.#online) {
      queueMicrotask(() => this.#hooks.publishFailed(id, new ConnectionError("offline")));
      return;
    }
    js.publish(this.#options.subject, frame, { msgID: msgId, timeout: this.#options.publishTimeoutMs }).then(
      () => this.#hooks.acked(id),
      (e: unknown) => this.#hooks.publishFailed(id, e),
    );
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
        this.#hooks.streamLastSeq(info.state.last_seq);
        return info.state.last_seq;
      } catch (e) {
        if (this.#closing) {
          throw e;
        }
        await this.#sleeper.sleep(this.#options.reconnectMinMs);
      }
    }
  }

  /** Whether a stream consumer is running (messages may be on their way). */
  get consuming(): boolean {
    return this.#messages !== null;
  }

  /** Sets the stream up and checks it again now, not at the next retry. */
  recheck(): void {
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
