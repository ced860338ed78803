// @ts-check
/**
 * link.js: keeps a client attached to its session across drops. It opens one
 * connection at a time (handshake.js), hands every frame of the one in use to the
 * client's state (state.js), and sends requests on it: at once when it is ready, else
 * with every unanswered one, oldest first, once the next connection is welcomed.
 *
 * When the connection closes with a code worth a resume ({@link closeError}), the link
 * reconnects with exponential backoff and full jitter (backoff.js: from its first wait
 * again after a connection that did useful work), until welcomed,
 * refused, given up (`maxRetries`) or closed; anything else ends the client
 * ({@link Link#finish}), each change of state told as changes.js does. It
 * also pauses on purpose: a connection that skipped events past the full events queue
 * is closed as soon as no reply is awaited on it, and the link resumes once `events()`
 * has read the queue down to half (or at once when a request needs a connection).
 * A connection on which nothing comes for `pingInterval`, then nothing either for
 * `pingTimeout` after a `ping` (liveness.js, which also waits for what the link sent
 * before the ping to cross), is dead though not closed: the link lets it go at once
 * and resumes on another, as after any drop.
 *
 * @module bamboo/link
 */

import { Backoff } from "./backoff.js";
import { ConnectionStates } from "./changes.js";
import {
  ClientError,
  Retry,
  SessionEnded,
  asClientError,
  closeError,
  closeOf,
  closeSeen,
} from "./errors.js";
import { decodeFrame, frameBytes, sendQuietly } from "./frames.js";
import { dial, eventsAfter, tokenNow } from "./handshake.js";
import { watchLiveness } from "./liveness.js";
import { replyWithin } from "./pending.js";
import { CLOSE_BOUND, letGo } from "./sockets.js";
import { ClientState } from "./state.js";
import { streamUrl } from "./urls.js";

/**
 * @typedef {import("./types.js").Settings} Settings
 * @typedef {import("./types.js").ConnectionState} ConnectionState
 * @typedef {import("./errors.js").CloseSeen} CloseSeen
 * @typedef {import("./client.js").BambooClient} BambooClient
 * @typedef {import("./pending.js").Pending} Pending
 */

// The close of a connection that skipped events past the full queue: the client's own,
// which the `"reconnecting"` (or, with reconnect off, `"closed"`) state change names.
const PAUSE_CLOSE = Object.freeze({ code: 1000, reason: "events queue full" });
// What the `"reconnecting"` state change says of a connection given up as silent: no
// close came (nor may for minutes), as after a network failure.
const SILENT = Object.freeze({ code: null, reason: "connection silent" });

export class Link {
  #client;
  #baseUrl;
  #WebSocket;
  #options;
  #state;
  /** @type {WebSocket | null} the connection in use, once welcomed */
  #ws = null;
  /** @type {WebSocket | null} a connection being opened */
  #opening = null;
  #generation = 0;
  /** @type {import("./liveness.js").Liveness | null} watching the connection in use */
  #liveness = null;
  #ready = false; // connected, and every earlier request resent
  #paused = false; // disconnected on purpose until the queue is read down (or a request)
  #backoff;
  #states;

