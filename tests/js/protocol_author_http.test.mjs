// The outside check of the wire contract (outside.mjs), as a client author in another
// language reads it: the HTTP API's parameters and bounds, the auth rules the other
// protocol_* files leave out (which token wins, the claims refused, a token that expires
// on an open connection, listing), and expiry (4404, a new epoch on create).
// Run by tests/test_js_protocol.py; by hand:
//   BAMBOO_PYTHON=.venv/bin/python node --test tests/js/protocol_*.test.mjs
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";

import {
  SECRET,
  authed,
  main as plain, // no auth, no frame rate
  quick,
  short,
  sid,
  connect,
  attach,
  token,
  getJSON,
  useServers,
  WELCOME_MS,
} from "./outside.mjs";
import { httpGet } from "./wire.mjs";

useServers("main", "authed", "short", "quick");

const errorCode = (res) => JSON.parse(res.body).error.code;
// What the shared servers were started with (shared_servers.json; defaults otherwise):
// the time bounds below are measured against these, not against a wall time.
const LEEWAY_S = 5; // authed: --auth-leeway (the default)
const TTL_MS = 3000; // short: --default-ttl 3
const IDLE_MS = 1000; // quick: --idle-timeout 1
// Guards against a hang, not speeds: a condition polled for (a hello's answer: WELCOME_MS).
const GUARD_MS = 20000;

/** Polls `condition` (async) every 100 ms until it is true, for at most GUARD_MS. */
async function until(condition, what) {
  for (const end = Date.now() + GUARD_MS; Date.now() < end; await sleep(100)) {
    if (await condition()) return;
  }
  assert.fail(`${what}: not within ${GUARD_MS} ms`);
}

/** A session of `user` with `messages` messages, its peer closed. */
async function session(port, user, title, messages) {
  const id = sid("list");
  const { peer, welcome } = await attach(port, id, { create: true, user_id: user, title });
  for (let i = 0; i < messages; i++) {
    await peer.request({ type: "message", id: i, message: { role: "user", content: "m" } }, "ack");
  }
  peer.close();
  return { id, created_at: welcome.session.created_at };
}

// ---- HTTP ----

test("GET /api/v1/sessions: sorting, ties by id, time filters, limit and offset bounds", async () => {
  const port = plain.port;
  const user = `lister-${process.pid}`;
  const a = await session(port, user, "Alpha", 2);
  await sleep(20);
  const b = await session(port, user, "Beta", 0);
  await sleep(20);
  const c = await session(port, user, "Gamma", 2);
  const ids = async (query) => {
    const res = await getJSON(port, `/api/v1/sessions?user_id=${user}&${query}`);
    assert.equal(res.status, 200, `${query}: ${res.body}`);
    return res.json.sessions.map((s) => s.id);
  };
  assert.deepEqual(await ids(""), [c.id, b.id, a.id], "default: created_at, desc");
  assert.deepEqual(await ids("sort_order=asc"), [a.id, b.id, c.id]);
  for (const key of ["created_at", "updated_at", "last_activity_at"]) {
    assert.deepEqual(await ids(`sort_by=${key}&sort_order=asc`), [a.id, b.id, c.id], key);
  }
  // Equal keys are ordered by id, in the same direction.
  const twos = [a.id, c.id].sort();
  assert.deepEqual(await ids("sort_by=message_count&sort_order=asc"), [b.id, ...twos]);
  assert.deepEqual(await ids("sort_by=message_count"), [...twos.reverse(), b.id]);
  // created_after is >=, created_before <; a time without an offset is UTC.
  const at = encodeURIComponent(b.created_at);
  assert.deepEqual(await ids(`sort_order=asc&created_after=${at}`), [b.id, c.id]);
  assert.deepEqual(await ids(`sort_order=asc&created_before=${at}`), [a.id]);
  const naive = encodeURIComponent(b.created_at.replace("Z", ""));
  assert.deepEqual(await ids(`sort_order=asc&created_after=${naive}`), [b.id, c.id]);
  const offset = encodeURIComponent(b.created_at.replace("Z", "+00:00"));
  assert.deepEqual(await ids(`sort_order=asc&created_after=${offset}`), [b.id, c.id]);
  assert.deepEqual(await ids("active_after=2000-01-01T00:00:00Z&sort_order=asc"), [
    a.id,
    b.id,
    c.id,
  ]);
  assert.deepEqual(await ids("active_after=2999-01-01T00:00:00Z"), []);
  assert.deepEqual(await ids("title_contains=a&sort_order=asc"), [a.id, b.id, c.id]);
  assert.deepEqual(await ids("title_contains=amm"), [c.id]);
  assert.deepEqual(await ids("title_contains=alpha"), [], "case-sensitive");
  assert.deepEqual(await ids("state=disconnected&sort_order=asc"), [a.id, b.id, c.id]);
  // Empty and unknown parameters are ignored; a repeated one counts once, the last.
  assert.deepEqual(await ids("state=&sort_by=&nope=1&sort_order=asc"), [a.id, b.id, c.id]);
  const page = await getJSON(port, `/api/v1/sessions?user_id=${user}&limit=5&limit=1&offset=1`);
  assert.deepEqual(
    page.json.sessions.map((s) => s.id),
    [b.id],
  );
  assert.deepEqual([page.json.total, page.json.offset, page.json.limit], [3, 1, 1]);
  // Integers are plain decimal digits, leading zeros included, as on the other endpoints.
  const zeros = await getJSON(port, `/api/v1/sessions?user_id=${user}&limit=01&offset=02`);
  assert.deepEqual(
    zeros.json.sessions.map((s) => s.id),
    [a.id],
  );
  const beyond = await getJSON(port, `/api/v1/sessions?user_id=${user}&offset=10`);
  assert.deepEqual([beyond.json.sessions, beyond.json.total], [[], 3]);
  assert.equal((await httpGet(port, "/api/v1/sessions?limit=1000")).status, 200);
  for (const bad of [
    "limit=0",
    "limit=1001",
    "limit=1.0",
    "offset=x",
    "created_after=yesterday",
    "active_after=5",
    "sort_by=id",
  ]) {
    const res = await httpGet(port, `/api/v1/sessions?${bad}`);
    assert.equal(res.status, 400, bad);
    assert.equal(errorCode(res), "bad_request", bad);
  }
});

