// A client from outside: Node and the `ws` package, written from the wire contract
// (PROTOCOL.md, docs/protocol.md) alone, not from our clients, against a real
// `bamboo-session serve` on loopback that it starts on a JSONL store of its own:
// HTTP headers and the listing, hello/create, publish with ack, a second connection
// viewing, drop and resume from a seq (exactly the missed events, in order, once), bad
// frames (an error or a close code, as documented), a head left unfinished (408 at
// 10 s), then kill -9 mid-stream, restart on the same store and resume: every
// acknowledged event is there once, at its seq, in the order it was sent.
//
//   node bench/outside_node.mjs [fsync|os]      (durability, default fsync)
//
// BAMBOO_SESSION names the command (default .venv/bin/bamboo-session); set PYTHONPATH
// as for the server. Prints one JSON line of counts; exit status 0 when every check
// held, else 1 with the failed checks listed.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const WebSocket = createRequire(import.meta.url)("../tests/js/node_modules/ws").WebSocket;
const durability = process.argv[2] || "fsync";
const command = process.env.BAMBOO_SESSION || ".venv/bin/bamboo-session";
const work = mkdtempSync(join(tmpdir(), "bamboo-outside-node-"));
const problems = [];
const counts = {};
const check = (ok, what) => {
  if (!ok) problems.push(what);
  return ok;
};
const httpOf = (base) => base.replace(/^ws/, "http");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  const probe = net.createServer();
  await new Promise((r) => probe.listen(0, "127.0.0.1", r));
  const { port } = probe.address();
  await new Promise((r) => probe.close(r));
  return port;
}

class Server {
  constructor(port) {
    this.port = port;
    this.proc = null;
    this.starts = 0;
  }
  async start() {
    const args = ["serve", "--host", "127.0.0.1", "--port", String(this.port)];
    args.push("--store", `jsonl://${work}/data`, "--durability", durability);
    args.push("--rate-limit", "0", "--log-format", "json");
    this.starts += 1;
    const log = join(work, `server-${this.starts}.log`);
    const { openSync } = await import("node:fs");
    const out = openSync(log, "w");
    this.proc = spawn(command, args, { stdio: ["ignore", out, out] });
    this.logPath = log;
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      try {
        if ((await fetch(`http://127.0.0.1:${this.port}/readyz`)).status === 200) return;
      } catch {
        /* not listening yet */
      }
      await sleep(100);
    }
    throw new Error("the server did not come up in 60 s");
  }
  // The store URL the server said it listens on (durability included).
  listenedOn() {
    for (const line of readFileSync(this.logPath, "utf8").split("\n")) {
      if (line.includes('"listening on')) return JSON.parse(line).store;
    }
    return null;
  }
  kill(signal) {
    const proc = this.proc;
    proc.kill(signal);
    return new Promise((r) => proc.once("exit", (code, sig) => r(code ?? sig)));
  }
}

// One WebSocket connection: frames queued as they come, taken by predicate.
class Conn {
  constructor(url, protocols = ["bamboo.v1"]) {
    this.frames = [];
    this.waiters = [];
    this.closed = null; // {code, reason}
    this.ws = new WebSocket(url, protocols);
    this.ws.once("upgrade", (res) => (this.upgradeHeaders = res.headers));
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", resolve);
      this.ws.once("error", reject);
      this.ws.once("unexpected-response", (_req, res) =>
        reject(new Error(`HTTP ${res.statusCode}`)),
      );
    });
    this.ws.on("error", () => {});
    this.ws.on("message", (data, binary) => {
      this.frames.push(binary ? { binary: true } : JSON.parse(data.toString()));
      this.wake();
    });
    this.ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.wake();
    });
  }
  wake() {
    for (const w of this.waiters.splice(0)) w();
  }
  send(frame) {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }
  // The first queued frame that matches (removed), or null at close or timeout.
  async take(match = () => true, ms = 10_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.frames.findIndex(match);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      if (this.closed || Date.now() >= deadline) return null;
      await Promise.race([new Promise((r) => this.waiters.push(r)), sleep(deadline - Date.now())]);
    }
  }
  async closedWith(ms = 10_000) {
    const deadline = Date.now() + ms;
    while (!this.closed && Date.now() < deadline) {
      await Promise.race([new Promise((r) => this.waiters.push(r)), sleep(100)]);
    }
    return this.closed?.code ?? null;
  }
  async reply(id, ms) {
    return this.take((f) => f.id === id && f.type !== "event", ms);
  }
}

async function attach(base, sessionId, hello) {
  const conn = new Conn(`${base}/api/v1/stream/${sessionId}`);
  await conn.opened;
  conn.send({ type: "hello", ...hello });
  conn.welcome = await conn.take((f) => f.type !== "presence");
  return conn;
}