  /**
   * @param {BambooClient} client the public face: its events are dispatched on it, and
   *   its counters kept @param {string} baseUrl @param {typeof WebSocket} WebSocketClass
   * @param {Settings} options
   */
  constructor(client, baseUrl, WebSocketClass, options) {
    this.#client = client;
    this.#baseUrl = baseUrl;
    this.#WebSocket = WebSocketClass;
    this.#options = options;
    this.#backoff = new Backoff(options);
    this.#states = new ConnectionStates(client);
    this.#state = new ClientState(client, options, {
      pauseIfIdle: () => this.#pauseIfIdle(),
      taken: () => this.#taken(),
    });
  }

  /** @returns {ClientState} what the client knows of its session */
  get state() {
    return this.#state;
  }

  /** @returns {boolean} connected, and every earlier request resent */
  get connected() {
    return this.#ready;
  }

  /** @returns {ConnectionState} */
  get connectionState() {
    return this.#states.current;
  }

  /** The first connection failed (`connect()` rejects): closed, with no `"state"` event. */
  abandon() {
    this.#states.abandon();
  }

  // -- requests -------------------------------------------------------------------------

  /** @param {Record<string, unknown>} frame @param {boolean} [isPublish] @returns {Promise<any>} */
  request(frame, isPublish = false) {
    const failure = this.#state.failure;
    if (failure !== null) return Promise.reject(failure);
    const { id, pending, reply } = this.#state.pending.add(frame, isPublish);
    if (this.#paused) this.#unpause(); // its reply must come, whatever the queue holds
    if (this.#ready && this.#ws !== null) {
      // Sent now; if the connection drops first, the reconnect resends it.
      pending.sentOn = this.#generation;
      this.#send(this.#ws, pending);
    } else {
      this.#pauseIfIdle(); // held back from a connection that skips: resume to send it
    }
    const timeout = this.#options.requestTimeout;
    if (timeout == null) return reply;
    return replyWithin(pending, reply, timeout, () => {
      // A publish stays pending until answered: it may be stored already, and its
      // seq must be accounted for.
      if (!isPublish && this.#state.pending.forget(id)) this.#pauseIfIdle();
    });
  }

  // -- pausing while the events queue is full ---------------------------------------------

  /** `events()` took an item: a connection that skipped events may resume once the
   * queue is read down. */
  #taken() {
    if (this.#state.overflowed && this.#state.feed.drained()) {
      if (this.#paused) this.#unpause();
      else {
        // Requests await replies on this connection: send no more on it, and let the
        // last reply close it (#pauseIfIdle) and resume at once.
        this.#ready = false;
        this.#pauseIfIdle();
      }
    }
  }

  /**
   * A connection that skipped events is closed as soon as no reply is awaited on it
   * (a reply after the close would be lost): the next connection resumes from the last
   * event queued. Paused until the queue is read down; at once when it already is.
   */
  #pauseIfIdle() {
    const ws = this.#ws;
    const state = this.#state;
    if (!state.overflowed || ws === null || state.pending.inFlight(this.#generation) > 0) return;
    this.#release(); // its close is ours: #onClose ignores it
    letGo(ws, PAUSE_CLOSE);
    state.fellBehind(); // it skipped events: only a resume brings them
    this.#paused = true;
    if (state.feed.drained()) this.#unpause();
    else this.#states.change("paused");
  }

  /** Connect again after a pause, resuming from the last event queued. */
  #unpause() {
    this.#paused = false;
    if (!this.#options.reconnect) {
      const why = "events skipped past the full events queue need a resume";
      this.finish(this.#state.lost(`${why}, and reconnect is off`), PAUSE_CLOSE);
      return;
    }
    this.#backoff.reset(); // a pause is no failure: its connection was fine
    void this.#reconnect(new Retry("events queue read down"), PAUSE_CLOSE);
  }

  // -- connection -------------------------------------------------------------------------

  /**
   * One connection: the current token, upgrade, hello, welcome, then every unanswered
   * request resent. Rejects with {@link Retry} for failures worth retrying, a
   * {@link ClientError} for the others, and what a token function threw.
   * @returns {Promise<void>}
   */
  async open() {
    const token = await tokenNow(this.#options.token);
    const failure = this.#state.failure;
    if (failure !== null) throw failure; // closed while the token came
    const client = this.#client;
    return dial({
      WebSocket: this.#WebSocket,
      url: streamUrl(this.#baseUrl, this.#state.sessionId),
      sessionId: this.#state.sessionId,
      openTimeout: this.#options.openTimeout,
      hello: () => this.#state.hello(token, this.#generation === 0),
      opening: (ws) => (this.#opening = ws),
      failure: () => this.#state.failure,
      closed: (reason) => (client.closedReason = reason),
      welcomed: (ws, welcome) => {
        this.#state.welcomed(welcome, this.#generation === 0);
        this.#attach(ws);
      },
    });
  }

  /** Make a welcomed connection the one in use. @param {WebSocket} ws */
  #attach(ws) {
    this.#ws = ws;
    this.#backoff.welcomed(this.#state.progress);
    this.#generation += 1;
    if (this.#generation > 1) this.#client.reconnects += 1;
    ws.onmessage = (message) => this.#onMessage(ws, message.data);
    const generation = this.#generation;
    const unanswered = () => this.#state.pending.bytesInFlight(generation);
    this.#liveness = watchLiveness(ws, this.#options, () => this.#onSilent(ws), unanswered);
    this.#paused = false;
    ws.onclose = (event) => this.#onClose(ws, event.code, event.reason);
    // Every request not yet sent on this connection, oldest first.
    const send = (/** @type {Pending} */ pending) => this.#send(ws, pending);
    this.#client.resent += this.#state.pending.resend(this.#generation, send);
    this.#ready = true;
    this.#states.change("open");
  }

  /** Send a request on the connection in use; its liveness check waits behind it.
   * @param {WebSocket} ws @param {Pending} pending */
  #send(ws, pending) {
    sendQuietly(ws, pending.data);
    this.#liveness?.sent(pending.bytes);
  }

  /** The connection in use is no longer: no frame of it is taken, nor its close. */
  #release() {
    this.#ws = null;
    this.#ready = false;
    this.#liveness?.stop();
    this.#liveness = null;
  }

  /** @param {WebSocket} ws @param {unknown} data */
  #onMessage(ws, data) {
    if (ws !== this.#ws || this.#state.failure !== null) return;
    this.#liveness?.heard();
    const frame = decodeFrame(data);
    try {
      if (frame === null) throw new ClientError("malformed frame from the server");
      this.#state.handle(frame, frameBytes(data));
    } catch (error) {
      this.finish(error instanceof ClientError ? error : new ClientError(String(error)));
    }
  }

  /** @param {WebSocket} ws @param {number} code @param {string} reason */
  #onClose(ws, code, reason) {
    if (ws !== this.#ws) return;
    this.#release();
    const state = this.#state;
    if (state.failure !== null) return;
    const error = this.#tokenExpired(code)
      ? new Retry("token expired")
      : closeError(code, reason, this.#client.closedReason);
    // What the server still had for us went with this connection when it skipped
    // events, or when the server dropped us as too slow to read.
    if (error instanceof Retry && (state.overflowed || code === 4429)) state.fellBehind();
    if (!(error instanceof Retry)) this.finish(state.unlessBehind(error));
    else this.#lost(error, closeSeen(code, reason));
  }

  /**
   * Nothing came in time on the connection in use, not even the answer to a ping: the
   * link is dead, though its close may not come for minutes. Nothing more of it is
   * heard (a late pong included); it is closed, its socket released where the
   * WebSocket can be terminated (sockets.js), and resumed on another connection.
   * @param {WebSocket} ws
   */
  #onSilent(ws) {
    if (ws !== this.#ws) return;
    this.#release();
    ws.onmessage = null;
    ws.onclose = null;
    letGo(ws, { code: 1000, reason: SILENT.reason, silent: true });
    const state = this.#state;
    if (state.failure !== null) return;
    if (state.overflowed) state.fellBehind(); // it skipped events: only a resume brings them
    this.#lost(new Retry(SILENT.reason), SILENT);
  }

  /** The connection in use ended in a way worth a resume: resume, or with `reconnect`
   * off, end (the `"closed"` state says which close would have been resumed).
   * @param {Retry} error @param {CloseSeen} close */
  #lost(error, close) {
    if (this.#options.reconnect) void this.#reconnect(error, close);
    else this.finish(this.#state.lost(`connection lost: ${error.message}`), close);
  }

  /**
   * The server closed an open connection with 4401 (its token expired) and a token
   * function can give a fresh one: resume with it rather than stop. A 4401 at the
   * handshake with that fresh token still ends the client, so a token function that
   * gives bad tokens cannot make it loop. @param {number} code
   */
  #tokenExpired(code) {
    return code === 4401 && typeof this.#options.token === "function";
  }

  /**
   * Reconnect with backoff until welcomed, refused, given up or closed.
   * @param {Error} error @param {CloseSeen} close what ended the connection, which the
   *   `"reconnecting"` state change says
   */
  async #reconnect(error, close) {
    this.#states.change("reconnecting", close);
    this.#backoff.dropped(this.#state.progress);
    const { maxRetries } = this.#options;
    const state = this.#state;
    while (state.failure === null) {
      const attempts = this.#backoff.attempts;
      if (maxRetries != null && attempts >= maxRetries) {
        this.finish(state.lost(`gave up after ${attempts} attempts: ${error.message}`));
        return;
      }
      await this.#backoff.next();
      if (state.failure !== null) return;
      try {
        await this.open();
        return;
      } catch (failure) {
        // Closed meanwhile (the attempt ends with that end): nothing more to ask.
        if (state.failure !== null) return;
        if (failure instanceof Retry) error = failure;
        else if (failure instanceof SessionEnded) this.finish(await this.#endedWhileAway(failure));
        else this.finish(state.unlessBehind(asClientError(failure)));
      }
    }
  }

  /** What ends a client whose resume was refused because its session ended meanwhile
   * (see `ClientState#endedWhileAway`): the HTTP question is asked with this client's
   * token, within `openTimeout`. @param {SessionEnded} error */
  #endedWhileAway(error) {
    const { token, openTimeout } = this.#options;
    // A wait that `close()` cuts short, and after which the check gives up.
    const wait = async (/** @type {number} */ ms) => {
      await this.#backoff.sleep(ms);
      return this.#state.failure === null;
    };
    return this.#state.endedWhileAway(error, (sessionId, afterSeq) =>
      eventsAfter(this.#baseUrl, sessionId, afterSeq, () => tokenNow(token), openTimeout, wait),
    );
  }

  // -- the end ----------------------------------------------------------------------------

  /**
   * End this client: fail what waits, end `events()`, close the connection.
   * @param {ClientError} failure
   * @param {CloseSeen} [close] the close that ended it, for the `"closed"` state change;
   *   by default the one `failure` carries ({@link closeOf})
   */
  finish(failure, close = closeOf(failure)) {
    if (!this.#state.finish(failure)) return;
    this.#ready = false;
    this.#liveness?.stop();
    this.#liveness = null;
    this.#backoff.wake();
    for (const ws of [this.#ws, this.#opening]) if (ws !== null) letGo(ws, { code: 1000 });
    this.#states.change("closed", { error: failure, ...close });
  }

  /** End this client (see `BambooClient#close`), and wait for its connection's close. */
  async close() {
    this.finish(new SessionEnded("client closed", 1000));
    const ws = this.#ws ?? this.#opening;
    if (ws === null || ws.readyState === ws.CLOSED) return;
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, CLOSE_BOUND);
      ws.addEventListener("close", () => {
        clearTimeout(timer);
        resolve(undefined);
      });
    });
  }
}
