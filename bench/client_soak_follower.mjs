// The client soak's JavaScript follower (bench/client_soak.py): the JavaScript client
// (server/web/client/bamboo.js) under Node, used as an application would: it follows
// one session from seq 0, hands every event to a callback that records it, listens to
// the "state" events, and, when events() ends, opens a new client from the ended one's
// lastSeq and epoch. Every 500 ms it prints a progress line (the last seq delivered, and
// whether its client says connected); on SIGTERM it closes its client (timed) and
// prints one JSON line: what it saw and what the client reported.
//
// node --experimental-websocket bench/client_soak_follower.mjs WS_URL SESSION_ID [slow] [ws]
// With "ws" it runs on the ws package's WebSocket (tests/js/node_modules), which the
// client can terminate, else on Node's own, which holds a silent socket it gave up.
import { createRequire } from "node:module";
import { BambooClient } from "../server/web/client/bamboo.js";

const [url, sessionId, mode, implementation] = process.argv.slice(2);
const WebSocket =
  implementation === "ws"
    ? createRequire(import.meta.url)("../tests/js/node_modules/ws").WebSocket
    : globalThis.WebSocket;
// "slow": a small queue and a callback that dawdles now and then, so that the client
// skips events past its full queue, pauses, and resumes for them.
const slow = mode === "slow";
const seen = []; // [seq, key]
const states = {}; // state name: times told
const endedWith = {}; // error name: count
const report = {
  clients: 0,
  reconnects: 0,
  resets: 0,
  skipped: 0,
  connectFailures: 0,
  mismatches: [],
};
let client = null;
let stopping = false;
let lastSeq = 0;
let epoch = null;

function deliver(item) {
  if (item.reset) report.resets += 1;
  else seen.push([item.seq, item.event.content]);
}

async function open() {
  for (;;) {
    try {
      const c = await BambooClient.connect(url, {
        sessionId,
        WebSocket,
        lastSeq,
        epoch: epoch ?? undefined,
        pingInterval: 1000,
        pingTimeout: 1000,
        openTimeout: 5000,
        ...(slow ? { maxQueuedEvents: 64 } : {}),
      });
      report.clients += 1;
      c.on("state", (change) => {
        states[change.state] = (states[change.state] ?? 0) + 1;
      });
      return c;
    } catch (error) {
      report.connectFailures += 1;
      endedWith[error.name] = (endedWith[error.name] ?? 0) + 1;
      if (stopping) return null;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

async function follow() {
  while (!stopping) {
    client = await open();
    if (client === null) return;
    try {
      for await (const item of client.events()) {
        deliver(item);
        if (slow && Math.random() < 0.01) await new Promise((r) => setTimeout(r, 500));
      }
    } catch (error) {
      endedWith[error.name] = (endedWith[error.name] ?? 0) + 1;
    }
    report.reconnects += client.reconnects;
    report.skipped += client.skippedEvents;
    const delivered = seen.length ? seen[seen.length - 1][0] : 0;
    if (client.lastSeq !== delivered) {
      report.mismatches.push(`lastSeq ${client.lastSeq}, delivered ${delivered}`);
    }
    lastSeq = client.lastSeq;
    epoch = client.epoch;
  }
}

const following = follow();
// Progress for the soak, which waits for the followers to catch up before it stops them,
// and then for each to say connected (it may be resuming as it caught up).
const progress = setInterval(() => {
  const delivered = seen.length ? seen[seen.length - 1][0] : 0;
  const connected = client?.connected ?? false;
  process.stdout.write(JSON.stringify({ progress: delivered, connected }) + "\n");
}, 500);
process.on("SIGTERM", async () => {
  stopping = true;
  clearInterval(progress);
  // A figure only: read once, at an instant the client may be resuming (the soak checks
  // the progress lines' `connected` instead, waiting for it once caught up).
  report.connectedAtStop = client?.connected ?? null;
  const started = Date.now();
  await client?.close();
  report.closeMs = Date.now() - started;
  await following;
  report.seen = seen;
  report.states = states;
  report.endedWith = endedWith;
  report.rssMiB = Math.round(process.memoryUsage().rss / 2 ** 20);
  process.stdout.write(JSON.stringify(report) + "\n", () => process.exit(0));
});
