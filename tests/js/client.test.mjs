// The JavaScript client on Node (node:test), against the server whose ws:// URL is in
// BAMBOO_URL, and the one with auth (no leeway) in BAMBOO_AUTH_URL, whose secret is in
// BAMBOO_AUTH_SECRET: tests/test_js.py starts both and runs this file.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";

import {
  BambooClient,
  ClientError,
  ConnectionLost,
  NotFound,
  Refused,
  SessionEnded,
  Unauthorized,
  streamUrl,
} from "../../server/web/client/bamboo.js";

const url = process.env.BAMBOO_URL;
const authUrl = process.env.BAMBOO_AUTH_URL;
const secret = process.env.BAMBOO_AUTH_SECRET;

/** An HS256 JWT for `sub` that the server (leeway 0) accepts for `ttl` more seconds. */
function makeToken(sub, ttl, key = secret) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  // Whole seconds, rounded up: the server (PyJWT) truncates exp, and a fractional one
  // made at 12.9995 s left a 1 s token half a millisecond of life.
  const claims = { sub, exp: Math.ceil(Date.now() / 1000 + ttl) };
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${body}.${createHmac("sha256", key).update(body).digest("base64url")}`;
}

/** The error that ends `client.events()`. */
async function endOf(client) {
  try {
    for await (const item of client.events()) void item;
  } catch (error) {
    return error;
  }
  return null;
}

const range = (n) => Array.from({ length: n }, (_, i) => i + 1);

test("stream URLs", () => {
  assert.equal(streamUrl("ws://h:1"), "ws://h:1/api/v1/stream");
  assert.equal(streamUrl("http://h:1/", "a.b"), "ws://h:1/api/v1/stream/a.b");
  assert.equal(streamUrl("https://h/api/v1/stream", "x"), "wss://h/api/v1/stream/x");
  assert.throws(() => streamUrl("ftp://h"), TypeError);
  assert.throws(() => streamUrl("ws://h", ".."), TypeError);
});

test("publish, receive, read back", async () => {
  const agent = await BambooClient.connect(url, {
    sessionId: "node-1",
    create: true,
    role: "agent",
  });
  const viewer = await BambooClient.connect(url, { sessionId: "node-1" });
  const seq = await agent.publish({ type: "token", content: "Hi" }, { key: "k1" });
  assert.equal(await agent.publish({ type: "token", content: "Hi" }, { key: "k1" }), seq);
  await agent.sendMessage({ role: "assistant", content: "Hello from Node" });
  const seen = [];
  for await (const item of viewer.events()) {
    seen.push([item.seq, item.event.type]);
    if (seen.length === 2) break;
  }
  assert.deepEqual(seen, [
    [1, "token"],
    [2, "message"],
  ]);
  const history = await viewer.history({ limit: 10 });
  assert.deepEqual(
    history.messages.map((m) => m.content),
    ["Hello from Node"],
  );
  const events = await viewer.readAllEvents({ page: 1 });
  assert.deepEqual(
    events.map((e) => e.seq),
    [1, 2],
  );
  assert.equal(viewer.lastSeq, 2);
  assert.equal(typeof viewer.epoch, "string");
  await viewer.close();
  await agent.close();
  await assert.rejects(agent.ping(), SessionEnded);
});

test("an empty key is sent as given, a key like any other", async () => {
  const agent = await BambooClient.connect(url, { sessionId: "node-empty-key", create: true });
  try {
    const token = { type: "token", content: "Hi" };
    assert.equal(await agent.publish(token, { key: "" }), 1);
    assert.equal(await agent.sendMessage({ role: "assistant", content: "Hi" }, { key: "" }), 1);
    assert.equal(await agent.publish(token), 2); // no key: a fresh one
    assert.deepEqual(
      (await agent.readAllEvents()).map((e) => e.seq),
      [1, 2],
    );
  } finally {
    await agent.close();
  }
});

test("a missing session is a typed refusal", async () => {
  await assert.rejects(BambooClient.connect(url, { sessionId: "node-missing" }), (error) => {
    assert.ok(error instanceof NotFound);
    assert.equal(error.code, 4404);
    return true;
  });
});

test(
  "a token function is asked again at expiry; nothing is lost or repeated",
  { timeout: 30000 },
  async () => {
    const issued = { agent: 0, viewer: 0 };
    const tokenOf = (who) => async () => {
      issued[who] += 1;
      return makeToken("alice", 1.5); // the server closes the connection 1.5 s from now
    };
    const options = { sessionId: "refresh-1", backoffInitial: 20 };
    const agent = await BambooClient.connect(authUrl, {
      ...options,
      create: true,
      role: "agent",
      token: tokenOf("agent"),
    });
    // The viewer waits at least 200 ms before it reconnects: events published meanwhile
    // reach it only through the resume.
    const viewer = await BambooClient.connect(authUrl, {
      ...options,
      backoffInitial: 400,
      token: tokenOf("viewer"),
    });
    const seen = [];
    const watching = (async () => {
      for await (const item of viewer.events()) {
        seen.push(item.reset ? "reset" : item.seq);
        if (seen.length === 30) break;
      }
    })();
    const seqs = [];
    try {
      for (let i = 1; i <= 30; i++) {
        // Across two expiries of each client's token, 3 s in all.
        seqs.push(await agent.publish({ type: "token", content: `t${i}` }));
        await sleep(100);
      }
      // Then judge what has arrived (an unref timer does not keep Node alive).
      await Promise.race([watching, sleep(5000, null, { ref: false })]);
    } finally {
      await viewer.close(); // ends events(), should the viewer still wait for some
      await agent.close();
    }
    await watching;
    assert.deepEqual(seqs, range(30));
    assert.deepEqual(seen, range(30));
    assert.ok(
      agent.reconnects >= 1 && viewer.reconnects >= 1,
      `${agent.reconnects}, ${viewer.reconnects}`,
    );
    assert.equal(issued.agent, agent.reconnects + 1);
    assert.equal(issued.viewer, viewer.reconnects + 1);
  },
);

test(
  "a fixed token ends the client with Unauthorized when it expires",
  { timeout: 10000 },
  async () => {
    const client = await BambooClient.connect(authUrl, {
      sessionId: "fixed-1",
      create: true,
      token: makeToken("alice", 1),
      backoffInitial: 20,
    });
    await client.ping(); // open, until the token expires
    const error = await endOf(client);
    assert.ok(error instanceof Unauthorized, String(error));
    assert.equal(error.code, 4401);
    assert.equal(error.reason, "token expired");
    assert.equal(client.reconnects, 0);
    await assert.rejects(client.ping(), Unauthorized);
  },
);

test(
  "a token function that gives a bad token ends the client, no loop",
  { timeout: 15000 },
  async () => {
    const stale = makeToken("alice", 1);
    const refreshers = {
      "token expired": () => stale, // never refreshed: the same token again
      "invalid token": () => makeToken("alice", 60, "not the server's secret, 32 bytes"),
    };
    for (const [reason, refresh] of Object.entries(refreshers)) {
      let calls = 0;
      const client = await BambooClient.connect(authUrl, {
        sessionId: `bad-refresh-${reason.split(" ")[0]}`,
        create: true,
        backoffInitial: 20,
        token: () => (++calls === 1 ? makeToken("alice", 1) : refresh()),
      });
      const error = await endOf(client);
      assert.ok(error instanceof Unauthorized, String(error));
      assert.equal(error.code, 4401, reason);
      assert.equal(error.reason, reason);
      assert.equal(calls, 2, reason); // the first connection, then the refused refresh
      assert.equal(client.reconnects, 0);
    }
    // One that throws ends it too, with what it threw as the cause.
    let calls = 0;
    const client = await BambooClient.connect(authUrl, {
      sessionId: "bad-refresh-throws",
      create: true,
      backoffInitial: 20,
      token: async () => {
        if (++calls > 1) throw new Error("no token service");
        return makeToken("alice", 1);
      },
    });
    const error = await endOf(client);
    assert.ok(error instanceof ClientError && !(error instanceof Refused), String(error));
    assert.equal(error.cause.message, "no token service");
    assert.equal(calls, 2);
  },
);

test(
  "tokens that expire soon after each welcome keep backing off, to maxRetries",
  { timeout: 15000 },
  async () => {
    let calls = 0;
    const client = await BambooClient.connect(authUrl, {
      sessionId: "short-tokens",
      create: true,
      maxRetries: 2,
      backoffInitial: 20,
      token: () => (calls++, makeToken("alice", 1)),
    });
    const error = await endOf(client);
    assert.ok(error instanceof ConnectionLost, String(error));
    assert.match(error.message, /^gave up after 2 attempts: token expired/);
    assert.equal(calls, 3); // the first connection and 2 reconnects, each held for 1 s
    assert.equal(client.reconnects, 2);
  },
);

/** Publish `count` tokens of `content` from `agent`, `inFlight` at a time; their seqs. */
async function publishMany(agent, count, content = "t", inFlight = 100) {
  const seqs = [];
  for (let start = 0; start < count; start += inFlight) {
    const n = Math.min(inFlight, count - start);
    const batch = Array.from({ length: n }, () => agent.publish({ type: "token", content }));
    seqs.push(...(await Promise.all(batch)));
  }
  return seqs;
}

/** The next `count` items of `client.events()`: their seqs (or "reset"). */
async function take(client, count) {
  const seqs = [];
  for await (const item of client.events()) {
    seqs.push(item.reset ? "reset" : item.seq);
    if (seqs.length === count) break;
  }
  return seqs;
}

/** Waits, 20 ms at a time within `ms`, until `check()` holds. */
async function until(check, ms = 5000) {
  for (const deadline = Date.now() + ms; !check(); await sleep(20)) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${check}`);
  }
}

