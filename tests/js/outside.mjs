// outside.mjs: what the outside check of the wire contract (protocol_*.test.mjs) shares.
// The check is written from /work/shared/PROTOCOL.md (version 1) alone, as a client
// author in another language would: raw frames over node:net (wire.mjs), no project
// code. Here: its servers (the Python in BAMBOO_PYTHON, on 127.0.0.1 and a free port, a
// fresh data directory each, stopped by pid), its peers, and its assertions.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";

import { destroySockets, httpGet, mpDecode, mpEncode, upgrade } from "./wire.mjs";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const PYTHON = process.env.BAMBOO_PYTHON ?? path.join(ROOT, ".venv", "bin", "python");
// The flags of the servers every file may share, by name: read by tests/test_js_protocol.py
// as well, which runs one of each for all the files, so that both run the same servers.
const SHARED_FLAGS = JSON.parse(
  readFileSync(path.join(ROOT, "tests", "js", "shared_servers.json"), "utf8"),
);
export const SECRET = SHARED_FLAGS.authed[SHARED_FLAGS.authed.indexOf("--auth-secret") + 1];
export const RFC3339_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;
export const ERROR_CODES = [
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
export const METADATA_FIELDS = [
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

const servers = []; // the servers this file started and has not stopped yet

/** Starts `bamboo_session.server serve` on 127.0.0.1:0; resolves {proc, port, dataDir}.
 * A server that exits, or cannot be spawned, before it listens rejects with its output;
 * one that does not listen in 20 s is killed (by pid) first: nothing waits on it. */
export function startServer(
  args = [],
  dataDir = mkdtempSync(path.join(tmpdir(), "bamboo-outside-")),
) {
  return new Promise((resolve, reject) => {
    const argv = ["-m", "bamboo_session.server", "serve", "--host", "127.0.0.1", "--port", "0"];
    const proc = spawn(PYTHON, [...argv, "--data-dir", dataDir, "--log-format", "json", ...args], {
      cwd: ROOT,
      stdio: ["ignore", "ignore", "pipe"],
    });
    const server = { proc, port: 0, dataDir, log: "" };
    servers.push(server);
    const fail = (why) => {
      clearTimeout(timer);
      reject(new Error(`server ${args.join(" ")} ${why}:\n${server.log}`));
    };
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      fail('printed no "listening on" in 20 s');
    }, 20000);
    proc.stderr.on("data", (chunk) => {
      server.log = (server.log + chunk.toString()).slice(-20000);
      const match = /listening on [^\s"]+:(\d+)/.exec(server.log);
      if (match && !server.port) {
        server.port = Number(match[1]);
        clearTimeout(timer);
        resolve(server);
      }
    });
    proc.on("error", (error) => fail(`could not be spawned (${error.message})`));
    proc.on("exit", (code, signal) => {
      if (!server.port) fail(`exited (${code ?? signal}) before it listened`);
    });
  });
}

export function stopServer(server, signal = "SIGTERM") {
  return new Promise((resolve) => {
    const ended = server.proc.exitCode !== null || server.proc.signalCode !== null;
    if (ended || server.proc.pid === undefined) return resolve(); // or never spawned
    const timer = setTimeout(() => server.proc.kill("SIGKILL"), 10000);
    server.proc.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    server.proc.kill(signal); // by pid: the child this file started
  });
}

/** Stops (by pid) every server this file started and still runs, and removes their data. */
export async function stopServers(signal = "SIGTERM") {
  const stopping = servers.splice(0);
  await Promise.all(stopping.map((s) => stopServer(s, signal)));
  for (const s of stopping) rmSync(s.dataDir, { recursive: true, force: true });
}

/** Starts a server for each list of flags, side by side. When one fails, the others are
 * killed at once and this rejects with the failed one's output: none is left running to
 * keep Node (and the test that waits for it) alive. */
export async function startServers(flagLists) {
  let failure;
  const starting = flagLists.map((flags) =>
    startServer(flags).catch((error) => {
      failure ??= error;
      return stopServers("SIGKILL");
    }),
  );
  const started = await Promise.all(starting);
  if (failure) throw failure;
  return started;
}

export let main; // no auth, defaults but the frame rate (off, as the Python suite's servers)
export let authed; // --auth-secret
export let ttl; // --default-ttl 3600
export let tight; // small limits: 2 live sessions, 1 connection per user, 2 frames a second
export let short; // sessions live 3 s
export let quick; // connections go idle after 1 s without a frame
// A send queue of 64 frames, no byte rate: a reader that reads nothing. The close frame
// of a 4429 waits 30 s for it (not 5: a loaded machine's publisher may take longer to be
// acked).
export let slow;

// The ports of servers with these flags that tests/test_js_protocol.py runs once for every
// file (a JSON object, name to port): a server start is most of a file's CPU time, and
// the files' sessions, ids and users are their own, so they share them. By hand, without
// it, a file starts the ones it names.
const GIVEN_PORTS = JSON.parse(process.env.BAMBOO_OUTSIDE_PORTS ?? "{}");

/** Gives a file the shared servers it names (of SHARED_FLAGS) for its tests: those
 * tests/test_js_protocol.py runs, else its own, started before its tests and stopped (by
 * pid) after, with any other server the file started. One it does not name stays
 * undefined. After its tests, the sockets they left open are destroyed. */
export function useServers(...names) {
  const unknown = names.filter((name) => !(name in SHARED_FLAGS));
  if (unknown.length) throw new Error(`no shared server ${unknown.join(", ")}`);
  before(async () => {
    const own = names.filter((name) => !(name in GIVEN_PORTS));
    const started = await startServers(own.map((name) => SHARED_FLAGS[name]));
    const named = Object.fromEntries(own.map((name, i) => [name, started[i]]));
    for (const name of names) named[name] ??= { port: GIVEN_PORTS[name] };
    ({ main, authed, ttl, tight, short, quick, slow } = named);
  });
  after(() => {
    destroySockets(); // a shared server outlives the file: what a failed test left open
    return stopServers();
  });
}

// ---- peers ----

let counter = 0;
export const sid = (name) => `oc-${name}-${process.pid}-${++counter}`;

// A hello's answer comes after the store's writes (a create, presence): on a loaded
// machine whose disk stalls they can take seconds, as tests/support.py's
// WELCOME_TIMEOUT says. A guard against a hello never answered, not a speed.
export const WELCOME_MS = 20000;

export class Peer {
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

export async function connect(port, sessionId, { msgpack = false, protocols, headers } = {}) {
  const p = sessionId === null ? "/api/v1/stream" : `/api/v1/stream/${sessionId}`;
  const protos = protocols ?? (msgpack ? ["bamboo.v1.msgpack"] : ["bamboo.v1"]);
  const res = await upgrade(port, p, { protocols: protos.length ? protos : undefined, headers });
  assert.equal(res.status, 101, `upgrade of ${p}: ${res.status} ${res.body}`);
  return new Peer(res.ws, msgpack);
}

/** Connects, says hello, and returns {peer, welcome}. */
export async function attach(port, sessionId, hello = {}, opts = {}) {
  const peer = await connect(port, sessionId, opts);
  peer.send({ type: "hello", ...hello });
  const welcome = await peer.recv(WELCOME_MS);
  assert.equal(welcome.type, "welcome", `hello got ${JSON.stringify(welcome)}`);
  return { peer, welcome };
}

export function token(claims, key = SECRET) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ exp: Math.floor(Date.now() / 1000) + 600, ...claims })}`;
  return `${body}.${createHmac("sha256", key).update(body).digest("base64url")}`;
}

export const getJSON = async (port, p, headers) => {
  const res = await httpGet(port, p, { headers });
  return { ...res, json: res.body ? JSON.parse(res.body) : null };
};

/** An error frame of `code`, echoing `id` (undefined: no id field). */
export function assertError(frame, code, id) {
  assert.equal(frame.type, "error", JSON.stringify(frame));
  assert.equal(frame.code, code, JSON.stringify(frame));
  assert.equal(typeof frame.message, "string");
  if (id === undefined) assert.ok(!("id" in frame) || frame.id === null, JSON.stringify(frame));
  else assert.equal(frame.id, id, JSON.stringify(frame));
}

/** The connection still answers: a ping gets its pong. */
export async function assertOpen(peer) {
  const pong = await peer.request({ type: "ping", id: "still-open" }, "pong");
  assert.equal(pong.id, "still-open");
}
