// @ts-check
/**
 * backoff.js: when a link tries again after its connection went. {@link Backoff}
 * counts the attempts since the last connection that recovered, and waits before each:
 * exponential backoff with full jitter, a wait that `close()` cuts short.
 *
 * A welcomed connection recovered when it did useful work (an event new to the client,
 * or an ack of one of its publishes, came on it) or held `STABLE_AFTER`, as in the
 * Python client (protocol/client/reconnect.py, `recovered`). Any other was a failed
 * attempt, however it ended: the backoff goes on growing and counting towards
 * maxRetries instead of starting again from the first wait, so a server that welcomes
 * then closes at once (or tokens that expire at once) is not hammered, while a
 * connection cut after serving events is resumed at once.
 *
 * @module bamboo/backoff
 */

// A welcomed connection that held this long (ms) recovered, even with nothing new on it.
const STABLE_AFTER = 10_000;

export class Backoff {
  #initial;
  #max;
  #attempts = 0; // reconnect attempts since the last connection that recovered
  #welcomedAt = 0; // performance.now() at the last welcome
  #progressAt = 0; // the client's progress (ClientState#progress) at the last welcome
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

  /** A connection was welcomed. @param {number} progress the client's, then */
  welcomed(progress) {
    this.#welcomedAt = performance.now();
    this.#progressAt = progress;
  }

  /** The connection in use went: one that recovered starts the count again.
   * @param {number} progress the client's, now */
  dropped(progress) {
    const held = performance.now() - this.#welcomedAt >= STABLE_AFTER;
    if (progress > this.#progressAt || held) this.#attempts = 0;
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