test(
  "a viewer that reads nothing holds a bounded queue, pauses, and then loses nothing",
  { timeout: 30000 },
  async () => {
    const options = { sessionId: "backlog-1", backoffInitial: 20 };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    const viewer = await BambooClient.connect(url, { ...options, maxQueuedEvents: 100 });
    const states = [];
    viewer.on("state", ({ state }) => states.push(state));
    try {
      const content = "x".repeat(200);
      let peak = 0;
      for (let round = 0; round < 10; round++) {
        await publishMany(agent, 300, content);
        peak = Math.max(peak, viewer.queuedEvents);
      }
      await until(() => viewer.state === "paused");
      assert.ok(peak <= 100 && viewer.queuedEvents === 100, `${peak}, ${viewer.queuedEvents}`);
      assert.ok(viewer.skippedEvents > 0);
      const seqs = await take(viewer, 3000);
      assert.deepEqual(seqs, range(3000), "every event, in order, once");
      assert.ok(viewer.reconnects >= 1 && states.includes("paused"), String(states));
      // The queue's bytes: frames of about 280 bytes, 8 KiB at most, one frame over.
      const small = await BambooClient.connect(url, { ...options, maxQueuedBytes: 8192 });
      try {
        await publishMany(agent, 200, content);
        await until(() => small.state === "paused");
        assert.ok(small.queuedBytes >= 8192 - 300 && small.queuedBytes < 8192 + 300);
        assert.ok(small.queuedEvents < 40, String(small.queuedEvents));
        assert.deepEqual(
          await take(small, 200),
          range(200).map((i) => 3000 + i),
        );
      } finally {
        await small.close();
      }
    } finally {
      await viewer.close();
      await agent.close();
    }
  },
);

