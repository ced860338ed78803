// @ts-check
/**
 * missed.js: the events a session page missed, read over HTTP, and what the page says
 * when it cannot show them. Should the session end while the page is behind (the
 * client ends with `ConnectionLost`: events after its `afterSeq` never came), only the
 * HTTP API has the rest: readMissed reads them, with the epoch of the log each page
 * was read from, and the session's before and after, which say whether they are of
 * the log the stream had. The notices say that
 * events may be missing (the read failed; its Reload reads them again) or that the
 * session was replaced meanwhile (its Reload opens the session now under this id).
 * session.js puts them in the page. readEarlier reads the events the tail's "Show
 * earlier" asks for.
 */

import { getJson } from "./api.js";
import { MAX_CHARS, shownChars } from "./blocks.js";
import { h } from "./dom.js";
import { MAX_BLOCKS, MAX_TAIL_CHARS } from "./tail.js";

const CATCH_UP_PAGE = 1000; // events per HTTP read when the stream ended short
// Events read over HTTP when the stream ended short: no more than the tail shows (each
// event is at most one block, of at most shownChars characters) beside two lines, the
// one before them that says which were left out and the one after them that says the
// session closed, so that neither that line nor the oldest event read is pushed out of
// the tail. In characters, room is left for those lines and for the text block the
// first events read may grow (when no line comes before them).
const CATCH_UP_MAX = MAX_BLOCKS - 2;
const LINE_CHARS = 1000; // at most, of a line (its close reason is at most 123 bytes)
const CATCH_UP_CHARS = MAX_TAIL_CHARS - MAX_CHARS - 2 * LINE_CHARS;

/**
 * The events after `after` of the session at `path` (its `/api/v1/sessions/…`), over
 * HTTP (`GET …/events?after_seq=`, page after page, up to the `last_seq` of the first
 * answer, at most CATCH_UP_MAX of the newest, while `alive()`), and the session's
 * metadata, read before the events and again after them. Each page of events names
 * the epoch of the log it was read from: another than the stream's (`epoch`), and the
 * session was replaced, as the metadata's epoch says too (from a server whose pages
 * name none, that check alone: epochs do not come back, so the same epoch before and
 * after as the stream's says that every event read is of the stream's log). Then the
 * events are not returned, and the metadata returned says by which it was replaced.
 * Of the events read, the newest that the tail shows in CATCH_UP_CHARS are returned.
 * `leftOut`: the last seq of the events not returned (null when none).
 * @param {string} path @param {number} after @param {string} epoch
 * @param {() => boolean} alive
 * @returns {Promise<{ metadata: any, events: Array<{ seq: number, ts: string, event: any }>,
 *   leftOut: number | null }>}
 */
export async function readMissed(path, after, epoch, alive) {
  const options = { alive };
  const before = await getJson(path, { limit: 1 }, options);
  if (before.metadata.epoch !== epoch)
    return { metadata: before.metadata, events: [], leftOut: null };
  /** @type {Array<{ seq: number, ts: string, event: any }>} */
  const events = [];
  let leftOut = null;
  let cursor = after; // every event up to it is read
  for (let last = null; alive() && (last === null || cursor < last);) {
    const page = await getJson(
      `${path}/events`,
      { after_seq: cursor, limit: CATCH_UP_PAGE },
      options,
    );
    if (typeof page.epoch === "string" && page.epoch !== epoch) {
      const now = await getJson(path, { limit: 1 }, options); // the session that replaced it
      return { metadata: now.metadata, events: [], leftOut: null };
    }
    if (last === null) {
      last = /** @type {number} */ (page.last_seq);
      if (last - after > CATCH_UP_MAX) {
        cursor = leftOut = last - CATCH_UP_MAX;
        continue;
      }
    }
    const from = cursor;
    for (const item of page.events) {
      if (item.seq > cursor) events.push(item);
      cursor = Math.max(cursor, item.seq);
    }
    // A page with no event after the cursor, short of `last`, would be asked for
    // again and again (or, empty, end the read as if every event had come).
    if (cursor === from && cursor < last)
      throw new Error(`the server answered no events after #${cursor} of ${last}`);
  }
  let chars = 0;
  let kept = events.length;
  while (kept > 0 && chars + shownChars(events[kept - 1]) <= CATCH_UP_CHARS)
    chars += shownChars(events[--kept]);
  if (kept > 0) leftOut = events.splice(0, kept)[kept - 1].seq;
  const end = await getJson(path, { limit: 1 }, options);
  return {
    metadata: end.metadata,
    events: end.metadata.epoch === epoch ? events : [],
    leftOut,
  };
}

