// The JavaScript client on Node (node:test), against the servers in BAMBOO_URL and
// BAMBOO_AUTH_URL: a session that ends while a client is away (dropped, waiting to
// resume), and what events() says of the events it may have missed. tests/test_js.py
// starts the servers and runs this file beside the other client*.test.mjs (helpers:
// client_support.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";

import { BambooClient, ConnectionLost, SessionEnded } from "../../server/web/client/bamboo.js";

import {
  url,
  authUrl,
  secret,
  makeToken,
  range,
  publishMany,
  take,
  until,
  readToTheEnd,
  storedSeqs,
  droppingProxy,
} from "./client_support.mjs";

test(
  "a publish-only client closed with 4429, then refused with 4409, owes no events",
  { timeout: 15000 },
  async () => {
    const options = { sessionId: "publish-only-4429" };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    const proxy = await droppingProxy(url);
    let publisher = null;
    try {
      publisher = await BambooClient.connect(proxy.url, {
        ...options,
        receiveEvents: false,
        backoffInitial: 1000,
      });
      assert.equal(await publisher.publish({ type: "token", content: "mine" }), 1);
      await agent.publish({ type: "token", content: "theirs" });
      proxy.holdNew(); // its resume comes once the session is closed
      proxy.drop(4429); // as the server closes a connection over the frame rate
      await until(() => publisher.state === "reconnecting");
      await agent.setState("closed");
      proxy.letIn();
      const { seqs, error } = await readToTheEnd(publisher);
      assert.deepEqual(seqs, [], "a publish-only client gets no events");
      assert.equal(error, null, `nothing was due to it: ${error}`);
      assert.ok(publisher.error instanceof SessionEnded, String(publisher.error));
      assert.equal(publisher.error.code, 4409);
    } finally {
      await publisher?.close();
      await agent.close();
      await proxy.close();
    }
  },
);

/**
 * A viewer (through a dropping proxy) gets events 1..5; its connection is closed with
 * 1012, as at a server restart; while it waits to resume, the agent publishes `added`
 * more events and closes the session, so the resume is refused with 4409. What
 * `events()` yields after 1..5, and the error it threw, or null. `auth`: on the server
 * with auth, both clients with tokens, the viewer's from a function (asked before each
 * connection and before the HTTP request); `badHttpToken`: the third token it gives,
 * the one the HTTP request carries, is signed with another key (the server says 401).
 */
async function closedWhileAway(
  sessionId,
  added,
  { refuseHttp = false, auth = false, badHttpToken = false } = {},
) {
  const server = auth ? authUrl : url;
  const tokens = [];
  const viewerToken = async () => {
    const forged = badHttpToken && tokens.length >= 2; // the connect, the resume, then HTTP
    tokens.push(makeToken("alice", 300, forged ? "o".repeat(32) : secret));
    return tokens.at(-1);
  };
  const agent = await BambooClient.connect(server, {
    sessionId,
    create: true,
    role: "agent",
    token: auth ? makeToken("alice", 300) : undefined,
  });
  const proxy = await droppingProxy(server);
  let viewer = null;
  try {
    viewer = await BambooClient.connect(proxy.url, {
      sessionId,
      backoffInitial: 1000,
      token: auth ? viewerToken : undefined,
    });
    await publishMany(agent, 5);
    assert.deepEqual(await take(viewer, 5), range(5));
    proxy.holdNew(); // its resume comes once the session is closed
    proxy.drop(1012);
    await until(() => viewer.state === "reconnecting");
    await publishMany(agent, added);
    await agent.setState("closed");
    if (refuseHttp) proxy.refuseHttp();
    proxy.letIn();
    const outcome = await readToTheEnd(viewer);
    const stored = await storedSeqs(sessionId, 5, {
      server,
      token: auth ? makeToken("alice", 300) : null,
    });
    assert.deepEqual(stored, range(5 + added).slice(5));
    if (auth) assert.equal(tokens.length, 3, "the connect, the resume, the HTTP request");
    return { ...outcome, ended: viewer.error };
  } finally {
    await viewer?.close();
    await agent.close();
    await proxy.close();
  }
}

for (const auth of [false, true]) {
  const under = auth ? "under auth, " : "";
  const tag = auth ? "away-auth" : "away";

  test(
    `${under}a session closed while the viewer was away, with events added: events() says which seq to read after`,
    { timeout: 15000 },
    async () => {
      const { seqs, error } = await closedWhileAway(`${tag}-1`, 5, { auth });
      assert.deepEqual(seqs, []);
      assert.ok(error instanceof ConnectionLost, `5 events added while it was away: ${error}`);
      assert.equal(error.afterSeq, 5);
      assert.match(error.message, /after seq 5 not delivered .*after_seq=5\)$/);
      assert.ok(error.cause instanceof SessionEnded && error.cause.code === 4409);
    },
  );

  test(
    `${under}a session closed while the viewer was away, with nothing added, ends events() normally`,
    { timeout: 15000 },
    async () => {
      const { seqs, error, ended } = await closedWhileAway(`${tag}-2`, 0, { auth });
      assert.deepEqual(seqs, []);
      assert.equal(error, null, `nothing was added: ${error}`);
      assert.ok(ended instanceof SessionEnded && ended.code === 4409, String(ended));
    },
  );
}

test(
  "a session closed while the viewer was away, and the server cannot be asked: events may be missing",
  { timeout: 15000 },
  async () => {
    const { seqs, error } = await closedWhileAway("away-3", 0, { refuseHttp: true });
    assert.deepEqual(seqs, []);
    assert.ok(error instanceof ConnectionLost, `the HTTP API answered 503: ${error}`);
    assert.equal(error.afterSeq, 5);
    assert.match(
      error.message,
      /after seq 5 may not have been delivered .*HTTP 503.*after_seq=5\)$/,
    );
    assert.ok(error.cause instanceof SessionEnded && error.cause.code === 4409);
  },
);

test(
  "under auth, a token the HTTP API refuses: the events after seq 5 may be missing",
  { timeout: 15000 },
  async () => {
    const { seqs, error } = await closedWhileAway("away-auth-3", 0, {
      auth: true,
      badHttpToken: true,
    });
    assert.deepEqual(seqs, []);
    assert.ok(error instanceof ConnectionLost, `the HTTP API refused the token: ${error}`);
    assert.equal(error.afterSeq, 5);
    assert.match(
      error.message,
      /after seq 5 may not have been delivered .*HTTP 401.*after_seq=5\)$/,
    );
    assert.ok(error.cause instanceof SessionEnded && error.cause.code === 4409);
  },
);
