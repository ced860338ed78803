// The JavaScript client on Node (node:test), against the server in BAMBOO_URL (and the
// ones with a long close bound, to read within it, and a short one, to read past it): a
// session closed during a resume's replay, read within the server's close bound or past
// it, and after it.
// tests/test_js.py starts the servers and runs this file beside the other
// client*.test.mjs (helpers: client_support.mjs).
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";

import { BambooClient, ConnectionLost, SessionEnded } from "../../server/web/client/bamboo.js";

import {
  url,
  slowCloseUrl,
  quickCloseUrl,
  quickCloseTimeoutMs,
  range,
  publishMany,
  take,
  readToTheEnd,
  storedSeqs,
  holdingProxy,
} from "./client_support.mjs";

// A replay of 3,000 events of 4 KB: some 50 pages (512 events or 256 KiB each), and far
// more than the sockets' buffers hold, so one that is not read stops mid-way.
const REPLAYED = 3000;
const BIG = "r".repeat(4000);

// How long past the close bound a read waits, for the server to act on it under load.
const BOUND_MARGIN_MS = 1000;
// A bound on each test, against a hang: publishing the 12 MB took up to 27 s of it on a
// loaded machine (load 30 on two cores), reading it back 4 s.
const TEST_TIMEOUT_MS = 80000;

for (const waits of [false, true]) {
  test(
    waits
      ? "a session closed during a resume's replay not read in time: events() says which seq to read after"
      : "a session closed during a resume's replay read in time: the whole replay, then the end",
    { timeout: TEST_TIMEOUT_MS },
    async () => {
      // Read in time on the server whose bound is long (30 s): room for the whole
      // replay on a loaded machine, where the default 5 s cut it (2,470 of 3,000 came,
      // at a load of 27 on two cores). Read past it on the one whose bound is short.
      const server = waits ? quickCloseUrl : slowCloseUrl;
      const options = { sessionId: `replay-cut-1-${waits}`, backoffInitial: 20 };
      const agent = await BambooClient.connect(server, { ...options, create: true, role: "agent" });
      const proxy = await holdingProxy(server);
      let viewer = null;
      try {
        await publishMany(agent, REPLAYED, BIG);
        // The viewer reads slowly: the upgrade, the welcome and a few events, then
        // nothing until the session is closed, so the replay waits mid-way for room. The
        // queue is large enough for all of it: nothing is skipped.
        proxy.hold(64 * 1024);
        viewer = await BambooClient.connect(proxy.url, {
          ...options,
          lastSeq: 0,
          maxQueuedBytes: 256 * 1024 * 1024,
        });
        await agent.setState("closed");
        // Read within the close's bound, the replay comes whole; read past it, it was
        // cut where the bound found it (then `closed` and 1000, as read now).
        if (waits) await sleep(quickCloseTimeoutMs + BOUND_MARGIN_MS);
        proxy.release();
        const { seqs, error } = await readToTheEnd(viewer);
        const got = seqs.length;
        assert.deepEqual(seqs, range(got), "what came, in order, no gap");
        assert.equal(viewer.skippedEvents, 0, "nothing skipped");
        if (!waits) {
          assert.equal(got, REPLAYED);
          assert.equal(error, null);
          assert.ok(viewer.error instanceof SessionEnded && viewer.error.code === 1000);
          return;
        }
        assert.ok(got < REPLAYED, `the bound cut the replay: ${got} of ${REPLAYED} came`);
        assert.ok(error instanceof ConnectionLost, `${got} of ${REPLAYED} delivered: ${error}`);
        assert.equal(error.afterSeq, got);
        assert.match(
          error.message,
          new RegExp(`after seq ${got} not delivered .*after_seq=${got}\\)$`),
        );
        assert.ok(error.cause instanceof SessionEnded, String(error.cause));
        assert.deepEqual(
          await storedSeqs(options.sessionId, got, { server }),
          range(REPLAYED).slice(got),
        );
      } finally {
        await viewer?.close();
        await agent.close();
        await proxy.close();
      }
    },
  );
}

test(
  "a session closed after a resume's replay ends events() normally",
  { timeout: 15000 },
  async () => {
    const options = { sessionId: "replay-cut-2", backoffInitial: 20 };
    const agent = await BambooClient.connect(url, { ...options, create: true, role: "agent" });
    let viewer = null;
    try {
      await publishMany(agent, 300, BIG);
      viewer = await BambooClient.connect(url, { ...options, lastSeq: 0 });
      assert.deepEqual(await take(viewer, 300), range(300));
      // Its last seq is its own publish, known from the ack alone.
      assert.equal(await viewer.publish({ type: "token", content: "mine" }), 301);
      await agent.setState("closed");
      const { seqs, error } = await readToTheEnd(viewer);
      assert.deepEqual(seqs, []);
      assert.equal(error, null);
      assert.ok(viewer.error instanceof SessionEnded && viewer.error.code === 1000);
    } finally {
      await viewer?.close();
      await agent.close();
    }
  },
);
