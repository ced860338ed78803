// @ts-check
/**
 * sequence.js: the check that the client sees every seq of the session's log once, in
 * order, as the Python client's `SequenceChecker` does (docs/protocol.md, "Checking for
 * gaps"). Pure book-keeping, no I/O: fed the seqs of `event` frames and of the client's
 * own acks, it throws {@link SequenceError} on a duplicate or a gap, and says where a
 * new connection resumes.
 *
 * @module bamboo/sequence
 */

import { SequenceError } from "./errors.js";

/**
 * Checks that seqs arrive with no gap and no duplicate, as the Python client's
 * `SequenceChecker` does (docs/protocol.md, "Checking for gaps"). `contiguous`: every
 * seq up to here was seen; `above`: seqs seen beyond it; `lastEvent`: the last event
 * frame's seq (or where this connection's events start); `echoes`: our own seqs beyond
 * where this connection resumed, which it sends back as events. A hole below the last
 * event is fine while an unanswered publish of ours could fill it; a hole above it (an
 * `ack` of ours that overtook other peers' events) is fine: those events are on their way.
 */
export class SequenceCheck {
  /** @param {number} lastSeq */
  constructor(lastSeq) {
    this.contiguous = lastSeq;
    this.highest = lastSeq;
    this.lastEvent = lastSeq;
    /** @type {Set<number>} */
    this.above = new Set();
    /** @type {Set<number>} */
    this.echoes = new Set();
  }

  /** The seq to resume after: every seq up to it was seen (never an ack of ours that
   * other peers' events have not caught up with). */
  get resumePoint() {
    return Math.max(this.contiguous, this.lastEvent);
  }

  /** A new connection resumes: the seq it asks to resume after. Our own seqs beyond it
   * come back as events (echoes), not delivered again. */
  resume() {
    const point = this.resumePoint;
    this.lastEvent = point;
    this.echoes = new Set([...this.above].filter((seq) => seq > point));
    return point;
  }

  /** Seqs below the last event that were not seen. */
  get holes() {
    if (this.lastEvent <= this.contiguous) return 0;
    let seen = 0;
    for (const seq of this.above) if (seq < this.lastEvent) seen += 1;
    return this.lastEvent - this.contiguous - 1 - seen;
  }

  /**
   * An event frame carried `seq`: whether to deliver it (not an echo of our own).
   * @param {number} seq @param {number} unanswered our publishes still unanswered
   */
  event(seq, unanswered) {
    if (seq <= this.lastEvent) {
      const seen = seq <= this.contiguous || this.above.has(seq);
      const problem = seen ? "duplicate" : `out of order (after ${this.lastEvent}):`;
      throw new SequenceError(`${problem} event seq ${seq}`, this.lastEvent + 1, seq);
    }
    if (this.echoes.delete(seq)) {
      this.lastEvent = seq;
      this.check(unanswered);
      return false;
    }
    this.see(seq, "event");
    this.check(unanswered);
    return true;
  }

  /** @param {number} seq @param {"event" | "ack"} what */
  see(seq, what) {
    if (seq <= this.contiguous || this.above.has(seq)) {
      throw new SequenceError(
        `duplicate ${what} seq ${seq} (already seen through ${this.highest})`,
        this.contiguous + 1,
        seq,
      );
    }
    if (seq === this.contiguous + 1) {
      this.contiguous = seq;
      while (this.above.delete(this.contiguous + 1)) this.contiguous += 1;
    } else {
      this.above.add(seq);
    }
    this.highest = Math.max(this.highest, seq);
    if (what === "event") this.lastEvent = Math.max(this.lastEvent, seq);
  }

  /** @param {number} seq */
  isHole(seq) {
    return this.contiguous < seq && seq < this.lastEvent && !this.above.has(seq);
  }

  /** A hole that none of our unanswered publishes can fill is a gap. @param {number} unanswered */
  check(unanswered) {
    if (this.holes <= unanswered) return;
    let missing = this.contiguous + 1;
    while (this.above.has(missing)) missing += 1;
    throw new SequenceError(
      `gap: seq ${missing} never arrived (seen through ${this.lastEvent})`,
      missing,
      this.lastEvent,
    );
  }
}