/**
 * The events after `after` up to `upTo` of the session at `path`, over HTTP, page
 * after page (a page may hold fewer than asked: the server bounds its bytes), of the
 * log of `epoch`: a page of another says the session was replaced, and its earlier
 * events went with its log (an error, which "Show earlier" shows).
 * @param {string} path @param {number} after @param {number} upTo @param {string} epoch
 * @param {() => boolean} alive
 * @returns {Promise<Array<{ seq: number, ts: string, event: any }>>}
 */
export async function readEarlier(path, after, upTo, epoch, alive) {
  /** @type {Array<{ seq: number, ts: string, event: any }>} */
  const events = [];
  for (let cursor = after, last = upTo; alive() && cursor < last;) {
    const page = await getJson(
      `${path}/events`,
      { after_seq: cursor, limit: last - cursor },
      { alive },
    );
    if (typeof page.epoch === "string" && page.epoch !== epoch)
      throw new Error("the session was replaced: they went with its log");
    last = Math.min(upTo, page.last_seq);
    const from = cursor;
    for (const item of page.events) {
      if (item.seq > cursor && item.seq <= upTo) events.push(item);
      cursor = Math.max(cursor, item.seq);
    }
    if (cursor === from && cursor < last)
      throw new Error(`the server answered no events after #${cursor} of ${last}`);
  }
  return events;
}

/**
 * The notice that events after `after` may be missing (a read of them failed, `why`),
 * with a Reload that calls `retry`. Not a refusal: the session ended.
 * @param {number} after @param {string} why @param {() => Promise<void>} retry
 */
export function missingNotice(after, why, retry) {
  const reload = h("button", { type: "button", id: "reload" }, "Reload");
  reload.addEventListener("click", () => {
    reload.setAttribute("disabled", "");
    void retry();
  });
  return h(
    "p",
    { id: "missing", class: "notice notice-warning", role: "status" },
    `The session ended while this page was behind: events after #${after} may be` +
      ` missing here, as reading them failed (${why}).`,
    reload,
  );
}

/**
 * What the tail says of a resume that was refused (the client's `Reset`): another
 * epoch is another log under the session's id (the session deleted and created again,
 * or expired and replaced), whose events from `lastSeq` on follow; the same epoch, that
 * the events the page missed are no longer kept.
 * @param {{ epoch: string, lastSeq: number, previousEpoch: string | null,
 *   previousLastSeq: number }} reset
 */
export function resetText(reset) {
  if (wasReplaced(reset))
    return (
      `The session was replaced: events after #${reset.previousLastSeq} of this one are` +
      ` gone, and what follows is the log of the session now under this id, after its` +
      ` event #${reset.lastSeq}.`
    );
  if (reset.lastSeq <= reset.previousLastSeq)
    return `The session's log ends at #${reset.lastSeq}, not #${reset.previousLastSeq}; following live events.`;
  return `Events ${reset.previousLastSeq + 1}–${reset.lastSeq} are no longer kept; following live events.`;
}

/**
 * Whether a refused resume found another log under the session's id.
 * @param {{ epoch: string, previousEpoch: string | null }} reset
 */
export function wasReplaced(reset) {
  return reset.previousEpoch !== null && reset.previousEpoch !== reset.epoch;
}

/**
 * The notice that the session was replaced while the page was behind, its events after
 * `after` gone with its log, with a Reload that opens the session now under this id.
 * @param {number} after
 */
export function replacedNotice(after) {
  return h(
    "p",
    { id: "replaced", class: "notice notice-warning", role: "status" },
    "This session was replaced while this page was behind: it was deleted and created" +
      " again under the same id (or its log was reset). What this page shows is the" +
      ` earlier session's, up to event #${after}; the events after it are gone with` +
      " it. Reload to see the session now under this id.",
    h("button", { type: "button", id: "reload", onclick: () => location.reload() }, "Reload"),
  );
}

/**
 * The newest `count` events of a session that is over (it cannot be attached to), as
 * storage keeps them, in `tail`: read over HTTP with the epoch checked (readMissed),
 * the tail's first line saying which older ones are not shown, with its "Show earlier"
 * (as a live tail's). A failed read is a line. Resolves to the read's error, or null.
 * @param {import("./tail.js").Tail} tail @param {string} path @param {any} metadata
 * @param {number} count @param {() => boolean} alive
 * @returns {Promise<unknown>}
 */
export async function showStoredTail(tail, path, metadata, count, alive) {
  const after = Math.max(0, metadata.last_seq - count);
  try {
    const read = await readMissed(path, after, metadata.epoch, alive);
    if (!alive()) return null;
    if (read.metadata.epoch !== metadata.epoch)
      tail.note("The session was replaced while this page read it.");
    else {
      const notShown = read.leftOut ?? after; // (more than `after` when too long to show)
      if (read.events.length > 0) tail.startAfter(notShown);
      for (const item of read.events) tail.add(item);
    }
    return null;
  } catch (error) {
    if (alive()) tail.note(`The session's events could not be read (${String(error)}).`);
    return error;
  }
}