test(
  "requests are answered while the queue is full; skipped events come back after",
  { timeout: 30000 },
  async () => {
    const options = { sessionId: "backlog-2", backoffInitial: 20 };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    const viewer = await BambooClient.connect(url, { ...options, maxQueuedEvents: 20 });
    try {
      await publishMany(agent, 300);
      await until(() => viewer.state === "paused");
      // Each reconnects the viewer, which skips the replay until its reply has come.
      const own = await viewer.publish({ type: "token", content: "mine" });
      await viewer.ping();
      const page = await viewer.history();
      assert.equal(own, 301);
      assert.deepEqual(page.messages, []);
      assert.equal(viewer.queuedEvents, 20);
      await until(() => viewer.state === "paused");
      await publishMany(agent, 50);
      const expected = range(351).filter((seq) => seq !== own);
      assert.deepEqual(await take(viewer, expected.length), expected);
      assert.equal(viewer.lastSeq, 351);
    } finally {
      await viewer.close();
      await agent.close();
    }
  },
);

test(
  "without reconnect, a skipped event ends the client once the queue is read",
  { timeout: 15000 },
  async () => {
    const options = { sessionId: "backlog-3", backoffInitial: 20 };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    const viewer = await BambooClient.connect(url, {
      ...options,
      maxQueuedEvents: 20,
      reconnect: false,
    });
    try {
      await publishMany(agent, 100);
      await until(() => viewer.state === "paused");
      const seqs = [];
      let error = null;
      try {
        for await (const item of viewer.events()) seqs.push(item.seq);
      } catch (caught) {
        error = caught;
      }
      assert.deepEqual(seqs, range(20), "what it queued, no gap, then the error");
      assert.ok(error instanceof ConnectionLost, String(error));
      assert.match(error.message, /need a resume, and reconnect is off/);
      assert.equal(error.afterSeq, 20, "the seq to read after");
      assert.throws(() => new BambooClient(url, { maxQueuedEvents: 0 }), TypeError);
    } finally {
      await viewer.close();
      await agent.close();
    }
  },
);

