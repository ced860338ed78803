// An outside check of the wire contract (/work/shared/PROTOCOL.md, version 1), written
// from that page alone as a client author in another language would: raw frames over
// node:net (tests/js/wire.mjs), no project code. It starts its own servers (the Python
// in BAMBOO_PYTHON, on 127.0.0.1 and a free port, a fresh data directory each), stops
// them by pid, and kills one with SIGKILL mid-stream to check resume across a crash.
// tests/test_js_protocol.py runs it; by hand:
//   BAMBOO_PYTHON=.venv/bin/python node --test tests/js/protocol.test.mjs
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { httpGet, mpDecode, mpEncode, upgrade } from "./wire.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const PYTHON = process.env.BAMBOO_PYTHON ?? path.join(ROOT, ".venv", "bin", "python");
const SECRET = "outside-check-secret-" + "x".repeat(32);
const RFC3339_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;
const ERROR_CODES = [
  "bad_request",
  "unauthorized",
  "forbidden",
  "not_found",
  "too_large",
  "rate_limited",
  "conflict",
  "closed",
  "internal",
];
const METADATA_FIELDS = [
  "id",
  "user_id",
  "title",
  "state",
  "created_at",
  "updated_at",
  "last_activity_at",
  "expires_at",
  "message_count",
  "extra",
  "last_seq",
  "epoch",
  "connections",
];

// ---- servers ----

const servers = [];

