// The JavaScript client on Node (node:test) when its server refuses the upgrade (an
// HTTP 503 in place of the 101, as a proxy in front of a server that is down answers):
// each attempt fails at once and the next comes after the backoff, not after
// `openTimeout`. Node 20's WebSocket reports such a refusal with `error` alone and
// never fires `close`; browsers and Node 22 fire `close` (1006) after the `error`, and
// that pair is one failed attempt, not two. tests/test_js.py starts the server
// (BAMBOO_URL); a TCP gate in front of it refuses upgrades while it is down.
import assert from "node:assert/strict";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";

import { BambooClient, ConnectionLost } from "../../server/web/client/bamboo.js";

const url = process.env.BAMBOO_URL;
// Far longer than the backoff (BACKOFF), and than the waits below: an attempt that
// waits for it instead of failing at once makes the test fail, not hang.
const OPEN_TIMEOUT = 8000;
const BACKOFF = { backoffInitial: 50, backoffMax: 100 };
const REFUSAL =
  "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/** Waits, 20 ms at a time within `ms`, until `check()` holds. */
async function until(check, ms) {
  for (const deadline = Date.now() + ms; !check(); await sleep(20)) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${check}`);
  }
}

/**
 * A TCP gate to the server at `target`: up, it puts connections through; `down()` ends
 * every connection through it and answers each new upgrade with a 503 (`refused`
 * counts them); `up()` puts new ones through again.
 */
async function refusingGate(target) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  const gate = { down: false, refused: 0 };
  const track = (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
  };
  const server = net.createServer((client) => {
    track(client);
    if (gate.down) {
      gate.refused += 1;
      client.once("data", () => client.end(REFUSAL));
      return;
    }
    const upstream = net.connect(Number(port), hostname);
    track(upstream);
    client.pipe(upstream).on("close", () => client.destroy());
    upstream.pipe(client).on("close", () => upstream.destroy());
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(null)));
  return Object.assign(gate, {
    url: `ws://127.0.0.1:${server.address().port}`,
    goDown() {
      gate.down = true;
      for (const socket of sockets) socket.destroy();
    },
    goUp() {
      gate.down = false;
    },
    close() {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve(null)));
    },
  });
}

/**
 * The WebSocket of browsers and Node 22 as far as a refused upgrade goes: `close`
 * (1006) follows the `error` of a connection that never opened. (Node 20's own fires
 * the `error` alone.) Only the handlers the client sets are wrapped.
 */
class ErrorThenClose extends globalThis.WebSocket {
  #opened = false;
  /** @type {((event: object) => void) | null} */
  #onclose = null;
  set onopen(handler) {
    super.onopen = (event) => {
      this.#opened = true;
      handler?.(event);
    };
  }
  set onclose(handler) {
    this.#onclose = handler;
    super.onclose = handler;
  }
  set onerror(handler) {
    super.onerror = (event) => {
      handler?.(event);
      if (this.#opened) return;
      setTimeout(() => this.#onclose?.({ code: 1006, reason: "", wasClean: false }), 0);
    };
  }
}

const WEBSOCKETS = { "Node's own WebSocket": undefined, "error then close": ErrorThenClose };

for (const [name, WebSocket] of Object.entries(WEBSOCKETS)) {
  test(`a refused upgrade is retried after the backoff (${name})`, async () => {
    const gate = await refusingGate(url);
    const options = { WebSocket, openTimeout: OPEN_TIMEOUT, ...BACKOFF };
    try {
      const sessionId = `refused-${WebSocket === undefined ? "own" : "pair"}`;
      const client = await BambooClient.connect(gate.url, { ...options, sessionId, create: true });
      try {
        const before = await client.publish({ type: "token", content: "before" });
        const downAt = Date.now();
        gate.goDown();
        // Each attempt is refused at once; the next follows within BACKOFF.backoffMax.
        await until(() => gate.refused >= 5, OPEN_TIMEOUT / 2);
        assert.equal(client.state, "reconnecting");
        assert.ok(Date.now() - downAt < OPEN_TIMEOUT / 2);
        gate.goUp();
        await until(() => client.state === "open", OPEN_TIMEOUT / 2);
        assert.equal(client.reconnects, 1);
        assert.equal(await client.publish({ type: "token", content: "after" }), before + 1);
      } finally {
        await client.close();
      }
      // The first connection is not retried: refused, it rejects at once too.
      gate.goDown();
      const started = Date.now();
      await assert.rejects(BambooClient.connect(gate.url, options), ConnectionLost);
      assert.ok(Date.now() - started < OPEN_TIMEOUT / 2, `${Date.now() - started} ms`);
    } finally {
      await gate.close();
    }
  });

  test(`an error and the close after it are one attempt (${name})`, async () => {
    const gate = await refusingGate(url);
    const maxRetries = 3;
    try {
      const sessionId = `refused-count-${WebSocket === undefined ? "own" : "pair"}`;
      const client = await BambooClient.connect(gate.url, {
        WebSocket,
        openTimeout: OPEN_TIMEOUT,
        ...BACKOFF,
        maxRetries,
        sessionId,
        create: true,
        receiveEvents: true,
      });
      const ended = (async () => {
        try {
          for await (const item of client.events()) void item;
        } catch (error) {
          return error;
        }
        return null;
      })();
      const refusedBefore = gate.refused;
      const downAt = Date.now();
      gate.goDown();
      const error = await ended;
      // Three backoffs of BACKOFF.backoffMax at most, not three openTimeouts.
      assert.ok(Date.now() - downAt < OPEN_TIMEOUT / 2, `${Date.now() - downAt} ms`);
      assert.ok(error instanceof ConnectionLost, String(error));
      assert.match(error.message, new RegExp(`gave up after ${maxRetries} attempts`));
      // As many connections as attempts: none counted twice, none skipped.
      assert.equal(gate.refused - refusedBefore, maxRetries);
      await client.close();
    } finally {
      await gate.close();
    }
  });
}
