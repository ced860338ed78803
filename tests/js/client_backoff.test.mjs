// The JavaScript client's reconnect backoff across connections that did useful work
// (backoff.js), on Node against the server in BAMBOO_URL through a proxy that cuts
// connections, as tests/test_client_backoff.py for the Python client: a connection
// that brought an event new to the client, or an ack of its publish, starts the backoff
// again from its first wait (and maxRetries from 0), however short it was; one welcomed
// and then dropped with nothing new still counts as a failed attempt.
import assert from "node:assert/strict";
import { test } from "node:test";

import { BambooClient, ConnectionLost } from "../../server/web/client/bamboo.js";

import { url, take, until, droppingProxy } from "./client_support.mjs";

const CUTS = 8;
// The first wait's ceiling (ms): one of [1/2, 1] times this after a connection that
// recovered.
const FIRST_WAIT = 250;
// A loaded two-core machine's connect, upgrade, hello and welcome, beside that wait. Each
// later wait would be uniform in [0, FIRST_WAIT * 2**attempt] if the attempts counted
// on: under this bound all of CUTS times with a chance of 1 in 300.
const SLACK = 2500;

/** What the client's `"closed"` state change carries, once it comes. */
function closedOf(client) {
  return new Promise((resolve) => {
    client.on("state", ({ state, reason, error }) => {
      if (state === "closed") resolve({ reason, error });
    });
  });
}

test("connections cut after each event are no failed attempts", async () => {
  const proxy = await droppingProxy(url);
  const options = { sessionId: "backoff-cut", backoffInitial: FIRST_WAIT, backoffMax: 60000 };
  const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
  // With maxRetries 2, counted on over connections younger than 10 s, it gave up at
  // the third cut though every reconnect succeeded.
  const viewer = await BambooClient.connect(proxy.url, { ...options, lastSeq: 0, maxRetries: 2 });
  try {
    for (let i = 1; i <= CUTS; i += 1) {
      await agent.publish({ type: "token", content: `e${i}` });
      assert.deepEqual(await take(viewer, 1), [i]);
      proxy.cut();
      // Resumed after the first wait, not one that doubles with each cut.
      await until(() => viewer.reconnects === i || viewer.finished, FIRST_WAIT + SLACK);
      assert.deepEqual([viewer.finished, viewer.reconnects], [false, i]);
    }
  } finally {
    await viewer.close();
    await agent.close();
    await proxy.close();
  }
});

test("a publisher cut after each ack: no failed attempts", async () => {
  const proxy = await droppingProxy(url);
  const options = { sessionId: "backoff-acks", backoffInitial: FIRST_WAIT, maxRetries: 2 };
  const publisher = await BambooClient.connect(proxy.url, {
    ...options,
    create: true,
    role: "agent",
    receiveEvents: false,
  });
  try {
    for (let i = 1; i <= CUTS; i += 1) {
      assert.equal(await publisher.publish({ type: "token", content: `p${i}` }), i);
      proxy.cut();
      await until(() => publisher.reconnects === i || publisher.finished, 10000);
      assert.deepEqual([publisher.finished, publisher.reconnects], [false, i]);
    }
  } finally {
    await publisher.close();
    await proxy.close();
  }
});

test(
  "connections dropped after their welcome with nothing new still back off",
  { timeout: 15000 },
  async () => {
    const proxy = await droppingProxy(url);
    const options = { sessionId: "backoff-drops", backoffInitial: 50, backoffMax: 400 };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    const viewer = await BambooClient.connect(proxy.url, { ...options, lastSeq: 0, maxRetries: 3 });
    try {
      for (let i = 0; i < 3; i += 1) await agent.publish({ type: "token", content: "e" });
      assert.deepEqual(await take(viewer, 3), [1, 2, 3]); // its first connection did work
      const closed = closedOf(viewer);
      let welcomes = 0;
      viewer.on("state", ({ state }) => {
        if (state !== "open") return;
        welcomes += 1;
        proxy.cut(); // a server that fails right after each hello
      });
      proxy.cut();
      const seen = await closed;
      assert.ok(seen.error instanceof ConnectionLost, String(seen.error));
      assert.match(seen.reason, /^gave up after 3 attempts/);
      assert.equal(welcomes, 3);
    } finally {
      await viewer.close();
      await agent.close();
      await proxy.close();
    }
  },
);
