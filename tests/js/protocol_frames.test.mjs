// The outside check of the wire contract (outside.mjs): transport, handshake, bad frames,
// null as an absent field, frame and rate limits.
// Run by tests/test_js_protocol.py; by hand:
//   BAMBOO_PYTHON=.venv/bin/python node --test tests/js/protocol_*.test.mjs
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  RFC3339_UTC,
  ERROR_CODES,
  METADATA_FIELDS,
  main,
  tight,
  sid,
  Peer,
  connect,
  attach,
  token,
  assertError,
  assertOpen,
  useServers,
  WELCOME_MS,
} from "./outside.mjs";
import { upgrade } from "./wire.mjs";

useServers("main", "tight");

// The 10 s hello deadline runs beside everything else (awaited by the last test).
let helloDeadline;
const HELLO_TIMEOUT_MS = 10000; // main: --hello-timeout (the default)
// A wait that tells the deadline from none, or from a later look (the keepalive's
// Ping, every 20 s), on a loaded machine: not a speed.
const HELLO_GUARD_MS = 19000;

// ---- Transport ----

test("transport: subprotocols, endpoints, session ids", async () => {
  helloDeadline = (async () => {
    const start = Date.now(); // before the connection: its deadline runs from later
    const peer = await connect(main.port, sid("nohello"));
    const end = await peer.closeCode(HELLO_GUARD_MS);
    return { ...end, elapsed: Date.now() - start };
  })();

  // No subprotocol: JSON, and the response names none.
  const bare = await upgrade(main.port, `/api/v1/stream/${sid("bare")}`);
  assert.equal(bare.status, 101);
  assert.equal(bare.headers["sec-websocket-protocol"], undefined);
  const barePeer = new Peer(bare.ws);
  barePeer.send({ type: "hello", create: true });
  assert.equal((await barePeer.recv(WELCOME_MS)).type, "welcome");
  barePeer.close();

  const json = await upgrade(main.port, `/api/v1/stream/${sid("json")}`, {
    protocols: ["bamboo.v1"],
  });
  assert.equal(json.headers["sec-websocket-protocol"], "bamboo.v1");
  json.ws.destroy();
  const mp = await upgrade(main.port, `/api/v1/stream/${sid("mp")}`, {
    protocols: ["bamboo.v1.msgpack"],
  });
  assert.equal(mp.headers["sec-websocket-protocol"], "bamboo.v1.msgpack");
  mp.ws.destroy();

  // The server picks the id on /api/v1/stream.
  const { peer, welcome } = await attach(main.port, null, { user_id: "u-new" });
  assert.match(welcome.session.id, /^[A-Za-z0-9_.-]{1,128}$/);
  assert.equal(welcome.session.user_id, "u-new");
  peer.close();

  // Ids: [A-Za-z0-9_.-]{1,128}, not . or .., else 400 before the upgrade.
  for (const bad of [".", "..", "x".repeat(129), "a%20b", "a@b", "a%2Fb", "%2E%2E", "é"]) {
    const res = await upgrade(main.port, `/api/v1/stream/${bad}`, { protocols: ["bamboo.v1"] });
    assert.equal(res.status, 400, `session id ${JSON.stringify(bad)}: ${res.status}`);
    if (res.ws) res.ws.destroy();
  }
  const longest = "A-z_0.9" + "x".repeat(121);
  const ok = await attach(main.port, longest, { create: true });
  assert.equal(ok.welcome.session.id, longest);
  ok.peer.close();
});

test("msgpack carries the same objects as JSON", async () => {
  const id = sid("mp");
  const { peer: a, welcome } = await attach(main.port, id, { create: true }, { msgpack: true });
  assert.equal(welcome.resumed, false);
  assert.equal(typeof welcome.epoch, "string");
  const { peer: b } = await attach(main.port, id, {});
  const ack = await a.request(
    {
      type: "event",
      id: 1,
      event: { type: "custom", name: "n", data: { x: [1, 2.5, "s", null, true] } },
    },
    "ack",
  );
  assert.deepEqual(ack, { type: "ack", id: 1, seq: 1 });
  const ev = await b.recvType("event");
  assert.deepEqual(ev.event, { type: "custom", name: "n", data: { x: [1, 2.5, "s", null, true] } });
  const page = await a.request({ type: "events", id: 2 }, "events");
  assert.deepEqual(page.events, [{ seq: 1, ts: ev.ts, event: ev.event }]);
  a.close();
  b.close();
});

// ---- Handshake ----

