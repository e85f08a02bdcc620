/**
 * A scoped replica's feed: the change stream filtered to what its token lets it read,
 * delivered by a push consumer that a full node creates on request (`<prefix>.scope.feed`,
 * see `core/src/scope.rs` `FeedRequest`/`FeedReply`) into this client's own inbox
 * namespace. A scoped client may not create or pull consumers itself: JetStream delivers a
 * pull's messages to whatever reply subject the puller names.
 *
 * The feed reports each delivery with its stream sequence, the consumer's `pending` count
 * and the subject it was published on; a delivery missing from the consumer's own sequence
 * (or a feed silent for longer than three heartbeats) is a failure, and the session starts
 * a new feed from its cursor.
 */

import type { NatsConnection, Msg, Subscription } from "@nats-io/nats-core";

import { ReplicationError } from "./errors.js";

/**
 * The feed's consumer was replaced by another full node's answer to the same replica: not
 * a problem to report; the replica starts a new feed from its cursor.
 */
export class FeedReplacedError extends ReplicationError {
  constructor() {
    super("the feed was replaced by a newer one");
  }
}

/** The part of a full node's `FeedReply::Started` the replica uses. */
export interface FeedStarted {
  consumer: string;
  deliver_subject: string;
  filters: string[];
  first_seq: number;
  last_seq: number;
  created_ns: number | string;
  /** The cluster's scope rules (`ScopeRulesDoc`), when the node sends them. */
  rules?: unknown;
  /** The partitions the token grants (partition tokens), from nodes that send them. */
  partitions?: string[];
}

/** What a feed reports. */
export interface FeedHooks {
  message(seq: number, pending: number, frame: Uint8Array, subject: string): void | Promise<void>;
  failed(error: unknown): void;
}

/** Where a JetStream delivery sits in its stream and consumer, from its `$JS.ACK` reply subject. */
export interface DeliveryInfo {
  streamSeq: number;
  consumerSeq: number;
  pending: number;
}

/**
 * Reads `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` or the newer
 * form with a domain and account hash before the stream (and a random token after).
 */
export function deliveryInfo(reply: string | undefined): DeliveryInfo | null {
  if (!reply?.startsWith("$JS.ACK.")) {
    return null;
  }
  const t = reply.split(".");
  const at = t.length === 9 ? 4 : t.length >= 12 ? 6 : -1;
  if (at < 0) {
    return null;
  }
  const streamSeq = Number(t[at + 1]);
  const consumerSeq = Number(t[at + 2]);
  const pending = Number(t[at + 4]);
  if (![streamSeq, consumerSeq, pending].every(Number.isSafeInteger)) {
    return null;
  }
  return { streamSeq, consumerSeq, pending };
}

/** A scoped replica's feed on one connection; `stop()` ends it. */
export class ScopedFeed {
  #nc: NatsConnection;
  #hooks: FeedHooks;
  #subjectPrefix: string;
  #sub: Subscription | null = null;
  #lastConsumerSeq = 0;
  #stopped = false;
  #watchdog: ReturnType<typeof setInterval> | null = null;
  #lastHeard = Date.now();
  #buffer: Msg[] | null = [];

  /** Subscribes to `deliverSubject` (before the feed is asked for, so nothing is missed). */
  constructor(nc: NatsConnection, deliverSubject: string, subjectPrefix: string, hooks: FeedHooks) {
    this.#nc = nc;
    this.#hooks = hooks;
    this.#subjectPrefix = subjectPrefix;
    this.#sub = nc.subscribe(deliverSubject);
    void this.#pump(this.#sub);
  }

