// What the Node tests of the JavaScript client (client*.test.mjs) share: the servers'
// URLs, tokens, and helpers to publish, read and proxy. tests/test_js.py starts the
// servers and runs the test files side by side (node --test-concurrency), each file in a
// process of its own; this module holds no state between them.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

import { Unauthorized } from "../../server/web/client/bamboo.js";

export const url = process.env.BAMBOO_URL;
export const authUrl = process.env.BAMBOO_AUTH_URL;
export const secret = process.env.BAMBOO_AUTH_SECRET;
// A server whose close bound (--close-timeout) is short, and that bound in ms.
export const quickCloseUrl = process.env.BAMBOO_QUICK_CLOSE_URL;
export const quickCloseTimeoutMs = Number(process.env.BAMBOO_QUICK_CLOSE_TIMEOUT) * 1000;
// A server whose close bound is long: time for a loaded machine to move megabytes after
// a close, which the default 5 s is not.
export const slowCloseUrl = process.env.BAMBOO_SLOW_CLOSE_URL;

/** The life (s) of a token meant to expire on an open connection: time for a hello to
 * arrive on a loaded machine (a token expired at the handshake ends the client, by
 * design), where 1 or 1.5 s was not (with makeToken's rounding up, 2.5 to 3.5 s). A
 * starved machine (a load of 30 on two cores) took longer still: a test whose premise
 * is a welcome within a token's life runs under {@link withTokenLife}. */
export const SHORT = 2.5;

/** A scenario's short-lived token expired before its connection was welcomed: the
 * machine was too slow for the life it was given, which is no finding of the test. */
export class TooSlow extends Error {}

/**
 * Runs `scenario(life)` with tokens of `life` seconds, SHORT first, and again with
 * twice the life each time it throws {@link TooSlow}, three tries in all: an idle
 * machine waits out SHORT as before, a starved one gets the time its hellos take
 * (the server has no leeway: a hello that comes after its token's expiry is refused).
 * Any other failure fails at once, and a scenario that is too slow three times fails.
 * @template T @param {(life: number) => Promise<T>} scenario @returns {Promise<T>}
 */
export async function withTokenLife(scenario) {
  for (let life = SHORT, tries = 1; ; life *= 2, tries += 1) {
    try {
      return await scenario(life);
    } catch (error) {
      if (!(error instanceof TooSlow) || tries === 3) throw error;
    }
  }
}

/** Whether `error` is the server's refusal of a hello whose token had expired. */
export function expiredAtHello(error) {
  return error instanceof Unauthorized && error.reason === "token expired";
}

/** `connect()`'s client; {@link TooSlow} if the server refused its hello because the
 * token had expired by then. @template T @param {() => Promise<T>} connect */
export async function connectInTime(connect) {
  try {
    return await connect();
  } catch (error) {
    if (expiredAtHello(error)) throw new TooSlow("the hello came after its token expired");
    throw error;
  }
}

/** Every promise settled; the first failure that is not {@link TooSlow} thrown, else a
 * TooSlow if any: side by side scenarios run again together, none left running.
 * @param {Promise<unknown>[]} promises */
export async function allInTime(promises) {
  const failures = (await Promise.allSettled(promises))
    .filter((result) => result.status === "rejected")
    .map((result) => /** @type {PromiseRejectedResult} */ (result).reason);
  const failure = failures.find((error) => !(error instanceof TooSlow)) ?? failures[0];
  if (failure !== undefined) throw failure;
}

/** An HS256 JWT for `sub` that the server (leeway 0) accepts for `ttl` more seconds. */
export function makeToken(sub, ttl, key = secret) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  // Whole seconds, rounded up: the server (PyJWT) truncates exp, and a fractional one
  // made at 12.9995 s left a 1 s token half a millisecond of life.
  const claims = { sub, exp: Math.ceil(Date.now() / 1000 + ttl) };
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${body}.${createHmac("sha256", key).update(body).digest("base64url")}`;
}

/** The error that ends `client.events()`. */
export async function endOf(client) {
  try {
    for await (const item of client.events()) void item;
  } catch (error) {
    return error;
  }
  return null;
}

export const range = (n) => Array.from({ length: n }, (_, i) => i + 1);

/** Publish `count` tokens of `content` from `agent`, `inFlight` at a time; their seqs. */
export async function publishMany(agent, count, content = "t", inFlight = 100) {
  const seqs = [];
  for (let start = 0; start < count; start += inFlight) {
    const n = Math.min(inFlight, count - start);
    const batch = Array.from({ length: n }, () => agent.publish({ type: "token", content }));
    seqs.push(...(await Promise.all(batch)));
  }
  return seqs;
}

/** The next `count` items of `client.events()`: their seqs (or "reset"). */
export async function take(client, count) {
  const seqs = [];
  for await (const item of client.events()) {
    seqs.push(item.reset ? "reset" : item.seq);
    if (seqs.length === count) break;
  }
  return seqs;
}

/** Waits, 20 ms at a time within `ms`, until `check()` holds. */
export async function until(check, ms = 5000) {
  for (const deadline = Date.now() + ms; !check(); await sleep(20)) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${check}`);
  }
}

/** The seqs `client.events()` yields until it ends, and the error it threw, or null. */
export async function readToTheEnd(client) {
  const seqs = [];
  try {
    for await (const item of client.events()) seqs.push(item.reset ? "reset" : item.seq);
  } catch (error) {
    return { seqs, error };
  }
  return { seqs, error: null };
}

/** The seqs of the session's stored events after `afterSeq`, read over HTTP, page
 * after page. */