test("hello: create, 4404 without it, user_id and title only on creation", async () => {
  const id = sid("hello");
  const missing = await connect(main.port, id);
  missing.send({ type: "hello" });
  const end = await missing.closeCode(WELCOME_MS);
  assert.equal(end.close, 4404);
  assert.deepEqual(end.frames, [], "4404 comes with no frame");

  const { peer, welcome } = await attach(main.port, id, {
    create: true,
    user_id: "u1",
    title: "T1",
    role: "agent",
  });
  assert.match(welcome.connection_id, /./);
  for (const f of ["connection_id", "session", "epoch", "last_seq", "resumed", "replay"]) {
    assert.ok(f in welcome, `welcome.${f}`);
  }
  assert.equal(welcome.last_seq, 0);
  assert.equal(welcome.resumed, false);
  assert.equal(welcome.replay, 0);
  for (const f of METADATA_FIELDS) assert.ok(f in welcome.session, `session.${f}`);
  const s = welcome.session;
  assert.equal(s.id, id);
  assert.equal(s.user_id, "u1");
  assert.equal(s.title, "T1");
  assert.equal(s.state, "active");
  assert.equal(s.epoch, welcome.epoch);
  assert.equal(s.last_seq, 0);
  assert.equal(s.connections, 1);
  assert.equal(s.message_count, 0);
  assert.deepEqual(s.extra, {});
  for (const f of ["created_at", "updated_at", "last_activity_at"]) assert.match(s[f], RFC3339_UTC);

  // A second create is a get: user_id and title are those of the creation.
  const again = await attach(main.port, id, { create: true, user_id: "u2", title: "T2" });
  assert.equal(again.welcome.session.user_id, "u1");
  assert.equal(again.welcome.session.title, "T1");
  assert.equal(again.welcome.session.connections, 2);
  assert.equal(again.welcome.epoch, welcome.epoch);
  // The first peer sees the second join (presence: joined, role, connections).
  const joined = await peer.recvType("presence");
  assert.deepEqual(joined, {
    type: "presence",
    joined: again.welcome.connection_id,
    role: "client",
    connections: 2,
  });
  again.peer.close();
  const left = await peer.recvType("presence");
  assert.deepEqual(left, {
    type: "presence",
    left: again.welcome.connection_id,
    role: "client",
    connections: 1,
  });
  peer.close();
});

test("hello: a first frame that is not a valid hello is bad_request, then 1008", async () => {
  const cases = [
    ["ping first", JSON.stringify({ type: "ping", id: "p1" }), "p1"],
    [
      "event first",
      JSON.stringify({ type: "event", id: 3, event: { type: "token", content: "x" } }),
      3,
    ],
    ["malformed JSON", '{"type": "hello",', undefined],
    ["not an object", "[1, 2]", undefined],
    ["no type", JSON.stringify({ id: 4 }), 4],
    ["create not a boolean", JSON.stringify({ type: "hello", id: 5, create: "yes" }), 5],
    ["negative last_seq", JSON.stringify({ type: "hello", id: 6, create: true, last_seq: -1 }), 6],
    ["last_seq a string", JSON.stringify({ type: "hello", id: 7, create: true, last_seq: "3" }), 7],
    ["role unknown", JSON.stringify({ type: "hello", id: 8, create: true, role: "boss" }), 8],
    ["token a number", JSON.stringify({ type: "hello", id: 9, create: true, token: 5 }), 9],
  ];
  for (const [name, text, id] of cases) {
    const peer = await connect(main.port, sid("bad-hello"));
    peer.ws.sendText(text);
    const end = await peer.closeCode();
    assert.equal(end.close, 1008, `${name}: ${JSON.stringify(end)}`);
    assert.equal(end.frames.length, 1, `${name}: ${JSON.stringify(end.frames)}`);
    assertError(end.frames[0], "bad_request", id);
  }
});

test("hello: a second hello is bad_request and the connection stays open", async () => {
  const { peer } = await attach(main.port, sid("dup"), { create: true });
  peer.send({ type: "hello", id: "h2", create: true });
  assertError(await peer.recv(), "bad_request", "h2");
  await assertOpen(peer);
  peer.close();
});

// ---- Frames ----

