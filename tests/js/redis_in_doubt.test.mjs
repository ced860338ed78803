// The JavaScript client on Node (node:test) against a server on a Redis store with
// wait_replicas=1 whose replica this file stops (SIGSTOP, BAMBOO_REPLICA_PID): a
// publish short of its replica is in doubt, and the server closes its publisher 1011
// with neither an ack nor an error (docs/protocol.md, "Readings of the shared
// contract"). tests/test_redis_append_in_doubt_js.py starts Redis, its replica and
// the server (BAMBOO_URL), and runs this file alone.
import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { BambooClient } from "../../server/web/client/bamboo.js";

import { storedSeqs, until } from "./client_support.mjs";

const url = process.env.BAMBOO_URL;
const replica = Number(process.env.BAMBOO_REPLICA_PID);
// The server's wait_timeout_ms, and room past it for a loaded machine.
const IN_DOUBT_WITHIN = Number(process.env.BAMBOO_WAIT_MS) + 10000;

/** The seqs `client.events()` has queued, taken now: none waits on more. */
async function queued(client) {
  const seqs = [];
  if (client.queuedEvents === 0) return seqs;
  for await (const item of client.events()) {
    seqs.push(item.seq);
    if (client.queuedEvents === 0) break;
  }
  return seqs;
}

test("publishes in doubt, one behind the other, each resolve once with its seq", async () => {
  const options = { sessionId: "in-doubt", backoffInitial: 50, backoffMax: 500 };
  const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
  const viewer = await BambooClient.connect(url, options);
  const changes = [];
  agent.on("state", (change) => changes.push(change));
  try {
    assert.equal(await agent.publish({ type: "token", content: "first" }, { key: "k1" }), 1);
    process.kill(replica, "SIGSTOP");
    let second, third;
    try {
      // The second in doubt, the third (its key the client's own) sent while the
      // second's store call is under way (on the primary, its WAIT pending): not made
      // on that connection.
      second = agent.publish({ type: "token", content: "second" }, { key: "k2" });
      while ((await storedSeqs("in-doubt", 1)).length === 0) await sleep(20);
      third = agent.publish({ type: "token", content: "third" });
      await until(() => changes.some((c) => c.code === 1011), IN_DOUBT_WITHIN);
    } finally {
      process.kill(replica, "SIGCONT");
    }
    assert.deepEqual(changes[0], {
      state: "reconnecting",
      code: 1011,
      reason: "storage failed: a publish may be stored; resume, then resend it with the same key",
    });
    assert.deepEqual(await Promise.all([second, third]), [2, 3]);
    assert.equal(await agent.publish({ type: "token", content: "fourth" }, { key: "k4" }), 4);
    await until(() => viewer.queuedEvents >= 4, IN_DOUBT_WITHIN);
    assert.deepEqual(await queued(viewer), [1, 2, 3, 4]);
    assert.equal(viewer.error, null);
    // Its publish in doubt came back in its resume's replay (it had no ack of it),
    // once, with no SequenceError; the third, appended by its resend, did not, nor
    // did the fourth.
    assert.deepEqual(await queued(agent), [2]);
    assert.equal(agent.error, null);
  } finally {
    await viewer.close();
    await agent.close();
  }
});
