// An independent conformance client for Bamboo session protocol v1, written from
// PROTOCOL.md alone (extensions() and replayComesWhole() from docs/protocol.md, which
// extends it: the batch frames, and what it says of replies and replay). Usage: node conformance.mjs <mode> <http-base>   mode: open|auth|limits
import net from "node:net";
import crypto from "node:crypto";
import { createRequire } from "node:module";
// Its two packages are tests/js's (npm ci --prefix tests/js): an ESM import would look
// for them in a node_modules above this file, and ESM ignores NODE_PATH.
const require = createRequire(new URL("../js/package.json", import.meta.url));
const WebSocket = require("ws");
const { encode: mpEncode, decode: mpDecode } = require("@msgpack/msgpack");

const [mode, BASE] = process.argv.slice(2);
const WS = BASE.replace(/^http/, "ws");
const SECRET = process.env.SECRET || "";
// How long to wait for a frame the contract allows but does not require (a
// state_change event after `state`): the test suite sets it shorter.
const OPTIONAL_WAIT_MS = Number(process.env.CONFORMANCE_OPTIONAL_WAIT_MS || 2000);
const results = [];
function check(name, ok, detail = "") {
  results.push({ name, ok: !!ok, detail });
  console.log(`${ok ? "HELD" : "FAIL"}  ${name}${ok ? "" : "  -- " + detail}`);
}
function note(name, detail) {
  results.push({ name, ok: true, note: true, detail });
  console.log(`NOTE  ${name}  -- ${detail}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const RFC3339_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$/;
const J = JSON.stringify;

class Conn {
  constructor(ws, proto) {
    this.ws = ws;
    this.proto = proto;
    this.frames = [];
    this.arrived = []; // every frame, in order of arrival (frames loses what next() takes)
    this.kinds = [];
    this.waiters = [];
    this.closed = new Promise((resolve) => {
      ws.on("close", (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
        this._wake();
      });
    });
    ws.on("message", (data, isBinary) => {
      let obj;
      try {
        obj = isBinary ? mpDecode(data) : JSON.parse(data.toString());
      } catch (e) {
        obj = { __undecodable: String(e) };
      }
      this.kinds.push(isBinary ? "binary" : "text");
      this.frames.push(obj);
      this.arrived.push(obj);
      this._wake();
    });
  }
  _wake() {
    for (const w of this.waiters.splice(0)) w();
  }
  static open(path, { proto, headers } = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(WS + path, proto ? [proto] : [], { headers, maxPayload: 64 << 20 });
      const conn = new Conn(ws, proto);
      ws.on("open", () => resolve(conn));
      ws.on("unexpected-response", (req, res) => {
        reject(Object.assign(new Error("http " + res.statusCode), { status: res.statusCode }));
        req.destroy();
      });
      ws.on("error", (e) => reject(e));
    });
  }
  send(obj) {
    if (this.proto === "bamboo.v1.msgpack") this.ws.send(mpEncode(obj, { maxDepth: 300 }), { binary: true });
    else this.ws.send(J(obj));
  }
  // Next frame matching pred (consumed); frames before it are kept unless drop.
  async next(pred = () => true, ms = 5000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.frames.findIndex(pred);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      if (this.closeInfo || Date.now() > deadline) return null;
      await Promise.race([new Promise((r) => this.waiters.push(r)), sleep(Math.max(1, deadline - Date.now()))]);
    }
  }
  type(t, ms) {
    return this.next((f) => f.type === t, ms);
  }
  async request(obj, ms) {
    this.send(obj);
    return this.next((f) => f.id === obj.id && (f.type !== "event" || "seq" in f === false), ms);
  }
  async waitClose(ms = 5000) {
    return Promise.race([this.closed, sleep(ms).then(() => null)]);
  }
  close() {
    try {
      this.ws.close(1000);
    } catch {}
    return this.waitClose(3000);
  }
}

let counter = 0;
const uid = (p = "s") => `${p}${process.pid}_${Date.now().toString(36)}_${counter++}`;
const token = (claims) => {
  const b64 = (o) => Buffer.from(J(o)).toString("base64url");
  const body = b64({ alg: "HS256", typ: "JWT" }) + "." + b64({ exp: Math.floor(Date.now() / 1000) + 600, ...claims });
  return body + "." + crypto.createHmac("sha256", SECRET).update(body).digest("base64url");
};

async function attach(path, hello = {}, opts = {}) {
  const c = await Conn.open(path, opts);
  c.send({ type: "hello", ...hello });
  const first = await c.next(() => true, 5000);
  c.welcome = first;
  return c;
}
async function rawHttp(path, headers = {}) {
  return new Promise((resolve) => {
    const u = new URL(BASE);
    const s = net.connect(+u.port, u.hostname);
    let buf = "";
    s.on("connect", () => {
      const h = { Host: u.host, ...headers };
      s.write(`GET ${path} HTTP/1.1\r\n` + Object.entries(h).map(([k, v]) => `${k}: ${v}\r\n`).join("") + "\r\n");
    });
    s.on("data", (d) => (buf += d));
    const done = () => {
      const status = +(buf.match(/^HTTP\/1\.1 (\d+)/) || [])[1];
      const body = buf.split("\r\n\r\n").slice(1).join("\r\n\r\n");
      resolve({ status, head: buf.split("\r\n\r\n")[0], body });
    };
    s.on("end", done);
    s.on("error", done);
    setTimeout(() => { s.destroy(); done(); }, 3000);
  });
}
const upgradeHeaders = {
  Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13",
  "Sec-WebSocket-Key": crypto.randomBytes(16).toString("base64"),
};
async function http(path, headers = {}) {
  const r = await fetch(BASE + path, { headers });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, text, json, type: r.headers.get("content-type") };
}

const META_FIELDS = ["id", "user_id", "title", "state", "created_at", "updated_at", "last_activity_at",
  "expires_at", "message_count", "extra", "last_seq", "epoch", "connections"];

async function openMode(proto) {
  const P = ` [${proto || "no subprotocol"}]`;
  const o = proto ? { proto } : {};
  // --- new session on /api/v1/stream
  const a = await attach("/api/v1/stream", { user_id: "u1", title: "T1", role: "agent" }, o);
  const w = a.welcome;
  check("welcome is the reply to hello" + P, w && w.type === "welcome", J(w));
  check("subprotocol selected" + P, a.ws.protocol === (proto || ""), a.ws.protocol);
  check("frame kind matches encoding" + P, a.kinds[0] === (proto === "bamboo.v1.msgpack" ? "binary" : "text"), a.kinds[0]);
  check("welcome.connection_id is c_…" + P, typeof w.connection_id === "string" && w.connection_id.startsWith("c_"), w.connection_id);
  check("welcome.epoch string, last_seq 0, resumed false" + P, typeof w.epoch === "string" && w.last_seq === 0 && w.resumed === false, J(w));
  if (!("replay" in w) || w.replay !== 0) note("welcome.replay on a non-resume" + P, J(w.replay));
  const m = w.session || {};
  const missing = META_FIELDS.filter((f) => !(f in m));
  check("SessionMetadata has every field" + P, missing.length === 0, "missing " + missing);
  check("created session takes user_id/title" + P, m.user_id === "u1" && m.title === "T1", J(m));
  check("metadata types" + P, typeof m.message_count === "number" && typeof m.extra === "object" && m.extra && !Array.isArray(m.extra)
    && m.last_seq === 0 && m.epoch === w.epoch && typeof m.connections === "number" && m.state === "active", J(m));
  check("metadata times RFC 3339 UTC" + P, ["created_at", "updated_at", "last_activity_at"].every((f) => RFC3339_UTC.test(m[f])), J(m));
  check("expires_at null without TTL" + P, m.expires_at === null, J(m.expires_at));
  check("session id matches the id grammar" + P, /^[A-Za-z0-9_.-]{1,128}$/.test(m.id), m.id);
  const sid = m.id;

  // --- existing session, viewer, presence
  const v = await attach(`/api/v1/stream/${sid}`, { title: "ignored", user_id: "other", create: true }, o);
  check("existing session attach with create: welcome" + P, v.welcome.type === "welcome" && v.welcome.session.id === sid, J(v.welcome));
  check("user_id/title apply only on create" + P, v.welcome.session.title === "T1" && v.welcome.session.user_id === "u1", J(v.welcome.session));
  check("metadata.connections counts attached" + P, v.welcome.session.connections === 2, v.welcome.session.connections);
  const pj = await a.type("presence");
  check("presence joined/role/connections" + P, pj && pj.joined === v.welcome.connection_id && pj.role === "client" && pj.connections === 2, J(pj));
  const v2 = await attach(`/api/v1/stream/${sid}`, {}, o);
  check("existing session without create" + P, v2.welcome.type === "welcome", J(v2.welcome));

  // --- publish / ack / fan-out
  const ack1 = await a.request({ type: "event", id: "e1", event: { type: "token", content: "hi" } });
  check("ack echoes string id, seq 1" + P, ack1 && ack1.type === "ack" && ack1.id === "e1" && ack1.seq === 1, J(ack1));
  check("ack has no duplicate when false" + P, ack1 && !("duplicate" in ack1), J(ack1));
  const ack2 = await a.request({ type: "event", id: 42, event: { type: "thinking", content: "hm" } });
  check("ack echoes integer id" + P, ack2 && ack2.id === 42 && ack2.seq === 2, J(ack2));
  const ev1 = await v.type("event");
  check("viewer event frame {seq,ts,event}" + P, ev1 && ev1.seq === 1 && RFC3339_UTC.test(ev1.ts) && J(ev1.event) === J({ type: "token", content: "hi" }), J(ev1));
  const ev2 = await v.type("event");
  check("viewer second event in order" + P, ev2 && ev2.seq === 2, J(ev2));
  await sleep(100);
  check("publisher does not get its own event" + P, !a.frames.some((f) => f.type === "event"), J(a.frames));
  // every AgentEvent kind
  const kinds = [
    { type: "tool_start", tool_call_id: "t1", tool_name: "grep", arguments: { q: 1 } },
    { type: "tool_complete", tool_call_id: "t1", result: { success: true, content: "ok", error: null } },
    { type: "tool_error", tool_call_id: "t1", error: "boom" },
    { type: "complete", usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } },
    { type: "complete" },
    { type: "error", message: "bad", code: "x" },
    { type: "error", message: "bad" },
    { type: "state_change", from: "active", to: "idle" },
    { type: "custom", name: "n", data: [1, "two", { three: 3 }, null] },
    { type: "custom", name: "n", data: 7 },
    { type: "custom", name: "n", data: null },
    { type: "custom", name: "n", data: "s" },
  ];
  let seq = 2;
  for (const [i, ev] of kinds.entries()) {
    const ack = await a.request({ type: "event", id: "k" + i, event: ev });
    check(`event kind ${ev.type} accepted` + P, ack && ack.type === "ack" && ack.seq === ++seq, J(ack));
    const got = await v.type("event");
    const same = got && Object.entries(ev).every(([k, val]) => J(got.event[k]) === J(val));
    check(`event kind ${ev.type} round-trips to viewer` + P, same, J(got));
  }
  // message
  const mack = await a.request({ type: "message", id: "m1", message: { role: "user", content: "hello", created_at: new Date().toISOString() } });
  check("message ack" + P, mack && mack.type === "ack" && mack.seq === ++seq, J(mack));
  const mev = await v.type("event");
  check("message appears as event {type:message,message}" + P, mev && mev.seq === seq && mev.event.type === "message" && mev.event.message.content === "hello", J(mev));
  check("server fills message id" + P, mev && typeof mev.event.message.id === "string" && mev.event.message.id.length > 0, J(mev && mev.event.message));
  const mack2 = await a.request({ type: "message", id: "m2", message: { id: "mine", role: "assistant", content: "yo", tool_calls: [{ id: "c1", name: "f", arguments: { a: 1 } }], metadata: { k: 1 } } });
  check("message without created_at accepted, tool_calls" + P, mack2 && mack2.type === "ack", J(mack2));
  seq++;
  await v.type("event");
  // idempotency
  const k1 = await a.request({ type: "event", id: "d1", key: "key-1", event: { type: "token", content: "once" } });
  seq++;
  const k2 = await a.request({ type: "event", id: "d2", key: "key-1", event: { type: "token", content: "twice" } });
  check("duplicate key: same seq, duplicate true" + P, k1 && k2 && k2.seq === k1.seq && k2.duplicate === true && k2.id === "d2", J([k1, k2]));
  const km = await a.request({ type: "message", id: "d3", key: "key-1", message: { role: "user", content: "x" } });
  check("duplicate key across event/message kinds" + P, km && km.seq === k1.seq && km.duplicate === true, J(km));
  const kl = await a.request({ type: "event", id: "d4", key: "x".repeat(129), event: { type: "token", content: "x" } });
  check("key longer than 128 is bad_request" + P, kl && kl.type === "error" && kl.code === "bad_request", J(kl));
  const k128 = await a.request({ type: "event", id: "d5", key: "y".repeat(128), event: { type: "token", content: "x" } });
  check("key of 128 accepted" + P, k128 && k128.type === "ack", J(k128));
  seq++;
  await sleep(100);
  const vEvents = v.frames.filter((f) => f.type === "event").map((f) => f.seq);
  check("viewer gets no event for a duplicate" + P, J(vEvents) === J([seq - 1, seq]), J(vEvents));
  v.frames = v.frames.filter((f) => f.type !== "event");

  // history / events
  const h = await a.request({ type: "history", id: "h1" });
  check("history shape" + P, h && h.type === "history" && h.id === "h1" && Array.isArray(h.messages) && h.has_more === false, J(h));
  check("history oldest first, 2 messages" + P, h && h.messages.length === 2 && h.messages[0].content === "hello" && h.messages[1].content === "yo" && h.messages[1].id === "mine", J(h && h.messages));
  const msg0 = h && h.messages[0];
  check("message fields" + P, msg0 && msg0.role === "user" && RFC3339_UTC.test(msg0.created_at) && typeof msg0.id === "string", J(msg0));
  const msg1 = h && h.messages[1];
  check("server fills created_at when absent" + P, msg1 && RFC3339_UTC.test(msg1.created_at) && J(msg1.tool_calls) === J([{ id: "c1", name: "f", arguments: { a: 1 } }]) && J(msg1.metadata) === J({ k: 1 }), J(msg1));
  const h2 = await a.request({ type: "history", id: "h2", limit: 1 });
  check("history limit 1 -> newest, has_more" + P, h2 && h2.messages.length === 1 && h2.messages[0].content === "yo" && h2.has_more === true, J(h2));
  const h3 = await a.request({ type: "history", id: "h3", limit: 5, before: 1 });
  check("history before index" + P, h3 && h3.messages.length === 1 && h3.messages[0].content === "hello" && h3.has_more === false, J(h3));
  const e = await a.request({ type: "events", id: "ev1" });
  check("events shape" + P, e && e.type === "events" && e.id === "ev1" && Array.isArray(e.events) && e.last_seq === seq, J(e && { ...e, events: e.events.length }));
  check("events oldest first, gap-free from 1" + P, e && e.events.every((x, i) => x.seq === i + 1 && RFC3339_UTC.test(x.ts) && x.event), J(e && e.events.map((x) => x.seq)));
  check("events carry no key field" + P, e && e.events.every((x) => Object.keys(x).sort().join() === "event,seq,ts"), J(e && e.events.map((x) => Object.keys(x))));
  const e2 = await a.request({ type: "events", id: "ev2", after_seq: 3, limit: 2 });
  check("events after_seq/limit" + P, e2 && J(e2.events.map((x) => x.seq)) === J([4, 5]) && e2.last_seq === seq, J(e2));
  const e3 = await a.request({ type: "events", id: "ev3", after_seq: seq });
  check("events past end empty" + P, e3 && e3.events.length === 0 && e3.last_seq === seq, J(e3));

  // ping / state / unknown fields
  const pong = await a.request({ type: "ping", id: "p1", extra_field: 1 });
  check("ping -> pong echoing id, unknown field ignored" + P, pong && pong.type === "pong" && pong.id === "p1", J(pong));
  const st = await a.request({ type: "state", id: "st1", state: "idle" });
  check("state idle -> ack" + P, st && st.type === "ack" && st.id === "st1", J(st));
  const ste = await v.next((f) => f.type === "event" && f.event.type === "state_change", OPTIONAL_WAIT_MS);
  if (ste) { seq = ste.seq; note("state idle emitted state_change event to viewers" + P, J(ste)); }
  const st2 = await a.request({ type: "state", id: "st2", state: "active" });
  check("state active -> ack" + P, st2 && st2.type === "ack", J(st2));
  const ste2 = await v.next((f) => f.type === "event" && f.event.type === "state_change", OPTIONAL_WAIT_MS);
  if (ste2) seq = ste2.seq;

  // bad frames
  const badCases = [
    ["unknown frame type", { type: "nope", id: "b1" }],
    ["missing required field (event)", { type: "event", id: "b2" }],
    ["wrong type of field", { type: "event", id: "b3", event: "x" }],
    ["unknown AgentEvent type", { type: "event", id: "b4", event: { type: "weird" } }],
    ["AgentEvent missing field", { type: "event", id: "b5", event: { type: "token" } }],
    ["bad message role", { type: "message", id: "b6", message: { role: "robot", content: "x" } }],
    ["bad state value", { type: "state", id: "b7", state: "expired" }],
    ["history limit wrong type", { type: "history", id: "b8", limit: "ten" }],
    ["events after_seq wrong type", { type: "events", id: "b9", after_seq: "x" }],
    ["key wrong type", { type: "event", id: "b10", key: 5, event: { type: "token", content: "x" } }],
    ["id of wrong type", { type: "ping", id: [1] }],
    ["second hello", { type: "hello", id: "b12" }],
    ["type not a string", { type: 5, id: "b13" }],
    ["free-form nested 101 deep", { type: "event", id: "b14", event: { type: "custom", name: "d", data: JSON.parse("[".repeat(101) + "]".repeat(101)) } }],
    ["tool_complete result missing success", { type: "event", id: "b15", event: { type: "tool_complete", tool_call_id: "t", result: { content: "x" } } }],
    ["message content not a string", { type: "message", id: "b16", message: { role: "user", content: 5 } }],
    ["limit as float", { type: "events", id: "b17", limit: 1.5 }],
    ["create as 1 in second hello", { type: "hello", id: "b18", create: 1 }],
  ];
  for (const [name, frame] of badCases) {
    a.send(frame);
    const err = await a.next((f) => f.type === "error" || f.type === "ack" || f.type === "pong");
    const idOk = typeof frame.id === "string" ? err && err.id === frame.id : true;
    check(`bad frame: ${name} -> error bad_request${frame.id !== undefined ? " with id" : ""}` + P,
      err && err.type === "error" && err.code === "bad_request" && idOk && typeof err.message === "string", J(err));
  }
  a.send({ type: "event", event: { type: "token", content: "no-id" } });
  const noId = await a.next((f) => f.type === "error" || f.type === "ack");
  note("event without id" + P, J(noId));
  if (noId && noId.type === "ack") { seq++; await v.type("event"); }
  if (!proto || proto === "bamboo.v1") {
    a.ws.send("{not json");
    const err = await a.type("error");
    check("non-JSON text -> bad_request" + P, err && err.code === "bad_request", J(err));
    a.ws.send("[1,2]");
    const err2 = await a.type("error");
    check("JSON non-object -> bad_request" + P, err2 && err2.code === "bad_request", J(err2));
    a.ws.send(J({ id: "nt" }));
    const err3 = await a.type("error");
    check("object without type -> bad_request" + P, err3 && err3.code === "bad_request", J(err3));
    a.ws.send('{"type":"ping","id":"tg"} x');
    const err4 = await a.type("error");
    check("JSON with trailing garbage -> bad_request" + P, err4 && err4.code === "bad_request", J(err4));
    a.ws.send('{"type":"ping","id":92233720368547758070}');
    const err5 = await a.type("error");
    check("id beyond int64 -> bad_request without id" + P, err5 && err5.code === "bad_request" && !("id" in err5), J(err5));
  } else {
    a.ws.send(mpEncode(new Map([[1, "x"], ["type", "ping"], ["id", "nk"]])), { binary: true });
    const ek = await a.type("error");
    check("msgpack map with an int key -> bad_request" + P, ek && ek.code === "bad_request", J(ek));
    a.ws.send(mpEncode({ type: "event", id: "bin", event: { type: "token", content: new Uint8Array([104, 105]) } }), { binary: true });
    const eb = await a.type("error");
    check("msgpack bin for a string -> bad_request" + P, eb && eb.code === "bad_request" && eb.id === "bin", J(eb));
    a.ws.send(mpEncode([1, 2]), { binary: true });
    const ea = await a.type("error");
    check("msgpack array frame -> bad_request" + P, ea && ea.code === "bad_request", J(ea));
    a.ws.send(J({ type: "ping", id: "txt" }));
    const et = await a.type("error");
    check("text frame on msgpack -> bad_request" + P, et && et.code === "bad_request", J(et));
    a.ws.send(Buffer.from([0xc1]), { binary: true });
    const err = await a.type("error");
    check("undecodable msgpack -> bad_request" + P, err && err.code === "bad_request", J(err));
  }
  a.send({ type: "nope", id: 77 });
  const intErr = await a.type("error");
  check("error echoes an integer id as integer" + P, intErr && intErr.id === 77, J(intErr));
  a.send({ type: "history", id: "neg", limit: -1 });
  const negErr = await a.next((f) => f.id === "neg");
  note("history limit -1" + P, J(negErr));
  a.send({ type: "events", id: "negs", after_seq: -5 });
  const negS = await a.next((f) => f.id === "negs");
  note("events after_seq -5" + P, J(negS && { ...negS, events: negS.events && negS.events.length }));
  const alive = await a.request({ type: "ping", id: "alive" });
  check("connection stays open after bad frames" + P, alive && alive.type === "pong", J(alive));
  await sleep(100);
  check("bad frames append nothing" + P, !v.frames.some((f) => f.type === "event"), J(v.frames.filter((f) => f.type === "event")));

  // ordering with two publishers
  const b = await attach(`/api/v1/stream/${sid}`, { role: "agent" }, o);
  const N = 40;
  for (let i = 0; i < N; i++) {
    a.send({ type: "event", id: "oa" + i, event: { type: "token", content: "a" + i } });
    b.send({ type: "event", id: "ob" + i, event: { type: "token", content: "b" + i } });
  }
  const seen = [];
  for (let i = 0; i < 2 * N; i++) {
    const f = await v.type("event");
    if (!f) break;
    seen.push(f.seq);
  }
  check("viewer: strictly increasing, no gaps, two publishers" + P, seen.length === 2 * N && seen.every((s, i) => s === seq + 1 + i), J(seen));
  seq += 2 * N;
  for (let i = 0; i < N; i++) await a.type("ack");
  for (let i = 0; i < N; i++) await b.type("ack");
  await b.close();
  const pl = await v.next((f) => f.type === "presence" && f.left);
  check("presence left" + P, pl && pl.left === b.welcome.connection_id && pl.role === "agent" && typeof pl.connections === "number", J(pl));

  // resume
  const epoch = w.epoch;
  await v.close();
  for (let i = 0; i < 5; i++) await a.request({ type: "event", id: "r" + i, event: { type: "token", content: "r" + i } });
  const missedFrom = seq;
  seq += 5;
  const r = await attach(`/api/v1/stream/${sid}`, { last_seq: missedFrom, epoch }, o);
  check("resume: welcome resumed true, replay 5" + P, r.welcome.resumed === true && r.welcome.replay === 5 && r.welcome.last_seq === seq && r.welcome.epoch === epoch, J({ ...r.welcome, session: undefined }));
  const replayed = [];
  for (let i = 0; i < 5; i++) { const f = await r.type("event"); replayed.push(f && f.seq); }
  check("resume: exactly missed events in order" + P, J(replayed) === J([1, 2, 3, 4, 5].map((i) => missedFrom + i)), J(replayed));
  const lack = await a.request({ type: "event", id: "live1", event: { type: "token", content: "live" } });
  seq++;
  const live = await r.type("event");
  check("resume: then live, no gap/dup" + P, live && live.seq === seq && lack.seq === seq, J(live));
  await sleep(100);
  check("resume: nothing replayed twice" + P, !r.frames.some((f) => f.type === "event"), J(r.frames));
  check("resume: frames before replay are welcome only" + P, r.welcome.type === "welcome", J(r.welcome));
  await r.close();
  const r2 = await attach(`/api/v1/stream/${sid}`, { last_seq: seq - 2 }, o);
  check("resume: last_seq alone = same epoch" + P, r2.welcome.resumed === true && r2.welcome.replay === 2, J({ ...r2.welcome, session: undefined }));
  await r2.close();
  const r3 = await attach(`/api/v1/stream/${sid}`, { last_seq: 0, epoch }, o);
  const all = [];
  for (let i = 0; i < seq; i++) { const f = await r3.type("event"); if (!f) break; all.push(f.seq); }
  check("resume: last_seq 0 replays whole log" + P, r3.welcome.resumed === true && r3.welcome.replay === seq && all.length === seq && all.every((s, i) => s === i + 1), J({ replay: r3.welcome.replay, n: all.length }));
  await r3.close();
  for (const [name, hello] of [["wrong epoch", { last_seq: 1, epoch: "not-the-epoch" }], ["last_seq beyond end", { last_seq: seq + 10, epoch }], ["no last_seq", { epoch }]]) {
    const rx = await attach(`/api/v1/stream/${sid}`, hello, o);
    await sleep(150);
    check(`resume: ${name} -> resumed false, nothing replayed` + P, rx.welcome.type === "welcome" && rx.welcome.resumed === false && !rx.frames.some((f) => f.type === "event"), J({ ...rx.welcome, session: undefined }) + J(rx.frames.slice(0, 3)));
    if (rx.welcome.replay !== 0) note(`welcome.replay when not resumed (${name})` + P, J(rx.welcome.replay));
    await rx.close();
  }
  const wrongType = await Conn.open(`/api/v1/stream/${sid}`, o);
  wrongType.send({ type: "hello", last_seq: "3" });
  const wte = await wrongType.next();
  const wtc = await wrongType.waitClose();
  check("hello with wrong-typed field -> bad_request + 1008" + P, wte && wte.type === "error" && wte.code === "bad_request" && wtc && wtc.code === 1008, J([wte, wtc]));

  // HTTP reads
  const sess = await http(`/api/v1/sessions/${sid}`);
  check("HTTP metadata message_count counts messages" + P, sess.json && sess.json.metadata.message_count === 2 && sess.json.metadata.last_seq === seq, J(sess.json && sess.json.metadata));
  check("HTTP session {metadata,messages}" + P, sess.status === 200 && sess.json && sess.json.metadata.id === sid && sess.json.messages.length === 2, sess.text.slice(0, 200));
  const hev = await http(`/api/v1/sessions/${sid}/events?after_seq=2&limit=3`);
  check("HTTP events {events,last_seq}" + P, hev.status === 200 && J(hev.json.events.map((x) => x.seq)) === J([3, 4, 5]) && hev.json.last_seq === seq, hev.text.slice(0, 200));

  // close the session
  a.frames = [];
  const survivor = await attach(`/api/v1/stream/${sid}`, {}, o);
  const cl = await a.request({ type: "state", id: "close", state: "closed" });
  check("state closed -> ack to the requester" + P, cl && cl.type === "ack", J(cl));
  const cf = await survivor.type("closed");
  check("state closed: others get closed {reason}" + P, cf && typeof cf.reason === "string", J(cf));
  const sc = await survivor.waitClose();
  check("state closed: connections closed 1000" + P, sc && sc.code === 1000, J(sc));
  const acf = await a.type("closed", 2000);
  check("state closed: the requester also gets closed" + P, !!acf, J(a.frames));
  const ac = await a.waitClose();
  check("state closed: requester closed 1000" + P, ac && ac.code === 1000, J(ac));
  const late = await attach(`/api/v1/stream/${sid}`, {}, o);
  const lc = await late.waitClose();
  check("attach to closed session -> 4409" + P, lc && lc.code === 4409, J([late.welcome, lc]));
  const lateC = await attach(`/api/v1/stream/${sid}`, { create: true }, o);
  const lcc = await lateC.waitClose();
  check("attach with create to closed session -> 4409" + P, lcc && lcc.code === 4409, J([lateC.welcome, lcc]));
  const after = await http(`/api/v1/sessions/${sid}`);
  check("closed session still readable over HTTP" + P, after.status === 200 && after.json.metadata.state === "closed" && after.json.messages.length === 2, after.text.slice(0, 200));

  // get-or-create, unknown session
  const newId = uid("goc");
  const nf = await attach(`/api/v1/stream/${newId}`, {}, o);
  const nfc = await nf.waitClose();
  check("unknown session without create -> 4404" + P, nfc && nfc.code === 4404, J([nf.welcome, nfc]));
  check("4404 preceded by nothing or an error frame" + P, !nf.welcome || nf.welcome.type === "error", J(nf.welcome));
  if (nf.welcome && nf.welcome.type === "error") note("4404 sends error frame first" + P, J(nf.welcome));
  const goc = await attach(`/api/v1/stream/${newId}`, { create: true, user_id: "u9", title: "G" }, o);
  check("create on /stream/{id} makes it with that id" + P, goc.welcome.type === "welcome" && goc.welcome.session.id === newId && goc.welcome.session.user_id === "u9" && goc.welcome.session.title === "G", J(goc.welcome));
  await goc.close();
}

async function defaultLimits() {
  const a = await attach("/api/v1/stream", {});
  for (let i = 0; i < 120; i++) a.send({ type: "message", id: "m" + i, message: { role: "user", content: "c" + i } });
  for (let i = 0; i < 120; i++) await a.type("ack");
  for (let i = 0; i < 900; i++) a.send({ type: "event", id: "e" + i, event: { type: "token", content: "t" } });
  for (let i = 0; i < 900; i++) await a.type("ack");
  const h = await a.request({ type: "history", id: "h" });
  check("history default limit 100, newest", h && h.messages.length === 100 && h.messages[99].content === "c119" && h.messages[0].content === "c20" && h.has_more === true, J(h && { n: h.messages.length, has_more: h.has_more }));
  const e = await a.request({ type: "events", id: "e" });
  check("events default limit 1000", e && e.events.length === 1000 && e.events[0].seq === 1 && e.last_seq === 1020, J(e && { n: e.events.length, last_seq: e.last_seq }));
  const id = a.welcome.session.id;
  const dots = await attach("/api/v1/stream/a.b_c-D9" + counter++, { create: true });
  check("id with . _ - accepted", dots.welcome.type === "welcome", J(dots.welcome));
  await dots.close();
  await a.close();
  return id;
}

async function edges() {
  // a resume racing a busy publisher: replay then live, no gap, no duplicate
  const pub = await attach("/api/v1/stream", {});
  const sid = pub.welcome.session.id;
  for (let i = 0; i < 50; i++) await pub.request({ type: "event", id: "w" + i, event: { type: "token", content: "w" } });
  const TOTAL = 400;
  for (let i = 0; i < TOTAL; i++) pub.send({ type: "event", id: "p" + i, event: { type: "token", content: "p" + i } });
  const rs = await attach(`/api/v1/stream/${sid}`, { last_seq: 10, epoch: pub.welcome.epoch });
  const got = [];
  while (got.length === 0 || got[got.length - 1] < 50 + TOTAL) { const f = await rs.type("event"); if (!f) break; got.push(f.seq); }
  check("resume racing a publisher: contiguous replay+live to the end", rs.welcome.resumed === true && got.length === 40 + TOTAL && got.every((x, i) => x === 11 + i) && rs.welcome.replay === rs.welcome.last_seq - 10, J({ replay: rs.welcome.replay, last: rs.welcome.last_seq, n: got.length, first: got.slice(0, 3) }));
  for (let i = 0; i < TOTAL; i++) await pub.type("ack");
  await rs.close();
  // strict order: welcome, exactly replay events, then a pipelined pong
  const raw = await Conn.open(`/api/v1/stream/${sid}`);
  raw.send({ type: "hello", last_seq: 5, epoch: pub.welcome.epoch });
  raw.send({ type: "ping", id: "after" });
  const pongF = await raw.type("pong", 10000);
  const order = raw.frames.map((f) => f.type);
  const w0 = raw.frames[0];
  check("pipelined request after hello: welcome, replay events, then reply", pongF && w0 && w0.type === "welcome" && order.length === 1 + w0.replay && order.slice(1).every((t) => t === "event") && raw.frames.slice(1).every((f, i) => f.seq === 6 + i), J({ order: order.slice(0, 3), n: order.length, replay: w0 && w0.replay }));
  await raw.close();
  // idempotent replies, ids
  for (const id of [0, "", -1]) {
    const r = await pub.request({ type: "ping", id });
    check(`ping id ${J(id)} echoed`, r && r.type === "pong" && r.id === id, J(r));
  }
  pub.send({ type: "ping", id: null });
  const pn = await pub.type("pong");
  check("ping id null -> pong without id", pn && !("id" in pn), J(pn));
  const h = await pub.request({ type: "history", id: "hb", before: 1000 });
  check("history before past the end", h && h.type === "history" && h.messages.length === 0 && h.has_more === false, J(h));
  const same = await attach(`/api/v1/stream/${sid}`, { last_seq: 50 + TOTAL, epoch: pub.welcome.epoch });
  check("resume at the end: resumed true, replay 0", same.welcome.resumed === true && same.welcome.replay === 0, J({ ...same.welcome, session: undefined }));
  await same.close();
  const zero = await attach(`/api/v1/stream/${sid}`, { last_seq: 0 });
  check("last_seq 0 alone replays whole log", zero.welcome.resumed === true && zero.welcome.replay === 50 + TOTAL, J({ ...zero.welcome, session: undefined }));
  await zero.close();
  // keys in code points
  const astral = "😀".repeat(128);
  const ka = await pub.request({ type: "event", id: "ka", key: astral, event: { type: "token", content: "x" } });
  check("key of 128 astral characters accepted", ka && ka.type === "ack", J(ka));
  const kb = await pub.request({ type: "event", id: "kb", key: astral + "😀", event: { type: "token", content: "x" } });
  check("key of 129 astral characters refused", kb && kb.type === "error" && kb.code === "bad_request", J(kb));
  // websocket ping
  const pong = new Promise((r) => pub.ws.once("pong", () => r(true)));
  pub.ws.ping();
  check("WebSocket Ping answered", await Promise.race([pong, sleep(3000).then(() => false)]));
  // token on a server without auth
  const tk = await attach("/api/v1/stream", { token: "garbage" });
  check("token ignored without auth", tk.welcome && tk.welcome.type === "welcome", J(tk.welcome));
  await tk.close();
  // hello errors echo id
  const he = await Conn.open("/api/v1/stream");
  he.send({ type: "hello", id: "h1", create: "yes" });
  const hee = await he.next();
  check("bad hello error echoes its id", hee && hee.type === "error" && hee.id === "h1", J(hee));
  await he.waitClose();
  // PROTOCOL.md's hello lists no id: there any value is an unknown field, ignored
  for (const id of ["h".repeat(129), 1.5, [1]]) {
    const hi = await attach("/api/v1/stream", { id });
    check("hello with an id of " + J(id).slice(0, 10) + " (unknown there) welcomed", hi.welcome && hi.welcome.type === "welcome", J(hi.welcome));
    await hi.close();
  }
  // first frame over the limit
  const big = await Conn.open("/api/v1/stream");
  big.send({ type: "hello", title: "x".repeat(1100000) });
  const bc = await big.waitClose();
  check("oversize first frame -> 1009", bc && bc.code === 1009, J(bc));
  // the frame limit at its edge: exactly 1 MiB is not larger than the limit
  for (const [proto, size, want] of [[undefined, 1048576, "ack"], [undefined, 1048577, 1009], ["bamboo.v1.msgpack", 1048576, "ack"], ["bamboo.v1.msgpack", 1048577, 1009]]) {
    const c = await attach(`/api/v1/stream/${sid}`, {}, proto ? { proto } : {});
    // 1,024 bytes in a field the server ignores: the event leaves room for the envelope
    // of the frames viewers get it in (docs/protocol.md, MessagePack), so it is stored.
    const base = { type: "event", id: "edge", pad: "p".repeat(1024), event: { type: "token", content: "" } };
    const overhead = proto ? mpEncode(base).length + 4 : Buffer.byteLength(J(base));
    const frame = { ...base, event: { type: "token", content: "x".repeat(size - overhead) } };
    const bytes = proto ? mpEncode(frame).length : Buffer.byteLength(J(frame));
    c.send(frame);
    const r = await c.next((f) => f.id === "edge", 5000);
    const cl = r ? null : await c.waitClose();
    const got = r ? r.type : cl && cl.code;
    check(`frame of ${bytes} bytes [${proto || "json"}] -> ${want}`, bytes === size && got === want, J({ bytes, got, r }));
    if (!c.closeInfo) await c.close();
  }
  // subprotocol choice
  for (const [offers, want] of [[["bamboo.v1.msgpack", "bamboo.v1"], "bamboo.v1.msgpack"], [["x-other", "bamboo.v1"], "bamboo.v1"]]) {
    const ws = new WebSocket(WS + "/api/v1/stream", offers);
    const proto = await new Promise((r) => { ws.on("open", () => r(ws.protocol)); ws.on("error", (e) => r("error " + e.message)); });
    check(`offers ${J(offers)} -> ${want}`, proto === want, proto);
    ws.terminate();
  }
  // float free-form value across codecs
  const jv = await attach(`/api/v1/stream/${sid}`, {});
  const mv = await attach(`/api/v1/stream/${sid}`, {}, { proto: "bamboo.v1.msgpack" });
  jv.ws.send('{"type":"event","id":"fl","event":{"type":"custom","name":"f","data":{"one":1.0,"half":0.5,"big":18446744073709551615}}}');
  await jv.type("ack");
  const fm = await mv.type("event");
  note("JSON 1.0 / 2^64-1 in custom.data as seen by a msgpack viewer", J(fm && fm.event.data, (k, v) => (typeof v === "bigint" ? v.toString() + "n" : v)));
  await jv.close(); await mv.close();
  // concurrent get-or-create of one new id
  const cid = uid("race");
  const racers = await Promise.all(Array.from({ length: 12 }, (_, i) => attach(`/api/v1/stream/${cid}`, { create: true, user_id: "r" + i })));
  const epochs = new Set(racers.map((r) => r.welcome && r.welcome.epoch));
  const owners = new Set(racers.map((r) => r.welcome && r.welcome.session && r.welcome.session.user_id));
  check("12 concurrent creates of one id: all welcomed into one session", racers.every((r) => r.welcome && r.welcome.type === "welcome") && epochs.size === 1 && owners.size === 1, J({ epochs: [...epochs], owners: [...owners], types: racers.map((r) => r.welcome && r.welcome.type) }));
  // pipelined appends then close: viewers get every acknowledged event, then closed, then 1000
  const watcher = racers[0];
  const closer = racers[1];
  watcher.frames = [];
  for (let i = 0; i < 60; i++) closer.send({ type: "event", id: "pc" + i, event: { type: "token", content: "c" + i } });
  closer.send({ type: "state", id: "bye", state: "closed" });
  const wc = await watcher.waitClose(10000);
  const evs = watcher.frames.filter((f) => f.type === "event").map((f) => f.seq);
  const lastType = watcher.frames[watcher.frames.length - 1]?.type;
  const byeAck = closer.frames.find((f) => f.id === "bye");
  check("close after pipelined appends: viewer gets all 60 events, then closed, then 1000", J(evs) === J(Array.from({ length: 60 }, (_, i) => i + 1)) && lastType === "closed" && wc && wc.code === 1000 && byeAck && byeAck.type === "ack" && byeAck.seq === 60, J({ n: evs.length, lastType, wc, byeAck }));
  await Promise.all(racers.map((r) => r.waitClose(5000)));
  check("close: every racer closed 1000", racers.every((r) => r.closeInfo && r.closeInfo.code === 1000), J(racers.map((r) => r.closeInfo)));
  // cross-codec fan-out
  const xs = await attach("/api/v1/stream", {}, { proto: "bamboo.v1.msgpack" });
  const xj = await attach(`/api/v1/stream/${xs.welcome.session.id}`, {});
  const xm = await attach(`/api/v1/stream/${xs.welcome.session.id}`, {}, { proto: "bamboo.v1.msgpack" });
  await xs.request({ type: "message", id: "x1", message: { role: "tool", content: "r", tool_call_id: "c9", metadata: { a: [1, { b: null }] } } });
  const [ej, em] = [await xj.type("event"), await xm.type("event")];
  check("msgpack publish: JSON and msgpack viewers get the same object", ej && em && J(ej) === J(em) && ej.event.message.tool_call_id === "c9", J([ej, em]));
  await xs.close(); await xj.close(); await xm.close();
  // percent-decoded ids
  for (const [name, path, want] of [["%2e%2e", "/api/v1/stream/%2e%2e", 400], ["a%2Fb", "/api/v1/stream/a%2Fb", 400], ["a%2Db", "/api/v1/stream/a%2Db", 101]]) {
    const r = await rawHttp(path, upgradeHeaders);
    check(`session id ${name} -> ${want}`, r.status === want, r.head.split("\r\n")[0]);
  }
  await pub.close();
}

// From docs/protocol.md, which extends PROTOCOL.md: the batch extension, the `ack` of a
// `state`, the `events` reply's epoch, and what may come between welcome and the replay.
async function extensions(proto) {
  const P = ` [${proto || "json"}]`;
  const o = proto ? { proto } : {};
  const a = await attach("/api/v1/stream", { role: "agent" }, o);
  const w = a.welcome;
  const sid = w.session.id;
  const v = await attach(`/api/v1/stream/${sid}`, {}, o);
  await a.type("presence");
  // `ws` offers permessage-deflate by default: without --compression it is declined.
  check("compression offered by the client is declined by default" + P, a.ws.extensions === "", J(a.ws.extensions));
  check("welcome lists the batch extension and its bounds" + P, J(w.extensions) === J(["batch"]) && Number.isInteger(w.max_batch_items) && w.max_batch_items >= 1 && Number.isInteger(w.max_batch_bytes) && w.max_batch_bytes >= 1024, J({ ...w, session: undefined }));
  const b1 = await a.request({ type: "batch", id: "b1", items: [
    { event: { type: "token", content: "t1" }, key: "bk1" },
    { message: { role: "assistant", content: "m1" } },
    { event: { type: "custom", name: "n", data: [1, { x: null }] }, key: null },
  ] });
  check("batch -> acks with consecutive seqs, its id, no duplicates field" + P, b1 && b1.type === "acks" && b1.id === "b1" && J(b1.seqs) === "[1,2,3]" && !("duplicates" in b1), J(b1));
  const seen = [await v.type("event"), await v.type("event"), await v.type("event")];
  check("viewer gets each batch item as its own event, in seq order" + P, J(seen.map((f) => f && f.seq)) === "[1,2,3]" && seen[0].event.content === "t1" && seen[1].event.type === "message" && typeof seen[1].event.message.id === "string" && J(seen[2].event.data) === J([1, { x: null }]), J(seen));
  const h = await a.request({ type: "history", id: "bh" });
  check("a batch's message item joins the history" + P, h && h.messages.length === 1 && h.messages[0].content === "m1", J(h));
  const k = await a.request({ type: "event", id: "k", key: "bk2", event: { type: "token", content: "t4" } });
  const b2 = await a.request({ type: "batch", id: "b2", items: [
    { event: { type: "token", content: "again" }, key: "bk1" },
    { event: { type: "token", content: "t5" }, key: "bk3" },
    { event: { type: "token", content: "t6" } },
    { event: { type: "token", content: "t5 again" }, key: "bk3" },
    { message: { role: "user", content: "dup of an event frame's key" }, key: "bk2" },
  ] });
  check("batch duplicates: seq of the first append, indexes listed" + P, k && k.seq === 4 && b2 && b2.type === "acks" && J(b2.seqs) === "[1,5,6,5,4]" && J(b2.duplicates) === "[0,3,4]", J([k, b2]));
  const more = [await v.type("event"), await v.type("event"), await v.type("event")];
  await sleep(100);
  check("viewer gets no event for a batch's duplicates" + P, J(more.map((f) => f && f.seq)) === "[4,5,6]" && !v.frames.some((f) => f.type === "event"), J([more, v.frames]));
  for (const [name, items] of [
    ["one bad item", [{ event: { type: "token", content: "ok" } }, { event: { type: "weird" } }]],
    ["an item with both event and message", [{ event: { type: "token", content: "x" }, message: { role: "user", content: "x" } }]],
    ["an item with neither", [{ key: "only" }]],
    ["an item key over 128", [{ event: { type: "token", content: "x" }, key: "k".repeat(129) }]],
    ["empty items", []],
  ]) {
    const e = await a.request({ type: "batch", id: name, items });
    check(`batch with ${name} -> bad_request with its id` + P, e && e.type === "error" && e.code === "bad_request" && e.id === name, J(e));
  }
  const over = await a.request({ type: "batch", id: "over", items: Array.from({ length: w.max_batch_items + 1 }, () => ({ event: { type: "token", content: "x" } })) });
  check("batch over max_batch_items -> bad_request" + P, over && over.type === "error" && over.code === "bad_request" && over.id === "over", J(over));
  const log = await a.request({ type: "events", id: "log" });
  check("a refused batch appends nothing" + P, log && log.last_seq === 6 && log.events.length === 6 && !v.frames.some((f) => f.type === "event"), J(log && { last_seq: log.last_seq, n: log.events.length }));
  check("events reply carries the connection's epoch" + P, log && log.epoch === w.epoch, J(log && log.epoch));
  const st = await a.request({ type: "state", id: "st", state: "idle" });
  check("state ack carries the session's last_seq as seq" + P, st && st.type === "ack" && st.seq === 6 && st.id === "st", J(st));
  // what a publisher may omit, and what viewers then get (docs/protocol.md's tables)
  const omitted = [
    [{ type: "complete" }, { type: "complete" }],
    [{ type: "error", message: "m" }, { type: "error", message: "m" }],
    [{ type: "custom", name: "n" }, { type: "custom", name: "n", data: null }],
    [{ type: "tool_start", tool_call_id: "c", tool_name: "t" }, { type: "tool_start", tool_call_id: "c", tool_name: "t", arguments: null }],
    [{ type: "tool_complete", tool_call_id: "c", result: { success: true } }, { type: "tool_complete", tool_call_id: "c", result: { success: true, content: "", error: null } }],
  ];
  for (const [sent, want] of omitted) {
    const ack = await a.request({ type: "event", id: "o", event: sent });
    const got = await v.type("event");
    const same = got && got.seq === (ack && ack.seq) && J(Object.keys(got.event).sort()) === J(Object.keys(want).sort()) && Object.keys(want).every((f) => J(got.event[f]) === J(want[f]));
    check(`${sent.type} with its optional fields left out: viewers get the defaults` + P, same, J([sent, got]));
  }
  const viaEvent = await a.request({ type: "event", id: "ve", event: { type: "message", message: { role: "assistant", content: "via event" } } });
  const h2 = await a.request({ type: "history", id: "h2" });
  const last = h2 && h2.messages[h2.messages.length - 1];
  check("an event of type message joins the history too, id and created_at filled in" + P, viaEvent && viaEvent.type === "ack" && last && last.content === "via event" && typeof last.id === "string" && last.id.length > 0 && RFC3339_UTC.test(last.created_at), J(last));
  for (const [name, frame] of [["history limit 0", { type: "history", limit: 0 }], ["history before -1", { type: "history", before: -1 }], ["events after_seq -1", { type: "events", after_seq: -1 }], ["events limit 0", { type: "events", limit: 0 }]]) {
    const e = await a.request({ ...frame, id: name });
    check(`${name} -> bad_request` + P, e && e.type === "error" && e.code === "bad_request" && e.id === name, J(e));
  }
  if (!proto || proto === "bamboo.v1") {
    // A name given twice: the last one counts; `type` twice with two values is refused.
    a.ws.send('{"type": "ping", "id": "first", "id": "last"}');
    const twice = await a.type("pong");
    check("a name given twice in a frame: the last counts", twice && twice.id === "last", J(twice));
    a.ws.send('{"type": "ping", "type": "history", "id": "tt"}');
    const tt = await a.next((f) => f.id === "tt");
    check("type given twice with two values -> bad_request with the id", tt && tt.type === "error" && tt.code === "bad_request", J(tt));
  }
  const epochAlone = await attach(`/api/v1/stream/${sid}`, { epoch: w.epoch }, o);
  check("hello with epoch but no last_seq: live only, resumed false, replay 0" + P, epochAlone.welcome.type === "welcome" && epochAlone.welcome.resumed === false && epochAlone.welcome.replay === 0, J({ ...epochAlone.welcome, session: undefined }));
  await sleep(100);
  check("… and nothing replayed" + P, !epochAlone.frames.some((f) => f.type === "event"), J(epochAlone.frames));
  await Promise.all([epochAlone.close(), v.close(), a.close()]);
}

// Between `welcome` and its last replayed event no other frame comes: a presence of a
// peer joining meanwhile, and the replies to requests sent right after hello (an append
// among them), wait behind the replay. The replay is some 8 MiB, twice what the socket
// buffers took of it on Linux (some 4 MiB when the resumer reads nothing), and the
// resumer reads nothing until the peer has joined and another event was appended, so
// they happen while the replay is still on its way.
async function replayComesWhole() {
  const a = await attach("/api/v1/stream", { role: "agent" });
  const sid = a.welcome.session.id;
  const content = "r".repeat(10000);
  for (let i = 0; i < 9; i++) a.send({ type: "batch", id: "rb" + i, items: Array.from({ length: 90 }, () => ({ event: { type: "token", content } })) });
  for (let i = 0; i < 9; i++) await a.next((f) => f.id === "rb" + i, 10000);
  const r = await Conn.open(`/api/v1/stream/${sid}`);
  r.ws._socket.pause();
  r.send({ type: "hello", last_seq: 0, epoch: a.welcome.epoch });
  r.send({ type: "event", id: "early", key: "early", event: { type: "token", content: "sent before welcome" } });
  r.send({ type: "ping", id: "early-ping" });
  await a.type("presence", 10000); // r is attached: its welcome and replay are on their way
  const j = await attach(`/api/v1/stream/${sid}`, { role: "agent" });
  const live = await a.request({ type: "event", id: "live", event: { type: "token", content: "live" } });
  r.ws._socket.resume();
  await r.next((f) => f.type === "event" && f.seq === live.seq, 15000);
  await r.type("presence", 5000);
  await r.type("pong", 5000);
  await r.next((f) => f.id === "early", 5000);
  const w = r.arrived[0] || {};
  const replay = r.arrived.slice(1, 1 + (w.replay || 0));
  const rest = r.arrived.slice(1 + (w.replay || 0));
  check("resume: welcome, then exactly the replay, nothing between", w.type === "welcome" && w.resumed === true && w.replay === 810 && replay.every((f, i) => f.type === "event" && f.seq === i + 1), J({ w: { ...w, session: undefined }, kinds: [...new Set(replay.map((f) => f.type))] }));
  const ack = rest.find((f) => f.id === "early");
  const liveSeqs = rest.filter((f) => f.type === "event").map((f) => f.seq);
  check("resume: presence, pong and the ack of a publish sent before welcome come after the replay", ack && ack.type === "ack" && ack.seq > 810 && rest.some((f) => f.type === "presence" && f.joined === j.welcome.connection_id) && rest.some((f) => f.type === "pong" && f.id === "early-ping"), J(rest.map((f) => f.type)));
  check("resume: live events after the replay, gap-free with the resumer's own ack", J([...liveSeqs, ack && ack.seq].sort((x, y) => x - y)) === J([811, 812]), J({ liveSeqs, ack }));
  await Promise.all([r.close(), j.close(), a.close()]);
}

// docs/protocol.md: requests sent behind a refused hello are not read: no reply, no append.
async function refusedHelloDropsPipelined() {
  const missing = uid("gone");
  const nf = await Conn.open(`/api/v1/stream/${missing}`);
  nf.send({ type: "hello" });
  nf.send({ type: "message", id: "m", key: "behind", message: { role: "user", content: "behind a refused hello" } });
  const nfc = await nf.waitClose();
  const gone = await http(`/api/v1/sessions/${missing}`);
  check("requests behind a hello refused 4404: no frame, nothing created", nfc && nfc.code === 4404 && nf.arrived.length === 0 && gone.status === 404, J([nf.arrived, nfc, gone.status]));
  const bad = await Conn.open("/api/v1/stream");
  bad.send({ type: "hello", id: "h", role: "owner" });
  bad.send({ type: "ping", id: "behind" });
  const badc = await bad.waitClose();
  check("requests behind an invalid hello: its error, then 1008, nothing else", badc && badc.code === 1008 && bad.arrived.length === 1 && bad.arrived[0].type === "error" && bad.arrived[0].id === "h", J([bad.arrived, badc]));
}

async function handshakeAndTransport() {
  // first frame not hello
  const c1 = await Conn.open("/api/v1/stream");
  c1.send({ type: "ping", id: "x" });
  const e1 = await c1.next();
  const cc1 = await c1.waitClose();
  check("first frame not hello -> error bad_request + 1008", e1 && e1.type === "error" && e1.code === "bad_request" && cc1 && cc1.code === 1008, J([e1, cc1]));
  const c2 = await Conn.open("/api/v1/stream");
  c2.ws.send("garbage");
  const e2 = await c2.next();
  const cc2 = await c2.waitClose();
  check("first frame not JSON -> error bad_request + 1008", e2 && e2.code === "bad_request" && cc2 && cc2.code === 1008, J([e2, cc2]));
  const c2b = await Conn.open("/api/v1/stream");
  c2b.send({ type: "hello", role: "boss" });
  const e2b = await c2b.next();
  const cc2b = await c2b.waitClose();
  check("hello with unknown role -> bad_request + 1008", e2b && e2b.code === "bad_request" && cc2b && cc2b.code === 1008, J([e2b, cc2b]));
  // no hello in time
  const c3 = await Conn.open("/api/v1/stream");
  const cc3 = await c3.waitClose(15000);
  check("4408 with no frame", c3.frames.length === 0, J(c3.frames));
  check("no hello in time -> 4408", cc3 && cc3.code === 4408, J(cc3));
  // oversize
  const c4 = await attach("/api/v1/stream");
  c4.send({ type: "event", id: "big", event: { type: "token", content: "x".repeat(1100000) } });
  const cc4 = await c4.waitClose();
  check("frame over 1 MiB -> close 1009", cc4 && cc4.code === 1009, J(cc4));
  const c5 = await attach("/api/v1/stream");
  const ok5 = await c5.request({ type: "event", id: "nearly", event: { type: "token", content: "x".repeat(1000000) } });
  check("frame under 1 MiB accepted", ok5 && ok5.type === "ack", J(ok5));
  await c5.close();
  // ids refused before upgrade
  for (const [name, path] of [["..", "/api/v1/stream/.."], [".", "/api/v1/stream/."], ["space", "/api/v1/stream/a%20b"],
    ["129 chars", "/api/v1/stream/" + "a".repeat(129)], ["slash", "/api/v1/stream/a/b"], ["empty", "/api/v1/stream/"], ["unicode", "/api/v1/stream/%C3%A9"]]) {
    const r = await rawHttp(path, upgradeHeaders);
    check(`session id ${name} -> HTTP 400 before upgrade`, r.status === 400, r.head.split("\r\n")[0]);
  }
  const ok = await rawHttp("/api/v1/stream/" + "a".repeat(128), upgradeHeaders);
  check("128-char id upgrades (101)", ok.status === 101, ok.head.split("\r\n")[0]);
  // docs/protocol.md (Origins and hosts): without auth, a page of another site, or a
  // Host that is not a loopback name or the server's address, is refused with 403.
  const port = new URL(BASE).port;
  for (const [name, headers, want] of [
    ["Origin of another site", { ...upgradeHeaders, Origin: "https://evil.example" }, 403],
    ["loopback Origin", { ...upgradeHeaders, Origin: `http://localhost:${port}` }, 101],
    ["Host not loopback", { ...upgradeHeaders, Host: `evil.example:${port}` }, 403],
  ]) {
    const r = await rawHttp("/api/v1/stream/origin-check", headers);
    check(`upgrade with ${name} -> ${want}`, r.status === want, r.head.split("\r\n")[0]);
  }
  const hostHttp = await rawHttp("/api/v1/sessions", { Host: "evil.example" });
  check("HTTP GET with a Host not loopback -> 403", hostHttp.status === 403, hostHttp.head.split("\r\n")[0]);
  // unknown subprotocol only
  try {
    const u = await Conn.open("/api/v1/stream", { proto: "bogus" });
    note("unknown-only subprotocol", "server accepted with protocol '" + u.ws.protocol + "'");
    u.ws.terminate();
  } catch (e) {
    note("unknown-only subprotocol", "refused: " + e.message);
  }
  // HTTP endpoints
  for (const p of ["/healthz", "/readyz"]) {
    const r = await http(p);
    check(`${p} 200`, r.status === 200, r.status);
  }
  const met = await http("/metrics");
  check("/metrics Prometheus text", met.status === 200 && /^text\/plain/.test(met.type || "") && /^# (HELP|TYPE) /m.test(met.text), met.type);
  const nfh = await http("/api/v1/sessions/nope-" + uid());
  check("HTTP unknown session 404", nfh.status === 404, nfh.status);
  const post = await fetch(BASE + "/healthz", { method: "POST" });
  check("HTTP non-GET refused", post.status >= 400, post.status);
}