let nextId = 1;
async function publish(conn, content, key) {
  const id = nextId++;
  conn.send({ type: "event", id, key, event: { type: "token", content } });
  return conn.reply(id);
}

async function httpChecks(base) {
  for (const path of ["/healthz", "/readyz", "/metrics", "/api/v1/sessions", "/nowhere"]) {
    const res = await fetch(`${base}${path}`);
    check(
      res.headers.get("server") === "bamboo-session",
      `${path}: Server header ${res.headers.get("server")}`,
    );
    check(res.headers.get("x-content-type-options") === "nosniff", `${path}: no nosniff`);
    await res.arrayBuffer();
  }
  const posted = await fetch(`${base}/api/v1/sessions`, { method: "POST", body: "{}" });
  check(posted.status === 405, `POST: HTTP ${posted.status}, not 405`);
  check(posted.headers.get("server") === "bamboo-session", "405: no Server header");
  check(posted.headers.get("x-content-type-options") === "nosniff", "405: no nosniff");
  await posted.arrayBuffer();
  const upgraded = new Conn(`${base.replace("http", "ws")}/api/v1/stream`);
  await upgraded.opened;
  check(upgraded.upgradeHeaders?.server === "bamboo-session", "101: no Server header");
  check(upgraded.upgradeHeaders?.["x-content-type-options"] === "nosniff", "101: no nosniff");
  upgraded.ws.close();
  const refused = await new Promise((resolve) => {
    const ws = new WebSocket(`${base.replace("http", "ws")}/api/v1/stream/bad%20id`, ["bamboo.v1"]);
    ws.on("error", () => {});
    ws.on("unexpected-response", (_req, res) => resolve(res));
    ws.on("open", () => resolve(null));
  });
  check(refused?.statusCode === 400, `bad session id: HTTP ${refused?.statusCode}, not 400`);
  check(refused?.headers["x-content-type-options"] === "nosniff", "400 refusal: no nosniff");
  check(refused?.headers.server === "bamboo-session", "400 refusal: no Server header");
  refused?.destroy();
}