/** Starts `bamboo_session.server serve` on 127.0.0.1:0; resolves {proc, port, dataDir}. */
function startServer(args = [], dataDir = mkdtempSync(path.join(tmpdir(), "bamboo-outside-"))) {
  return new Promise((resolve, reject) => {
    const argv = ["-m", "bamboo_session.server", "serve", "--host", "127.0.0.1", "--port", "0"];
    const proc = spawn(PYTHON, [...argv, "--data-dir", dataDir, "--log-format", "json", ...args], {
      cwd: ROOT,
      stdio: ["ignore", "ignore", "pipe"],
    });
    const server = { proc, port: 0, dataDir, log: "" };
    servers.push(server);
    const timer = setTimeout(
      () => reject(new Error(`no "listening on" in 20 s: ${server.log}`)),
      20000,
    );
    proc.stderr.on("data", (chunk) => {
      server.log = (server.log + chunk.toString()).slice(-20000);
      const match = /listening on [^\s"]+:(\d+)/.exec(server.log);
      if (match && !server.port) {
        server.port = Number(match[1]);
        clearTimeout(timer);
        resolve(server);
      }
    });
    proc.on("exit", (code) => {
      clearTimeout(timer);
      if (!server.port) reject(new Error(`server exited ${code}: ${server.log}`));
    });
  });
}

function stopServer(server, signal = "SIGTERM") {
  return new Promise((resolve) => {
    if (server.proc.exitCode !== null || server.proc.signalCode !== null) return resolve();
    const timer = setTimeout(() => server.proc.kill("SIGKILL"), 10000);
    server.proc.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    server.proc.kill(signal); // by pid: the child this file started
  });
}

let main; // no auth, defaults but the frame rate (off, as the Python suite's servers)
let authed; // --auth-secret
let ttl; // --default-ttl 3600
let tight; // small limits: 2 live sessions, 1 connection per user, 2 frames a second

before(async () => {
  [main, authed, ttl, tight] = await Promise.all([
    startServer(["--rate-limit", "0"]),
    startServer(["--auth-secret", SECRET]),
    startServer(["--default-ttl", "3600"]),
    startServer([
      ...["--max-sessions", "2", "--max-connections-per-user", "1"],
      ...["--rate-limit", "2", "--rate-limit-burst", "2", "--rate-limit-refusals", "20"],
    ]),
  ]);
});

after(async () => {
  await Promise.all(servers.map((s) => stopServer(s)));
  for (const s of servers) rmSync(s.dataDir, { recursive: true, force: true });
});

// ---- peers ----

let counter = 0;
const sid = (name) => `oc-${name}-${process.pid}-${++counter}`;

class Peer {
  constructor(ws, msgpack = false) {
    this.ws = ws;
    this.msgpack = msgpack;
  }
  send(frame) {
    if (this.msgpack) this.ws.sendBinary(mpEncode(frame));
    else this.ws.sendJSON(frame);
  }
  /** The next frame as an object, or {close, reason}. */
  async recv(ms = 5000) {
    const item = await this.ws.next(ms);
    if (item.close !== undefined) return item;
    if (this.msgpack) {
      assert.equal(item.kind, "binary", "bamboo.v1.msgpack frames are binary");
      return mpDecode(item.data);
    }
    assert.equal(item.kind, "text", "JSON frames are text");
    const frame = JSON.parse(item.data);
    assert.equal(typeof frame.type, "string", `a frame without a string type: ${item.data}`);
    return frame;
  }
  /** The next frame of `type`, skipping presence. */
  async recvType(type, ms = 5000) {
    for (;;) {
      const frame = await this.recv(ms);
      if (frame.type === "presence" && type !== "presence") continue;
      assert.equal(frame.type, type, `expected ${type}, got ${JSON.stringify(frame)}`);
      return frame;
    }
  }
  async request(frame, type) {
    this.send(frame);
    return this.recvType(type);
  }
  /** The close that ends the connection, after any frames (returned too). */
  async closeCode(ms = 5000) {
    const frames = [];
    for (;;) {
      const frame = await this.recv(ms);
      if (frame.close !== undefined) return { ...frame, frames };
      frames.push(frame);
    }
  }
  /** The first frame but presence that arrives within `ms`, or null. */
  async stray(ms) {
    const end = Date.now() + ms;
    for (;;) {
      const left = end - Date.now();
      if (left <= 0) return null;
      const frame = await this.recv(left).catch(() => null);
      if (frame === null || frame.type !== "presence") return frame;
    }
  }
  close() {
    this.ws.close(1000);
  }
}

async function connect(port, sessionId, { msgpack = false, protocols, headers } = {}) {
  const p = sessionId === null ? "/api/v1/stream" : `/api/v1/stream/${sessionId}`;
  const protos = protocols ?? (msgpack ? ["bamboo.v1.msgpack"] : ["bamboo.v1"]);
  const res = await upgrade(port, p, { protocols: protos.length ? protos : undefined, headers });
  assert.equal(res.status, 101, `upgrade of ${p}: ${res.status} ${res.body}`);
  return new Peer(res.ws, msgpack);
}

/** Connects, says hello, and returns {peer, welcome}. */
async function attach(port, sessionId, hello = {}, opts = {}) {
  const peer = await connect(port, sessionId, opts);
  peer.send({ type: "hello", ...hello });
  const welcome = await peer.recv();
  assert.equal(welcome.type, "welcome", `hello got ${JSON.stringify(welcome)}`);
  return { peer, welcome };
}

function token(claims, key = SECRET) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ exp: Math.floor(Date.now() / 1000) + 600, ...claims })}`;
  return `${body}.${createHmac("sha256", key).update(body).digest("base64url")}`;
}

const getJSON = async (port, p, headers) => {
  const res = await httpGet(port, p, { headers });
  return { ...res, json: res.body ? JSON.parse(res.body) : null };
};

/** An error frame of `code`, echoing `id` (undefined: no id field). */
function assertError(frame, code, id) {
  assert.equal(frame.type, "error", JSON.stringify(frame));
  assert.equal(frame.code, code, JSON.stringify(frame));
  assert.equal(typeof frame.message, "string");
  if (id === undefined) assert.ok(!("id" in frame) || frame.id === null, JSON.stringify(frame));
  else assert.equal(frame.id, id, JSON.stringify(frame));
}

/** The connection still answers: a ping gets its pong. */
async function assertOpen(peer) {
  const pong = await peer.request({ type: "ping", id: "still-open" }, "pong");
  assert.equal(pong.id, "still-open");
}

// The 10 s hello deadline runs beside everything else (awaited by the last test).
let helloDeadline;

// ---- Transport ----

test("transport: subprotocols, endpoints, session ids", async () => {
  helloDeadline = (async () => {
    const peer = await connect(main.port, sid("nohello"));
    const start = Date.now();
    const end = await peer.closeCode(15000);
    return { ...end, elapsed: Date.now() - start };
  })();

  // No subprotocol: JSON, and the response names none.
  const bare = await upgrade(main.port, `/api/v1/stream/${sid("bare")}`);
  assert.equal(bare.status, 101);
  assert.equal(bare.headers["sec-websocket-protocol"], undefined);
  const barePeer = new Peer(bare.ws);
  barePeer.send({ type: "hello", create: true });
  assert.equal((await barePeer.recv()).type, "welcome");
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
  const end = await missing.closeCode();
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

test("a frame larger than 1 MiB closes 1009; one of exactly 1 MiB is read", async () => {
  /** An event frame of exactly `size` bytes. */
  const frameOf = (size) => {
    const base = JSON.stringify({ type: "event", id: 1, event: { type: "token", content: "" } });
    return JSON.stringify({
      type: "event",
      id: 1,
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

// ---- Requests and replies ----

test("event, message, ack, fan-out to all but the publisher", async () => {
  const id = sid("fan");
  const { peer: pub } = await attach(main.port, id, { create: true, role: "agent" });
  const { peer: viewer } = await attach(main.port, id, {});
  const { peer: viewer2 } = await attach(main.port, id, {});
  const events = [
    { type: "token", content: "a" },
    { type: "thinking", content: "b" },
    { type: "tool_start", tool_call_id: "c1", tool_name: "w", arguments: { city: "P" } },
    {
      type: "tool_complete",
      tool_call_id: "c1",
      result: { success: true, content: "ok", error: null },
    },
    { type: "tool_error", tool_call_id: "c2", error: "boom" },
    { type: "complete", usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } },
    { type: "complete" },
    { type: "error", message: "m", code: "c" },
    { type: "error", message: "m" },
    { type: "state_change", from: "a", to: "b" },
    { type: "custom", name: "n", data: [1, { a: null }] },
  ];
  for (const [i, event] of events.entries()) {
    const ack = await pub.request({ type: "event", id: `e${i}`, event }, "ack");
    assert.deepEqual(ack, { type: "ack", id: `e${i}`, seq: i + 1 });
  }
  const msgAck = await pub.request(
    { type: "message", id: 99, message: { role: "assistant", content: "hi" } },
    "ack",
  );
  assert.deepEqual(msgAck, { type: "ack", id: 99, seq: events.length + 1 });
  for (const v of [viewer, viewer2]) {
    for (const [i, event] of events.entries()) {
      const frame = await v.recvType("event");
      assert.deepEqual(Object.keys(frame).sort(), ["event", "seq", "ts", "type"]);
      assert.equal(frame.seq, i + 1);
      assert.match(frame.ts, RFC3339_UTC);
      assert.deepEqual(frame.event, event);
    }
    const m = await v.recvType("event");
    assert.equal(m.seq, events.length + 1);
    assert.equal(m.event.type, "message");
    assert.equal(m.event.message.role, "assistant");
    assert.equal(m.event.message.content, "hi");
    assert.equal(typeof m.event.message.id, "string");
    assert.match(m.event.message.created_at, RFC3339_UTC);
  }
  // The publisher got none of its own events.
  assert.equal(await pub.stray(300), null, "the publisher is sent its own events");
  // A message event appended through `event` lands in the history too.
  await pub.request(
    {
      type: "event",
      id: "me",
      event: { type: "message", message: { role: "user", content: "q" } },
    },
    "ack",
  );
  const hist = await pub.request({ type: "history", id: "h" }, "history");
  assert.deepEqual(
    hist.messages.map((m) => m.content),
    ["hi", "q"],
  );
  assert.equal(hist.has_more, false);
  for (const p of [pub, viewer, viewer2]) p.close();
});

test("idempotency keys: a repeat is acked with the first seq and duplicate: true", async () => {
  const id = sid("keys");
  const { peer: pub } = await attach(main.port, id, { create: true });
  const { peer: viewer } = await attach(main.port, id, {});
  const first = await pub.request(
    { type: "event", id: 1, key: "k1", event: { type: "token", content: "a" } },
    "ack",
  );
  assert.deepEqual(first, { type: "ack", id: 1, seq: 1 });
  const again = await pub.request(
    { type: "event", id: 2, key: "k1", event: { type: "token", content: "different" } },
    "ack",
  );
  assert.deepEqual(again, { type: "ack", id: 2, seq: 1, duplicate: true });
  // Messages share the window.
  const m = await pub.request(
    { type: "message", id: 3, key: "k1", message: { role: "user", content: "x" } },
    "ack",
  );
  assert.deepEqual(m, { type: "ack", id: 3, seq: 1, duplicate: true });
  const max = await pub.request(
    { type: "event", id: 4, key: "k".repeat(128), event: { type: "token", content: "b" } },
    "ack",
  );
  assert.equal(max.seq, 2);
  const e1 = await viewer.recvType("event");
  const e2 = await viewer.recvType("event");
  assert.deepEqual([e1.seq, e2.seq], [1, 2]);
  assert.equal(await viewer.stray(300), null, "a duplicate was fanned out");
  pub.close();
  viewer.close();
});

test("history and events pages", async () => {
  const { peer, welcome } = await attach(main.port, sid("pages"), { create: true });
  assert.equal(welcome.session.message_count, 0);
  for (let i = 0; i < 5; i++) {
    await peer.request(
      { type: "message", id: i, message: { role: "user", content: `m${i}` } },
      "ack",
    );
  }
  const content = (h) => h.messages.map((m) => m.content);
  let h = await peer.request({ type: "history", id: "a", limit: 2 }, "history");
  assert.deepEqual(content(h), ["m3", "m4"]);
  assert.equal(h.has_more, true);
  assert.equal(h.id, "a");
  h = await peer.request({ type: "history", id: "b", limit: 2, before: 3 }, "history");
  assert.deepEqual(content(h), ["m1", "m2"]);
  assert.equal(h.has_more, true);
  h = await peer.request({ type: "history", id: "c", limit: 2, before: 1 }, "history");
  assert.deepEqual(content(h), ["m0"]);
  assert.equal(h.has_more, false);
  h = await peer.request({ type: "history", id: "d" }, "history");
  assert.deepEqual(content(h), ["m0", "m1", "m2", "m3", "m4"]);
  for (const m of h.messages) {
    assert.equal(typeof m.id, "string");
    assert.equal(m.role, "user");
    assert.match(m.created_at, RFC3339_UTC);
  }
  h = await peer.request({ type: "history", id: "e", before: 0 }, "history");
  assert.deepEqual(h.messages, []);
  assert.equal(h.has_more, false);

  let ev = await peer.request({ type: "events", id: "f" }, "events");
  assert.deepEqual(
    ev.events.map((e) => e.seq),
    [1, 2, 3, 4, 5],
  );
  assert.equal(ev.last_seq, 5);
  ev = await peer.request({ type: "events", id: "g", after_seq: 2, limit: 2 }, "events");
  assert.deepEqual(
    ev.events.map((e) => e.seq),
    [3, 4],
  );
  assert.equal(ev.last_seq, 5);
  for (const e of ev.events) {
    assert.deepEqual(Object.keys(e).sort(), ["event", "seq", "ts"]);
    assert.equal(e.event.type, "message");
  }
  ev = await peer.request({ type: "events", id: "h", after_seq: 9 }, "events");
  assert.deepEqual(ev.events, []);
  assert.equal(ev.last_seq, 5);
  // A message whose id and created_at the publisher gave are kept (created_at in UTC).
  await peer.request(
    {
      type: "message",
      id: "own",
      message: {
        id: "my-id",
        role: "tool",
        content: "r",
        created_at: "2026-05-01T14:00:00+02:00",
        tool_call_id: "c1",
        metadata: { a: 1 },
      },
    },
    "ack",
  );
  h = await peer.request({ type: "history", id: "i", limit: 1 }, "history");
  const [own] = h.messages;
  assert.equal(own.id, "my-id");
  assert.equal(own.tool_call_id, "c1");
  assert.deepEqual(own.metadata, { a: 1 });
  assert.match(own.created_at, RFC3339_UTC);
  assert.equal(Date.parse(own.created_at), Date.parse("2026-05-01T12:00:00Z"));
  // Default limits: 100 messages, 1000 events.
  for (let i = 0; i < 100; i++) {
    peer.send({ type: "message", message: { role: "user", content: `n${i}` } });
  }
  for (let i = 0; i < 900; i++) peer.send({ type: "event", event: { type: "token", content: "" } });
  for (let i = 0; i < 1000; i++) await peer.recvType("ack");
  h = await peer.request({ type: "history", id: "j" }, "history");
  assert.equal(h.messages.length, 100);
  assert.equal(h.messages.at(-1).content, "n99");
  assert.equal(h.has_more, true);
  ev = await peer.request({ type: "events", id: "k" }, "events");
  assert.equal(ev.events.length, 1000);
  assert.equal(ev.events[0].seq, 1);
  assert.equal(ev.last_seq, 1006);
  const pong = await peer.request({ type: "ping", id: 0 }, "pong");
  assert.deepEqual(pong, { type: "pong", id: 0 });
  const bare = await peer.request({ type: "ping" }, "pong");
  assert.deepEqual(bare, { type: "pong" });
  peer.close();
});

test("state: idle and active are acked; closed closes every connection with 1000, then 4409", async () => {
  const id = sid("close");
  const { peer: a } = await attach(main.port, id, { create: true });
  const { peer: b } = await attach(main.port, id, {});
  await a.request({ type: "event", id: 1, event: { type: "token", content: "x" } }, "ack");
  assert.equal((await b.recvType("event")).seq, 1);
  const idle = await a.request({ type: "state", id: "i", state: "idle" }, "ack");
  assert.equal(idle.seq, 1);
  const active = await a.request({ type: "state", id: "a", state: "active" }, "ack");
  assert.equal(active.seq, 1);
  a.send({ type: "state", id: "c", state: "closed" });
  const endA = await a.closeCode();
  const endB = await b.closeCode();
  const kinds = (end) => end.frames.filter((f) => f.type !== "presence").map((f) => f.type);
  assert.deepEqual(kinds(endA), ["ack", "closed"], JSON.stringify(endA));
  assert.equal(endA.frames.find((f) => f.type === "ack").id, "c");
  assert.deepEqual(kinds(endB), ["closed"], JSON.stringify(endB));
  for (const end of [endA, endB]) {
    assert.equal(end.close, 1000);
    assert.equal(typeof end.frames.find((f) => f.type === "closed").reason, "string");
  }
  for (const hello of [{}, { create: true }, { last_seq: 0 }]) {
    const late = await connect(main.port, id);
    late.send({ type: "hello", ...hello });
    const end = await late.closeCode();
    assert.equal(end.close, 4409, JSON.stringify(end));
    assert.deepEqual(end.frames, []);
  }
  const res = await getJSON(main.port, `/api/v1/sessions/${id}`);
  assert.equal(res.status, 200);
  assert.equal(res.json.metadata.state, "closed");
  const evs = await getJSON(main.port, `/api/v1/sessions/${id}/events`);
  assert.deepEqual(
    evs.json.events.map((e) => e.seq),
    [1],
  );
});

// ---- Resume ----

test("resume: the missed events, in order, once; else resumed: false and nothing", async () => {
  const id = sid("resume");
  const { peer: pub, welcome } = await attach(main.port, id, { create: true });
  const epoch = welcome.epoch;
  for (let i = 1; i <= 5; i++) {
    await pub.request({ type: "event", id: i, event: { type: "token", content: `t${i}` } }, "ack");
  }
  const replayed = async (hello, n, last = 6) => {
    const { peer, welcome: w } = await attach(main.port, id, hello);
    assert.equal(w.resumed, true, JSON.stringify(w));
    assert.equal(w.replay, n);
    assert.equal(w.last_seq, last);
    const seqs = [];
    for (let i = 0; i < n; i++) seqs.push((await peer.recvType("event")).seq);
    return { peer, seqs };
  };
  let r = await replayed({ last_seq: 2, epoch }, 3, 5);
  assert.deepEqual(r.seqs, [3, 4, 5]);
  // Then live events, with no gap and no duplicate.
  await pub.request({ type: "event", id: 6, event: { type: "token", content: "t6" } }, "ack");
  assert.equal((await r.peer.recvType("event")).seq, 6);
  r.peer.close();
  r = await replayed({ last_seq: 4 }, 2); // last_seq alone: the current epoch
  assert.deepEqual(r.seqs, [5, 6]);
  r.peer.close();
  r = await replayed({ last_seq: 0, epoch }, 6);
  assert.deepEqual(r.seqs, [1, 2, 3, 4, 5, 6]);
  r.peer.close();
  r = await replayed({ last_seq: 6, epoch }, 0);
  assert.equal(await r.peer.stray(300), null);
  r.peer.close();

  // Not resumed: another epoch, last_seq beyond the end, no last_seq.
  for (const hello of [
    { last_seq: 2, epoch: "not-the-epoch" },
    { last_seq: 0, epoch: "not-the-epoch" },
    { last_seq: 7, epoch },
    { last_seq: 700 },
    {},
    { epoch },
  ]) {
    const { peer, welcome: w } = await attach(main.port, id, hello);
    assert.equal(w.resumed, false, `${JSON.stringify(hello)}: ${JSON.stringify(w)}`);
    assert.equal(w.replay, 0);
    assert.equal(w.last_seq, 6);
    assert.equal(w.epoch, epoch);
    // Nothing replayed: the next frame is the pong.
    const pong = await peer.request({ type: "ping", id: "p" }, "pong");
    assert.equal(pong.id, "p");
    peer.close();
  }
  pub.close();
});

test("resume across a kill -9 of the server in the middle of a stream", async () => {
  const server = await startServer(["--rate-limit", "0"]);
  const id = sid("crash");
  const { peer: pub, welcome } = await attach(server.port, id, { create: true, role: "agent" });
  const { peer: viewer } = await attach(server.port, id, {});
  const epoch = welcome.epoch;
  const total = 400;
  const acked = new Map(); // key -> seq
  // Pipeline every event; kill the server once some are acknowledged.
  for (let i = 0; i < total; i++) {
    pub.send({ type: "event", id: i, key: `k${i}`, event: { type: "token", content: `t${i}` } });
  }
  const seen = [];
  while (seen.length < 50) {
    const f = await viewer.recv();
    if (f.type === "event") seen.push(f.seq);
  }
  for (;;) {
    const f = await pub.recv(50).catch(() => null);
    if (!f) break;
    if (f.type === "ack") acked.set(`k${f.id}`, f.seq);
  }
  server.proc.kill("SIGKILL");
  await new Promise((resolve) => server.proc.once("exit", resolve));
  // Whatever was in flight to us still counts.
  for (;;) {
    const f = await viewer.recv(2000);
    if (f.close !== undefined) break;
    if (f.type === "event") seen.push(f.seq);
  }
  for (;;) {
    const f = await pub.recv(2000);
    if (f.close !== undefined) break;
    if (f.type === "ack") acked.set(`k${f.id}`, f.seq);
  }
  assert.deepEqual(
    seen,
    seen.map((_, i) => i + 1),
    "the viewer's events before the crash have a gap",
  );
  assert.ok(acked.size >= 1);

  const restarted = await startServer(["--rate-limit", "0"], server.dataDir);
  // The viewer resumes: exactly the events it missed, in order, once.
  const { peer: v2, welcome: w } = await attach(restarted.port, id, {
    last_seq: seen.at(-1),
    epoch,
  });
  assert.equal(w.epoch, epoch, "the epoch changed across a restart");
  assert.equal(w.resumed, true);
  assert.ok(w.last_seq >= Math.max(...acked.values()), "acknowledged events were lost");
  const after = [];
  for (let i = 0; i < w.replay; i++) after.push((await v2.recvType("event")).seq);
  assert.deepEqual(
    after,
    after.map((_, i) => seen.at(-1) + 1 + i),
  );
  assert.equal(seen.length + after.length, w.last_seq);
  // The publisher resends every unacknowledged event with its key: each lands once.
  const { peer: p2 } = await attach(restarted.port, id, { last_seq: w.last_seq, epoch });
  for (let i = 0; i < total; i++) {
    if (!acked.has(`k${i}`)) {
      p2.send({ type: "event", id: i, key: `k${i}`, event: { type: "token", content: `t${i}` } });
    }
  }
  while (acked.size < total) {
    const f = await p2.recvType("ack");
    acked.set(`k${f.id}`, f.seq);
  }
  const bySeq = new Map([...acked].map(([k, s]) => [s, k]));
  assert.equal(bySeq.size, total, "two keys share a seq, or a key was appended twice");
  const live = [];
  while (w.last_seq + live.length < total) live.push((await v2.recvType("event")).seq);
  assert.deepEqual(
    [...seen, ...after, ...live],
    Array.from({ length: total }, (_, i) => i + 1),
  );
  const log = await getJSON(restarted.port, `/api/v1/sessions/${id}/events?limit=1000`);
  assert.equal(log.json.last_seq, total);
  assert.deepEqual(
    log.json.events.map((e) => e.event.content),
    Array.from({ length: total }, (_, i) => bySeq.get(i + 1).replace("k", "t")),
  );
  // A key acknowledged before the crash is still a duplicate after it.
  const dup = await p2.request(
    { type: "event", id: "again", key: "k0", event: { type: "token", content: "new" } },
    "ack",
  );
  assert.deepEqual(dup, { type: "ack", id: "again", seq: acked.get("k0"), duplicate: true });
  // SIGTERM: `closed`, then 1012, and the viewer resumes after the next start.
  restarted.proc.kill("SIGTERM");
  const term = await v2.closeCode(15000);
  assert.equal(term.close, 1012, JSON.stringify(term));
  assert.deepEqual(
    term.frames.filter((f) => f.type !== "presence").map((f) => f.type),
    ["closed"],
  );
  p2.ws.destroy();
  await stopServer(restarted);
  const third = await startServer(["--rate-limit", "0"], server.dataDir);
  const { peer: v3, welcome: w3 } = await attach(third.port, id, { last_seq: total - 1, epoch });
  assert.deepEqual([w3.resumed, w3.replay, w3.last_seq], [true, 1, total]);
  assert.equal((await v3.recvType("event")).seq, total);
  v3.close();
  await stopServer(third);
});

// ---- Data ----

test("expires_at is last_activity_at plus the TTL", async () => {
  const { peer, welcome } = await attach(ttl.port, sid("ttl"), { create: true });
  const s = welcome.session;
  assert.match(s.expires_at, RFC3339_UTC);
  assert.equal(Date.parse(s.expires_at) - Date.parse(s.last_activity_at), 3600 * 1000);
  peer.close();
});

// ---- HTTP ----

test("HTTP: health, readiness, metrics, sessions, one session, its events", async () => {
  const id = sid("http");
  const { peer } = await attach(main.port, id, {
    create: true,
    user_id: "http-user",
    title: "Zeta",
  });
  await peer.request({ type: "message", id: 1, message: { role: "user", content: "hi" } }, "ack");
  await peer.request({ type: "event", id: 2, event: { type: "token", content: "t" } }, "ack");

  assert.equal((await httpGet(main.port, "/healthz")).status, 200);
  assert.equal((await httpGet(main.port, "/readyz")).status, 200);
  const metrics = await httpGet(main.port, "/metrics");
  assert.equal(metrics.status, 200);
  assert.match(metrics.headers["content-type"], /^text\/plain/);

  const list = await getJSON(main.port, "/api/v1/sessions?user_id=http-user");
  assert.equal(list.status, 200);
  assert.deepEqual(Object.keys(list.json).sort(), ["limit", "offset", "sessions", "total"]);
  assert.equal(list.json.total, 1);
  assert.equal(list.json.offset, 0);
  assert.equal(list.json.limit, 100);
  for (const f of METADATA_FIELDS) assert.ok(f in list.json.sessions[0], `listed ${f}`);
  const q = "title_contains=Zet&sort_by=message_count&sort_order=asc&limit=5&offset=0&state=active";
  const filtered = await getJSON(main.port, `/api/v1/sessions?${q}`);
  assert.equal(filtered.status, 200);
  assert.deepEqual(
    filtered.json.sessions.map((s) => s.id),
    [id],
  );
  for (const bad of ["sort_by=nope", "sort_order=up", "state=sleeping", "limit=x", "offset=-1"]) {
    const res = await httpGet(main.port, `/api/v1/sessions?${bad}`);
    assert.equal(res.status, 400, bad);
  }

  const one = await getJSON(main.port, `/api/v1/sessions/${id}`);
  assert.equal(one.status, 200);
  assert.equal(one.json.metadata.id, id);
  assert.equal(one.json.metadata.message_count, 1);
  assert.deepEqual(
    one.json.messages.map((m) => m.content),
    ["hi"],
  );
  const evs = await getJSON(main.port, `/api/v1/sessions/${id}/events?after_seq=1&limit=5`);
  assert.equal(evs.status, 200);
  assert.equal(evs.json.last_seq, 2);
  assert.deepEqual(
    evs.json.events.map((e) => [e.seq, e.event.type]),
    [[2, "token"]],
  );
  assert.equal((await httpGet(main.port, `/api/v1/sessions/${sid("none")}`)).status, 404);
  assert.equal((await httpGet(main.port, `/api/v1/sessions/${sid("none")}/events`)).status, 404);
  // GET only.
  const post = await httpGet(main.port, `/api/v1/sessions/${id}`, { method: "DELETE" });
  assert.ok(post.status >= 400 && post.status < 500, `DELETE: ${post.status}`);
  assert.equal((await getJSON(main.port, `/api/v1/sessions/${id}`)).status, 200);
  peer.close();
});

// ---- Auth ----

test("auth: tokens, owners, sid scopes, admin, HTTP Bearer", async () => {
  const port = authed.port;
  const refused = async (p, hello, headers) => {
    const peer = await connect(port, p, { headers });
    peer.send({ type: "hello", ...hello });
    return peer.closeCode();
  };
  const id = sid("auth");
  let end = await refused(id, { create: true });
  assert.equal(end.close, 4401);
  assert.deepEqual(end.frames, []);
  end = await refused(id, {
    create: true,
    token: token({ sub: "alice" }, "wrong-key-" + "k".repeat(32)),
  });
  assert.equal(end.close, 4401);
  end = await refused(id, { create: true, token: token({ sub: "alice", exp: 1000 }) });
  assert.equal(end.close, 4401);

  const alice = token({ sub: "alice" });
  const { peer, welcome } = await attach(port, id, {
    create: true,
    token: alice,
    user_id: "mallory",
  });
  assert.equal(
    welcome.session.user_id,
    "alice",
    "a session created under a token belongs to its sub",
  );
  // Bearer on the upgrade works as well.
  const viaHeader = await attach(port, id, {}, { headers: { Authorization: `Bearer ${alice}` } });
  viaHeader.peer.close();
  end = await refused(id, { token: token({ sub: "bob" }) });
  assert.equal(end.close, 4403);
  assert.deepEqual(end.frames, []);
  end = await refused(id, { token: token({ sub: "alice", sid: "another" }) });
  assert.equal(end.close, 4403);
  const scoped = await attach(port, id, {
    token: token({ sub: "agent-x", role: "agent", sid: id }),
  });
  scoped.peer.close();
  const admin = await attach(port, id, { token: token({ sub: "root", role: "admin" }) });
  admin.peer.close();
  end = await refused(sid("auth-missing"), { token: alice });
  assert.equal(end.close, 4404);

  assert.equal((await httpGet(port, `/api/v1/sessions/${id}`)).status, 401);
  const bearer = (t) => ({ Authorization: `Bearer ${t}` });
  assert.equal(
    (await httpGet(port, `/api/v1/sessions/${id}`, { headers: bearer(alice) })).status,
    200,
  );
  assert.equal(
    (await httpGet(port, `/api/v1/sessions/${id}`, { headers: bearer(token({ sub: "bob" })) }))
      .status,
    403,
  );
  const list = await getJSON(port, "/api/v1/sessions", bearer(alice));
  assert.equal(list.status, 200);
  assert.deepEqual(
    list.json.sessions.map((s) => s.id),
    [id],
  );
  assert.equal((await httpGet(port, "/healthz")).status, 200);
  peer.close();
});

test("no hello within 10 s closes 4408, with no frame", async () => {
  const end = await helloDeadline;
  assert.equal(end.close, 4408, JSON.stringify(end));
  assert.deepEqual(end.frames, []);
  assert.ok(end.elapsed > 9000 && end.elapsed < 13000, `4408 after ${end.elapsed} ms`);
});
