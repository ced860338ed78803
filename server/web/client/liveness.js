// @ts-check
/**
 * liveness.js: finds a connection that went silent without closing. A browser can send
 * no WebSocket Ping, and answers the server's itself, so a link that stops carrying
 * bytes with no FIN and no RST (a phone in a tunnel, a NAT that forgot it) may stay
 * "open" for minutes. {@link Liveness} watches one connection: once nothing has come on
 * it for `interval` ms it asks for a protocol `ping` (its id a string, that of no
 * request: its `pong` answers none), and once nothing at all has come for `timeout` ms after that it calls
 * the connection dead. Any frame is a sign of life, so a busy connection is never
 * pinged. It keeps one timer, not one per frame: a frame only notes the time (but the
 * first after a ping, which starts the next interval of silence).
 *
 * A check that runs well after it was due (a page frozen in the background, or busy
 * with a long task) may run before frames that came meanwhile are read: it pings
 * again and waits `timeout` more, once per silence, rather than give up a live
 * connection. A wait longer than a timer can hold (2^31 - 1 ms: one set longer fires
 * at once) is made of several timers.
 *
 * @module bamboo/liveness
 */

import { sendQuietly } from "./frames.js";

// The defaults: a silent connection is found within 35 s of its last frame, and an
// idle one costs a ping (and its pong) every 20 s, as the server's own keepalive does.
export const PING_INTERVAL = 20_000;
export const PING_TIMEOUT = 15_000;
// The probe's id is a string, where the client's requests have numbers: its pong answers
// no request, on whichever connection it comes. It has one all the same, as the wire
// contract (PROTOCOL.md) promises a reply only to a request with an id.
const PING_ID = "liveness";
// keepalive: the server answers it, but it is not the session's activity, so a page
// left open on a quiet session lets it go idle and expire.
const PING = JSON.stringify({ type: "ping", id: PING_ID, keepalive: true });
// The longest delay setTimeout takes as given (ms): a longer one fires at once.
const LONGEST_TIMER = 2 ** 31 - 1;
// A check this late (ms) ran after the page slept or was busy: frames may wait unread.
const LATE = 1000;

/**
 * Watch `ws` for silence as the settings say (`pingInterval` null: not at all).
 * @param {WebSocket} ws
 * @param {{ pingInterval: number | null, pingTimeout: number }} settings
 * @param {() => void} dead called once `ws` is found dead
 * @returns {Liveness | null}
 */
export function watchLiveness(ws, { pingInterval, pingTimeout }, dead) {
  if (pingInterval === null) return null;
  return new Liveness(pingInterval, pingTimeout, () => sendQuietly(ws, PING), dead);
}

export class Liveness {
  #interval;
  #timeout;
  #probe;
  #dead;
  #heardAt = 0; // performance.now() at the last frame (or at the start)
  /** @type {number | null} performance.now() when the ping went, while it is unanswered */
  #probedAt = null;
  #probedAgain = false; // a late check pinged again in this silence
  /** @type {ReturnType<typeof setTimeout> | null} */
  #timer = null;
  #dueAt = 0; // performance.now() when the timer is due

  /**
   * @param {number} interval ms of silence before a ping
   * @param {number} timeout ms of silence after the ping before the connection is dead
   * @param {() => void} probe sends the ping
   * @param {() => void} dead the connection is dead: called once, after which it stops
   */
  constructor(interval, timeout, probe, dead) {
    this.#interval = interval;
    this.#timeout = timeout;
    this.#probe = probe;
    this.#dead = dead;
    this.#heardAt = performance.now();
    this.#schedule(interval);
  }

  /** A frame came: the connection lives. */
  heard() {
    this.#heardAt = performance.now();
    if (this.#probedAt === null) return;
    // Answered: an idle connection is pinged every `interval`, whatever the timeout.
    this.#probedAt = null;
    this.#probedAgain = false;
    this.stop();
    this.#schedule(this.#interval);
  }

  /** Stop watching (the connection closed, or the client ended). */
  stop() {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** @param {number} ms */
  #schedule(ms) {
    const delay = Math.min(Math.max(0, ms), LONGEST_TIMER); // #check sets the rest
    this.#dueAt = performance.now() + delay;
    this.#timer = setTimeout(() => this.#check(), delay);
  }

  #check() {
    this.#timer = null;
    const now = performance.now();
    const probedAt = this.#probedAt;
    if (probedAt === null) {
      const quiet = now - this.#heardAt;
      if (quiet < this.#interval) return this.#schedule(this.#interval - quiet);
      return this.#ping(now);
    }
    // Nothing came since the ping (`heard` would have cleared it).
    const waited = now - probedAt;
    if (waited < this.#timeout) return this.#schedule(this.#timeout - waited);
    if (now - this.#dueAt >= LATE && !this.#probedAgain) {
      this.#probedAgain = true; // what came meanwhile is read before the next check
      return this.#ping(now);
    }
    this.#dead();
  }

  /** @param {number} now */
  #ping(now) {
    this.#probedAt = now;
    this.#probe();
    this.#schedule(this.#timeout);
  }
}
