// The JavaScript client on Node (node:test), against the server with auth (no leeway)
// in BAMBOO_AUTH_URL, whose secret is in BAMBOO_AUTH_SECRET: tokens that expire, are
// asked for again, or are refused. tests/test_js.py starts the servers and runs this file
// beside the other client*.test.mjs (helpers: client_support.mjs).
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";

import {
  BambooClient,
  ClientError,
  ConnectionLost,
  Refused,
  Unauthorized,
} from "../../server/web/client/bamboo.js";

import {
  authUrl,
  makeToken,
  endOf,
  range,
  SHORT,
  TooSlow,
  withTokenLife,
  connectInTime,
  expiredAtHello,
  allInTime,
} from "./client_support.mjs";

// 36 publishes 200 ms apart, each awaiting its ack (an fsync), and two reconnects of
// each client: some 9 s on an idle machine, past 30 s on a starved one.
test(
  "a token function is asked again at expiry; nothing is lost or repeated",
  { timeout: 60000 },
  async () => {
    const issued = { agent: 0, viewer: 0 };
    // The first two tokens of each client expire SHORT after they are made (the server
    // closes the connection then); later ones last, so that no expiry comes while the
    // test closes the clients, whose token function a reconnect under way would ask.
    const tokenOf = (who) => async () => {
      issued[who] += 1;
      return makeToken("alice", issued[who] <= 2 ? SHORT : 60);
    };
    const options = { sessionId: "refresh-1", backoffInitial: 20 };
    const agent = await BambooClient.connect(authUrl, {
      ...options,
      create: true,
      role: "agent",
      token: tokenOf("agent"),
    });
    // The viewer waits at least 200 ms before it reconnects: events published meanwhile
    // reach it only through the resume.
    const viewer = await BambooClient.connect(authUrl, {
      ...options,
      backoffInitial: 400,
      token: tokenOf("viewer"),
    });
    const seen = [];
    const watching = (async () => {
      for await (const item of viewer.events()) {
        seen.push(item.reset ? "reset" : item.seq);
        if (seen.length === 36) break;
      }
    })();
    const seqs = [];
    try {
      for (let i = 1; i <= 36; i++) {
        // Across two expiries of each client's token (at about 3 and 6 s), 7.2 s in all.
        seqs.push(await agent.publish({ type: "token", content: `t${i}` }));
        await sleep(200);
      }
      // Then judge what has arrived (an unref timer does not keep Node alive).
      await Promise.race([watching, sleep(5000, null, { ref: false })]);
    } finally {
      await viewer.close(); // ends events(), should the viewer still wait for some
      await agent.close();
    }
    await watching;
    assert.deepEqual(seqs, range(36));
    assert.deepEqual(seen, range(36));
    assert.ok(
      agent.reconnects >= 1 && viewer.reconnects >= 1,
      `${agent.reconnects}, ${viewer.reconnects}`,
    );
    assert.equal(issued.agent, agent.reconnects + 1);
    assert.equal(issued.viewer, viewer.reconnects + 1);
  },
);

test("a fixed token ends the client with Unauthorized when it expires", { timeout: 60000 }, () =>
  withTokenLife(async (life) => {
    const client = await connectInTime(() =>
      BambooClient.connect(authUrl, {
        sessionId: "fixed-1",
        create: true,
        token: makeToken("alice", life),
        backoffInitial: 20,
      }),
    );
    // Open until the token expires: the ping is answered, unless that expiry (on a
    // starved machine) came first and ended the client.
    const pinged = await client.ping().then(
      () => null,
      (error) => error,
    );
    const error = await endOf(client);
    assert.ok(error instanceof Unauthorized, String(error));
    assert.equal(error.code, 4401);
    assert.equal(error.reason, "token expired");
    assert.ok(pinged === null || pinged === error, String(pinged));
    assert.equal(client.reconnects, 0);
    await assert.rejects(client.ping(), Unauthorized);
  }),
);

test("a token function that gives a bad token ends the client, no loop", { timeout: 60000 }, () =>
  withTokenLife(async (life) => {
    const stale = makeToken("alice", 1);
    const refreshers = {
      "token expired": () => stale, // never refreshed: the same token again
      "invalid token": () => makeToken("alice", 60, "not the server's secret, 32 bytes"),
    };
    // Side by side: each client waits out its first token (`life`); the stale one
    // has expired by then.
    const refused = Object.entries(refreshers).map(async ([reason, refresh]) => {
      let calls = 0;
      const client = await connectInTime(() =>
        BambooClient.connect(authUrl, {
          sessionId: `bad-refresh-${reason.split(" ")[0]}`,
          create: true,
          backoffInitial: 20,
          token: () => (++calls === 1 ? makeToken("alice", life) : refresh()),
        }),
      );
      const error = await endOf(client);
      assert.ok(error instanceof Unauthorized, String(error));
      assert.equal(error.code, 4401, reason);
      assert.equal(error.reason, reason);
      assert.equal(calls, 2, reason); // the first connection, then the refused refresh
      assert.equal(client.reconnects, 0);
    });
    // One that throws ends it too, with what it threw as the cause.
    const throws = (async () => {
      let calls = 0;
      const client = await connectInTime(() =>
        BambooClient.connect(authUrl, {
          sessionId: "bad-refresh-throws",
          create: true,
          backoffInitial: 20,
          token: async () => {
            if (++calls > 1) throw new Error("no token service");
            return makeToken("alice", life);
          },
        }),
      );
      const error = await endOf(client);
      assert.ok(error instanceof ClientError && !(error instanceof Refused), String(error));
      assert.equal(error.cause.message, "no token service");
      assert.equal(calls, 2);
    })();
    await allInTime([...refused, throws]);
  }),
);

test(
  "tokens that expire soon after each welcome keep backing off, to maxRetries",
  { timeout: 90000 },
  () =>
    withTokenLife(async (life) => {
      let calls = 0;
      const client = await connectInTime(() =>
        BambooClient.connect(authUrl, {
          sessionId: "short-tokens",
          create: true,
          maxRetries: 2,
          backoffInitial: 20,
          token: () => (calls++, makeToken("alice", life)),
        }),
      );
      const error = await endOf(client);
      // A reconnect whose hello came after its fresh token's expiry: refused, which
      // ends the client by design, its connection never welcomed.
      if (expiredAtHello(error) && calls === client.reconnects + 2) {
        throw new TooSlow("a reconnect's hello came after its token expired");
      }
      assert.ok(error instanceof ConnectionLost, String(error));
      assert.match(error.message, /^gave up after 2 attempts: token expired/);
      assert.equal(calls, 3); // the first connection and 2 reconnects, each held for `life`
      assert.equal(client.reconnects, 2);
    }),
);
