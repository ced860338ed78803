// The JavaScript client on Node (node:test): the `"closed"` state change says which
// close ended the client (`code`, `reason`), as `"reconnecting"` says which close made it
// reconnect, so that an application tells the session's end (1000 or 4409) from a
// deletion (4404), a refused token (4401) and its own `close()` (1000, "client closed").
// tests/test_js.py starts the servers (BAMBOO_URL, and BAMBOO_AUTH_URL with no leeway)
// and runs this file beside the other client*.test.mjs (helpers: client_support.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  BambooClient,
  ConnectionLost,
  NotFound,
  SessionEnded,
  Unauthorized,
} from "../../server/web/client/bamboo.js";

import { url, authUrl, makeToken, droppingProxy, endOf, until, SHORT } from "./client_support.mjs";

/** The `"closed"` state change of `client`, once it comes: its code, reason and error. */
function closedOf(client) {
  return new Promise((resolve) => {
    client.on("state", ({ state, code, reason, error }) => {
      if (state === "closed") resolve({ code, reason, error });
    });
  });
}

test("the closed state names the close: the client's own, and the session's end", async () => {
  const options = { sessionId: "closed-why-1", backoffInitial: 20 };
  const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
  const viewer = await BambooClient.connect(url, options);
  try {
    const agentClosed = closedOf(agent);
    const viewerClosed = closedOf(viewer);
    await agent.setState("closed"); // the server closes every connection: 1000
    const seen = await viewerClosed;
    assert.ok(seen.error instanceof SessionEnded, String(seen.error));
    assert.deepEqual([seen.code, seen.reason], [1000, "session closed"]);
    assert.equal((await agentClosed).code, 1000);

    const own = await BambooClient.connect(url, { sessionId: "closed-why-own", create: true });
    const ownClosed = closedOf(own);
    await own.close();
    const mine = await ownClosed;
    assert.deepEqual([mine.code, mine.reason], [1000, "client closed"]);
    assert.ok(mine.error instanceof SessionEnded);
  } finally {
    await viewer.close();
    await agent.close();
  }
});

test("a close the client does not resume: its code and reason, as the server sent them", async () => {
  const proxy = await droppingProxy(url);
  const options = { sessionId: "closed-why-2", backoffInitial: 20 };
  const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
  try {
    // What the server closes a connection with as its session is deleted.
    const viewer = await BambooClient.connect(proxy.url, options);
    const deleted = closedOf(viewer);
    proxy.drop(4404, "session deleted");
    const seen = await deleted;
    assert.ok(seen.error instanceof NotFound, String(seen.error));
    assert.deepEqual([seen.code, seen.reason], [4404, "session deleted"]);

    // With reconnect off, a close worth a resume ends it: that close, not a null code.
    const once = await BambooClient.connect(proxy.url, { ...options, reconnect: false });
    const restarted = closedOf(once);
    proxy.drop(1012, "server restarting");
    const lost = await restarted;
    assert.ok(lost.error instanceof ConnectionLost, String(lost.error));
    assert.deepEqual([lost.code, lost.reason], [1012, "server restarting"]);
  } finally {
    await agent.close();
    await proxy.close();
  }
});

test("a resume refused as the session closed while the client was away: 4409", async () => {
  const proxy = await droppingProxy(url);
  const options = { sessionId: "closed-why-3" };
  const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
  const viewer = await BambooClient.connect(proxy.url, { ...options, backoffInitial: 1000 });
  try {
    const closed = closedOf(viewer);
    proxy.holdNew(); // its resume comes once the session is closed
    proxy.cut();
    await until(() => viewer.state === "reconnecting");
    await agent.setState("closed");
    proxy.letIn();
    const seen = await closed;
    assert.ok(seen.error instanceof SessionEnded, String(seen.error));
    assert.deepEqual([seen.code, seen.reason], [4409, "session closed"]);
  } finally {
    await viewer.close();
    await agent.close();
    await proxy.close();
  }
});