/** The seqs `client.events()` yields until it ends, and the error it threw, or null. */
async function readToTheEnd(client) {
  const seqs = [];
  try {
    for await (const item of client.events()) seqs.push(item.reset ? "reset" : item.seq);
  } catch (error) {
    return { seqs, error };
  }
  return { seqs, error: null };
}

/** The seqs of the session's stored events after `afterSeq`, read over HTTP, page
 * after page. */
async function storedSeqs(sessionId, afterSeq, { server = url, token = null } = {}) {
  const base = server.replace(/^ws/, "http");
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const seqs = [];
  for (let after = afterSeq; ; after = seqs.at(-1)) {
    const response = await fetch(`${base}/api/v1/sessions/${sessionId}/events?after_seq=${after}`, {
      headers,
    });
    assert.equal(response.status, 200);
    const page = (await response.json()).events.map((event) => event.seq);
    if (page.length === 0) return seqs;
    seqs.push(...page);
  }
}

test(
  "a session closed while the queue was full, paused: events() says which seq to read after",
  { timeout: 15000 },
  async () => {
    const options = { sessionId: "backlog-4", backoffInitial: 20 };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    const viewer = await BambooClient.connect(url, { ...options, maxQueuedEvents: 20 });
    const states = [];
    viewer.on("state", (change) => states.push(change));
    try {
      await publishMany(agent, 200);
      await until(() => viewer.state === "paused");
      await agent.setState("closed");
      // Read down, it resumes: refused (4409), the skipped events are no more to come.
      const { seqs, error } = await readToTheEnd(viewer);
      assert.deepEqual(seqs, range(20), "what it queued, then the error");
      assert.ok(error instanceof ConnectionLost, `200 events published, 20 delivered: ${error}`);
      assert.equal(error.afterSeq, 20);
      assert.match(error.message, /after seq 20 not delivered .*after_seq=20\)$/);
      assert.ok(error.cause instanceof SessionEnded && error.cause.code === 4409);
      assert.equal(viewer.error, error);
      assert.equal(states.at(-1).error, error, "the state event carries it too");
      assert.deepEqual(await storedSeqs("backlog-4", 20), range(200).slice(20));
    } finally {
      await viewer.close();
      await agent.close();
    }
  },
);

test(
  "a session closed on a connection that skips events: events() says which seq to read after",
  { timeout: 15000 },
  async () => {
    const options = { sessionId: "backlog-5", backoffInitial: 20 };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    const viewer = await BambooClient.connect(url, { ...options, maxQueuedEvents: 20 });
    try {
      await publishMany(agent, 200);
      await until(() => viewer.state === "paused");
      // The requests resume it; the replay finds the queue full and is skipped. The
      // publish sent after `state` gets no reply: the close (1000) answers it, on that
      // skipping connection.
      const closing = viewer.setState("closed");
      const late = viewer.publish({ type: "token", content: "late" });
      assert.equal(await closing, 200);
      const outcome = await late.then(String, (caught) => caught);
      const { seqs, error } = await readToTheEnd(viewer);
      assert.deepEqual(seqs, range(20), "what it queued, then the error");
      assert.ok(error instanceof ConnectionLost, `200 events published, 20 delivered: ${error}`);
      assert.equal(error.afterSeq, 20);
      assert.ok(
        error.cause instanceof SessionEnded && error.cause.code === 1000,
        String(error.cause),
      );
      assert.ok(outcome === error || outcome instanceof ClientError, String(outcome));
      assert.deepEqual(await storedSeqs("backlog-5", 20), range(200).slice(20));
    } finally {
      await viewer.close();
      await agent.close();
    }
  },
);