async function listing() {
  const list = await http("/api/v1/sessions?sort_by=message_count&sort_order=asc&limit=2&offset=1");
  check("sessions list shape", list.status === 200 && Array.isArray(list.json.sessions) && ["total", "offset", "limit"].every((k) => typeof list.json[k] === "number") && list.json.limit === 2 && list.json.offset === 1, list.text.slice(0, 200));
  const sorted = list.json.sessions.map((s) => s.message_count);
  check("sessions sort_order asc honoured", sorted.every((x, i) => i === 0 || sorted[i - 1] <= x), J(sorted));
  const listU = await http("/api/v1/sessions?user_id=u1&title_contains=T1");
  check("sessions filter user_id/title_contains", listU.status === 200 && listU.json.sessions.length > 0 && listU.json.sessions.every((s) => s.user_id === "u1" && s.title.includes("T1")), listU.text.slice(0, 200));
  const bad = await http("/api/v1/sessions?sort_by=bogus");
  check("sessions bad sort_by refused (4xx)", bad.status >= 400 && bad.status < 500, bad.status + " " + bad.text.slice(0, 100));
}

async function listing2() {
  const d = await http("/api/v1/sessions?sort_by=created_at");
  const t = d.json.sessions.map((x) => Date.parse(x.created_at));
  check("listing sort_order defaults to desc", d.status === 200 && t.length > 1 && t.every((x, i) => i === 0 || t[i - 1] >= x), J(d.json.sessions.map((x) => x.created_at)));
  const cl = await http("/api/v1/sessions?state=closed");
  check("listing state filter", cl.status === 200 && cl.json.sessions.length > 0 && cl.json.sessions.every((x) => x.state === "closed"), cl.text.slice(0, 200));
  const mid = d.json.sessions[Math.floor(t.length / 2)].created_at;
  const ca = await http("/api/v1/sessions?created_after=" + encodeURIComponent(mid));
  check("listing created_after", ca.status === 200 && ca.json.sessions.every((x) => Date.parse(x.created_at) > Date.parse(mid) || x.created_at === mid), J(ca.json.sessions.map((x) => x.created_at)) + " vs " + mid);
  if (ca.json.sessions.some((x) => x.created_at === mid)) note("created_after is inclusive", mid);
  const cb = await http("/api/v1/sessions?created_before=" + encodeURIComponent(mid));
  check("listing created_before", cb.status === 200 && cb.json.sessions.every((x) => Date.parse(x.created_at) <= Date.parse(mid)), J(cb.json.sessions.map((x) => x.created_at)));
  if (cb.json.sessions.some((x) => x.created_at === mid)) note("created_before is inclusive", mid);
  const aa = await http("/api/v1/sessions?active_after=" + encodeURIComponent(mid));
  check("listing active_after", aa.status === 200 && aa.json.sessions.every((x) => Date.parse(x.last_activity_at) >= Date.parse(mid)), J(aa.json.sessions.map((x) => x.last_activity_at)));
  for (const key of ["updated_at", "last_activity_at"]) {
    for (const order of ["asc", "desc"]) {
      const r = await http(`/api/v1/sessions?sort_by=${key}&sort_order=${order}`);
      const v = r.json.sessions.map((x) => Date.parse(x[key]));
      check(`listing sort_by ${key} ${order}`, r.status === 200 && v.length > 1 && v.every((x, i) => i === 0 || (order === "asc" ? v[i - 1] <= x : v[i - 1] >= x)), J(r.json.sessions.map((x) => x[key])));
    }
  }
  const tot = await http("/api/v1/sessions?limit=1");
  check("listing total counts all matches, limit 1 returns 1", tot.json.sessions.length === 1 && tot.json.total === d.json.total && tot.json.total >= d.json.sessions.length, J({ ...tot.json, sessions: tot.json.sessions.length }));
}

