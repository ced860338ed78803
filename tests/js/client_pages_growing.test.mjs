// The JavaScript client's whole-log reads (readAllEvents, eventPages) on Node
// (node:test) of a log that grows while they read it: they end at a seq fixed when they
// begin, the caller's untilSeq or else the log's lastSeq as the first page reports it,
// instead of chasing the log for as long as the session takes events. A publisher
// appends while a reader reads slowly, each of its pages waiting for the publisher to
// have appended more (a bounded number of events in all, so that a read that chases
// the log still ends, with too many). tests/test_js.py starts the server: BAMBOO_URL.
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";

import { BambooClient } from "../../server/web/client/bamboo.js";

const url = process.env.BAMBOO_URL;
const FIRST_EVENTS = 20;
// The publisher stops here: a read that chased the log ends at the latest once it has
// caught up with this many, so a failing test fails within seconds.
const MOST_EVENTS = 400;
// Events the publisher appends while the reader waits between two of its pages.
const AHEAD_PER_PAGE = 10;

/**
 * Runs `body({ reader, publisher })` on a new session `sessionId` with FIRST_EVENTS
 * events, a publisher appending more (`publisher.appended`, acknowledged), and a
 * reader whose every page waits until the publisher has appended AHEAD_PER_PAGE more
 * since the page before (`publisher.slowing = false` lets it read at once).
 */
async function withGrowingSession(sessionId, body) {
  const agent = await BambooClient.connect(url, { sessionId, create: true, role: "agent" });
  for (let i = 0; i < FIRST_EVENTS; i++) await agent.publish({ type: "token", content: "first" });
  const reader = await BambooClient.connect(url, { sessionId, receiveEvents: false });
  const publisher = { appended: FIRST_EVENTS, done: false, stopped: false, slowing: true };
  const publishing = (async () => {
    while (publisher.appended < MOST_EVENTS && !publisher.stopped) {
      await agent.publish({ type: "token", content: "more" });
      publisher.appended += 1;
    }
    publisher.done = true;
  })();
  const readPage = reader.readEvents.bind(reader);
  reader.readEvents = async (query) => {
    const target = Math.min(publisher.appended + AHEAD_PER_PAGE, MOST_EVENTS);
    while (publisher.slowing && publisher.appended < target && !publisher.done) await sleep(5);
    return readPage(query);
  };
  const stop = async () => {
    publisher.stopped = true;
    publisher.slowing = false;
    await publishing;
  };
  try {
    await body({ reader, publisher, stop });
  } finally {
    await stop();
    await reader.close();
    await agent.close();
  }
}

const seqsOf = (events) => events.map((event) => event.seq);
const oneTo = (last, first = 1) => Array.from({ length: last - first + 1 }, (_, i) => first + i);

test("a read of a growing log ends at the lastSeq its first page reports", async () => {
  await withGrowingSession("growing-pages", async ({ reader, publisher }) => {
    const pages = [];
    for await (const page of reader.eventPages({ page: 5 })) pages.push(page);
    const end = pages[0].lastSeq;
    assert.ok(FIRST_EVENTS <= end && end < MOST_EVENTS, `${end}`);
    assert.deepEqual(seqsOf(pages.flatMap((page) => page.events)), oneTo(end));
    // The log grew while it was read: a read that followed it would have gone on.
    assert.ok(publisher.appended > end + AHEAD_PER_PAGE, `${publisher.appended}`);
    assert.ok(pages.at(-1).lastSeq > end);
  });
});

test("readAllEvents returns the log as it was when called", async () => {
  await withGrowingSession("growing-all", async ({ reader, publisher }) => {
    const before = publisher.appended;
    const events = await reader.readAllEvents({ page: 4 });
    // The first page was asked for once the publisher had appended AHEAD_PER_PAGE more.
    assert.ok(before + AHEAD_PER_PAGE <= events.length, `${before} ${events.length}`);
    assert.ok(events.length < MOST_EVENTS, `${events.length}`);
    assert.deepEqual(seqsOf(events), oneTo(events.length));
    assert.ok(publisher.appended > events.length + AHEAD_PER_PAGE);
  });
});

test("untilSeq ends the read there", async () => {
  await withGrowingSession("growing-until", async ({ reader, stop }) => {
    assert.deepEqual(seqsOf(await reader.readAllEvents({ page: 3, untilSeq: 7 })), oneTo(7));
    // A page bigger than what is left is asked for only what is left.
    const pages = [];
    for await (const page of reader.eventPages({ afterSeq: 5, page: 100, untilSeq: 12 })) {
      pages.push(seqsOf(page.events));
    }
    assert.deepEqual(pages, [oneTo(12, 6)]);
    assert.deepEqual(await reader.readAllEvents({ afterSeq: 12, untilSeq: 12 }), []);
    // An end beyond the log's ends at the log's end: the read never waits.
    await stop();
    const last = (await reader.readEvents({ limit: 1 })).lastSeq;
    const far = await reader.readAllEvents({ afterSeq: last - 3, untilSeq: last + 100 });
    assert.deepEqual(seqsOf(far), oneTo(last, last - 2));
  });
});

test("events past the end are never yielded, whatever the server sends", async () => {
  // A server that answers with more than was asked for (none of this project's does):
  // the end is the read's promise, not the server's. Pages made here, on a real client.
  await withGrowingSession("growing-more", async ({ reader, stop }) => {
    await stop();
    const asked = [];
    reader.readEvents = async ({ afterSeq, limit }) => {
      asked.push([afterSeq, limit]);
      const events = oneTo(afterSeq + 10, afterSeq + 1).map((seq) => ({
        seq,
        ts: "2026-05-01T12:00:00Z",
        event: { type: "token", content: "t" },
      }));
      return { events, lastSeq: 50, epoch: reader.epoch };
    };
    assert.deepEqual(seqsOf(await reader.readAllEvents({ page: 4, untilSeq: 6 })), oneTo(6));
    assert.deepEqual(asked, [[0, 4]]);
  });
});
