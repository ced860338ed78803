// The JavaScript client on Node (node:test), against the server whose ws:// URL is in
// BAMBOO_URL: URLs, publishing and reading, refusals, and a viewer's bounded queue.
// tests/test_js.py starts the servers and runs this file beside the other
// client*.test.mjs (helpers: client_support.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  BambooClient,
  ClientError,
  ConnectionLost,
  NotFound,
  SessionEnded,
  streamUrl,
} from "../../server/web/client/bamboo.js";

import {
  url,
  range,
  publishMany,
  take,
  until,
  readToTheEnd,
  storedSeqs,
  droppingProxy,
} from "./client_support.mjs";

test("stream URLs", () => {
  assert.equal(streamUrl("ws://h:1"), "ws://h:1/api/v1/stream");
  assert.equal(streamUrl("http://h:1/", "a.b"), "ws://h:1/api/v1/stream/a.b");
  assert.equal(streamUrl("https://h/api/v1/stream", "x"), "wss://h/api/v1/stream/x");
  assert.throws(() => streamUrl("ftp://h"), TypeError);
  assert.throws(() => streamUrl("ws://h", ".."), TypeError);
});

test("the reconnecting state says which close the client saw", async () => {
  const proxy = await droppingProxy(url);
  const options = { sessionId: "why-reconnecting", backoffInitial: 20 };
  const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
  const viewer = await BambooClient.connect(proxy.url, options);
  const changes = [];
  viewer.on("state", (change) => changes.push(change));
  try {
    proxy.drop(1012, "server restarting");
    await until(() => changes.length === 2); // reconnecting, open
    proxy.cut(); // no close frame
    await until(() => changes.length === 4);
    assert.deepEqual(changes, [
      { state: "reconnecting", code: 1012, reason: "server restarting" },
      { state: "open" },
      { state: "reconnecting", code: null, reason: "connection lost" },
      { state: "open" },
    ]);
  } finally {
    await viewer.close();
    await agent.close();
    await proxy.close();
  }
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

test("a lone surrogate is refused before it is sent, the client going on", async () => {
  const agent = await BambooClient.connect(url, { sessionId: "node-lone-surrogate", create: true });
  try {
    // The server can only refuse such a frame whole, with no id: the publish never settled.
    await assert.rejects(agent.publish({ type: "token", content: "a\ud800" }), TypeError);
    await assert.rejects(agent.sendMessage({ role: "user", content: "\udfff" }), TypeError);
    const token = { type: "token", content: "\\ud800 \ud83d\ude00" }; // escaped, a pair: text
    assert.equal(await agent.publish(token), 1);
    assert.deepEqual(
      (await agent.readAllEvents()).map((e) => e.event.content),
      [token.content],
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
  "a viewer that reads nothing holds a bounded queue, pauses, and then loses nothing",
  { timeout: 60000 },
  async () => {
    const options = { sessionId: "backlog-1", backoffInitial: 20 };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    const viewer = await BambooClient.connect(url, { ...options, maxQueuedEvents: 100 });
    const states = [];
    viewer.on("state", ({ state }) => states.push(state));
    try {
      const content = "x".repeat(200);
      // Ten times the queue, two replay pages (512 events) and more: each resume of the
      // read below brings a page, of which the queue takes 100. 3,000 events (some 30
      // resumes, each sent up to a whole replay before its close, and 30 round trips of
      // 100 publishes, each awaiting its fsync) took over 30 s on a starved machine
      // (a load of 30 on two cores), 1,000 took 15 to 21 s.
      const total = 1000;
      let peak = 0;
      for (let round = 0; round < 4; round++) {
        await publishMany(agent, total / 4, content);
        peak = Math.max(peak, viewer.queuedEvents);
      }
      await until(() => viewer.state === "paused");
      assert.ok(peak <= 100 && viewer.queuedEvents === 100, `${peak}, ${viewer.queuedEvents}`);
      assert.ok(viewer.skippedEvents > 0);
      const seqs = await take(viewer, total);
      assert.deepEqual(seqs, range(total), "every event, in order, once");
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
          range(200).map((i) => total + i),
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