async function crossMode(baseB) {
  const WSB = baseB.replace(/^http/, "ws");
  const openB = (path, hello) => new Promise((resolve, reject) => {
    const ws = new WebSocket(WSB + path, ["bamboo.v1"]);
    const c = new Conn(ws, "bamboo.v1");
    ws.on("open", async () => { c.send({ type: "hello", ...hello }); c.welcome = await c.next(); resolve(c); });
    ws.on("error", reject);
  });
  const a = await attach("/api/v1/stream", { user_id: "x" });
  const sid = a.welcome.session.id;
  const b = await openB(`/api/v1/stream/${sid}`, {});
  check("cross: attach on instance B to a session made on A", b.welcome.type === "welcome" && b.welcome.epoch === a.welcome.epoch, J(b.welcome));
  const pj = await a.type("presence");
  check("cross: presence of B's join reaches A", pj && pj.joined === b.welcome.connection_id && pj.connections === 2, J(pj));
  for (let i = 0; i < 20; i++) a.send({ type: "event", id: "x" + i, event: { type: "token", content: "x" + i } });
  const seen = [];
  for (let i = 0; i < 20; i++) { const f = await b.type("event"); seen.push(f && f.seq); }
  check("cross: B sees A's events in order", J(seen) === J(Array.from({ length: 20 }, (_, i) => i + 1)), J(seen));
  for (let i = 0; i < 20; i++) await a.type("ack");
  await b.close();
  for (let i = 0; i < 5; i++) await a.request({ type: "event", id: "y" + i, key: "ky" + i, event: { type: "token", content: "y" } });
  const r = await openB(`/api/v1/stream/${sid}`, { last_seq: 20, epoch: a.welcome.epoch });
  const got = [];
  for (let i = 0; i < 5; i++) { const f = await r.type("event"); got.push(f && f.seq); }
  check("cross: resume on B after publishing on A", r.welcome.resumed === true && r.welcome.replay === 5 && J(got) === "[21,22,23,24,25]", J([{ ...r.welcome, session: undefined }, got]));
  const dup = await r.request({ type: "event", id: "d", key: "ky2", event: { type: "token", content: "y" } });
  check("cross: key given on A is a duplicate on B", dup && dup.duplicate === true && dup.seq === 23, J(dup));
  // B's next event is the marker: events reach A in seq order, so an event for the
  // duplicate sent in order would reach A before it, and A's first event must be the
  // marker. One sent late (out of order) is looked for once A's connection has ended.
  const ev = await r.request({ type: "event", id: "e", event: { type: "token", content: "fromB" } });
  const fa = await a.type("event");
  check("cross: no event to A for B's duplicate", fa && fa.seq === 26 && fa.event?.content === "fromB", J(fa));
  check("cross: A sees B's event", fa && fa.seq === ev.seq && ev.seq === 26, J([ev, fa]));
  r.frames = [];
  const cl = await a.request({ type: "state", id: "c", state: "closed" });
  const rc = await r.type("closed");
  const rcc = await r.waitClose();
  check("cross: close on A closes B's connection with closed + 1000", cl && cl.type === "ack" && rc && rcc && rcc.code === 1000, J([cl, rc, rcc]));
  const acc = await a.waitClose();
  const stray = a.frames.filter((f) => f.type === "event");
  check("cross: no event to A after B's event, to its close (1000)", acc?.code === 1000 && stray.length === 0, J([acc, stray]));
  const late = await openB(`/api/v1/stream/${sid}`, {});
  check("cross: later attach on B -> 4409", (await late.waitClose())?.code === 4409, J(late.closeInfo));
}

