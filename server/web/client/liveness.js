// @ts-check
/**
 * liveness.js: finds a connection that went silent without closing. A browser can send
 * no WebSocket Ping, and answers the server's itself, so a link that stops carrying
 * bytes with no FIN and no RST (a phone in a tunnel, a NAT that forgot it) may stay
 * "open" for minutes. {@link Liveness} watches one connection: once nothing has come on
 * it for `interval` ms it asks for a protocol `ping` (its id a string, that of no
 * request: its `pong` answers none), and once nothing at all has come for `timeout` ms
 * after that, plus the ping's time behind the page's own bytes (below), it calls the
 * connection dead. Any frame is a sign of life, so a busy connection is never
 * pinged. It keeps one timer, not one per frame: a frame only notes the time (but the
 * first after a ping, which starts the next interval of silence).
 *
 * The ping queues behind what the page sent before it, and the server answers nothing
 * while it reads a large frame: a 1 MiB publish over a 30 KB/s uplink takes 35 s to
 * cross, the link alive all along. So the wait for the answer grows by the bytes that
 * may still be ahead of the ping at `uplinkRate` (the client's `minUplinkRate`, bytes a
 * second): the page's sends taken as a queue that the uplink empties at that rate, but
 * never more than the requests sent on the connection and not answered yet (an answer
 * says its request, and all before it, crossed), or the socket's `bufferedAmount`,
 * when more (Chromium's stays 0 once the bytes are in the kernel's send buffer, which
 * on most links holds megabytes). Each send adds its length and reads the clock; a
 * frame heard costs nothing more. An uplink slower than `uplinkRate` is given up as
 * dead. A dead link is found within `interval` + `timeout` + B / `uplinkRate` of its
 * last frame, B being what may be ahead of the ping when it goes: with the defaults
 * (8 KiB/s) 128 s more for a 1 MiB frame sent just before the ping and not answered,
 * nothing more for an idle page, nor for one whose sends were all answered (a large
 * publish acked a moment before the link died, or a page that publishes faster than
 * `uplinkRate` for minutes: the queue alone grew by the difference, without end).
 *
 * A check may run late (the process busy, or not given the CPU, on a loaded machine),
 * and a timer that is due runs before the frames that came meanwhile are read (Node
 * runs timers, then I/O; so may a page): a check that finds the wait over gives the
 * page one more turn to read them (a 0 ms timer) before its verdict, so that a pong
 * that came in time and waits unread keeps the connection, however little late the
 * check ran. A check that runs well after it was due (a page frozen in the background,
 * or busy with a long task, may not have the frames yet) pings again and waits its
 * while more, once per silence, rather than give up a live connection. A wait longer
 * than a timer can hold (2^31 - 1 ms: one set longer fires at once) is made of several
 * timers.
 *
 * @module bamboo/liveness
 */

import { sendQuietly } from "./frames.js";

// The defaults: a silent connection is found within 35 s of its last frame, and an
// idle one costs a ping (and its pong) every 20 s, as the server's own keepalive does.
export const PING_INTERVAL = 20_000;
export const PING_TIMEOUT = 15_000;
// The slowest uplink (bytes a second) taken for alive: a mobile link at its worst
// carries more; at it a 1 MiB frame, the server's largest, takes 128 s to cross.
export const MIN_UPLINK_RATE = 8192;
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
 * @typedef {object} LivenessSettings
 * @property {number} interval ms of silence before a ping
 * @property {number} timeout ms of silence after the ping before the connection is
 *   dead, beyond the ping's time behind the page's own bytes
 * @property {number} uplinkRate bytes a second the uplink carries at least, while alive
 */

/**
 * Watch `ws` for silence as the settings say (`pingInterval` null: not at all).
 * @param {WebSocket} ws
 * @param {{ pingInterval: number | null, pingTimeout: number, minUplinkRate: number }} settings
 * @param {() => void} dead called once `ws` is found dead
 * @param {() => number} unanswered bytes of the requests sent on `ws` and not answered
 * @returns {Liveness | null}
 */