test("GET /api/v1/sessions/{id} and /events: pages, defaults, bounds, headers, methods", async () => {
  const port = plain.port;
  const id = sid("read");
  const { peer, welcome } = await attach(port, id, { create: true });
  for (let i = 0; i < 5; i++) {
    peer.send({ type: "message", message: { role: "user", content: `m${i}` } });
  }
  for (let i = 0; i < 996; i++) peer.send({ type: "event", event: { type: "token", content: "" } });
  for (let i = 0; i < 1001; i++) await peer.recvType("ack", 30000);

  const whole = await getJSON(port, `/api/v1/sessions/${id}`);
  assert.equal(whole.status, 200);
  assert.match(whole.headers["content-type"], /^application\/json/);
  assert.equal(whole.headers["cache-control"], "no-store");
  assert.equal(whole.json.messages.length, 5);
  assert.deepEqual([whole.json.start, whole.json.has_more], [0, false]);
  const page = await getJSON(port, `/api/v1/sessions/${id}?limit=2&before=4`);
  assert.deepEqual(
    page.json.messages.map((m) => m.content),
    ["m2", "m3"],
  );
  assert.deepEqual([page.json.start, page.json.has_more], [2, true]);
  assert.equal(page.json.metadata.message_count, 5);

  const events = await getJSON(port, `/api/v1/sessions/${id}/events`);
  assert.equal(events.json.events.length, 1000, "default limit 1000");
  assert.equal(events.json.events[0].seq, 1);
  assert.equal(events.json.last_seq, 1001);
  assert.equal(events.json.epoch, welcome.epoch);
  const tail = await getJSON(port, `/api/v1/sessions/${id}/events?after_seq=1000&limit=20000`);
  assert.deepEqual(
    tail.json.events.map((e) => e.seq),
    [1001],
  );

  // 400 for a bad parameter whether or not the session exists.
  for (const target of [id, sid("absent")]) {
    for (const q of [
      "?limit=0",
      "?before=-1",
      "?limit=x",
      "/events?after_seq=-1",
      "/events?limit=0",
    ]) {
      const res = await httpGet(port, `/api/v1/sessions/${target}${q}`);
      assert.equal(res.status, 400, `${target}${q}`);
      assert.equal(errorCode(res), "bad_request");
    }
  }
  for (const p of [
    `/api/v1/sessions/${sid("absent")}`,
    "/api/v1/sessions/a%20b",
    "/api/v1/nothing",
  ]) {
    const res = await httpGet(port, p);
    assert.equal(res.status, 404, p);
    assert.equal(errorCode(res), "not_found", p);
  }
  const head = await httpGet(port, `/api/v1/sessions/${id}?limit=1`, { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(head.body, "");
  const post = await httpGet(port, "/api/v1/sessions", { method: "POST" });
  assert.equal(post.status, 405);
  assert.match(post.headers.allow, /GET/);
  assert.equal(errorCode(post), "bad_request");
  peer.close();
});

// ---- Auth ----

/** A JWT with any header and claims, signed with the server's secret. */
function rawToken(header, claims, key = SECRET) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${part(header)}.${part(claims)}`;
  return `${body}.${createHmac("sha256", key).update(body).digest("base64url")}`;
}

async function refusedWith(port, path, hello, headers) {
  const peer = await connect(port, path, { headers });
  peer.send({ type: "hello", ...hello });
  return peer.closeCode(WELCOME_MS);
}

test("auth: hello.token wins over the header; bad claims are 4401; scopes and create are 4403", async () => {
  const port = authed.port;
  const alice = token({ sub: "alice" });
  const id = sid("auth2");
  const { peer } = await attach(port, id, { create: true, token: alice });
  const bearer = (t) => ({ Authorization: `Bearer ${t}` });
  // hello.token wins: a bad one over a good header is refused, a good one over a bad header is not.
  let end = await refusedWith(port, id, { token: "not-a-jwt" }, bearer(alice));
  assert.equal(end.close, 4401, JSON.stringify(end));
  const good = await attach(port, id, { token: alice }, { headers: bearer("not-a-jwt") });
  good.peer.close();

  const exp = Math.floor(Date.now() / 1000) + 600;
  const refused = [
    [
      "alg none",
      `${rawToken({ alg: "none", typ: "JWT" }, { sub: "alice", exp }).split(".").slice(0, 2).join(".")}.`,
    ],
    ["HS384", rawToken({ alg: "HS384", typ: "JWT" }, { sub: "alice", exp })],
    ["no exp", rawToken({ alg: "HS256" }, { sub: "alice" })],
    ["no sub", rawToken({ alg: "HS256" }, { exp })],
    ["empty sub", rawToken({ alg: "HS256" }, { sub: "", exp })],
    ["exp a string", rawToken({ alg: "HS256" }, { sub: "alice", exp: String(exp) })],
    ["unknown role", token({ sub: "alice", role: "root" })],
    ["bad sid", token({ sub: "alice", sid: "a/b" })],
    ["aud without --auth-audience", token({ sub: "alice", aud: "x" })],
    ["nbf in the future", token({ sub: "alice", nbf: exp })],
  ];
  for (const [name, t] of refused) {
    end = await refusedWith(port, id, { token: t });
    assert.equal(end.close, 4401, `${name}: ${JSON.stringify(end)}`);
    assert.deepEqual(end.frames, [], name);
    const res = await httpGet(port, `/api/v1/sessions/${id}`, { headers: bearer(t) });
    assert.equal(res.status, 401, name);
  }
  // 4403: a sid token on /api/v1/stream; create on another's session; an agent without
  // sid on another's session; an admin's token scoped to another session.
  end = await refusedWith(port, null, { token: token({ sub: "alice", sid: id }) });
  assert.equal(end.close, 4403, JSON.stringify(end));
  for (const t of [
    token({ sub: "bob" }),
    token({ sub: "bob", role: "agent" }),
    token({ sub: "root", role: "admin", sid: sid("other") }),
  ]) {
    end = await refusedWith(port, id, { create: true, token: t });
    assert.equal(end.close, 4403, JSON.stringify(end));
    assert.deepEqual(end.frames, []);
  }
  // A sid token may get-or-create its own session.
  const own = sid("own");
  const scoped = await attach(port, own, {
    create: true,
    token: token({ sub: "carol", sid: own }),
  });
  assert.equal(scoped.welcome.session.user_id, "carol");
  scoped.peer.close();
  peer.close();
});

test("auth over HTTP: WWW-Authenticate, the scheme's case, 401 before 404, listing rules", async () => {
  const port = authed.port;
  const dave = token({ sub: "dave" });
  const id = sid("auth-http");
  const { peer } = await attach(port, id, { create: true, token: dave });
  const anon = await httpGet(port, `/api/v1/sessions/${sid("absent")}`);
  assert.equal(anon.status, 401, "a missing session is 401 for an anonymous caller");
  assert.equal(anon.headers["www-authenticate"], 'Bearer realm="bamboo"');
  assert.equal(errorCode(anon), "unauthorized");
  const lower = await httpGet(port, `/api/v1/sessions/${id}/events`, {
    headers: { Authorization: `bearer ${dave}` },
  });
  assert.equal(lower.status, 200);
  const as = (t) => ({ headers: { Authorization: `Bearer ${t}` } });
  const missing = await httpGet(port, `/api/v1/sessions/${sid("absent")}`, as(token({ sub: "x" })));
  assert.equal(missing.status, 404, "404 before 403");
  const other = await httpGet(port, `/api/v1/sessions/${id}/events`, as(token({ sub: "eve" })));
  assert.equal(other.status, 403);
  assert.equal(errorCode(other), "forbidden");
  // Listing: another user_id is 403; a sid token may not list; an admin sees all.
  assert.equal((await httpGet(port, "/api/v1/sessions?user_id=eve", as(dave))).status, 403);
  assert.equal(
    (await httpGet(port, "/api/v1/sessions", as(token({ sub: "dave", sid: id })))).status,
    403,
  );
  const admin = token({ sub: "root", role: "admin" });
  const all = await getJSON(port, "/api/v1/sessions?user_id=dave", as(admin).headers);
  assert.deepEqual(
    all.json.sessions.map((s) => s.id),
    [id],
  );
  assert.equal((await httpGet(port, `/api/v1/sessions/${id}`, as(admin))).status, 200);
  peer.close();
});

/** How far the wall clock is ahead of the monotonic one, in ms (a whole ms of rounding). */
const wallClockAhead = () => Date.now() - performance.now();

test("auth: a connection does not outlive its token (4401 token expired, no closed frame)", async () => {
  const port = authed.port;
  // A token that expired 3 s ago is still within the leeway at the attach, past it 2 s
  // later. An attach that came later than that on a loaded machine is refused (4401 at
  // the hello): tried again with a token that has more time left.
  for (const left of [2, 6, 12]) {
    const exp = Math.floor(Date.now() / 1000) + left - LEEWAY_S;
    const validUntil = (exp + LEEWAY_S) * 1000;
    const peer = await connect(port, sid("expiring"));
    const wallAhead = wallClockAhead();
    peer.send({ type: "hello", create: true, token: token({ sub: "frank", exp }) });
    const first = await peer.recv(WELCOME_MS);
    if (first.close === 4401 && Date.now() >= validUntil) continue; // too late to tell
    assert.equal(first.type, "welcome", JSON.stringify(first));
    // Closed at the token's end, not before it, and not at some later look (the
    // keepalive's ping, every 20 s, or never): the wait is the leeway's length past it.
    const end = await peer.closeCode(validUntil - Date.now() + LEEWAY_S * 1000);
    assert.equal(end.close, 4401, JSON.stringify(end));
    assert.equal(end.reason, "token expired");
    assert.deepEqual(end.frames, []);
    // Both are this machine's wall clock, read in whole ms. The server's timer runs on
    // its monotonic clock: a step back of the wall clock meanwhile (a VM's correction)
    // makes it close that much early by Date.now(), and only that, so that much is
    // allowed: measured, not guessed. A close at the token's exp would come a second or
    // more early: it passed before the attach.
    const stepBack = Math.max(0, wallAhead - wallClockAhead());
    const early = validUntil - Date.now();
    assert.ok(
      early <= 1 + stepBack,
      `closed ${early} ms early (wall clock stepped back ${stepBack})`,
    );
    return;
  }
  assert.fail("no attach came within its token's life in three tries");
});

// ---- Expiry ----

test("expiry: an expired session is 4404 and 404; create replaces it with a new epoch", async () => {
  const port = short.port;
  const id = sid("expire");
  const { peer, welcome } = await attach(port, id, { create: true, user_id: "u" });
  const activeAt = Date.now(); // the session's last activity is later: its append
  await peer.request({ type: "event", id: 1, event: { type: "token", content: "x" } }, "ack");
  peer.close();
  // Expired one TTL after its last activity, not before: waited for, not slept on.
  await until(async () => (await httpGet(port, `/api/v1/sessions/${id}`)).status === 404, "404");
  // Both clocks are this machine's wall clock; Date.now() is in whole ms.
  assert.ok(Date.now() + 1 - activeAt >= TTL_MS, `expired ${Date.now() - activeAt} ms after`);
  let end = await refusedWith(port, id, {});
  assert.equal(end.close, 4404, JSON.stringify(end));
  assert.deepEqual(end.frames, []);
  assert.equal((await httpGet(port, `/api/v1/sessions/${id}`)).status, 404);
  assert.equal((await httpGet(port, `/api/v1/sessions/${id}/events`)).status, 404);
  const again = await attach(port, id, { create: true, last_seq: 1, epoch: welcome.epoch });
  assert.notEqual(again.welcome.epoch, welcome.epoch);
  assert.deepEqual(
    [again.welcome.resumed, again.welcome.replay, again.welcome.last_seq],
    [false, 0, 0],
  );
  assert.equal(again.welcome.session.message_count, 0);
  again.peer.close();
});

test("expiry: a session that expires with silent peers attached gets closed, then 4404", async () => {
  const port = short.port;
  const start = Date.now(); // before the hello that creates it: its last activity
  const { peer } = await attach(port, sid("expire-live"), { create: true });
  // Looked at every third of its TTL, it is closed a third of a TTL after it expired;
  // a server that looked only every --idle-timeout (300 s here) would close it
  // minutes later. The wait, 5 TTLs, tells the two apart on a loaded machine.
  const end = await peer.closeCode(5 * TTL_MS);
  assert.equal(end.close, 4404, JSON.stringify(end));
  assert.deepEqual(
    end.frames.map((f) => f.type),
    ["closed"],
  );
  assert.ok(Date.now() + 1 - start >= TTL_MS, `closed ${Date.now() - start} ms in: before its TTL`);
});

// ---- Session states ----

test("idle: silent peers make a session idle; pings and reads keep it so; an append or an attach makes it active", async () => {
  const port = quick.port;
  const id = sid("idle");
  const state = async () => (await getJSON(port, `/api/v1/sessions/${id}`)).json.metadata;
  const { peer } = await attach(port, id, { create: true });
  const idle = async () => (await state()).state === "idle";
  /** `move` (from idle) makes the session active, as a GET after it sees: one that sees
   * it idle within IDLE_MS of the move is wrong. Seen later, idle is what a correct
   * server may show (silent for IDLE_MS again), so a loaded machine's late GET is tried
   * again, from idle. `move` returns what to do after the GET (close a peer), if any. */
  const makesActive = async (name, move) => {
    for (let attempt = 0; attempt < 5; attempt++) {
      await until(idle, `idle before ${name}`);
      const movedAt = Date.now();
      const after = await move();
      const seen = (await state()).state;
      const late = Date.now() - movedAt >= IDLE_MS;
      await after?.();
      if (seen === "active") return;
      assert.ok(late, `${name}: ${seen} ${Date.now() - movedAt} ms after it`);
    }
    assert.fail(`${name}: no GET came within ${IDLE_MS} ms of it in five tries`);
  };
  await until(idle, "idle");
  // Traffic other than appends slides the TTL's clock but leaves the session idle.
  const before = (await state()).last_activity_at;
  await peer.request({ type: "ping", id: 1 }, "pong");
  await peer.request({ type: "history", id: "h" }, "history");
  await peer.request({ type: "events", id: "e" }, "events");
  await sleep(2500); // two looks at the session, if the machine keeps up
  // The activity is recorded at the next look: waited for, as a loaded machine's may
  // come later than the sleep.
  const recorded = async () => Date.parse((await state()).last_activity_at) > Date.parse(before);
  await until(recorded, "a ping is activity");
  assert.equal((await state()).state, "idle");
  // An append: active once its ack is seen.
  await makesActive("an append", async () => {
    await peer.request({ type: "event", id: 2, event: { type: "token", content: "x" } }, "ack");
  });
  // An attach.
  await makesActive("an attach", async () => {
    const second = await attach(port, id, {});
    assert.equal(second.welcome.session.state, "active");
    return () => second.peer.close();
  });
  // A state request.
  await makesActive("a state request", async () => {
    await peer.request({ type: "state", id: 3, state: "active" }, "ack");
  });
  peer.close();
});
