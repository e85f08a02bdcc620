// The contract between the JavaScript host and the replication session in the wasm module,
// without NATS: the host reports what its transport did (`handleInputs`) and carries out
// what the session asks (`pollOutputs`). The session, not the host, restarts the consumer
// from the cursor after a gap or a failure, refuses another stream (told apart by a
// creation time beyond 2^53 ns, so it must cross as a bigint), reports falling behind and
// a missing stream, and keeps the lag. Frames come from a second replica's outbox.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { harmonylite, npmDir } from "./helpers.mjs";

const Kind = {
  LocalWrite: 0,
  Message: 1,
  Connected: 4,
  Disconnected: 5,
  Timeout: 6,
  StreamInfo: 7,
  ConsumerStarted: 9,
  ConsumerFailed: 10,
  Reopened: 13,
};

const CREATED = 1_764_000_000_123_456_789n;

async function wasm() {
  await harmonylite(); // fails clearly when npm/dist is not built
  const mod = await import(join(npmDir, "dist", "wasm", "harmonylite_wasm.js"));
  mod.initSync({ module: readFileSync(join(npmDir, "dist", "wasm", "harmonylite_wasm_bg.wasm")) });
  return mod;
}

function random() {
  const bytes = new Uint8Array(24);
  globalThis.crypto.getRandomValues(bytes);
  return bytes;
}

/** Feeds `[kind, num?, value?, pending?]` inputs at monotonic time `ms`; returns the outputs. */
function feed(replica, ms, inputs) {
  const kinds = [];
  const nums = [];
  const pending = [];
  const values = [];
  for (const [kind, num = 0, value, p = 0] of inputs) {
    kinds.push(kind);
    nums.push(num);
    pending.push(p);
    if (value !== undefined) {
      values.push(value);
    }
  }
  replica.handleInputs(ms, Date.now(), Uint8Array.from(kinds), Float64Array.from(nums), Float64Array.from(pending), values);
  return replica.pollOutputs();
}

/** The outputs about the stream consumer (engine events left out). */
const consumer = (outputs) =>
  outputs.filter((o) => !["drained", "received", "acked", "publish", "databaseError"].includes(o.type));

const info = (firstSeq, lastSeq, createdNs = CREATED) => [Kind.StreamInfo, 0, { firstSeq, lastSeq, createdNs }];
const message = (seq, pending, frame) => [Kind.Message, seq, frame, pending];