test("a fixed token that expires on an open connection: 4401", { timeout: 15000 }, async () => {
  const client = await BambooClient.connect(authUrl, {
    sessionId: "closed-why-4",
    create: true,
    token: makeToken("alice", SHORT),
  });
  const closed = closedOf(client);
  const error = await endOf(client);
  assert.ok(error instanceof Unauthorized, String(error));
  const seen = await closed;
  assert.equal(seen.error, error);
  assert.deepEqual([seen.code, seen.reason], [4401, "token expired"]);
});

test("given up after maxRetries: no close code, and why", { timeout: 15000 }, async () => {
  const proxy = await droppingProxy(url);
  const options = { sessionId: "closed-why-5", create: true, backoffInitial: 20 };
  const client = await BambooClient.connect(proxy.url, { ...options, maxRetries: 1 });
  const closed = closedOf(client);
  await proxy.close(); // every later attempt finds no one listening
  const seen = await closed;
  assert.ok(seen.error instanceof ConnectionLost, String(seen.error));
  assert.equal(seen.code, null);
  assert.equal(seen.reason, seen.error.message);
  assert.match(seen.reason, /^gave up after 1 attempts/);
});

test("a resume refused with 4409 after a restart's closed frame: the refusal's reason", async () => {
  // The server says `closed` ("server restarting") before it closes with 1012: that
  // reason is the restarted connection's, not the one of the refusal that ends it.
  const proxy = await droppingProxy(url);
  const options = { sessionId: "closed-why-6" };
  const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
  const viewer = await BambooClient.connect(proxy.url, { ...options, backoffInitial: 1000 });
  try {
    const closed = closedOf(viewer);
    const reconnecting = new Promise((resolve) => {
      viewer.on("state", (change) => change.state === "reconnecting" && resolve(change));
    });
    proxy.holdNew(); // its resume comes once the session is closed
    proxy.drop(1012, "server restarting", "server restarting");
    const restarted = await reconnecting;
    assert.deepEqual([restarted.code, restarted.reason], [1012, "server restarting"]);
    await agent.setState("closed");
    proxy.letIn();
    const seen = await closed;
    assert.ok(seen.error instanceof SessionEnded, String(seen.error));
    assert.deepEqual([seen.code, seen.reason], [4409, "session closed"]);
    assert.equal(seen.error.message, "session closed");
  } finally {
    await viewer.close();
    await agent.close();
    await proxy.close();
  }
});

test("a listener that closes the client as it reconnects: every listener hears closed last", async () => {
  const proxy = await droppingProxy(url);
  const options = { sessionId: "closed-why-7", create: true, backoffInitial: 20 };
  const client = await BambooClient.connect(proxy.url, options);
  try {
    client.on("state", ({ state }) => {
      if (state === "reconnecting") void client.close();
    });
    /** @type {Array<[string, number | null | undefined]>} */
    const heard = [];
    client.on("state", ({ state, code }) => heard.push([state, code]));
    const closed = closedOf(client);
    proxy.drop(1012, "server restarting");
    const seen = await closed;
    assert.deepEqual([seen.code, seen.reason], [1000, "client closed"]);
    assert.deepEqual(heard, [
      ["reconnecting", 1012],
      ["closed", 1000],
    ]);
    assert.equal(client.state, "closed");
  } finally {
    await proxy.close();
  }
});

test("closed while a reconnect waits for its token: nothing more is asked", async () => {
  // The attempt under way ends with the client's own end (`SessionEnded`, "client
  // closed"): no check of the session over HTTP follows, nor a call for its token.
  const proxy = await droppingProxy(url);
  let calls = 0;
  /** @type {(token: string) => void} */
  let give = () => {};
  const token = () => {
    calls += 1;
    return calls === 1 ? "any" : new Promise((resolve) => (give = resolve));
  };
  const options = { sessionId: "closed-why-8", create: true, backoffInitial: 20, token };
  const client = await BambooClient.connect(proxy.url, options);
  try {
    const closed = closedOf(client);
    proxy.cut();
    await until(() => calls === 2);
    const closing = client.close();
    give("any");
    await closing;
    const seen = await closed;
    assert.deepEqual([seen.code, seen.reason], [1000, "client closed"]);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(calls, 2);
  } finally {
    await proxy.close();
  }
});