export function watchLiveness(ws, { pingInterval, pingTimeout, minUplinkRate }, dead, unanswered) {
  if (pingInterval === null) return null;
  const settings = {
    interval: pingInterval,
    timeout: pingTimeout,
    uplinkRate: minUplinkRate,
  };
  const probe = () => sendQuietly(ws, PING);
  return new Liveness(settings, probe, dead, () => ws.bufferedAmount ?? 0, unanswered);
}

export class Liveness {
  #interval;
  #timeout;
  #uplinkRate;
  #probe;
  #dead;
  #buffered;
  #unanswered;
  #heardAt = 0; // performance.now() at the last frame (or at the start)
  /** @type {number | null} performance.now() when the ping went, while it is unanswered */
  #probedAt = null;
  #wait = 0; // ms of silence after the ping before the connection is dead
  #probedAgain = false; // a late check pinged again in this silence
  #readFirst = false; // the wait is over: what came by then is read before the verdict
  /** @type {ReturnType<typeof setTimeout> | null} */
  #timer = null;
  #dueAt = 0; // performance.now() when the timer is due
  #queued = 0; // bytes sent that an uplink at its slowest may still hold, as of #queuedAt
  #queuedAt = 0;

  /**
   * @param {LivenessSettings} settings
   * @param {() => void} probe sends the ping
   * @param {() => void} dead the connection is dead: called once, after which it stops
   * @param {() => number} [buffered] bytes sent and not yet handed to the network
   * @param {() => number} [unanswered] bytes of the requests sent and not answered yet
   */
  constructor(
    { interval, timeout, uplinkRate },
    probe,
    dead,
    buffered = () => 0,
    unanswered = () => Infinity,
  ) {
    this.#interval = interval;
    this.#timeout = timeout;
    this.#uplinkRate = uplinkRate;
    this.#probe = probe;
    this.#dead = dead;
    this.#buffered = buffered;
    this.#unanswered = unanswered;
    this.#heardAt = performance.now();
    this.#queuedAt = this.#heardAt;
    this.#schedule(interval);
  }

  /** A frame came: the connection lives. */
  heard() {
    this.#heardAt = performance.now();
    if (this.#probedAt === null) return;
    // Answered: an idle connection is pinged every `interval`, whatever the timeout.
    this.#probedAt = null;
    this.#probedAgain = false;
    this.#readFirst = false;
    this.stop();
    this.#schedule(this.#interval);
  }

  /** The page sent `bytes` on the connection: a ping after them waits behind them.
   * @param {number} bytes */
  sent(bytes) {
    this.#queued = this.#queuedNow(performance.now()) + bytes;
  }

  /** Stop watching (the connection closed, or the client ended). */
  stop() {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** Bytes sent that an uplink at `uplinkRate` would still hold at `now`; from then on.
   * @param {number} now */
  #queuedNow(now) {
    const carried = ((now - this.#queuedAt) * this.#uplinkRate) / 1000;
    this.#queuedAt = now;
    return Math.max(0, this.#queued - carried);
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
    if (waited < this.#wait) return this.#schedule(this.#wait - waited);
    if (now - this.#dueAt >= LATE && !this.#probedAgain) {
      this.#probedAgain = true; // what came meanwhile is read before the next check
      return this.#ping(now);
    }
    if (!this.#readFirst) {
      // This timer may have run late, behind a busy loop or a process not given the
      // CPU, before the frames that came meanwhile: a verdict taken now gave up a live
      // link whose pong waited unread (a loaded machine, a check late by 300 ms).
      // A 0 ms timer set now runs after the sockets are read.
      this.#readFirst = true;
      return this.#schedule(0);
    }
    this.#dead();
  }

  /** @param {number} now */
  #ping(now) {
    this.#queued = this.#queuedNow(now);
    // What was answered crossed: the queue is bounded by what was not.
    const ahead = Math.max(Math.min(this.#queued, this.#unanswered()), this.#buffered());
    // Nothing ahead adds nothing, whatever the rate: a rate too small to divide by
    // (5e-324 / 1000 is 0) made 0 / 0, a NaN wait, and an idle link given up at once.
    this.#wait = this.#timeout + (ahead > 0 ? (ahead * 1000) / this.#uplinkRate : 0);
    this.#probedAt = now;
    this.#readFirst = false;
    this.#probe();
    this.#schedule(this.#wait);
  }
}
