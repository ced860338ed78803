// The browser soak's JavaScript client page (bench/browser_soak.py): an application's
// page, of another origin than the server's, that imports the client from the server
// and follows each session named in its query from seq 0 (subscribe), checking every
// event as it comes: the next seq, no duplicate, no gap. It keeps no list of events
// (memory must not grow with them): a count, the last seq, and a running FNV-1a digest
// of each event's seq and marker, which the soak computes alike from the log. Every
// `recycle` ms or so it closes its client and opens another from the closed one's
// lastSeq and epoch (the README's resume from a saved position).
//
// ?server=http://127.0.0.1:PORT&sessions=a,b&recycle=MS
const query = new URLSearchParams(location.search);
const server = query.get("server");
const sessions = (query.get("sessions") ?? "").split(",").filter(Boolean);
const recycle = Number(query.get("recycle") ?? 120000);
const { BambooClient } = await import(`${server}/client/bamboo.js`);

const FNV_OFFSET = 2166136261;
/** @param {number} hash @param {string} text */
function fnv(hash, text) {
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 16777619) >>> 0;
  }
  return hash;
}

/** The event's marker: bench/browser_soak_agents.py's `marker`, alike. */
function marker(event) {
  const kind = event.type;
  if (kind === "token" || kind === "thinking") return `${kind}:${event.content}`;
  if (kind === "tool_start" || kind === "tool_complete" || kind === "tool_error")
    return `${kind}:${event.tool_call_id}`;
  if (kind === "message") return `message:${String(event.message?.content ?? "").slice(0, 80)}`;
  return String(kind);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const count = (table, name) => (table[name] = (table[name] ?? 0) + 1);

window.followers = {};
for (const sessionId of sessions) {
  const f = {
    count: 0,
    last: 0,
    digest: FNV_OFFSET,
    duplicates: 0,
    gaps: 0,
    firstProblem: null,
    resets: 0,
    clients: 0,
    reconnects: 0,
    skipped: 0,
    ended: {},
    states: {},
    connectFailures: 0,
    mismatches: 0,
  };
  window.followers[sessionId] = f;
  void follow(sessionId, f);
}

async function follow(sessionId, f) {
  let lastSeq = 0;
  let epoch;
  for (;;) {
    let client;
    try {
      client = await BambooClient.connect(server, { sessionId, lastSeq, epoch });
    } catch (error) {
      f.connectFailures += 1;
      count(f.ended, error.name);
      await sleep(500);
      continue;
    }
    f.clients += 1;
    const off = client.on("state", (change) => count(f.states, change.state));
    const timer = setTimeout(() => void client.close(), recycle * (0.5 + Math.random()));
    try {
      for await (const item of client.events()) {
        if ("reset" in item) {
          f.resets += 1;
          continue;
        }
        if (item.seq <= f.last) f.duplicates += 1;
        else if (item.seq !== f.last + 1) f.gaps += 1;
        if (item.seq !== f.last + 1 && f.firstProblem === null)
          f.firstProblem = `#${item.seq} after #${f.last}`;
        f.last = Math.max(f.last, item.seq);
        f.count += 1;
        f.digest = fnv(f.digest, `${item.seq}|${marker(item.event)}|`);
      }
      count(f.ended, "end");
    } catch (error) {
      count(f.ended, error.name);
    }
    clearTimeout(timer);
    off();
    f.reconnects += client.reconnects;
    f.skipped += client.skippedEvents;
    if (client.lastSeq !== f.last) f.mismatches += 1;
    lastSeq = client.lastSeq;
    epoch = client.epoch ?? undefined;
  }
}
