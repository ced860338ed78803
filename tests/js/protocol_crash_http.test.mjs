// The outside check of the wire contract (outside.mjs): resume across a kill -9 of the
// server, the data model, the HTTP API and auth.
// Run by tests/test_js_protocol.py; by hand:
//   BAMBOO_PYTHON=.venv/bin/python node --test tests/js/protocol_*.test.mjs
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  RFC3339_UTC,
  METADATA_FIELDS,
  startServer,
  stopServer,
  main,
  authed,
  ttl,
  sid,
  connect,
  attach,
  token,
  getJSON,
  useServers,
  WELCOME_MS,
} from "./outside.mjs";
import { httpGet, upgrade } from "./wire.mjs";

useServers("main", "authed", "ttl");

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
  // The contract's four fields, and this server's extension beside them (docs/protocol.md,
  // "Paging by cursor"): the last page's next_cursor is null.
  assert.deepEqual(Object.keys(list.json).sort(), [
    "limit",
    "next_cursor",
    "offset",
    "sessions",
    "total",
  ]);
  assert.equal(list.json.next_cursor, null);
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

// ann is this file's alone: authed is shared with protocol_author_http, whose alice has
// sessions of her own, and the listing below is exactly ann's.
test("auth: tokens, owners, sid scopes, admin, HTTP Bearer", async () => {
  const port = authed.port;
  const refused = async (p, hello, headers) => {
    const peer = await connect(port, p, { headers });
    peer.send({ type: "hello", ...hello });
    return peer.closeCode(WELCOME_MS);
  };
  const id = sid("auth");
  let end = await refused(id, { create: true });
  assert.equal(end.close, 4401);
  assert.deepEqual(end.frames, []);
  end = await refused(id, {
    create: true,
    token: token({ sub: "ann" }, "wrong-key-" + "k".repeat(32)),
  });
  assert.equal(end.close, 4401);
  end = await refused(id, { create: true, token: token({ sub: "ann", exp: 1000 }) });
  assert.equal(end.close, 4401);

  const ann = token({ sub: "ann" });
  const { peer, welcome } = await attach(port, id, {
    create: true,
    token: ann,
    user_id: "mallory",
  });
  assert.equal(
    welcome.session.user_id,
    "ann",
    "a session created under a token belongs to its sub",
  );
  // Bearer on the upgrade works as well.
  const viaHeader = await attach(port, id, {}, { headers: { Authorization: `Bearer ${ann}` } });
  viaHeader.peer.close();
  end = await refused(id, { token: token({ sub: "bob" }) });
  assert.equal(end.close, 4403);
  assert.deepEqual(end.frames, []);
  end = await refused(id, { token: token({ sub: "ann", sid: "another" }) });
  assert.equal(end.close, 4403);
  // A sid narrows a role, never widens it: an agent of another user is refused, an
  // admin scoped to the session is welcomed.
  end = await refused(id, { token: token({ sub: "agent-x", role: "agent", sid: id }) });
  assert.equal(end.close, 4403);
  assert.deepEqual(end.frames, []);
  const scoped = await attach(port, id, {
    token: token({ sub: "agent-x", role: "admin", sid: id }),
  });
  scoped.peer.close();
  const admin = await attach(port, id, { token: token({ sub: "root", role: "admin" }) });
  admin.peer.close();
  end = await refused(sid("auth-missing"), { token: ann });
  assert.equal(end.close, 4404);

  assert.equal((await httpGet(port, `/api/v1/sessions/${id}`)).status, 401);
  const bearer = (t) => ({ Authorization: `Bearer ${t}` });
  assert.equal(
    (await httpGet(port, `/api/v1/sessions/${id}`, { headers: bearer(ann) })).status,
    200,
  );
  assert.equal(
    (await httpGet(port, `/api/v1/sessions/${id}`, { headers: bearer(token({ sub: "bob" })) }))
      .status,
    403,
  );
  const list = await getJSON(port, "/api/v1/sessions", bearer(ann));
  assert.equal(list.status, 200);
  assert.deepEqual(
    list.json.sessions.map((s) => s.id),
    [id],
  );
  assert.equal((await httpGet(port, "/healthz")).status, 200);
  peer.close();
});
