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
 * @module bamboo/pages
 */

import { EpochChanged, SequenceError } from "./errors.js";

/** @typedef {import("./types.js").EventPage} EventPage */

/**
 * The log after `afterSeq` in pages of at most `page` events (none empty), each read
 * with `read` as it is iterated, up to the log's `lastSeq`, all of the log of `epoch`
 * (else of the first page's), each page's seqs increasing from above the seq it was
 * asked after (else {@link SequenceError}); see `BambooClient#eventPages`.
 * @param {(query: { afterSeq: number, limit: number }) => Promise<EventPage>} read
 * @param {{ afterSeq: number, page: number, epoch: string | null }} options
 * @returns {AsyncGenerator<EventPage, void, undefined>}
 */
export async function* readPages(read, { afterSeq, page, epoch }) {
  // An `events` reply is fenced by its connection's epoch, but two pages may come on
  // two connections: the second, after a reconnect, onto a session that replaced ours.
  let pinned = epoch ?? null;
  for (;;) {
    const got = await read({ afterSeq, limit: page });
    if (got.epoch !== null) {
      if (pinned === null) pinned = got.epoch;
      else if (got.epoch !== pinned) throw new EpochChanged(pinned, got.epoch, afterSeq);
    }
    const last = got.events.at(-1);
    if (last === undefined) return;
    checkMovesOn(got, afterSeq);
    yield got;
    if (last.seq >= got.lastSeq) return;
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
