// The scoped feed's delivery checks (npm/src/feed.ts), on a stand-in subscription: the
// consumer sequence must be contiguous; a delivery that restarts at 1 is a feed replaced by
// another full node's answer (restarted quietly), any other jump is a lost delivery.

import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

import { npmDir } from "./helpers.mjs";

const { ScopedFeed, FeedReplacedError } = await import(pathToFileURL(join(npmDir, "dist", "feed.js")).href);
const { ReplicationError } = await import(pathToFileURL(join(npmDir, "dist", "errors.js")).href);

/** A subscription that yields the messages pushed into it. */
function fakeConnection() {
  const queue = [];
  let wake = null;
  const sub = {
    unsubscribe() {},
    async *[Symbol.asyncIterator]() {
      for (;;) {
        while (queue.length > 0) {
          yield queue.shift();
        }
        await new Promise((r) => (wake = r));
      }
    },
  };
  return {
    nc: { subscribe: () => sub },
    push(consumerSeq, streamSeq = consumerSeq) {
      queue.push({
        subject: "app.p.user.tu1.f.tnotes",
        reply: `$JS.ACK.s.c.1.${streamSeq}.${consumerSeq}.0.0`,
        data: new Uint8Array([1]),
        headers: undefined,
      });
      wake?.();
    },
  };
}

async function run(sequence) {
  const conn = fakeConnection();
  const seen = [];
  let failure = null;
  const feed = new ScopedFeed(conn.nc, "_INBOX_tu1.feed.1", "app", {
    message: (seq) => void seen.push(seq),
    failed: (e) => (failure = e),
  });
  feed.deliver(60_000);
  for (const seq of sequence) {
    conn.push(seq);
  }
  for (let i = 0; i < 50 && failure === null && seen.length < sequence.length; i++) {
    await new Promise((r) => setTimeout(r, 5));
  }
  feed.stop();
  return { seen, failure };
}

test("contiguous deliveries pass through in order", async () => {
  const { seen, failure } = await run([1, 2, 3]);
  assert.deepEqual(seen, [1, 2, 3]);
  assert.equal(failure, null);
});

test("a delivery starting again at 1 is a replaced feed, not a lost delivery", async () => {
  const { seen, failure } = await run([1, 2, 1]);
  assert.deepEqual(seen, [1, 2]);
  assert.ok(failure instanceof FeedReplacedError, String(failure));
});

test("a jump in the consumer sequence is a lost delivery", async () => {
  const { seen, failure } = await run([1, 3]);
  assert.deepEqual(seen, [1]);
  assert.ok(failure instanceof ReplicationError && !(failure instanceof FeedReplacedError), String(failure));
  assert.match(failure.message, /feed delivery 2 is missing \(got 3\)/);
});
