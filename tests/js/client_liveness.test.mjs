// The JavaScript client on Node (node:test): its liveness check (liveness.js) where the
// browser tests (tests/test_browser_partition.py) cannot easily put it: settings past
// what a timer can hold (2^31 - 1 ms), and a check that runs late because the page (here
// the process) was busy or asleep while the answer to its ping waited to be read.
// tests/test_js.py starts the server (BAMBOO_URL) and runs this file beside the other
// client*.test.mjs (helpers: client_support.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { BambooClient } from "../../server/web/client/bamboo.js";
import { Liveness } from "../../server/web/client/liveness.js";

import { url, until } from "./client_support.mjs";

/** A WebSocket class that counts the client's pings and, when `onPing` says so, does not
 * send them (a link on which no pong can come). @param {(ws: WebSocket) => boolean} onPing */
function pingWatching(onPing) {
  const seen = { pings: 0, sent: /** @type {unknown[]} */ ([]) };
  class Watched extends WebSocket {
    /** @param {string} data */
    send(data) {
      if (JSON.parse(data).type === "ping") {
        seen.pings += 1;
        seen.sent.push(JSON.parse(data));
        if (!onPing(this)) return;
      }
      super.send(data);
    }
  }
  return { WebSocket: Watched, seen };
}

/** Keep the process busy for `ms`, after the current I/O: the timers that fall due
 * meanwhile then run before the frames that came meanwhile are read (Node's loop runs
 * timers, then I/O). @param {number} ms */