async function authMode() {
  const noTok = await attach("/api/v1/stream", {});
  const c = await noTok.waitClose();
  check("auth: no token -> 4401", c && c.code === 4401, J([noTok.welcome, c]));
  const badTok = await attach("/api/v1/stream", { token: "abc.def.ghi" });
  check("auth: bad token -> 4401", (await badTok.waitClose())?.code === 4401, J(badTok.closeInfo));
  const expired = await attach("/api/v1/stream", { token: token({ sub: "alice", exp: Math.floor(Date.now() / 1000) - 3600 }) });
  check("auth: expired token -> 4401", (await expired.waitClose())?.code === 4401, J(expired.closeInfo));
  const wrongKey = (() => { const t = token({ sub: "alice" }).split("."); t[2] = crypto.createHmac("sha256", "other").update(t[0] + "." + t[1]).digest("base64url"); return t.join("."); })();
  const wk = await attach("/api/v1/stream", { token: wrongKey });
  check("auth: wrong signature -> 4401", (await wk.waitClose())?.code === 4401, J(wk.closeInfo));
  const noSub = await attach("/api/v1/stream", { token: token({}) });
  check("auth: token without sub -> 4401", (await noSub.waitClose())?.code === 4401, J(noSub.closeInfo));
  const noExp = (() => { const b64 = (o) => Buffer.from(J(o)).toString("base64url"); const body = b64({ alg: "HS256", typ: "JWT" }) + "." + b64({ sub: "alice" }); return body + "." + crypto.createHmac("sha256", SECRET).update(body).digest("base64url"); })();
  const ne = await attach("/api/v1/stream", { token: noExp });
  check("auth: token without exp -> 4401", (await ne.waitClose())?.code === 4401, J(ne.closeInfo));

  const alice = await attach("/api/v1/stream", { token: token({ sub: "alice" }), user_id: "mallory" });
  check("auth: valid token welcome", alice.welcome.type === "welcome", J(alice.welcome));
  const sid = alice.welcome.session.id;
  check("auth: session created under token belongs to sub", alice.welcome.session.user_id === "alice", alice.welcome.session.user_id);
  const hdr = await attach(`/api/v1/stream/${sid}`, {}, { headers: { Authorization: "Bearer " + token({ sub: "alice" }) } });
  check("auth: token in Authorization header", hdr.welcome.type === "welcome", J(hdr.welcome));
  await hdr.close();
  const bob = await attach(`/api/v1/stream/${sid}`, { token: token({ sub: "bob" }) });
  check("auth: other user's session -> 4403", (await bob.waitClose())?.code === 4403, J([bob.welcome, bob.closeInfo]));
  const other = await attach("/api/v1/stream", { token: token({ sub: "alice" }) });
  const otherId = other.welcome.session.id;
  await other.close();
  const sidTok = await attach(`/api/v1/stream/${otherId}`, { token: token({ sub: "alice", sid }) });
  check("auth: token with sid to another session -> 4403", (await sidTok.waitClose())?.code === 4403, J([sidTok.welcome, sidTok.closeInfo]));
  const sidOk = await attach(`/api/v1/stream/${sid}`, { token: token({ sub: "alice", sid }) });
  check("auth: token with sid to that session", sidOk.welcome.type === "welcome", J(sidOk.welcome));
  await sidOk.close();
  const admin = await attach(`/api/v1/stream/${sid}`, { token: token({ sub: "root", role: "admin" }) });
  check("auth: admin attaches to any", admin.welcome.type === "welcome", J(admin.welcome));
  await admin.close();
  const agent = await attach(`/api/v1/stream/${sid}`, { token: token({ sub: "alice", role: "agent" }) });
  check("auth: role agent token accepted", agent.welcome.type === "welcome", J(agent.welcome));
  await agent.close();
  const badRole = await attach(`/api/v1/stream/${sid}`, { token: token({ sub: "alice", role: "god" }) });
  await badRole.waitClose(1500);
  note("auth: token with unknown role", badRole.closeInfo ? "closed " + J(badRole.closeInfo) : "accepted: " + J(badRole.welcome && badRole.welcome.type));
  if (!badRole.closeInfo) badRole.ws.terminate();
  const none = (() => { const b64 = (o) => Buffer.from(J(o)).toString("base64url"); return b64({ alg: "none", typ: "JWT" }) + "." + b64({ sub: "root", role: "admin", exp: Math.floor(Date.now() / 1000) + 600 }) + "."; })();
  const nt = await attach(`/api/v1/stream/${sid}`, { token: none });
  check("auth: alg none -> 4401", (await nt.waitClose())?.code === 4401, J(nt.closeInfo));
  const scopedNew = await attach("/api/v1/stream", { token: token({ sub: "alice", sid: "fixed-" + counter }) });
  await scopedNew.waitClose(1500);
  note("auth: sid-scoped token on /api/v1/stream", scopedNew.closeInfo ? "closed " + J(scopedNew.closeInfo) : "welcome " + J(scopedNew.welcome && scopedNew.welcome.session && scopedNew.welcome.session.id));
  const fixed = "fixed-" + counter++;
  const scopedCreate = await attach(`/api/v1/stream/${fixed}`, { create: true, token: token({ sub: "alice", sid: fixed }) });
  check("auth: sid-scoped token creates its own session", scopedCreate.welcome && scopedCreate.welcome.type === "welcome" && scopedCreate.welcome.session.user_id === "alice", J(scopedCreate.welcome));
  await scopedCreate.close();
  const agentSid = await attach(`/api/v1/stream/${sid}`, { token: token({ sub: "bot", role: "agent", sid }) });
  check("auth: agent token with sid of another owner's session -> 4403", (await agentSid.waitClose())?.code === 4403, J([agentSid.welcome, agentSid.closeInfo]));
  const adminSid = await attach(`/api/v1/stream/${sid}`, { token: token({ sub: "root", role: "admin", sid }) });
  check("auth: admin token with sid reaches that session", adminSid.welcome && adminSid.welcome.type === "welcome", J(adminSid.welcome && adminSid.welcome.type) + J(adminSid.closeInfo));
  if (adminSid.welcome && adminSid.welcome.type === "welcome") await adminSid.close();
  const userSid = await attach(`/api/v1/stream/${sid}`, { token: token({ sub: "bob", sid }) });
  check("auth: user token with sid of another owner's session -> 4403", (await userSid.waitClose())?.code === 4403, J(userSid.closeInfo));
  const hs = await http(`/api/v1/sessions/${sid}/events`, { Authorization: "Bearer " + token({ sub: "alice", sid: fixed }) });
  check("auth HTTP: sid-scoped token to another session 403", hs.status === 403, hs.status);
  const both = await attach(`/api/v1/stream/${sid}`, { token: token({ sub: "alice" }) }, { headers: { Authorization: "Bearer garbage" } });
  check("auth: hello token wins over header", both.welcome && both.welcome.type === "welcome", J(both.welcome));
  await both.close();
  // HTTP auth
  const h0 = await http(`/api/v1/sessions/${sid}`);
  check("auth HTTP: no token -> 401", h0.status === 401, h0.status);
  const h1 = await http(`/api/v1/sessions/${sid}`, { Authorization: "Bearer " + token({ sub: "alice" }) });
  check("auth HTTP: owner 200", h1.status === 200, h1.status);
  const h2 = await http(`/api/v1/sessions/${sid}`, { Authorization: "Bearer " + token({ sub: "bob" }) });
  check("auth HTTP: other user 403", h2.status === 403, h2.status);
  const h3 = await http(`/api/v1/sessions/${sid}/events`, { Authorization: "Bearer " + token({ sub: "root", role: "admin" }) });
  check("auth HTTP: admin events 200", h3.status === 200, h3.status);
  const h4 = await http(`/api/v1/sessions`, { Authorization: "Bearer " + token({ sub: "bob" }) });
  check("auth HTTP: listing shows only own sessions", h4.status === 200 && h4.json.sessions.every((s) => s.user_id === "bob"), h4.text.slice(0, 200));
  const h5 = await http(`/api/v1/sessions?user_id=alice`, { Authorization: "Bearer " + token({ sub: "bob" }) });
  check("auth HTTP: listing another user's sessions is not shown", h5.status === 403 || (h5.status === 200 && h5.json.sessions.length === 0), h5.status + h5.text.slice(0, 100));
  const hz = await http("/healthz");
  check("auth HTTP: /healthz needs no token", hz.status === 200, hz.status);
  await alice.close();
}

