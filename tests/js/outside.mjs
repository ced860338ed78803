// outside.mjs: what the outside check of the wire contract (protocol_*.test.mjs) shares.
// The check is written from /work/shared/PROTOCOL.md (version 1) alone, as a client
// author in another language would: raw frames over node:net (wire.mjs), no project
// code. Here: its servers (the Python in BAMBOO_PYTHON, on 127.0.0.1 and a free port, a
// fresh data directory each, stopped by pid), its peers, and its assertions.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";

import { httpGet, mpDecode, mpEncode, upgrade } from "./wire.mjs";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const PYTHON = process.env.BAMBOO_PYTHON ?? path.join(ROOT, ".venv", "bin", "python");
export const SECRET = "outside-check-secret-" + "x".repeat(32);
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

const servers = [];

/** Starts `bamboo_session.server serve` on 127.0.0.1:0; resolves {proc, port, dataDir}. */
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

export function stopServer(server, signal = "SIGTERM") {
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

export let main; // no auth, defaults but the frame rate (off, as the Python suite's servers)
export let authed; // --auth-secret
export let ttl; // --default-ttl 3600
export let tight; // small limits: 2 live sessions, 1 connection per user, 2 frames a second

const SHARED_FLAGS = {
  main: ["--rate-limit", "0"],
  authed: ["--auth-secret", SECRET],
  ttl: ["--default-ttl", "3600"],
  tight: [
    ...["--max-sessions", "2", "--max-connections-per-user", "1"],
    ...["--rate-limit", "2", "--rate-limit-burst", "2", "--rate-limit-refusals", "20"],
  ],
};

/** Starts the shared servers a file names (of main, authed, ttl, tight) before its tests,
 * and stops them (by pid) after. Only those: each server is a Python process, most of a
 * file's CPU time; one a file does not name stays undefined. */
export function useServers(...names) {
  const unknown = names.filter((name) => !(name in SHARED_FLAGS));
  if (unknown.length) throw new Error(`no shared server ${unknown.join(", ")}`);
  before(async () => {
    const start = (name) => (names.includes(name) ? startServer(SHARED_FLAGS[name]) : undefined);
    [main, authed, ttl, tight] = await Promise.all(["main", "authed", "ttl", "tight"].map(start));
  });

  after(async () => {
    await Promise.all(servers.map((s) => stopServer(s)));
    for (const s of servers) rmSync(s.dataDir, { recursive: true, force: true });
  });
}

// ---- peers ----

let counter = 0;
export const sid = (name) => `oc-${name}-${process.pid}-${++counter}`;

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
  const welcome = await peer.recv();
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
