// The outside check of the wire contract (outside.mjs), as a client author in another
// language reads it: the statements of PROTOCOL.md and docs/protocol.md that the other
// protocol_* files leave out. Here: subprotocol offers (an empty one too), paths, ids,
// integers, requests before welcome, page limits, the idempotency key window, msgpack's
// errors and pages.
// Run by tests/test_js_protocol.py; by hand:
//   BAMBOO_PYTHON=.venv/bin/python node --test tests/js/protocol_*.test.mjs
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  RFC3339_UTC,
  main as server, // no auth, no frame rate (the window test appends 10,001 events)
  slow,
  sid,
  Peer,
  connect,
  attach,
  assertError,
  assertOpen,
  useServers,
  WELCOME_MS,
} from "./outside.mjs";
import { httpGet, mpEncode, upgrade } from "./wire.mjs";

useServers("main", "slow");

const errorBody = (res, code) => {
  assert.match(res.headers["content-type"] ?? "", /^application\/json/, JSON.stringify(res));
  assert.equal(JSON.parse(res.body).error.code, code, res.body);
  assert.equal(typeof JSON.parse(res.body).error.message, "string");
};

// ---- Transport ----

test("subprotocols: the first offer the server speaks; an empty offer is none; only unknown ones are a 400", async () => {
  const port = server.port;
  const offers = [
    [["x-unknown", "bamboo.v1.msgpack", "bamboo.v1"], "bamboo.v1.msgpack"],
    [["bamboo.v1", "bamboo.v1.msgpack"], "bamboo.v1"],
    [["x-unknown", "bamboo.v1"], "bamboo.v1"],
  ];
  for (const [protocols, chosen] of offers) {
    const res = await upgrade(port, `/api/v1/stream/${sid("offer")}`, { protocols });
    assert.equal(res.status, 101, `${protocols}: ${res.status}`);
    assert.equal(res.headers["sec-websocket-protocol"], chosen, `${protocols}`);
    const peer = new Peer(res.ws, chosen === "bamboo.v1.msgpack");
    peer.send({ type: "hello", create: true });
    assert.equal((await peer.recv(WELCOME_MS)).type, "welcome");
    peer.close();
  }
  // A header with no element in it offers nothing, as no header would (RFC 9110
  // 5.6.1.2: empty list elements are ignored): JSON. A client that joins an empty list
  // of offers sends `Sec-WebSocket-Protocol: ` (upgrade() here does, given []).
  const none = [{ protocols: [] }, { headers: { "Sec-WebSocket-Protocol": " , " } }];
  for (const offer of none) {
    const res = await upgrade(port, `/api/v1/stream/${sid("offer")}`, offer);
    assert.equal(res.status, 101, `${JSON.stringify(offer)}: ${res.status} ${res.body}`);
    assert.equal(res.headers["sec-websocket-protocol"], undefined, JSON.stringify(offer));
    const peer = new Peer(res.ws, false);
    peer.send({ type: "hello", create: true });
    assert.equal((await peer.recv(WELCOME_MS)).type, "welcome");
    peer.close();
  }
  const split = await upgrade(port, `/api/v1/stream/${sid("offer")}`, {
    protocols: [],
    headers: { "Sec-WebSocket-Protocol": "bamboo.v1.msgpack" },
  });
  assert.equal(split.status, 101, `${split.status} ${split.body}`);
  assert.equal(split.headers["sec-websocket-protocol"], "bamboo.v1.msgpack");
  const packed = new Peer(split.ws, true);
  packed.send({ type: "hello", create: true });
  assert.equal((await packed.recv(WELCOME_MS)).type, "welcome");
  packed.close();
  const refused = await upgrade(port, `/api/v1/stream/${sid("offer")}`, {
    protocols: ["bamboo.v2", "json"],
  });
  assert.equal(refused.status, 400);
  errorBody(refused, "bad_request");
});

test("paths: 404 elsewhere, 400 for an empty or nested id, percent-decoding, query ignored, 426 without upgrade", async () => {
  const port = server.port;
  const other = await upgrade(port, "/api/v1/streams/x", { protocols: ["bamboo.v1"] });
  assert.equal(other.status, 404);
  errorBody(other, "not_found");
  for (const p of ["/api/v1/stream/", "/api/v1/stream/a/b"]) {
    const res = await upgrade(port, p, { protocols: ["bamboo.v1"] });
    assert.equal(res.status, 400, p);
    errorBody(res, "bad_request");
  }
  const base = sid("pct");
  const decoded = await attach(port, `${base}%2Db`, { create: true });
  assert.equal(decoded.welcome.session.id, `${base}-b`);
  decoded.peer.close();
  const query = await attach(port, `${base}-q?create=false&x=1`, { create: true });
  assert.equal(query.welcome.session.id, `${base}-q`);
  query.peer.close();
  for (const p of [`/api/v1/stream/${base}-b`, "/api/v1/stream"]) {
    const plain = await httpGet(port, p);
    assert.equal(plain.status, 426, p);
    assert.match(plain.headers.upgrade ?? "", /websocket/i);
    errorBody(plain, "bad_request");
  }
});