async function limitsMode() {
  // server started with --max-sessions 1 --rate-limit 2 --rate-limit-burst 2 --rate-limit-refusals 5 --default-ttl 600
  // --max-session-bytes 20000
  const a = await attach("/api/v1/stream", { user_id: "ttl" });
  const m = a.welcome.session;
  const diff = (Date.parse(m.expires_at) - Date.parse(m.last_activity_at)) / 1000;
  check("expires_at = last_activity_at + TTL", diff === 600, J([m.last_activity_at, m.expires_at]));
  await sleep(1100);
  await a.request({ type: "event", id: "slide", event: { type: "token", content: "x" } });
  const after = await http(`/api/v1/sessions/${m.id}`);
  const m2 = after.json.metadata;
  check("activity slides expires_at", Date.parse(m2.expires_at) > Date.parse(m.expires_at) && (Date.parse(m2.expires_at) - Date.parse(m2.last_activity_at)) / 1000 === 600, J([m2.last_activity_at, m2.expires_at]));
  // docs/protocol.md: max_batch_items is never more than the rate's burst, and a batch
  // with more items than the tokens left is refused whole with rate_limited.
  check("max_batch_items is at most the frame-rate burst (2)", a.welcome.max_batch_items === 2, J(a.welcome.max_batch_items));
  a.send({ type: "ping", id: "spend" });
  a.send({ type: "batch", id: "over-rate", items: [{ event: { type: "token", content: "1" } }, { event: { type: "token", content: "2" } }] });
  const overRate = await a.next((f) => f.id === "over-rate");
  check("a batch over the tokens left -> rate_limited whole", overRate && overRate.type === "error" && overRate.code === "rate_limited", J(overRate));
  // docs/protocol.md: an append past the session's stored bytes (--max-session-bytes
  // 20000) is too_large and stores nothing. A second connection: a bucket of its own.
  const c = await attach(`/api/v1/stream/${m.id}`, {});
  const fits = await c.request({ type: "event", id: "fits", key: "fits", event: { type: "token", content: "f".repeat(15000) } });
  const tooBig = await c.request({ type: "event", id: "too-big", event: { type: "token", content: "o".repeat(6000) } });
  const log = await http(`/api/v1/sessions/${m.id}/events`);
  check("an append past the session's stored bytes -> too_large, nothing stored", fits && fits.type === "ack" && tooBig && tooBig.type === "error" && tooBig.code === "too_large" && tooBig.id === "too-big" && log.json && log.json.last_seq === fits.seq, J([fits, tooBig, log.json && log.json.last_seq]));
  await c.close();
  const b = await attach("/api/v1/stream", {});
  const bc = await b.waitClose(3000);
  check("session limit -> 1013", bc && bc.code === 1013, J([b.welcome, bc]));
  let limited = null;
  for (let i = 0; i < 30 && !a.closeInfo; i++) {
    a.send({ type: "ping", id: "rl" + i });
    const f = await a.next((x) => x.type === "error", 100);
    if (f && !limited) limited = f;
  }
  check("rate limit -> error rate_limited", limited && limited.code === "rate_limited", J(limited));
  const ac = await a.waitClose();
  check("rate limited on -> close 4429", ac && ac.code === 4429, J(ac));
}

