// The JavaScript client on Node (node:test), against the server whose ws:// URL is in
// BAMBOO_URL: tests/test_js_node.py starts one and runs this file.
import assert from "node:assert/strict";
import { test } from "node:test";

import { BambooClient, NotFound, SessionEnded, streamUrl } from "../../server/web/client/bamboo.js";

const url = process.env.BAMBOO_URL;

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

test("a missing session is a typed refusal", async () => {
  await assert.rejects(BambooClient.connect(url, { sessionId: "node-missing" }), (error) => {
    assert.ok(error instanceof NotFound);
    assert.equal(error.code, 4404);
    return true;
  });
});
