// @ts-check
/**
 * pending.js: the requests the client made and that await a reply, the book-keeping
 * behind exactly-once publishing, with no I/O. Request ids are handed out here in
 * increasing order; each request stays in the book, encoded once, until its reply
 * comes, so that after a reconnect {@link PendingRequests#resend} sends again, oldest
 * first, every one the new connection has not had. A publish whose caller stopped
 * waiting (its `requestTimeout` passed) stays until answered: it may be stored already,
 * and its seq must be accounted for by the sequence check.
 *
 * @module bamboo/pending
 */

import { RequestTimeout } from "./errors.js";
import { frameBytes } from "./frames.js";

/**
 * @typedef {object} Pending a request waiting for its reply; resent after a reconnect
 * @property {string} data the request, encoded
 * @property {number} bytes its length in UTF-8, as it goes on the wire
 * @property {string} type its frame type
 * @property {(value: any) => void} resolve
 * @property {(error: Error) => void} reject
 * @property {boolean} isPublish
 * @property {number} sentOn the connection generation it was last sent on
 */

// A lone surrogate as JSON.stringify writes it (\udXXX, lowercase), not behind a backslash
// of its own: a string that is no Unicode text, which no UTF-8 can carry.
const LONE_SURROGATE = /(?<!\\)(?:\\\\)*\\ud[89a-f][0-9a-f]{2}/;

export class PendingRequests {
  #nextId = 1;
  /** @type {Map<number, Pending>} by id, in the order they were made */
  #book = new Map();

  /**
   * Book a request: `frame` gets the next id, and is encoded now, so that a resend
   * carries exactly what was asked, whatever the caller does with its objects afterwards.
   * @param {Record<string, unknown>} frame @param {boolean} isPublish
   * @returns {{ id: number, pending: Pending, reply: Promise<any> }}
   */
  add(frame, isPublish) {
    const id = this.#nextId++;
    frame.id = id;
    const data = JSON.stringify(frame);
    if (LONE_SURROGATE.test(data)) {
      // Not UTF-8: the server could only refuse the frame whole, with no id to answer.
      throw new TypeError(`${frame.type}: a string holds a lone surrogate, not valid UTF-8`);
    }
    /** @type {Pending} */
    const pending = {
      data,
      bytes: frameBytes(data),
      type: String(frame.type),
      resolve: () => {},
      reject: () => {},
      isPublish,
      sentOn: -1,
    };
    const reply = new Promise((resolve, reject) => {
      pending.resolve = resolve;
      pending.reject = reject;
    });
    reply.catch(() => {}); // a reply nobody awaits any more must not be "unhandled"
    this.#book.set(id, pending);
    return { id, pending, reply };
  }

  /** The request waiting under `id`, if any. @param {unknown} id */
  get(id) {
    return typeof id === "number" ? this.#book.get(id) : undefined;
  }

  /**
   * Settle the request waiting under `id` with its reply, and take it out of the book;
   * returns it, or undefined when none waits under that id.
   * @param {unknown} id @param {any} result @param {Error} [error]
   */
  answer(id, result, error) {
    const pending = this.get(id);
    if (pending === undefined) return undefined; // a reply to no waiting request
    this.#book.delete(/** @type {number} */ (id));
    if (error) pending.reject(error);
    else pending.resolve(result);
    return pending;
  }

  /** Take request `id` out of the book unanswered; whether it was there. @param {number} id */
  forget(id) {
    return this.#book.delete(id);
  }

  /** Publishes not answered yet: seqs of ours that may fill a hole. */
  unansweredPublishes() {
    let count = 0;
    for (const pending of this.#book.values()) if (pending.isPublish) count += 1;
    return count;
  }

  /** Bytes of the requests sent on connection `generation` and not yet answered: what
   * may still be ahead of what it sends next. @param {number} generation */
  bytesInFlight(generation) {
    let bytes = 0;
    for (const pending of this.#book.values()) {
      if (pending.sentOn === generation) bytes += pending.bytes;
    }
    return bytes;
  }

  /** Requests sent on connection `generation` and not yet answered. @param {number} generation */
  inFlight(generation) {
    let count = 0;
    for (const pending of this.#book.values()) {
      if (pending.sentOn === generation) count += 1;
    }
    return count;
  }

  /**
   * Send every request not yet sent on connection `generation`, oldest first; returns
   * how many of them had been sent on an earlier one.
   * @param {number} generation @param {(pending: Pending) => void} send
   */
  resend(generation, send) {
    let again = 0;
    for (const pending of this.#book.values()) {
      if (pending.sentOn === generation) continue;
      if (pending.sentOn >= 0) again += 1;
      pending.sentOn = generation;
      send(pending);
    }
    return again;
  }

  /** Fail every request in the book with `failure`, and empty it. @param {Error} failure */
  rejectAll(failure) {
    for (const pending of this.#book.values()) pending.reject(failure);
    this.#book.clear();
  }
}

/**
 * `reply`, or a {@link RequestTimeout} once `timeout` ms have passed without it; then
 * `expired` runs first (to drop the request, unless a publish).
 * @param {Pending} pending @param {Promise<any>} reply @param {number} timeout
 * @param {() => void} expired
 * @returns {Promise<any>}
 */
export function replyWithin(pending, reply, timeout, expired) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      expired();
      reject(new RequestTimeout(`no reply to ${pending.type} in ${timeout} ms`));
    }, timeout);
    reply.then(
      (value) => (clearTimeout(timer), resolve(value)),
      (error) => (clearTimeout(timer), reject(error)),
    );
  });
}
