// @ts-check
/**
 * pages.js: reading a session's log page by page, every page of one log.
 *
 * An `events` reply is fenced by its connection's epoch, so one page is always of one
 * log. Two pages of a read are not: a client that reconnects between them may come back
 * to another log under the same session id (the session deleted and created again, or
 * expired and replaced), whose seqs start from 1 again. Joined to the pages already
 * read, its pages would make a log that never existed. So a read pins an epoch (the
 * caller's, or the one its client was attached to when it was called, which its
 * `afterSeq` counts in; else its first page's) and stops with {@link EpochChanged} at a
 * page of another one, the first page included: a reconnect may come before it too. It
 * does not start again on the new log by itself: its caller holds what the old pages
 * said, and decides.
 *
 * Each page must also move on: its seqs increase, from above the seq it was asked after.
 * A page that does not (no server of this project sends one) is a {@link SequenceError},
 * rather than a read that asks for the same page for ever, or joins an event twice.
 *
 * A read ends at a seq fixed when it starts: the caller's `untilSeq`, else the log's
 * `lastSeq` as its first page reports it. Ending only at a page that reaches its own
 * `lastSeq` would chase a log that grows: a reader slower than the session's publisher
 * would read for as long as the session runs, and never return.
 *
 * @module bamboo/pages
 */

import { EpochChanged, SequenceError } from "./errors.js";

/** @typedef {import("./types.js").EventPage} EventPage */

/**
 * The log after `afterSeq` in pages of at most `page` events (none empty), each read
 * with `read` as it is iterated, up to `untilSeq` (null: the log's `lastSeq` as the
 * first page reports it), or sooner at the log's end (a page that reaches its own
 * `lastSeq`, or an empty one), never an event past it, all of the log of `epoch` (else
 * of the first page's), each page's seqs increasing from above the seq it was asked
 * after (else {@link SequenceError}); see `BambooClient#eventPages`.
 * @param {(query: { afterSeq: number, limit: number }) => Promise<EventPage>} read
 * @param {{ afterSeq: number, page: number, epoch: string | null, untilSeq: number | null }} options
 * @returns {AsyncGenerator<EventPage, void, undefined>}
 */
export async function* readPages(read, { afterSeq, page, epoch, untilSeq }) {
  // An `events` reply is fenced by its connection's epoch, but two pages may come on
  // two connections: the second, after a reconnect, onto a session that replaced ours.
  let pinned = epoch ?? null;
  let end = untilSeq ?? null;
  while (end === null || afterSeq < end) {
    // Seqs have no gaps, so asking for no more than the end leaves nothing past it to
    // read and drop; the trim below is for a server that sent more all the same.
    const limit = end === null ? page : Math.min(page, end - afterSeq);
    const got = await read({ afterSeq, limit });
    if (got.epoch !== null) {
      if (pinned === null) pinned = got.epoch;
      else if (got.epoch !== pinned) throw new EpochChanged(pinned, got.epoch, afterSeq);
    }
    if (got.events.length === 0) return;
    checkMovesOn(got, afterSeq);
    if (end === null) end = got.lastSeq;
    const endSeq = end;
    const kept = got.events.filter((event) => event.seq <= endSeq);
    const pastTheEnd = kept.length < got.events.length;
    const last = kept.at(-1);
    if (last !== undefined) yield pastTheEnd ? { ...got, events: kept } : got;
    if (last === undefined || pastTheEnd || last.seq >= Math.min(end, got.lastSeq)) return;
    afterSeq = last.seq;
  }
}

/**
 * Throws {@link SequenceError} unless the page's seqs increase, from above `afterSeq`:
 * else a page that does not move on would be asked for again and again, for ever.
 * @param {EventPage} got @param {number} afterSeq
 */
function checkMovesOn(got, afterSeq) {
  let previous = afterSeq;
  for (const { seq } of got.events) {
    if (!(seq > previous)) {
      const problem = `an events page asked after seq ${afterSeq} holds seq ${seq} after`;
      throw new SequenceError(
        `${problem} ${previous}: its seqs must increase from above ${afterSeq}`,
        previous + 1,
        seq,
      );
    }
    previous = seq;
  }
}