test(
  "a session closed while the client is not behind ends events() normally",
  { timeout: 15000 },
  async () => {
    const options = { sessionId: "backlog-6", backoffInitial: 20 };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    const viewer = await BambooClient.connect(url, { ...options, maxQueuedEvents: 20 });
    try {
      // It skipped events once, and resumed them since: behind no more.
      await publishMany(agent, 60);
      await until(() => viewer.state === "paused");
      assert.deepEqual(await take(viewer, 60), range(60));
      await until(() => viewer.state === "open");
      await publishMany(agent, 10);
      await agent.setState("closed");
      const { seqs, error } = await readToTheEnd(viewer);
      assert.ok(viewer.skippedEvents > 0);
      assert.deepEqual(seqs, range(70).slice(60), "every event after those taken");
      assert.equal(error, null);
      assert.ok(viewer.error instanceof SessionEnded && viewer.error.code === 1000);
    } finally {
      await viewer.close();
      await agent.close();
    }
  },
);

/**
 * A TCP proxy to the server at `target` (a ws:// URL) that can stop reading what the
 * server sends: `hold(bytes)` lets that many more bytes through to the client, then
 * stops reading the server's socket (so the server's writes wait, as for a client that
 * reads slowly); `release()` reads and forwards on.
 */
async function holdingProxy(target) {
  const { hostname, port } = new URL(target);
  /** @type {Set<{ upstream: net.Socket, client: net.Socket }>} */
  const pairs = new Set();
  let allowance = Infinity;
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    const pair = { upstream, client };
    pairs.add(pair);
    client.on("data", (chunk) => upstream.write(chunk));
    upstream.on("data", (chunk) => {
      client.write(chunk);
      allowance -= chunk.length;
      if (allowance <= 0) upstream.pause();
    });
    client.on("end", () => upstream.end());
    upstream.on("end", () => client.end());
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", drop);
    upstream.on("close", drop);
    client.on("error", drop);
    upstream.on("error", drop);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", () => resolve(null)));
  return {
    url: `ws://127.0.0.1:${/** @type {net.AddressInfo} */ (proxy.address()).port}`,
    /** @param {number} bytes */
    hold(bytes) {
      allowance = bytes;
    },
    release() {
      allowance = Infinity;
      for (const { upstream } of pairs) upstream.resume();
    },
    close() {
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      return new Promise((resolve) => proxy.close(() => resolve(null)));
    },
  };
}

// A replay of 3,000 events of 4 KB: some 50 pages (512 events or 256 KiB each), and far
// more than the sockets' buffers hold, so one that is not read stops mid-way.
const REPLAYED = 3000;
const BIG = "r".repeat(4000);

// How long the server lets a replay go on after its session is closed: its
// --close-timeout (tests/test_js.py starts it with the default, 5 s).
const CLOSE_TIMEOUT_MS = 5000;

for (const waits of [false, true]) {
  test(
    waits
      ? "a session closed during a resume's replay not read in time: events() says which seq to read after"
      : "a session closed during a resume's replay read in time: the whole replay, then the end",
    { timeout: 40000 },
    async () => {
      const options = { sessionId: `replay-cut-1-${waits}`, backoffInitial: 20 };
      const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
      const proxy = await holdingProxy(url);
      let viewer = null;
      try {
        await publishMany(agent, REPLAYED, BIG);
        // The viewer reads slowly: the upgrade, the welcome and a few events, then
        // nothing until the session is closed, so the replay waits mid-way for room. The
        // queue is large enough for all of it: nothing is skipped.
        proxy.hold(64 * 1024);
        viewer = await BambooClient.connect(proxy.url, {
          ...options,
          lastSeq: 0,
          maxQueuedBytes: 256 * 1024 * 1024,
        });
        await agent.setState("closed");
        // Read within the close's bound, the replay comes whole; read past it, it was
        // cut where the bound found it (then `closed` and 1000, as read now).
        if (waits) await sleep(CLOSE_TIMEOUT_MS + 500);
        proxy.release();
        const { seqs, error } = await readToTheEnd(viewer);
        const got = seqs.length;
        assert.deepEqual(seqs, range(got), "what came, in order, no gap");
        assert.equal(viewer.skippedEvents, 0, "nothing skipped");
        if (!waits) {
          assert.equal(got, REPLAYED);
          assert.equal(error, null);
          assert.ok(viewer.error instanceof SessionEnded && viewer.error.code === 1000);
          return;
        }
        assert.ok(got < REPLAYED, `the bound cut the replay: ${got} of ${REPLAYED} came`);
        assert.ok(error instanceof ConnectionLost, `${got} of ${REPLAYED} delivered: ${error}`);
        assert.equal(error.afterSeq, got);
        assert.match(
          error.message,
          new RegExp(`after seq ${got} not delivered .*after_seq=${got}\\)$`),
        );
        assert.ok(error.cause instanceof SessionEnded, String(error.cause));
        assert.deepEqual(await storedSeqs(options.sessionId, got), range(REPLAYED).slice(got));
      } finally {
        await viewer?.close();
        await agent.close();
        await proxy.close();
      }
    },
  );
}