export async function storedSeqs(sessionId, afterSeq, { server = url, token = null } = {}) {
  const base = server.replace(/^ws/, "http");
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const seqs = [];
  for (let after = afterSeq; ; after = seqs.at(-1)) {
    const response = await fetch(`${base}/api/v1/sessions/${sessionId}/events?after_seq=${after}`, {
      headers,
    });
    assert.equal(response.status, 200);
    const page = (await response.json()).events.map((event) => event.seq);
    if (page.length === 0) return seqs;
    seqs.push(...page);
  }
}

/**
 * A TCP proxy to the server at `target` (a ws:// URL) that can stop reading what the
 * server sends: `hold(bytes)` lets that many more bytes through to the client, then
 * stops reading the server's socket (so the server's writes wait, as for a client that
 * reads slowly); `release()` reads and forwards on.
 */
export async function holdingProxy(target) {
  const { hostname, port } = new URL(target);
  /** @type {Set<{ upstream: net.Socket, client: net.Socket }>} */
  const pairs = new Set();
  let allowance = Infinity;
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    const pair = { upstream, client };
    pairs.add(pair);
    client.on("data", (chunk) => upstream.write(chunk));
    upstream.on("data", (chunk) => {
      client.write(chunk);
      allowance -= chunk.length;
      if (allowance <= 0) upstream.pause();
    });
    client.on("end", () => upstream.end());
    upstream.on("end", () => client.end());
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", drop);
    upstream.on("close", drop);
    client.on("error", drop);
    upstream.on("error", drop);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", () => resolve(null)));
  return {
    url: `ws://127.0.0.1:${/** @type {net.AddressInfo} */ (proxy.address()).port}`,
    /** @param {number} bytes */
    hold(bytes) {
      allowance = bytes;
    },
    release() {
      allowance = Infinity;
      for (const { upstream } of pairs) upstream.resume();
    },
    close() {
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      return new Promise((resolve) => proxy.close(() => resolve(null)));
    },
  };
}

/**
 * A TCP proxy to the server at `target` (a ws:// URL) whose `drop(code, reason)` ends
 * every connection through it as the server does when it closes one: a close frame with
 * `code` (and `reason`) to the client, and the server's side cut; `cut()` ends them with
 * no close frame, as a network failure does. After `refuseHttp()`, a plain HTTP
 * request through it (no WebSocket upgrade) gets 503. After `holdNew()`, a new
 * connection waits, unanswered, until `letIn()`: a client's resume comes once the test
 * has done what it must find done, whatever its backoff and the machine's load.
 */
export async function droppingProxy(target) {
  const { hostname, port } = new URL(target);
  /** @type {Set<{ upstream: net.Socket, client: net.Socket }>} */
  const pairs = new Set();
  const state = { refuseHttp: false };
  /** @type {Map<net.Socket, () => void> | null} the connections held, and how to let each in */
  let held = null;
  /** @param {net.Socket} client */
  const through = (client) => {
    const upstream = net.connect(Number(port), hostname);
    const pair = { upstream, client };
    pairs.add(pair);
    let first = true;
    client.on("data", (chunk) => {
      if (first && state.refuseHttp && !/^upgrade: *websocket/im.test(chunk.toString())) {
        upstream.destroy();
        client.end("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
      } else upstream.write(chunk);
      first = false;
    });
    upstream.on("data", (chunk) => client.write(chunk));
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on("end", drop);
      socket.on("close", drop);
      socket.on("error", drop);
    }
  };
  const proxy = net.createServer((client) => {
    if (held === null) return through(client);
    const waiting = held;
    client.pause(); // what it sends waits in its socket, to be read once let in
    waiting.set(client, () => (client.destroyed ? undefined : through(client)));
    client.on("error", () => client.destroy());
    client.on("close", () => waiting.delete(client));
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", () => resolve(null)));
  return {
    url: `ws://127.0.0.1:${/** @type {net.AddressInfo} */ (proxy.address()).port}`,
    /** Answer 503 to every new request through it but WebSocket upgrades. */
    refuseHttp() {
      state.refuseHttp = true;
    },
    /** Hold every new connection, unanswered, until `letIn()`. */
    holdNew() {
      held ??= new Map();
    },
    /** Put the held connections through, and the new ones from now on. */
    letIn() {
      const waiting = held ?? new Map();
      held = null;
      for (const [client, letThrough] of waiting) {
        letThrough();
        client.resume();
      }
    },
    /**
     * @param {number} code @param {string} [reason] short: one frame of < 126 bytes
     * @param {string} [closed] the reason of a `closed` frame sent before the close, as
     *   the server sends one before 1000, 1011, 1012 and 4404 (short too)
     */
    drop(code, reason = "", closed = undefined) {
      const text = Buffer.from(reason);
      const frame = Buffer.from([0x88, 2 + text.length, code >> 8, code & 0xff]);
      const before = [];
      if (closed !== undefined) {
        const json = Buffer.from(JSON.stringify({ type: "closed", reason: closed }));
        before.push(Buffer.from([0x81, json.length]), json);
      }
      for (const { client, upstream } of pairs) {
        upstream.destroy();
        client.end(Buffer.concat([...before, frame, text]));
      }
    },
    cut() {
      for (const { client, upstream } of pairs) {
        upstream.destroy();
        client.destroy();
      }
    },
    close() {
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      for (const client of held?.keys() ?? []) client.destroy();
      return new Promise((resolve) => proxy.close(() => resolve(null)));
    },
  };
}
