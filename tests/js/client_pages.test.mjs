// The JavaScript client's reads of a whole log page by page (eventPages, readAllEvents)
// on Node (node:test), when the session is replaced between two of their pages: it
// expires while the viewer is cut off and is created again under its id (another log,
// another epoch, its seqs from 1 again), so the viewer reconnects onto the new log. The
// read throws EpochChanged (both epochs in it) rather than join the old log's first
// pages to the new log's later ones; a session left alone is read whole as before.
// tests/test_js.py starts the servers: BAMBOO_URL, and BAMBOO_EXPIRING_URL, whose
// sessions expire 3 s after their last activity.
import assert from "node:assert/strict";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";

import {
  BambooClient,
  EpochChanged,
  NotFound,
  SequenceError,
} from "../../server/web/client/bamboo.js";

const url = process.env.BAMBOO_URL;
const expiringUrl = process.env.BAMBOO_EXPIRING_URL;
const OLD_EVENTS = 5;

/** Waits, 50 ms at a time within `ms`, until `check()` (sync or async) holds. */
async function until(check, ms = 10000) {
  for (const deadline = Date.now() + ms; !(await check()); await sleep(50)) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${check}`);
  }
}

/**
 * A TCP proxy to the server at `target` (a ws:// URL): `cut()` ends every connection
 * through it, and holds new ones, unanswered, until `mend()` puts them through. (Held,
 * not refused: the attempt held is put through the moment the proxy is mended, with no
 * backoff to wait for; client_refused.test.mjs tests refusals.)
 */
async function gateProxy(target) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  const held = [];
  const state = { down: false };
  const putThrough = (client) => {
    const upstream = net.connect(Number(port), hostname);
    client.pipe(upstream);
    upstream.pipe(client);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      const drop = () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      };
      socket.on("close", drop);
      socket.on("error", drop);
    }
  };
  const proxy = net.createServer((client) => {
    if (!state.down) return putThrough(client);
    client.on("error", () => client.destroy());
    held.push(client); // what it sends waits in its paused stream
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", () => resolve(null)));
  return {
    url: `ws://127.0.0.1:${proxy.address().port}`,
    cut() {
      state.down = true;
      for (const socket of sockets) socket.destroy();
    },
    mend() {
      state.down = false;
      for (const client of held.splice(0)) if (!client.destroyed) putThrough(client);
    },
    close() {
      for (const socket of [...sockets, ...held]) socket.destroy();
      return new Promise((resolve) => proxy.close(() => resolve(null)));
    },
  };
}

async function publishAll(client, count, content) {
  for (let i = 0; i < count; i++) await client.publish({ type: "token", content });
}

/**
 * Plain `ping`s from `client` every 200 ms until the function returned is called: frames
 * of an attached peer, and so activity, which the liveness check's pings are not. The
 * expiring server's sessions end 3 s after their last activity; a test's steps between
 * two activities (connect, publish, a proxy mended, a reconnect, a read) outlasted that
 * on a starved machine, and the session the test was reading expired under it.
 * @returns {() => void}
 */
function keptAlive(client) {
  const timer = setInterval(() => void client.ping().catch(() => {}), 200);
  return () => clearInterval(timer);
}

/**
 * The session made under `sessionId` (again, once its old one expired): its creator's
 * client. Replacing an expired session is store work (the old log removed, the new
 * session written) took 2 to 3.6 s on a starved machine, and the new session, whose
 * TTL starts at its creation, had expired by its welcome (4404 `session expired`, as
 * for any session that expires before its welcome): another try makes it again, up to
 * five in all. (So the tests that replace a session have 40 s each, not 20.)
 */
async function createdAgain(server, sessionId) {
  for (let tries = 1; ; tries += 1) {
    try {
      return await BambooClient.connect(server, { sessionId, create: true, role: "agent" });
    } catch (error) {
      const expired = error instanceof NotFound && error.reason === "session expired";
      if (!expired || tries === 5) throw error;
    }
  }
}

/**
 * Runs `body({ viewer, oldEpoch, replace })` on session `sessionId` of the server at
 * `server`, with events 1..5 of "old" and a viewer of it through a gate proxy.
 * `replace(newEvents)` cuts the viewer off, waits for the session to expire (nothing
 * touches it meanwhile; a GET is no activity), creates it again with `newEvents` events
 * of "new", lets the viewer back (its next request reconnects it onto the new log,
 * resumed: false) and resolves to the new epoch. Each session is made by
 * `createdAgain`, and kept alive by its creator (keptAlive) for as long as the test
 * reads it: the old one until `replace` lets it expire, the new one to the end.
 */