test(
  "a session closed after a resume's replay ends events() normally",
  { timeout: 15000 },
  async () => {
    const options = { sessionId: "replay-cut-2", backoffInitial: 20 };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    let viewer = null;
    try {
      await publishMany(agent, 300, BIG);
      viewer = await BambooClient.connect(url, { ...options, lastSeq: 0 });
      assert.deepEqual(await take(viewer, 300), range(300));
      // Its last seq is its own publish, known from the ack alone.
      assert.equal(await viewer.publish({ type: "token", content: "mine" }), 301);
      await agent.setState("closed");
      const { seqs, error } = await readToTheEnd(viewer);
      assert.deepEqual(seqs, []);
      assert.equal(error, null);
      assert.ok(viewer.error instanceof SessionEnded && viewer.error.code === 1000);
    } finally {
      await viewer?.close();
      await agent.close();
    }
  },
);

/**
 * A TCP proxy to the server at `target` (a ws:// URL) whose `drop(code)` ends every
 * connection through it as the server does when it closes one: a close frame with
 * `code` to the client, and the server's side cut. After `refuseHttp()`, a plain HTTP
 * request through it (no WebSocket upgrade) gets 503.
 */
async function droppingProxy(target) {
  const { hostname, port } = new URL(target);
  /** @type {Set<{ upstream: net.Socket, client: net.Socket }>} */
  const pairs = new Set();
  const state = { refuseHttp: false };
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    const pair = { upstream, client };
    pairs.add(pair);
    let first = true;
    client.on("data", (chunk) => {
      if (first && state.refuseHttp && !/^upgrade: *websocket/im.test(chunk.toString())) {
        upstream.destroy();
        client.end("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
      } else upstream.write(chunk);
      first = false;
    });
    upstream.on("data", (chunk) => client.write(chunk));
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on("end", drop);
      socket.on("close", drop);
      socket.on("error", drop);
    }
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", () => resolve(null)));
  return {
    url: `ws://127.0.0.1:${/** @type {net.AddressInfo} */ (proxy.address()).port}`,
    /** Answer 503 to every new request through it but WebSocket upgrades. */
    refuseHttp() {
      state.refuseHttp = true;
    },
    /** @param {number} code */
    drop(code) {
      for (const { client, upstream } of pairs) {
        upstream.destroy();
        client.end(Buffer.from([0x88, 2, code >> 8, code & 0xff]));
      }
    },
    close() {
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      return new Promise((resolve) => proxy.close(() => resolve(null)));
    },
  };
}

test(
  "a publish-only client closed with 4429, then refused with 4409, owes no events",
  { timeout: 15000 },
  async () => {
    const options = { sessionId: "publish-only-4429" };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    const proxy = await droppingProxy(url);
    let publisher = null;
    try {
      publisher = await BambooClient.connect(proxy.url, {
        ...options,
        receiveEvents: false,
        backoffInitial: 1000,
      });
      assert.equal(await publisher.publish({ type: "token", content: "mine" }), 1);
      await agent.publish({ type: "token", content: "theirs" });
      proxy.drop(4429); // as the server closes a connection over the frame rate
      await until(() => publisher.state === "reconnecting");
      await agent.setState("closed");
      const { seqs, error } = await readToTheEnd(publisher);
      assert.deepEqual(seqs, [], "a publish-only client gets no events");
      assert.equal(error, null, `nothing was due to it: ${error}`);
      assert.ok(publisher.error instanceof SessionEnded, String(publisher.error));
      assert.equal(publisher.error.code, 4409);
    } finally {
      await publisher?.close();
      await agent.close();
      await proxy.close();
    }
  },
);

/**
 * A viewer (through a dropping proxy) gets events 1..5; its connection is closed with
 * 1012, as at a server restart; while it waits to resume, the agent publishes `added`
 * more events and closes the session, so the resume is refused with 4409. What
 * `events()` yields after 1..5, and the error it threw, or null. `auth`: on the server
 * with auth, both clients with tokens, the viewer's from a function (asked before each
 * connection and before the HTTP request); `badHttpToken`: the third token it gives,
 * the one the HTTP request carries, is signed with another key (the server says 401).
 */