  /** Asks a full node for the feed from `from`; resolves with its answer. */
  async request(feedSubject: string, token: string, replica: string, from: number, timeoutMs: number): Promise<FeedStarted> {
    const body = JSON.stringify({ token, replica, from });
    const reply = await this.#nc.request(feedSubject, body, { timeout: timeoutMs });
    const answer = reply.json<{ started?: FeedStarted; refused?: { reason: string } }>();
    if (answer.refused) {
      throw new ReplicationError(`the feed was refused: ${answer.refused.reason}`);
    }
    if (!answer.started) {
      throw new ReplicationError(`unexpected feed reply ${reply.string().slice(0, 200)}`);
    }
    return answer.started;
  }

  /** Delivers what arrived so far and everything after it (until `stop()`). */
  deliver(heartbeatMs: number): void {
    const buffered = this.#buffer ?? [];
    this.#buffer = null;
    this.#lastHeard = Date.now();
    this.#watchdog = setInterval(() => {
      if (!this.#stopped && Date.now() - this.#lastHeard > 3 * heartbeatMs) {
        this.#fail(new ReplicationError(`the feed was silent for ${3 * heartbeatMs} ms`));
      }
    }, heartbeatMs);
    void (async () => {
      for (const m of buffered) {
        if (this.#stopped || !(await this.#handle(m))) {
          return;
        }
      }
    })();
  }

  /** Ends the feed; what it still delivers is dropped. */
  stop(): void {
    this.#stopped = true;
    if (this.#watchdog !== null) {
      clearInterval(this.#watchdog);
      this.#watchdog = null;
    }
    this.#sub?.unsubscribe();
    this.#sub = null;
  }

  async #pump(sub: Subscription): Promise<void> {
    try {
      for await (const m of sub) {
        if (this.#stopped) {
          return;
        }
        if (this.#buffer) {
          this.#buffer.push(m);
          continue;
        }
        if (!(await this.#handle(m))) {
          return;
        }
      }
    } catch (e) {
      this.#fail(e);
    }
  }

  /** Handles one delivery; false once the feed failed. */
  async #handle(m: Msg): Promise<boolean> {
    this.#lastHeard = Date.now();
    const status = m.headers?.code ?? 0;
    if (status !== 0 || m.data.length === 0) {
      // An idle heartbeat (100) or another status message: proof of life only.
      return true;
    }
    const info = deliveryInfo(m.reply);
    if (!info) {
      this.#fail(new ReplicationError(`a feed delivery without JetStream metadata (reply ${String(m.reply)})`));
      return false;
    }
    if (info.consumerSeq === 1 && this.#lastConsumerSeq > 0) {
      // A new consumer delivers here: another answer to a feed request replaced this one
      // (two nodes answered one request that was retried). Start again from the cursor.
      this.#fail(new FeedReplacedError());
      return false;
    }
    if (info.consumerSeq !== this.#lastConsumerSeq + 1) {
      this.#fail(new ReplicationError(`feed delivery ${this.#lastConsumerSeq + 1} is missing (got ${info.consumerSeq})`));
      return false;
    }
    this.#lastConsumerSeq = info.consumerSeq;
    const prefix = `${this.#subjectPrefix}.`;
    const suffix = m.subject.startsWith(prefix) ? m.subject.slice(prefix.length) : m.subject;
    const wait = this.#hooks.message(info.streamSeq, info.pending, m.data, suffix);
    if (wait) {
      await wait;
    }
    return true;
  }

  #fail(e: unknown): void {
    if (this.#stopped) {
      return;
    }
    this.stop();
    this.#hooks.failed(e);
  }
}

/** The `sub` claim of a JWT (read, not verified: the server verifies the token). */
export function tokenSubject(token: string): string {
  const payload = token.split(".")[1];
  if (!payload) {
    throw new ReplicationError("the scoped replica's token is not a JWT");
  }
  const base64 = payload.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(payload.length / 4) * 4, "=");
  const json = new TextDecoder().decode(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)));
  const sub = (JSON.parse(json) as { sub?: unknown }).sub;
  if (typeof sub !== "string" || sub === "") {
    throw new ReplicationError("the scoped replica's token has no sub claim");
  }
  return sub;
}