async function withSessionOfFive(server, sessionId, body) {
  let agent = await createdAgain(server, sessionId);
  let stopKeeping = keptAlive(agent);
  await publishAll(agent, OLD_EVENTS, "old");
  const proxy = await gateProxy(server);
  const viewer = await BambooClient.connect(proxy.url, {
    sessionId,
    receiveEvents: false,
    backoffInitial: 20,
    backoffMax: 100,
  });
  const oldEpoch = viewer.epoch;
  const replace = async (newEvents) => {
    stopKeeping();
    await agent.close();
    proxy.cut();
    await until(() => viewer.state === "reconnecting");
    const metadata = `${server.replace(/^ws/, "http")}/api/v1/sessions/${sessionId}`;
    await until(async () => (await fetch(metadata)).status === 404);
    agent = await createdAgain(server, sessionId);
    stopKeeping = keptAlive(agent);
    await publishAll(agent, newEvents, "new");
    assert.notEqual(agent.epoch, oldEpoch);
    proxy.mend();
    return agent.epoch;
  };
  try {
    await body({ viewer, oldEpoch, replace });
  } finally {
    stopKeeping();
    await viewer.close();
    await agent.close();
    await proxy.close();
  }
}

const contents = (events) => events.map((e) => [e.seq, e.event.content]);
const logOf = (count, content) => Array.from({ length: count }, (_, i) => [i + 1, content]);

test("a session left alone is read whole, page by page", async () => {
  await withSessionOfFive(url, "pages-whole", async ({ viewer, oldEpoch }) => {
    const pages = [];
    for await (const page of viewer.eventPages({ page: 2 })) pages.push(page);
    assert.deepEqual(
      pages.map((page) => page.events.map((e) => e.seq)),
      [[1, 2], [3, 4], [5]],
    );
    assert.deepEqual(new Set(pages.map((page) => page.epoch)), new Set([oldEpoch]));
    const whole = logOf(OLD_EVENTS, "old");
    assert.deepEqual(contents(await viewer.readAllEvents({ page: 2 })), whole);
    assert.deepEqual(contents(await viewer.readAllEvents({ page: 2, epoch: oldEpoch })), whole);
    assert.deepEqual(
      contents(await viewer.readAllEvents({ afterSeq: 3, page: 1 })),
      whole.slice(3),
    );
    assert.deepEqual(await viewer.readAllEvents({ afterSeq: OLD_EVENTS }), []);
  });
});

// The new log longer than the pages read of the old (its seqs 3.. would have followed
// the old log's 1, 2), and shorter (an empty page, which ended the read at seq 2).
for (const newEvents of [6, 1]) {
  test(
    `a session replaced between two pages (${newEvents} new events) stops the read`,
    { timeout: 40000 },
    async () => {
      const sessionId = `pages-replaced-${newEvents}`;
      await withSessionOfFive(expiringUrl, sessionId, async ({ viewer, oldEpoch, replace }) => {
        const pages = viewer.eventPages({ page: 2 });
        const first = await pages.next();
        assert.deepEqual(contents(first.value.events), logOf(2, "old"));
        assert.equal(first.value.epoch, oldEpoch);
        const newEpoch = await replace(newEvents);
        await assert.rejects(pages.next(), (error) => {
          assert.ok(error instanceof EpochChanged, String(error));
          assert.deepEqual(
            [error.previousEpoch, error.epoch, error.afterSeq],
            [oldEpoch, newEpoch, 2],
          );
          assert.ok(error.message.includes(oldEpoch) && error.message.includes(newEpoch));
          return true;
        });
        // Nothing restarts on its own; a new read is of the new log, whole.
        assert.equal(viewer.epoch, newEpoch);
        assert.deepEqual(
          contents(await viewer.readAllEvents({ page: 2 })),
          logOf(newEvents, "new"),
        );
      });
    },
  );
}

test("readAllEvents throws rather than return two logs joined", { timeout: 40000 }, async () => {
  await withSessionOfFive(expiringUrl, "pages-joined", async ({ viewer, oldEpoch, replace }) => {
    // The replacement comes between the first two pages of one readAllEvents call,
    // whatever the timing: this viewer's readEvents (one page of the read) waits for
    // it after the first page.
    const readPage = viewer.readEvents.bind(viewer);
    let betweenPages = () => replace(6);
    let newEpoch = null;
    viewer.readEvents = async (options) => {
      const page = await readPage(options);
      const hook = betweenPages;
      betweenPages = null;
      if (hook !== null) newEpoch = await hook();
      return page;
    };
    await assert.rejects(
      viewer.readAllEvents({ page: 2 }).then((spliced) => {
        throw new Error(`a log read from two epochs: ${JSON.stringify(contents(spliced))}`);
      }),
      (error) => {
        assert.ok(error instanceof EpochChanged, String(error));
        assert.deepEqual([error.previousEpoch, error.epoch], [oldEpoch, newEpoch]);
        return true;
      },
    );
  });
});

