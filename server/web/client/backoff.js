// @ts-check
/**
 * backoff.js: when a link tries again after its connection went. {@link Backoff}
 * counts the attempts since the last connection that held, and waits before each:
 * exponential backoff with full jitter, a wait that `close()` cuts short.
 *
 * @module bamboo/backoff
 */

// A connection that held less than this (ms) was no recovery: the backoff goes on growing
// and counting towards maxRetries instead of starting again from the first wait, so a
// server that welcomes then closes at once (or tokens that expire at once) is not hammered.
const STABLE_AFTER = 10_000;

export class Backoff {
  #initial;
  #max;
  #attempts = 0; // reconnect attempts since the last connection that held STABLE_AFTER
  #welcomedAt = 0; // performance.now() at the last welcome
  /** @type {(() => void) | null} ends the wait under way */
  #wake = null;

  /** @param {{ backoffInitial: number, backoffMax: number }} settings */
  constructor({ backoffInitial, backoffMax }) {
    this.#initial = backoffInitial;
    this.#max = backoffMax;
  }

  /** @returns {number} attempts since the last connection that held */
  get attempts() {
    return this.#attempts;
  }

  /** A connection was welcomed. */
  welcomed() {
    this.#welcomedAt = performance.now();
  }

  /** The connection in use went: one that held `STABLE_AFTER` starts the count again. */
  dropped() {
    if (performance.now() - this.#welcomedAt >= STABLE_AFTER) this.#attempts = 0;
  }

  /** Start the count again (a pause is no failure: its connection was fine). */
  reset() {
    this.#attempts = 0;
  }

  /** Wait before the next attempt, and count it. @returns {Promise<void>} */
  async next() {
    await this.sleep(this.#delay(this.#attempts));
    this.#attempts += 1;
  }

  /** Full jitter: uniform in [0, min(max, initial * 2**attempt)]; the first retry waits
   * at least half of it, so a closing server is not hammered. @param {number} attempt */
  #delay(attempt) {
    const ceiling = Math.min(this.#max, this.#initial * 2 ** attempt);
    const floor = attempt === 0 ? ceiling / 2 : 0;
    return floor + Math.random() * (ceiling - floor);
  }

  /** A wait that {@link Backoff#wake} cuts short. @param {number} ms @returns {Promise<void>} */
  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.wake(), ms);
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = null;
        resolve();
      };
    });
  }

  /** End the wait under way, if any (the client is closing). */
  wake() {
    this.#wake?.();
  }
}