import fs from "node:fs";
// Where restart1 leaves what restart2 reads: tests/test_conformance_node.py gives each run its own.
const STATE = process.env.CONFORMANCE_STATE || "/tmp/h181conf/restart-state.json";
async function restart1() {
  const a = await attach("/api/v1/stream", { user_id: "r" });
  const v = await attach(`/api/v1/stream/${a.welcome.session.id}`, {});
  for (let i = 0; i < 3; i++) await a.request({ type: "event", id: "k" + i, key: "rk" + i, event: { type: "token", content: "x" + i } });
  for (let i = 0; i < 3; i++) await v.type("event");
  fs.writeFileSync(STATE, J({ sid: a.welcome.session.id, epoch: a.welcome.epoch, seq: 3 }));
  console.log("READY");
  const [ca, cv] = await Promise.all([a.waitClose(20000), v.waitClose(20000)]);
  const lastA = a.frames[a.frames.length - 1];
  note("shutdown: last frame and close reason", J([lastA, ca]));
  check("server shutdown closes 1001 or 1012", [1001, 1012].includes(ca && ca.code) && [1001, 1012].includes(cv && cv.code), J([ca, cv]));
}
async function restart2() {
  const st = JSON.parse(fs.readFileSync(STATE));
  const p = await attach(`/api/v1/stream/${st.sid}`, {});
  const dup = await p.request({ type: "event", id: "again", key: "rk1", event: { type: "token", content: "x1" } });
  check("idempotency key survives restart", dup && dup.seq === 2 && dup.duplicate === true, J(dup));
  const r = await attach(`/api/v1/stream/${st.sid}`, { last_seq: 1, epoch: st.epoch });
  const got = [await r.type("event"), await r.type("event")].map((f) => f && f.seq);
  check("resume across restart: same epoch, missed events", r.welcome.resumed === true && r.welcome.epoch === st.epoch && r.welcome.replay === 2 && J(got) === "[2,3]", J([{ ...r.welcome, session: undefined }, got]));
  await p.close(); await r.close();
}

try {
  if (mode === "restart1") await restart1();
  else if (mode === "restart2") await restart2();
  else if (mode === "open") {
    await handshakeAndTransport();
    await defaultLimits();
    await edges();
    for (const proto of [undefined, "bamboo.v1", "bamboo.v1.msgpack"]) await openMode(proto);
    await listing();
    await listing2();
    for (const proto of ["bamboo.v1", "bamboo.v1.msgpack"]) await extensions(proto);
    await replayComesWhole();
    await refusedHelloDropsPipelined();
  } else if (mode === "auth") await authMode();
  else if (mode === "limits") await limitsMode();
  else if (mode === "cross") await crossMode(process.argv[4]);
} catch (e) {
  check("no exception in conformance client", false, e.stack);
}
const fails = results.filter((r) => !r.ok);
console.log(`\n${results.filter((r) => r.ok && !r.note).length} held, ${fails.length} failed, ${results.filter((r) => r.note).length} notes`);
process.exit(fails.length ? 1 : 0);
