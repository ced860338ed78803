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

// liveness.js's LATE: a check this late (ms) pings again before its verdict.
const LATE = 1000;
// The pingTimeout of a link meant to live: a live server's pong comes well within it
// however loaded the machine (a process there may wait 100s of ms for a core), so
// that no scheduling delay gives such a link up. 200 ms did not (tests/test_js.py
// under -n 4 beside busy loops).
const LIVE_TIMEOUT = 2000;

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

// The check runs late by a second or more (it pings again, and waits again), or by
// less (it reads what came before its verdict): a page frozen in the background, or
// running a long task, a process on a loaded machine.
for (const [late, lateBy] of [
  ["by a second or more", LATE + 600],
  ["by less than a second", LATE - 600],
]) {
  test(`a check that runs late ${late}, its pong waiting unread, does not give up a live link`, async () => {
    // The process is busy right after the first ping until `lateBy` after the check
    // was due: the pong comes meanwhile, and the check, overdue, runs before it is read
    // (Node's loop runs timers, then I/O).
    const busy = pingWatching(() => {
      if (busy.seen.pings === 1) setImmediate(() => busyFor(LIVE_TIMEOUT + lateBy));
      return true;
    });
    const client = await BambooClient.connect(url, {
      sessionId: `liveness-late-${lateBy}`,
      create: true,
      pingInterval: 100,
      pingTimeout: LIVE_TIMEOUT,
      WebSocket: busy.WebSocket,
    });
    /** @type {(string | null)[]} */
    const reasons = [];
    client.on("state", ({ state, reason }) => reasons.push(`${state} ${reason}`));
    try {
      await until(() => busy.seen.pings >= 3, 10_000 + 2 * LIVE_TIMEOUT);
      assert.deepEqual(reasons, []);
      assert.equal(client.reconnects, 0);
    } finally {
      await client.close();
    }
  });
}

test("a link whose pongs never come is still given up after a late check", async () => {
  const timeout = 200;
  let blocked = false;
  const silent = pingWatching(() => {
    if (!blocked) {
      blocked = true; // once: the first check runs late, the one after on time
      setImmediate(() => busyFor(200 + LATE + 600));
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
    // Every connection is silent: the next is given up too, some 300 ms after it opens.
    await until(() => reasons.length >= 2, 10_000);
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
  const link = {
    dead: false,
    first: /** @type {WebSocket | null} */ (null),
    swallowed: /** @type {string[]} */ ([]), // the types of the frames that went nowhere
  };
  class Dying extends WebSocket {
    /** @param {string | URL} address @param {string | string[]} [protocols] */
    constructor(address, protocols) {
      super(address, protocols);
      link.first ??= this;
    }

    /** @param {string} data */
    send(data) {
      if (link.dead && this === link.first) {
        link.swallowed.push(JSON.parse(data).type);
        return;
      }
      super.send(data);
    }
  }
  return { WebSocket: Dying, link, die: () => (link.dead = true) };
}

test("a ping behind a large frame waits for it at minUplinkRate, and a dead link is still found", async () => {
  // 100 ms of silence brings the ping; the verdict comes pingTimeout after what the
  // frame sent before it would take to cross at minUplinkRate: 1 s for 100 kB at
  // 100 kB/s. The connection after it lives: its timeout is a live link's.
  const [interval, timeout, rate, size] = [100, LIVE_TIMEOUT, 100_000, 100_000];
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
    // Without the allowance, interval + timeout. A check that runs late only adds to
    // it (a second late, it pings again and waits timeout more), so the least is what
    // is asserted: when the verdict came after it is the machine's load.
    const least = (size / rate) * 1000 + timeout;
    await until(() => givenUpAfter !== null, least + 10_000);
    const elapsed = /** @type {number} */ (givenUpAfter);
    assert.ok(elapsed >= least - 50, `given up after ${elapsed} ms, before ${least} ms`);
    // The publish and one ping (and one more where the check ran a second late).
    const [publish, ...pings] = uplink.link.swallowed;
    assert.equal(publish, "event");
    assert.ok(pings.length >= 1 && pings.length <= 2, String(uplink.link.swallowed));
    assert.ok(
      pings.every((type) => type === "ping"),
      String(uplink.link.swallowed),
    );
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
  // Counting the publish as still queued at minUplinkRate gave it up 30 s later: the
  // bound below, half that, is far from both, whatever the machine's load.
  const [interval, timeout, rate, size] = [100, 200, 10_000, 300_000];
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
    const crossing = (size / rate) * 1000; // what the queue alone would have added
    await until(() => givenUpAfter !== null, interval + timeout + crossing / 2);
    const elapsed = /** @type {number} */ (givenUpAfter);
    assert.ok(elapsed >= interval + timeout - 50, `given up after ${elapsed} ms`);
    // The ping (and one more where the check ran a second late).
    const { swallowed } = uplink.link;
    assert.ok(swallowed.length >= 1 && swallowed.length <= 2, String(swallowed));
    assert.ok(
      swallowed.every((type) => type === "ping"),
      String(swallowed),
    );
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
  assert.ok(pings === 1 || pings === 2, `${pings} pings`); // 2: a check ran a second late
  assert.ok(elapsed >= interval + timeout - 20, `given up after ${elapsed} ms`);
});