// ---- Frames ----

test("ids: strings of up to 128 characters and signed 64-bit integers are echoed, 0 and empty included; others are not", async () => {
  const { peer } = await attach(server.port, sid("ids"), { create: true });
  for (const id of [0, "", -5, "x".repeat(128), "\u{10ffff}".repeat(128)]) {
    assert.deepEqual(await peer.request({ type: "ping", id }, "pong"), { type: "pong", id });
  }
  // A longer string is an invalid id, answered without it (docs/protocol.md).
  peer.send({ type: "ping", id: "x".repeat(129) });
  assertError(await peer.recv(), "bad_request", undefined);
  // Read as text: a JavaScript number cannot hold these exactly.
  for (const text of ["9223372036854775807", "-9223372036854775808"]) {
    peer.ws.sendText(`{"type": "ping", "id": ${text}}`);
    const item = await peer.ws.next();
    assert.match(item.data, new RegExp(`"id":\\s*${text}\\b`), item.data);
  }
  for (const text of ["9223372036854775808", "-9223372036854775809"]) {
    peer.ws.sendText(`{"type": "ping", "id": ${text}}`);
    assertError(await peer.recv(), "bad_request", undefined);
  }
  // Integers are integers: 1.0 for a limit, 1 for a boolean, are bad_request.
  peer.ws.sendText('{"type": "history", "id": "f", "limit": 1.0}');
  assertError(await peer.recv(), "bad_request", "f");
  peer.ws.sendText('{"type": "events", "id": "g", "limit": 0}');
  assertError(await peer.recv(), "bad_request", "g");
  peer.ws.sendText('{"type": "history", "id": "h", "limit": 0}');
  assertError(await peer.recv(), "bad_request", "h");
  peer.ws.sendText('{"type": "history", "id": "i", "before": -1}');
  assertError(await peer.recv(), "bad_request", "i");
  peer.ws.sendText(
    '{"type": "event", "id": "j", "event": {"type": "tool_complete", "tool_call_id": "c", "result": {"success": 1}}}',
  );
  assertError(await peer.recv(), "bad_request", "j");
  await assertOpen(peer);
  peer.close();
});

test("unknown fields are dropped, never stored or forwarded", async () => {
  const id = sid("unknown");
  const { peer: pub } = await attach(server.port, id, { create: true, junk: 1 });
  const { peer: viewer } = await attach(server.port, id, {});
  await pub.request(
    {
      type: "message",
      id: 1,
      junk: true,
      message: {
        role: "assistant",
        content: "c",
        junk: 2,
        tool_calls: [{ id: "t", name: "n", arguments: { keep: 1 }, junk: 3 }],
      },
    },
    "ack",
  );
  const ev = await viewer.recvType("event");
  const { id: mid, created_at: at, ...rest } = ev.event.message;
  assert.match(mid, /./);
  assert.match(at, RFC3339_UTC);
  assert.deepEqual(rest, {
    role: "assistant",
    content: "c",
    tool_calls: [{ id: "t", name: "n", arguments: { keep: 1 } }],
  });
  const hist = await viewer.request({ type: "history", id: "h" }, "history");
  assert.deepEqual(hist.messages, [ev.event.message]);
  pub.close();
  viewer.close();
});

test("requests sent right after hello are answered after welcome", async () => {
  const id = sid("early");
  const peer = await connect(server.port, id);
  peer.send({ type: "hello", create: true });
  peer.send({ type: "event", id: 1, event: { type: "token", content: "a" } });
  peer.send({ type: "ping", id: 2 });
  peer.send({ type: "events", id: 3 });
  assert.equal((await peer.recv(WELCOME_MS)).type, "welcome");
  const replies = [await peer.recv(), await peer.recv(), await peer.recv()];
  const byId = Object.fromEntries(replies.map((r) => [r.id, r]));
  assert.deepEqual(byId[1], { type: "ack", id: 1, seq: 1 });
  assert.deepEqual(byId[2], { type: "pong", id: 2 });
  assert.equal(byId[3].type, "events");
  peer.close();
});