function busyFor(ms) {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

// Long enough for a check to run well after it was due (liveness.js's LATE, 1 s).
const BUSY = 1600;

/** How many timers the process sets during `ms`. */
async function timersSetDuring(ms) {
  const original = globalThis.setTimeout;
  let count = 0;
  globalThis.setTimeout = /** @type {typeof setTimeout} */ (
    (...args) => {
      count += 1;
      return original(...args);
    }
  );
  try {
    await sleep(ms);
  } finally {
    globalThis.setTimeout = original;
  }
  return count;
}

test("a ping interval or timeout past 2^31 - 1 ms waits, rather than spinning on timers", async () => {
  const options = { sessionId: "liveness-long", create: true, backoffInitial: 20 };
  const silent = pingWatching(() => false);
  // 2^31 ms (some 25 days), and a year: a timer that long fires at once (Node warns,
  // browsers say nothing), and the check, finding the time not yet come, set it again.
  const idle = await BambooClient.connect(url, { ...options, pingInterval: 2 ** 31 });
  const probed = await BambooClient.connect(url, {
    ...options,
    pingInterval: 50,
    pingTimeout: 365 * 24 * 3600 * 1000,
    WebSocket: silent.WebSocket,
  });
  try {
    await until(() => silent.seen.pings === 1);
    const timers = await timersSetDuring(300);
    assert.ok(timers < 10, `${timers} timers set in 300 ms by two idle clients`);
    assert.equal(silent.seen.pings, 1);
    // With an id, as the wire contract answers only a request with one (PROTOCOL.md);
    // a string, where the client's requests have numbers.
    assert.deepEqual(silent.seen.sent, [{ type: "ping", id: "liveness", keepalive: true }]);
    assert.deepEqual([idle.state, probed.state], ["open", "open"]);
  } finally {
    await idle.close();
    await probed.close();
  }
});

test("a check that runs late, its pong waiting unread, does not give up a live link", async () => {
  const timeout = 200;
  // The process is busy for over a second right after the first ping: the pong comes
  // meanwhile, and the check, overdue, runs before it is read, as in a page that was
  // frozen in the background, or running a long task.
  const busy = pingWatching(() => {
    if (busy.seen.pings === 1) setImmediate(() => busyFor(BUSY));
    return true;
  });
  const client = await BambooClient.connect(url, {
    sessionId: "liveness-late",
    create: true,
    pingInterval: 100,
    pingTimeout: timeout,
    WebSocket: busy.WebSocket,
  });
  /** @type {(string | null)[]} */
  const reasons = [];
  client.on("state", ({ state, reason }) => reasons.push(`${state} ${reason}`));
  try {
    await until(() => busy.seen.pings >= 3, 10_000);
    assert.deepEqual(reasons, []);
    assert.equal(client.reconnects, 0);
  } finally {
    await client.close();
  }
});

test("a link whose pongs never come is still given up after a late check", async () => {
  const timeout = 200;
  let blocked = false;
  const silent = pingWatching(() => {
    if (!blocked) {
      blocked = true; // once: the first check runs late, the one after on time
      setImmediate(() => busyFor(BUSY));
    }
    return false;
  });
  const client = await BambooClient.connect(url, {
    sessionId: "liveness-late-dead",
    create: true,
    backoffInitial: 20,
    pingInterval: 100,
    pingTimeout: timeout,
    WebSocket: silent.WebSocket,
  });
  /** @type {(string | null)[]} */
  const reasons = [];
  client.on("state", ({ state, code, reason }) => reasons.push(`${state} ${code} ${reason}`));
  try {
    await until(() => client.reconnects === 1 && client.state === "open", 10_000);
    assert.deepEqual(reasons.slice(0, 2), [
      "reconnecting null connection silent",
      "open undefined undefined",
    ]);
  } finally {
    await client.close();
  }
});

/** A WebSocket class whose first connection's uplink dies once `die()` is called: from
 * then on it sends nothing (the bytes go into a link that carries none), and the server's
 * frames stop with it, as nothing the page sent is answered. The connections after it
 * work. */
function dyingUplink() {
  const link = { dead: false, first: /** @type {WebSocket | null} */ (null), swallowed: 0 };
  class Dying extends WebSocket {
    /** @param {string | URL} address @param {string | string[]} [protocols] */
    constructor(address, protocols) {
      super(address, protocols);
      link.first ??= this;
    }

    /** @param {string} data */
    send(data) {
      if (link.dead && this === link.first) {
        link.swallowed += 1;
        return;
      }
      super.send(data);
    }
  }
  return { WebSocket: Dying, link, die: () => (link.dead = true) };
}

test("a ping behind a large frame waits for it at minUplinkRate, and a dead link is still found", async () => {
  // 100 ms of silence brings the ping; the verdict comes 200 ms after what the frame
  // sent before it would take to cross at minUplinkRate: 1 s for 100 kB at 100 kB/s.
  const [interval, timeout, rate, size] = [100, 200, 100_000, 100_000];
  const uplink = dyingUplink();
  const client = await BambooClient.connect(url, {
    sessionId: "liveness-uplink",
    create: true,
    backoffInitial: 20,
    pingInterval: interval,
    pingTimeout: timeout,
    minUplinkRate: rate,
    WebSocket: uplink.WebSocket,
  });
  /** @type {number | null} */
  let givenUpAfter = null;
  const start = performance.now();
  client.on("state", ({ state, reason }) => {
    if (state === "reconnecting" && reason === "connection silent") {
      givenUpAfter ??= performance.now() - start;
    }
  });
  try {
    uplink.die(); // the publish, then the ping, go nowhere
    const content = "x".repeat(size);
    const published = client.publish({ type: "token", content });
    await until(() => givenUpAfter !== null, 10_000);
    // Without the allowance, interval + timeout: some 300 ms.
    const least = (size / rate) * 1000 + timeout;
    const elapsed = /** @type {number} */ (givenUpAfter);
    assert.ok(elapsed >= least - 50, `given up after ${elapsed} ms, before ${least} ms`);
    assert.ok(elapsed < least + 1500, `given up after ${elapsed} ms, long after ${least} ms`);
    assert.equal(uplink.link.swallowed, 2); // the publish and one ping
    // Resumed on a working connection, the publish resent there and stored once.
    assert.equal(await published, 1);
    assert.equal(client.reconnects, 1);
  } finally {
    await client.close();
  }
});

test("a large publish answered before the link dies adds nothing to the wait for the ping", async () => {
  // The publish crossed (its ack says so) long before the link went: the ping behind no
  // bytes of the page's, the link is given up interval + timeout after its last frame.
  // Counting the publish as still queued at minUplinkRate gave it up 3 s later.
  const [interval, timeout, rate, size] = [100, 200, 100_000, 300_000];
  const uplink = dyingUplink();
  const client = await BambooClient.connect(url, {
    sessionId: "liveness-answered",
    create: true,
    backoffInitial: 20,
    pingInterval: interval,
    pingTimeout: timeout,
    minUplinkRate: rate,
    WebSocket: uplink.WebSocket,
  });
  /** @type {number | null} */
  let givenUpAfter = null;
  let start = 0;
  client.on("state", ({ state, reason }) => {
    if (state === "reconnecting" && reason === "connection silent") {
      givenUpAfter ??= performance.now() - start;
    }
  });
  try {
    assert.equal(await client.publish({ type: "token", content: "x".repeat(size) }), 1);
    start = performance.now();
    uplink.die(); // the tunnel, right after the ack
    await until(() => givenUpAfter !== null, 10_000);
    const elapsed = /** @type {number} */ (givenUpAfter);
    const crossing = (size / rate) * 1000; // what the queue alone would have added
    assert.ok(elapsed >= interval + timeout - 50, `given up after ${elapsed} ms`);
    assert.ok(elapsed < interval + timeout + crossing / 2, `given up after ${elapsed} ms`);
    assert.equal(uplink.link.swallowed, 1); // the ping
  } finally {
    await client.close();
  }
});

test("a minUplinkRate too small to divide by still waits pingTimeout for an idle link", async () => {
  // 5e-324 bytes a second is a number above 0, so the client takes it; per ms it is 0,
  // and an idle link's wait was 0 / 0: given up some 35 ms after the ping, not 200.
  const [interval, timeout] = [50, 200];
  let pings = 0;
  const start = performance.now();
  const givenUp = new Promise((resolve) => {
    const settings = { interval, timeout, uplinkRate: 5e-324 };
    new Liveness(
      settings,
      () => (pings += 1),
      () => resolve(performance.now() - start),
    );
  });
  const elapsed = /** @type {number} */ (await givenUp);
  assert.equal(pings, 1);
  assert.ok(elapsed >= interval + timeout - 20, `given up after ${elapsed} ms`);
});