test("the session restarts the consumer from the cursor after a gap or a failure, and refuses another stream", async () => {
  const { openReplica } = await wasm();
  const schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";

  // Three stream messages, from a publish-only replica's outbox.
  const writer = await openReplica({ name: "writer.db", random: random(), replicate: false });
  writer.exec(schema, undefined, 0, Date.now());
  feed(writer, 0, [[Kind.Connected, 1 << 20]]);
  const frames = [];
  for (let i = 1; i <= 3; i++) {
    writer.exec("INSERT INTO t(id, v) VALUES (?, ?)", [i, `v${i}`], i, Date.now());
    frames.push(...feed(writer, i, [[Kind.LocalWrite]]).filter((o) => o.type === "publish").map((o) => o.frame));
  }
  assert.equal(frames.length, 3);
  writer.close();

  const r = await openReplica({ name: "reader.db", random: random(), stream: "S-1" });
  r.exec(schema, undefined, 0, Date.now());
  const rows = () => r.query("SELECT id FROM t ORDER BY id").map((row) => row.id);

  // Connected: the session reads the stream, then consumes from cursor + 1.
  assert.deepEqual(consumer(feed(r, 0, [[Kind.Connected, 1 << 20]])), [{ type: "readStreamInfo" }]);
  assert.deepEqual(consumer(feed(r, 0, [info(1, 3)])), [{ type: "startConsumer", from: 1 }]);
  assert.equal(r.wantsMessages(), false, "no messages before the consumer runs");
  feed(r, 0, [[Kind.ConsumerStarted]]);
  assert.equal(r.wantsMessages(), true);

  // Message 1, then 3: a gap. Nothing after the gap is applied; the consumer is restarted.
  const gap = consumer(feed(r, 1, [message(1, 2, frames[0]), message(3, 0, frames[2])]));
  assert.deepEqual(gap, [{ type: "gap", expected: 2, got: 3 }, { type: "stopConsumer" }, { type: "readStreamInfo" }]);
  assert.deepEqual(rows(), [1]);
  let status = r.status();
  assert.equal(status.cursor, 1);
  assert.equal(status.streamLastSeq, 3, "learned from the message's pending count");
  assert.equal(status.lag, 2);
  assert.equal(r.wantsMessages(), false);
  assert.deepEqual(consumer(feed(r, 2, [info(1, 3)])), [{ type: "startConsumer", from: 2 }]);
  feed(r, 2, [[Kind.ConsumerStarted], message(2, 1, frames[1]), message(3, 0, frames[2])]);
  assert.deepEqual(rows(), [1, 2, 3]);
  status = r.status();
  assert.equal(status.lag, 0);
  assert.equal(status.healthy, true, JSON.stringify(status));

  // The consumer fails: a new one from the cursor after a second, with the reason meanwhile.
  assert.deepEqual(consumer(feed(r, 10, [[Kind.ConsumerFailed, 0, "Error: consumer deleted"]])), []);
  status = r.status();
  assert.equal(status.consumerError, "Error: consumer deleted");
  assert.equal(status.healthy, false);
  assert.ok(r.pollTimeout() <= 1010, `retry at ${r.pollTimeout()}`);
  assert.deepEqual(consumer(feed(r, 500, [[Kind.Timeout]])), []);
  assert.deepEqual(consumer(feed(r, 1010, [[Kind.Timeout]])), [{ type: "readStreamInfo" }]);
  assert.deepEqual(consumer(feed(r, 1010, [info(1, 3), [Kind.ConsumerStarted]])), [
    { type: "startConsumer", from: 4 },
    { type: "consuming", from: 4 },
  ]);
  assert.equal(r.status().consumerError, null);

  // A missing stream may not be created by a replica that applied messages of one.
  const missing = r.missingStreamRefusal();
  assert.match(missing, /does not exist, but this replica has applied its messages up to 3/);
  assert.match(missing, /call adoptStream\(\) \(docs\/js-api\.md\)/);
  assert.deepEqual(consumer(r.pollOutputs()), [{ type: "refused", why: missing }]);
  assert.equal(r.status().refused, missing);

  // After a reconnect the stream was created 1 ns later: another stream (1 ns is below what
  // a float carries at this size). Nothing is consumed; the stream is looked at every 30 s.
  assert.deepEqual(consumer(feed(r, 2000, [[Kind.Disconnected], [Kind.Connected, 1 << 20]])), [
    { type: "stopConsumer" },
    { type: "readStreamInfo" },
  ]);
  const refused = consumer(feed(r, 2000, [info(1, 1, CREATED + 1n)]));
  assert.equal(refused.length, 1);
  assert.equal(refused[0].type, "refused");
  assert.match(refused[0].why, /deleted and created again/);
  assert.match(refused[0].why, /If the stream was re-created on purpose, call adoptStream\(\) \(docs\/js-api\.md\) to apply/);
  status = r.status();
  assert.equal(status.refused, refused[0].why);
  assert.equal(status.lag, 0, "another stream's end is not this replica's");
  assert.equal(r.wantsMessages(), false);
  assert.deepEqual(consumer(feed(r, 31_999, [[Kind.Timeout]])), []);
  assert.deepEqual(consumer(feed(r, 32_000, [[Kind.Timeout]])), [{ type: "readStreamInfo" }]);
  assert.deepEqual(consumer(feed(r, 32_000, [info(1, 1, CREATED + 1n)])), [], "said once");

  // Adopting it: the cursor goes back to 0 and the new stream is consumed from its start.
  assert.equal(r.adoptStream(33_000, Date.now()), 3);
  assert.equal(r.missingStreamRefusal(), undefined, "nothing applied now: it may create a missing stream");
  assert.deepEqual(consumer(feed(r, 33_000, [[Kind.Reopened]])), [{ type: "readStreamInfo" }]);
  assert.deepEqual(consumer(feed(r, 33_000, [info(1, 1, CREATED + 1n)])), [{ type: "startConsumer", from: 1 }]);
  feed(r, 33_000, [[Kind.ConsumerStarted]]);
  status = r.status();
  assert.equal(status.refused, null);
  assert.equal(status.consuming, true);
  assert.throws(() => r.adoptStream(33_001, Date.now()), (e) => e.name === "InvalidArgumentError" && /consuming the stream/.test(e.message));

  // A stream that no longer holds the next message: fell behind, reported at every look.
  feed(r, 34_000, [[Kind.Disconnected], [Kind.Connected, 1 << 20]]);
  assert.deepEqual(consumer(feed(r, 34_000, [info(5, 9, CREATED + 1n)])), [
    { type: "fellBehind", cursor: 0, first: 5, last: 9, firstTime: true },
  ]);
  status = r.status();
  assert.equal(status.fellBehind, true);
  assert.equal(status.lag, 9);
  assert.equal(status.healthy, false);
  feed(r, 64_000, [[Kind.Timeout]]);
  assert.deepEqual(consumer(feed(r, 64_000, [info(5, 9, CREATED + 1n)])), [
    { type: "fellBehind", cursor: 0, first: 5, last: 9, firstTime: false },
  ]);

  // Inputs are checked: a creation time must be a bigint.
  feed(r, 94_000, [[Kind.Timeout]]);
  assert.throws(() => feed(r, 94_000, [info(5, 9, 1.5e18)]), (e) => e.name === "InvalidArgumentError" && /createdNs/.test(e.message));
  r.close();
});