async function unfinishedHead(port) {
  const sock = net.connect(port, "127.0.0.1");
  let got = "";
  sock.on("data", (b) => (got += b.toString()));
  sock.write("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
  const began = Date.now();
  await new Promise((r) => {
    sock.on("close", r);
    setTimeout(r, 15_000);
  });
  sock.destroy();
  counts.head_408_after_ms = Date.now() - began;
  check(got.startsWith("HTTP/1.1 408"), `unfinished head: ${JSON.stringify(got.slice(0, 40))}`);
  check(/\r\nserver: bamboo-session\r\n/i.test(got), "408: no Server header");
  check(/\r\nx-content-type-options: nosniff\r\n/i.test(got), "408: no nosniff");
}

async function badFrames(base) {
  // A first frame that is not hello: error bad_request, then close 1008.
  const first = new Conn(`${base}/api/v1/stream/outside`);
  await first.opened;
  first.send({ type: "ping", id: 1 });
  const err = await first.take();
  check(
    err?.type === "error" && err.code === "bad_request",
    `non-hello first: ${JSON.stringify(err)}`,
  );
  check((await first.closedWith()) === 1008, `non-hello first: close ${first.closed?.code}`);
  // A session that does not exist, without create: close 4404.
  const missing = new Conn(`${base}/api/v1/stream/nosuch`);
  await missing.opened;
  missing.send({ type: "hello" });
  check((await missing.closedWith()) === 4404, `missing session: close ${missing.closed?.code}`);
  // Later bad frames: an error each, the connection stays open.
  const conn = await attach(base, "outside", { user_id: "u1", create: true });
  conn.send("{not json");
  const e1 = await conn.take((f) => f.type === "error");
  check(e1?.code === "bad_request", `not JSON: ${JSON.stringify(e1)}`);
  conn.send({ type: "event", id: "x1" });
  const e2 = await conn.reply("x1");
  check(
    e2?.type === "error" && e2.code === "bad_request",
    `event without event: ${JSON.stringify(e2)}`,
  );
  conn.send({ type: "event", id: "x2", event: { type: "nope" } });
  const e3 = await conn.reply("x2");
  check(
    e3?.type === "error" && e3.code === "bad_request",
    `unknown event type: ${JSON.stringify(e3)}`,
  );
  conn.send({ type: "hello" });
  const e4 = await conn.take((f) => f.type === "error");
  check(e4?.code === "bad_request", `second hello: ${JSON.stringify(e4)}`);
  conn.ws.send(Buffer.from([0x81, 0x00]), { binary: true });
  const e5 = await conn.take((f) => f.type === "error");
  check(e5?.code === "bad_request", `binary frame on bamboo.v1: ${JSON.stringify(e5)}`);
  conn.send({ type: "ping", id: "p" });
  check((await conn.reply("p"))?.type === "pong", "no pong after bad frames");
  // A frame over the limit (1 MiB): close 1009.
  conn.send({ type: "event", id: "big", event: { type: "token", content: "x".repeat(1 << 20) } });
  check((await conn.closedWith()) === 1009, `oversized frame: close ${conn.closed?.code}`);
}

async function viewAndResume(base) {
  const pub = await attach(base, "s1", {
    create: true,
    user_id: "u1",
    title: "outside",
    role: "agent",
  });
  check(
    pub.welcome?.type === "welcome" && pub.welcome.last_seq === 0,
    `welcome: ${JSON.stringify(pub.welcome)}`,
  );
  const epoch = pub.welcome.epoch;
  const viewer = await attach(base, "s1", { user_id: "u2" });
  check(viewer.welcome?.session?.id === "s1", "viewer's welcome");
  const joined = await pub.take((f) => f.type === "presence");
  check(
    joined?.joined === viewer.welcome.connection_id && joined.connections === 2,
    `presence: ${JSON.stringify(joined)}`,
  );
  for (let i = 1; i <= 10; i++) {
    const ack = await publish(pub, `a${i}`, `k${i}`);
    check(ack?.type === "ack" && ack.seq === i, `ack ${i}: ${JSON.stringify(ack)}`);
  }
  for (let i = 1; i <= 10; i++) {
    const ev = await viewer.take((f) => f.type === "event");
    check(
      ev?.seq === i && ev.event.content === `a${i}`,
      `viewer event ${i}: ${JSON.stringify(ev)}`,
    );
  }
  const again = await publish(pub, "a3 again", "k3");
  check(again?.seq === 3 && again.duplicate === true, `retried key: ${JSON.stringify(again)}`);
  viewer.ws.close();
  await viewer.closedWith();
  for (let i = 11; i <= 25; i++) await publish(pub, `a${i}`, `k${i}`);
  const back = await attach(base, "s1", { user_id: "u2", last_seq: 10, epoch });
  check(
    back.welcome?.resumed === true && back.welcome.replay === 15,
    `resume welcome: ${JSON.stringify(back.welcome)}`,
  );
  await publish(pub, "a26", "k26");
  const seen = [];
  for (;;) {
    const ev = await back.take((f) => f.type === "event", 2000);
    if (!ev) break;
    seen.push(ev.seq);
  }
  const want = Array.from({ length: 16 }, (_, i) => 11 + i);
  check(JSON.stringify(seen) === JSON.stringify(want), `resumed events ${seen}`);
  counts.resumed_replay = back.welcome?.replay;
  const events = await (
    await fetch(`${httpOf(base)}/api/v1/sessions/s1/events?after_seq=20&limit=3`)
  ).json();
  check(
    events.events?.map((e) => e.seq).join() === "21,22,23" && events.last_seq === 26,
    `HTTP events: ${JSON.stringify(events).slice(0, 200)}`,
  );
  const listing = await (await fetch(`${httpOf(base)}/api/v1/sessions?user_id=u1`)).json();
  const s1 = listing.sessions?.find((s) => s.id === "s1");
  check(
    listing.total >= 1 && s1?.title === "outside" && s1.last_seq === 26,
    `listing: ${JSON.stringify(listing).slice(0, 300)}`,
  );
  for (const c of [pub, back]) c.ws.close();
}

// Publishes `total` events on s2 with keys, several in flight, until the server dies.
async function streamUntilKilled(base, server, total) {
  const pub = await attach(base, "s2", { create: true, user_id: "u1" });
  const viewer = await attach(base, "s2", { user_id: "u2", last_seq: 0, epoch: pub.welcome.epoch });
  const acked = new Map(); // key -> seq
  const sent = [];
  let killed = false;
  // Killed after a random count of acks: a different instant each run.
  const killAt = 20 + Math.floor(Math.random() * (total / 2));
  counts.kill_after_acks = killAt;
  const sender = (async () => {
    for (let i = 1; i <= total && !pub.closed; i++) {
      const key = `m${i}`;
      sent.push(key);
      pub.send({ type: "event", id: key, key, event: { type: "token", content: key } });
      if (i % 8 === 0) await sleep(1);
    }
  })();
  const acker = (async () => {
    for (;;) {
      const f = await pub.take((x) => x.type === "ack", 15_000);
      if (!f) return;
      acked.set(f.id, f.seq);
      if (!killed && acked.size >= killAt) {
        killed = true;
        counts.kill_exit = String(await server.kill("SIGKILL"));
      }
    }
  })();
  const viewerSeen = [];
  const follower = (async () => {
    for (;;) {
      const f = await viewer.take((x) => x.type === "event", 15_000);
      if (!f) return;
      viewerSeen.push(f.seq);
    }
  })();
  await Promise.all([sender, acker, follower]);
  check(killed, "the server was never killed");
  counts.sent_before_kill = sent.length;
  counts.acked_before_kill = acked.size;
  counts.viewer_seen_before_kill = viewerSeen.length;
  return { epoch: pub.welcome.epoch, acked, sent, viewerSeen };
}

async function afterRestart(base, { epoch, acked, sent, viewerSeen }) {
  const viewer = await attach(base, "s2", {
    user_id: "u2",
    last_seq: viewerSeen.at(-1) ?? 0,
    epoch,
  });
  check(viewer.welcome?.resumed === true, `resume after kill: ${JSON.stringify(viewer.welcome)}`);
  const pub = await attach(base, "s2", { user_id: "u1" });
  // Re-send everything unacknowledged, with its key, one at a time.
  let retried = 0;
  let duplicates = 0;
  for (const key of sent) {
    if (acked.has(key)) continue;
    pub.send({ type: "event", id: key, key, event: { type: "token", content: key } });
    const ack = await pub.reply(key);
    check(ack?.type === "ack", `retry ${key}: ${JSON.stringify(ack)}`);
    retried += 1;
    if (ack?.duplicate) duplicates += 1;
    acked.set(key, ack?.seq);
  }
  counts.retried_after_restart = retried;
  counts.retries_already_stored = duplicates;
  const log = [];
  for (;;) {
    const page = await (
      await fetch(`${httpOf(base)}/api/v1/sessions/s2/events?after_seq=${log.length}&limit=1000`)
    ).json();
    log.push(...page.events);
    if (page.events.length === 0) break;
  }
  counts.stored = log.length;
  check(
    log.every((e, i) => e.seq === i + 1),
    "stored log has a gap or a reordering",
  );
  const where = new Map();
  for (const e of log) {
    const k = e.event.content;
    check(!where.has(k), `${k} stored twice`);
    where.set(k, e.seq);
  }
  for (const [key, seq] of acked)
    check(where.get(key) === seq, `${key} acked at ${seq}, stored at ${where.get(key)}`);
  const order = sent.map((k) => where.get(k));
  check(
    order.every((s, i) => i === 0 || s > order[i - 1]),
    "the publisher's order was not kept",
  );
  const resumedSeqs = [];
  for (;;) {
    const f = await viewer.take((x) => x.type === "event", 2000);
    if (!f) break;
    resumedSeqs.push(f.seq);
  }
  const all = [...viewerSeen, ...resumedSeqs];
  check(
    all.length === log.length && all.every((s, i) => s === i + 1),
    `viewer saw ${all.length} of ${log.length}, not 1..N once in order`,
  );
  for (const c of [viewer, pub]) c.ws.close();
}

async function main() {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const ws = `ws://127.0.0.1:${port}`;
  const server = new Server(port);
  await server.start();
  try {
    // (fsync, the default, leaves the URL as it is: it names no durability then.)
    const store = server.listenedOn() ?? "";
    const said = store.match(/[?&]durability=(\w+)/)?.[1] ?? "fsync";
    check(said === durability, `--durability ${durability} beside --store: ${store}`);
    await httpChecks(base);
    await viewAndResume(ws);
    await badFrames(ws);
    await unfinishedHead(port);
    const before = await streamUntilKilled(ws, server, 2000);
    await server.start();
    await afterRestart(ws, before);
    const status = await server.kill("SIGTERM");
    check(status === 0, `SIGTERM: exit ${status}`);
    for (let i = 1; i <= server.starts; i++) {
      const text = readFileSync(join(work, `server-${i}.log`), "utf8");
      const bad = text
        .split("\n")
        .filter(
          (l) => l && (!l.startsWith("{") || /"level": ?"(error|critical)"|"exception"/.test(l)),
        );
      check(bad.length === 0, `server-${i}.log: ${bad[0]?.slice(0, 300)}`);
    }
  } finally {
    if (server.proc.exitCode === null && server.proc.signalCode === null)
      await server.kill("SIGKILL");
  }
  console.log(JSON.stringify({ durability, ...counts, problems }));
  if (problems.length === 0) rmSync(work, { recursive: true, force: true });
  else console.error(`kept ${work}`);
  return problems.length ? 1 : 0;
}

process.exitCode = await main();