test("bad frames get bad_request, with the id when readable, and the connection stays open", async () => {
  const { peer } = await attach(main.port, sid("bad"), { create: true });
  const cases = [
    ['{"type": "ping", "id": 1', undefined],
    ["[]", undefined],
    ['"hello"', undefined],
    ["null", undefined],
    [{ id: 10 }, 10],
    [{ type: 5, id: 11 }, 11],
    [{ type: "nope", id: 12 }, 12],
    [{ type: "event", id: 13 }, 13],
    [{ type: "event", id: 14, event: { type: "nope" } }, 14],
    [{ type: "event", id: 15, event: { type: "token" } }, 15],
    [{ type: "event", id: 16, event: { type: "token", content: 5 } }, 16],
    [{ type: "event", id: 17, event: "token" }, 17],
    [{ type: "event", id: 18, key: 5, event: { type: "token", content: "x" } }, 18],
    [{ type: "event", id: 19, key: "k".repeat(129), event: { type: "token", content: "x" } }, 19],
    [{ type: "message", id: 20, message: { role: "robot", content: "x" } }, 20],
    [{ type: "message", id: 21, message: { role: "user" } }, 21],
    [{ type: "history", id: 22, limit: "5" }, 22],
    [{ type: "events", id: 23, after_seq: -1 }, 23],
    [{ type: "state", id: 24, state: "sleeping" }, 24],
    [{ type: "state", id: 25 }, 25],
    [{ type: "ping", id: 1.5 }, undefined],
    [{ type: "ping", id: true }, undefined],
    [{ type: "ping", id: [1] }, undefined],
    [{ type: "event", id: "s", event: { type: "complete", usage: { prompt_tokens: "1" } } }, "s"],
    [
      { type: "event", id: 26, event: { type: "tool_complete", tool_call_id: "c", result: {} } },
      26,
    ],
  ];
  for (const [frame, id] of cases) {
    if (typeof frame === "string") peer.ws.sendText(frame);
    else peer.send(frame);
    const reply = await peer.recv();
    assert.ok(
      reply.close === undefined,
      `${JSON.stringify(frame)} closed: ${JSON.stringify(reply)}`,
    );
    assertError(reply, "bad_request", id);
    assert.ok(ERROR_CODES.includes(reply.code));
  }
  // None of it was appended.
  const page = await peer.request({ type: "events", id: "e" }, "events");
  assert.deepEqual(page.events, []);
  assert.equal(page.last_seq, 0);
  // Unknown fields are ignored, at the frame and in the event.
  const ack = await peer.request(
    { type: "event", id: "u", extra: 1, event: { type: "token", content: "x", junk: 2 } },
    "ack",
  );
  assert.equal(ack.seq, 1);
  await assertOpen(peer);
  peer.close();
});

test("null for an optional field is the same as leaving it out; for a required one, bad_request", async () => {
  for (const msgpack of [false, true]) {
    const id = sid(msgpack ? "nulls-mp" : "nulls");
    const hello = { create: true, role: null, token: null, last_seq: null, epoch: null };
    const { peer: pub } = await attach(main.port, id, hello, { msgpack });
    const { peer: viewer } = await attach(main.port, id, { create: null, role: null }, { msgpack });
    const joined = await pub.recvType("presence");
    assert.equal(joined.role, "client");
    const nulls = {
      id: null,
      created_at: null,
      tool_calls: null,
      tool_call_id: null,
      metadata: null,
    };
    const result = { success: true, content: null, error: null };
    const usage = { prompt_tokens: null, completion_tokens: 2, total_tokens: null };
    const sent = [
      { type: "message", message: { role: "user", content: "hi", ...nulls } },
      { type: "tool_complete", tool_call_id: "c", result },
      { type: "complete", usage },
      { type: "error", message: "m", code: null },
    ];
    for (const [i, event] of sent.entries()) {
      const ack = await pub.request({ type: "event", id: null, key: null, event }, "ack");
      assert.deepEqual(ack, { type: "ack", seq: i + 1 });
    }
    const got = [];
    for (let i = 0; i < sent.length; i++) got.push((await viewer.recvType("event")).event);
    const { id: messageId, created_at: createdAt, ...message } = got[0].message;
    assert.match(messageId, /^m_/);
    assert.match(createdAt, RFC3339_UTC);
    assert.deepEqual(message, { role: "user", content: "hi" });
    assert.deepEqual(got.slice(1), [
      { type: "tool_complete", tool_call_id: "c", result: { ...result, content: "" } },
      { type: "complete", usage: { prompt_tokens: 0, completion_tokens: 2, total_tokens: 0 } },
      { type: "error", message: "m" },
    ]);
    for (const [n, frame] of [
      { type: "event", event: null },
      { type: "event", event: { type: "token", content: null } },
      { type: "message", message: { role: "user", content: null } },
      { type: "state", state: null },
    ].entries()) {
      assertError(await pub.request({ ...frame, id: n }, "error"), "bad_request", n);
    }
    pub.close();
    viewer.close();
  }
});