// ---- Pages ----

test("pages: events carries the epoch; limits over the maxima are lowered, not refused", async () => {
  const { peer, welcome } = await attach(server.port, sid("maxima"), { create: true });
  for (let i = 0; i < 1001; i++) {
    peer.send({ type: "message", message: { role: "user", content: `m${i}` } });
  }
  for (let i = 0; i < 1001; i++) await peer.recvType("ack", 30000);
  const h = await peer.request({ type: "history", id: "h", limit: 5000 }, "history");
  assert.equal(h.messages.length, 1000);
  assert.equal(h.messages[0].content, "m1");
  assert.equal(h.has_more, true);
  // before past the end is the end.
  const past = await peer.request({ type: "history", id: "p", limit: 2, before: 5000 }, "history");
  assert.deepEqual(
    past.messages.map((m) => m.content),
    ["m999", "m1000"],
  );
  const ev = await peer.request({ type: "events", id: "e", limit: 1 }, "events");
  assert.equal(ev.epoch, welcome.epoch);
  assert.equal(ev.last_seq, 1001);
  peer.close();
});

test("idempotency: the key window is the last 10,000 appends; keys are code points, empty included", async () => {
  const { peer } = await attach(server.port, sid("window"), { create: true });
  const send = (id, key) =>
    peer.send({ type: "event", id, key, event: { type: "token", content: "" } });
  const ack = async (id, key) => {
    send(id, key);
    return peer.recvType("ack", 30000);
  };
  assert.deepEqual(await ack("first", "k0"), { type: "ack", id: "first", seq: 1 });
  // 9,999 appends later (seqs 2 … 10,000), k0 is among the last 10,000 appends.
  for (let i = 0; i < 9999; i++) send(i);
  for (let i = 0; i < 9999; i++) await peer.recvType("ack", 60000);
  const big = await peer.request({ type: "events", id: "big", limit: 20000 }, "events");
  assert.equal(big.events.length, 10000, "events limit lowered to 10,000");
  assert.deepEqual(await ack("dup", "k0"), { type: "ack", id: "dup", seq: 1, duplicate: true });
  // One more append (10,001): seq 1 falls out of the window, and k0 appends anew.
  assert.equal((await ack("filler")).seq, 10001);
  assert.deepEqual(await ack("again", "k0"), { type: "ack", id: "again", seq: 10002 });

  // "" is a key like any other.
  assert.equal((await ack("e1", "")).seq, 10003);
  assert.deepEqual(await ack("e2", ""), { type: "ack", id: "e2", seq: 10003, duplicate: true });
  // 128 code points (256 UTF-16 units, 512 UTF-8 bytes) is the most.
  const astral = "\u{1F600}".repeat(128);
  assert.equal((await ack("a1", astral)).seq, 10004);
  send("a2", astral + "x");
  assertError(await peer.recv(), "bad_request", "a2");
  peer.close();
});

// ---- MessagePack ----

test("msgpack: errors, pages and presence are the JSON objects", async () => {
  const id = sid("mp-same");
  const { peer: mp } = await attach(
    server.port,
    id,
    { create: true, role: "agent" },
    { msgpack: true },
  );
  const { peer: js, welcome } = await attach(server.port, id, {});
  const joined = await mp.recvType("presence");
  assert.deepEqual(joined, {
    type: "presence",
    joined: welcome.connection_id,
    role: "client",
    connections: 2,
  });
  const frames = [
    { type: "message", id: 1, key: "k", message: { role: "user", content: "é", metadata: {} } },
    { type: "history", id: 2, limit: 0 },
    { type: "events", id: 3, after_seq: "x" },
    { type: "nope", id: 4 },
    { type: "history", id: 5 },
  ];
  const answers = [];
  let viewed;
  for (const peer of [mp, js]) {
    // The viewer first gets the publisher's message as an event.
    if (peer === js) viewed = await js.recvType("event");
    const got = [];
    for (const f of frames) {
      peer.send(f);
      got.push(await peer.recvType(f.id === 1 ? "ack" : f.id === 5 ? "history" : "error"));
    }
    answers.push(got);
  }
  assert.deepEqual(answers[0][0], { type: "ack", id: 1, seq: 1 });
  assert.deepEqual(answers[1][0], { type: "ack", id: 1, seq: 1, duplicate: true });
  assert.deepEqual(answers[0].slice(1), answers[1].slice(1));
  const [message] = answers[0][4].messages;
  assert.equal(message.content, "é");
  assert.ok(!("metadata" in message), "an empty metadata is left out");
  // The viewer got the message as an event in the same shape as the history holds it.
  assert.deepEqual(viewed.event.message, message);
  js.close();
  const left = await mp.recvType("presence");
  assert.deepEqual(left, {
    type: "presence",
    left: welcome.connection_id,
    role: "client",
    connections: 1,
  });
  mp.close();
});