async function closedWhileAway(
  sessionId,
  added,
  { refuseHttp = false, auth = false, badHttpToken = false } = {},
) {
  const server = auth ? authUrl : url;
  const tokens = [];
  const viewerToken = async () => {
    const forged = badHttpToken && tokens.length >= 2; // the connect, the resume, then HTTP
    tokens.push(makeToken("alice", 300, forged ? "o".repeat(32) : secret));
    return tokens.at(-1);
  };
  const agent = await BambooClient.connect(server, {
    sessionId,
    create: true,
    role: "agent",
    token: auth ? makeToken("alice", 300) : undefined,
  });
  const proxy = await droppingProxy(server);
  let viewer = null;
  try {
    viewer = await BambooClient.connect(proxy.url, {
      sessionId,
      backoffInitial: 1000,
      token: auth ? viewerToken : undefined,
    });
    await publishMany(agent, 5);
    assert.deepEqual(await take(viewer, 5), range(5));
    proxy.drop(1012);
    await until(() => viewer.state === "reconnecting");
    await publishMany(agent, added);
    await agent.setState("closed");
    if (refuseHttp) proxy.refuseHttp();
    const outcome = await readToTheEnd(viewer);
    const stored = await storedSeqs(sessionId, 5, {
      server,
      token: auth ? makeToken("alice", 300) : null,
    });
    assert.deepEqual(stored, range(5 + added).slice(5));
    if (auth) assert.equal(tokens.length, 3, "the connect, the resume, the HTTP request");
    return { ...outcome, ended: viewer.error };
  } finally {
    await viewer?.close();
    await agent.close();
    await proxy.close();
  }
}

for (const auth of [false, true]) {
  const under = auth ? "under auth, " : "";
  const tag = auth ? "away-auth" : "away";

  test(
    `${under}a session closed while the viewer was away, with events added: events() says which seq to read after`,
    { timeout: 15000 },
    async () => {
      const { seqs, error } = await closedWhileAway(`${tag}-1`, 5, { auth });
      assert.deepEqual(seqs, []);
      assert.ok(error instanceof ConnectionLost, `5 events added while it was away: ${error}`);
      assert.equal(error.afterSeq, 5);
      assert.match(error.message, /after seq 5 not delivered .*after_seq=5\)$/);
      assert.ok(error.cause instanceof SessionEnded && error.cause.code === 4409);
    },
  );

  test(
    `${under}a session closed while the viewer was away, with nothing added, ends events() normally`,
    { timeout: 15000 },
    async () => {
      const { seqs, error, ended } = await closedWhileAway(`${tag}-2`, 0, { auth });
      assert.deepEqual(seqs, []);
      assert.equal(error, null, `nothing was added: ${error}`);
      assert.ok(ended instanceof SessionEnded && ended.code === 4409, String(ended));
    },
  );
}

test(
  "a session closed while the viewer was away, and the server cannot be asked: events may be missing",
  { timeout: 15000 },
  async () => {
    const { seqs, error } = await closedWhileAway("away-3", 0, { refuseHttp: true });
    assert.deepEqual(seqs, []);
    assert.ok(error instanceof ConnectionLost, `the HTTP API answered 503: ${error}`);
    assert.equal(error.afterSeq, 5);
    assert.match(
      error.message,
      /after seq 5 may not have been delivered .*HTTP 503.*after_seq=5\)$/,
    );
    assert.ok(error.cause instanceof SessionEnded && error.cause.code === 4409);
  },
);

test(
  "under auth, a token the HTTP API refuses: the events after seq 5 may be missing",
  { timeout: 15000 },
  async () => {
    const { seqs, error } = await closedWhileAway("away-auth-3", 0, {
      auth: true,
      badHttpToken: true,
    });
    assert.deepEqual(seqs, []);
    assert.ok(error instanceof ConnectionLost, `the HTTP API refused the token: ${error}`);
    assert.equal(error.afterSeq, 5);
    assert.match(
      error.message,
      /after seq 5 may not have been delivered .*HTTP 401.*after_seq=5\)$/,
    );
    assert.ok(error.cause instanceof SessionEnded && error.cause.code === 4409);
  },
);