test("a frame larger than 1 MiB closes 1009; one of exactly 1 MiB is read", async () => {
  /** An event frame of exactly `size` bytes, 1,024 of them in a field the server ignores:
   * its event leaves room for the envelope of the frames viewers get it in
   * (docs/protocol.md, MessagePack), so it is stored. */
  const frameOf = (size) => {
    const pad = "p".repeat(1024);
    const base = JSON.stringify({
      type: "event",
      id: 1,
      pad,
      event: { type: "token", content: "" },
    });
    return JSON.stringify({
      type: "event",
      id: 1,
      pad,
      event: { type: "token", content: "z".repeat(size - base.length) },
    });
  };
  const { peer } = await attach(main.port, sid("big"), { create: true });
  peer.ws.sendText(frameOf(1024 * 1024 + 1));
  const end = await peer.closeCode(10000);
  assert.equal(end.close, 1009, JSON.stringify(end));
  const { peer: p2 } = await attach(main.port, sid("big-ok"), { create: true });
  p2.ws.sendText(frameOf(1024 * 1024));
  assert.deepEqual(await p2.recvType("ack"), { type: "ack", id: 1, seq: 1 });
  // Fragmented, the limit is on the whole message.
  for (let i = 0; i < 4; i++) p2.ws.sendFrame(i ? 0 : 1, Buffer.alloc(300000, 0x20), false);
  p2.ws.sendFrame(0, Buffer.from("{}"), true);
  assert.equal((await p2.closeCode(10000)).close, 1009);
  // Before hello too.
  const p3 = await connect(main.port, sid("big-first"));
  p3.ws.sendText(JSON.stringify({ type: "hello", create: true, title: "t".repeat(1024 * 1024) }));
  assert.equal((await p3.closeCode(10000)).close, 1009);
});

test("a text frame that is not UTF-8 closes 1007 (RFC 6455)", async () => {
  const { peer } = await attach(main.port, sid("utf8"), { create: true });
  peer.ws.sendFrame(1, Buffer.from([0x7b, 0xff, 0xfe, 0x7d]));
  assert.equal((await peer.closeCode()).close, 1007);
});

test("limits: 1013 at the session limit, 4429 per user, rate_limited then 4429", async () => {
  const a = await attach(tight.port, sid("lim"), { create: true, user_id: "lim-1" });
  let end = await (async () => {
    const p = await connect(tight.port, sid("lim"));
    p.send({ type: "hello", create: true, user_id: "lim-1" });
    return p.closeCode();
  })();
  assert.equal(end.close, 4429, JSON.stringify(end));
  assert.deepEqual(end.frames, []);
  const b = await attach(tight.port, sid("lim"), { create: true, user_id: "lim-2" });
  const c = await connect(tight.port, sid("lim"));
  c.send({ type: "hello", create: true, user_id: "lim-3" });
  end = await c.closeCode();
  assert.equal(end.close, 1013, JSON.stringify(end));
  assert.deepEqual(end.frames, []);
  // 2 frames a second: the third is refused, the connection stays open.
  for (const id of [1, 2, 3]) b.peer.send({ type: "ping", id });
  assert.deepEqual(await b.peer.recv(), { type: "pong", id: 1 });
  assert.deepEqual(await b.peer.recv(), { type: "pong", id: 2 });
  assertError(await b.peer.recv(), "rate_limited", 3);
  // Flooding past the refusals closes 4429.
  for (let i = 0; i < 60; i++) b.peer.send({ type: "ping", id: 100 + i });
  end = await b.peer.closeCode();
  assert.equal(end.close, 4429, JSON.stringify(end.close));
  assert.ok(end.frames.every((f) => f.type === "pong" || f.code === "rate_limited"));
  a.peer.close();
});

test("no hello within 10 s closes 4408, with no frame", async () => {
  const end = await helloDeadline;
  assert.equal(end.close, 4408, JSON.stringify(end));
  assert.deepEqual(end.frames, []);
  // Not before the deadline (Date.now() is in whole ms), and at it, not at a later look.
  assert.ok(end.elapsed + 1 >= HELLO_TIMEOUT_MS, `4408 after ${end.elapsed} ms`);
  assert.ok(end.elapsed < HELLO_GUARD_MS, `4408 after ${end.elapsed} ms`);
});