test("a read pinned to the old epoch refuses the new log", { timeout: 40000 }, async () => {
  await withSessionOfFive(expiringUrl, "pages-pinned", async ({ viewer, oldEpoch, replace }) => {
    const newEpoch = await replace(8);
    await until(() => viewer.epoch === newEpoch);
    await assert.rejects(viewer.readAllEvents({ afterSeq: 3, epoch: oldEpoch }), (error) => {
      assert.ok(error instanceof EpochChanged, String(error));
      assert.deepEqual([error.previousEpoch, error.epoch, error.afterSeq], [oldEpoch, newEpoch, 3]);
      return true;
    });
    assert.deepEqual(
      (await viewer.readAllEvents({ afterSeq: 3 })).map((e) => e.seq),
      [4, 5, 6, 7, 8],
    );
  });
});

// The read is of the log the client was attached to when it was called, which `afterSeq`
// counts in (say, `client.lastSeq`): a first page of the new log would have joined the
// old log's seqs up to 3 to the new log's 4.. (or read another log than the one asked for).
for (const afterSeq of [3, 0]) {
  test(
    `a session replaced before the first page (after seq ${afterSeq}) stops the read`,
    { timeout: 40000 },
    async () => {
      const sessionId = `pages-first-${afterSeq}`;
      await withSessionOfFive(expiringUrl, sessionId, async ({ viewer, oldEpoch, replace }) => {
        // As when the connection drops while the first request is out, and the client
        // resends it on the new log: the replacement comes after the call, before its
        // first page is read.
        const readPage = viewer.readEvents.bind(viewer);
        let beforeFirstPage = () => replace(8);
        let newEpoch = null;
        viewer.readEvents = async (options) => {
          const hook = beforeFirstPage;
          beforeFirstPage = null;
          if (hook !== null) newEpoch = await hook();
          return readPage(options);
        };
        await assert.rejects(
          viewer.readAllEvents({ afterSeq, page: 2 }).then((read) => {
            throw new Error(
              `a read of one log returned another's: ${JSON.stringify(contents(read))}`,
            );
          }),
          (error) => {
            assert.ok(error instanceof EpochChanged, String(error));
            assert.deepEqual(
              [error.previousEpoch, error.epoch, error.afterSeq],
              [oldEpoch, newEpoch, afterSeq],
            );
            return true;
          },
        );
        // The read asked of the new log, now the client's, reads it.
        assert.deepEqual(
          (await viewer.readAllEvents({ afterSeq })).map((e) => e.seq),
          Array.from({ length: 8 - afterSeq }, (_, i) => afterSeq + i + 1),
        );
      });
    },
  );
}

// Second pages no server of this project sends (the first is seqs 1, 2 of 5), with the
// seq the read expected at least and the one it got: each would have made the read ask
// for the same page for ever, or join an event twice, or out of order.
const STUCK_PAGES = {
  "the same page again": [[1, 2], 3, 1],
  "a page that goes back": [[2, 3], 3, 2],
  "a page out of order": [[4, 3], 5, 3],
};

for (const [name, [second, expected, got]] of Object.entries(STUCK_PAGES)) {
  test(`a page that does not move on stops the read: ${name}`, { timeout: 10000 }, async () => {
    await withSessionOfFive(url, `pages-stuck-${second.join("-")}`, async ({ viewer }) => {
      const asked = [];
      const page = (seqs) => ({
        events: seqs.map((seq) => ({
          seq,
          ts: "2026-05-01T12:00:00Z",
          event: { type: "token", content: "t" },
        })),
        lastSeq: 5,
        epoch: viewer.epoch,
      });
      viewer.readEvents = async ({ afterSeq }) => {
        asked.push(afterSeq);
        if (asked.length > 100) throw new Error(`the same page asked for ever: after ${asked}`);
        await sleep(0);
        return page(afterSeq === 0 ? [1, 2] : afterSeq === 2 ? second : []);
      };
      await assert.rejects(
        viewer.readAllEvents({ page: 2 }).then((read) => {
          throw new Error(`a read of impossible pages returned ${read.map((e) => e.seq)}`);
        }),
        (error) => {
          assert.ok(error instanceof SequenceError, String(error));
          assert.deepEqual([error.expected, error.got], [expected, got]);
          return true;
        },
      );
    });
  });
}