test("msgpack: a timestamp extension is read as a time; binary and non-string keys are bad_request", async () => {
  const { peer } = await attach(server.port, sid("mp-ext"), { create: true }, { msgpack: true });
  /** The frame encoded, with the string `mark` replaced by raw MessagePack `bytes`. */
  const splice = (frame, bytes) => {
    const encoded = mpEncode(frame);
    const mark = mpEncode("@@raw@@");
    const at = encoded.indexOf(mark);
    return Buffer.concat([encoded.subarray(0, at), bytes, encoded.subarray(at + mark.length)]);
  };
  const timestamp = Buffer.from([0xd6, 0xff, 0, 0, 0, 0]); // timestamp 32: seconds
  timestamp.writeUInt32BE(Date.parse("2026-05-01T12:00:00Z") / 1000, 2);
  const message = { role: "user", content: "t", created_at: "@@raw@@" };
  peer.ws.sendBinary(splice({ type: "message", id: 1, message }, timestamp));
  assert.deepEqual(await peer.recv(), { type: "ack", id: 1, seq: 1 });
  const [stored] = (await peer.request({ type: "history", id: 2 }, "history")).messages;
  assert.equal(stored.created_at, "2026-05-01T12:00:00Z", "sent back as an RFC 3339 string");
  for (const [id, bytes] of [
    [3, Buffer.from([0xc4, 1, 0])], // bin 8
    [4, Buffer.from([0x81, 0x01, 0x02])], // {1: 2}
    [5, Buffer.from([0xd4, 0x05, 0x00])], // fixext 1 of an application type
  ]) {
    const event = { type: "custom", name: "n", data: "@@raw@@" };
    peer.ws.sendBinary(splice({ type: "event", id, event }, bytes));
    assertError(await peer.recv(), "bad_request", id);
  }
  await assertOpen(peer);
  peer.close();
});

// ---- Flow control ----

test("a peer too slow to read is closed with 4429, no closed frame, and resumes without a gap", async () => {
  // The slow server's send queue of 64 frames: 400 events of 64 KB (25 MB) fill it and
  // the sockets' buffers at once while the viewer reads nothing.
  const id = sid("slow");
  const { peer: pub, welcome } = await attach(slow.port, id, { create: true });
  const { peer: viewer, welcome: viewerWelcome } = await attach(slow.port, id, {});
  await pub.recvType("presence");
  viewer.ws.socket.pause();
  const n = 400;
  const content = "s".repeat(64000);
  for (let i = 0; i < n; i++) pub.send({ type: "event", id: i, event: { type: "token", content } });
  for (let i = 0; i < n; i++) await pub.recvType("ack", 30000);
  viewer.ws.socket.resume(); // within the --close-timeout the close frame waits for
  const end = await viewer.closeCode(20000);
  assert.equal(end.close, 4429, `${end.close} ${end.reason}`);
  assert.match(end.reason, /too slow to read/);
  const seqs = end.frames.filter((f) => f.type === "event").map((f) => f.seq);
  assert.ok(
    end.frames.every((f) => f.type === "event"),
    "no closed frame before a 4429",
  );
  assert.deepEqual(
    seqs,
    seqs.map((_, i) => i + 1),
    "what came before the close has no gap",
  );
  assert.ok(seqs.length < n, "nothing was dropped for a peer that reads nothing");
  // The others see it leave.
  const left = await pub.recvType("presence");
  assert.deepEqual([left.left, left.connections], [viewerWelcome.connection_id, 1]);
  // Resume from the last one seen: the rest, in order, once.
  const last = seqs.at(-1) ?? 0;
  const again = await attach(slow.port, id, { last_seq: last, epoch: welcome.epoch });
  assert.deepEqual([again.welcome.resumed, again.welcome.replay], [true, n - last]);
  for (let seq = last + 1; seq <= n; seq++) {
    assert.equal((await again.peer.recvType("event", 20000)).seq, seq);
  }
  again.peer.close();
  pub.close();
});
