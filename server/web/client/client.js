// @ts-check
/**
 * client.js: {@link BambooClient}, the public face of the JavaScript client: one
 * connection to one session, kept across drops. It checks the options, turns calls into
 * request frames and replies into results, and hands out the events; keeping the
 * connection up is the link's job (link.js), knowing the session the state's
 * (state.js). bamboo.js exports it, with the rest of the client's API.
 *
 * @module bamboo/client
 */

import { ConnectionLost, Retry, SessionEnded } from "./errors.js";
import { END, MAX_QUEUED_BYTES, MAX_QUEUED_EVENTS } from "./feed.js";
import { newKey } from "./frames.js";
import { Link } from "./link.js";
import { MIN_UPLINK_RATE, PING_INTERVAL, PING_TIMEOUT } from "./liveness.js";
import { readPages } from "./pages.js";
import { checkSessionId, streamUrl } from "./urls.js";

/**
 * @typedef {import("./types.js").AgentEvent} AgentEvent
 * @typedef {import("./types.js").ConnectOptions} ConnectOptions
 * @typedef {import("./types.js").ConnectionState} ConnectionState
 * @typedef {import("./types.js").EventPage} EventPage
 * @typedef {import("./types.js").HistoryPage} HistoryPage
 * @typedef {import("./types.js").Message} Message
 * @typedef {import("./types.js").Presence} Presence
 * @typedef {import("./types.js").Reset} Reset
 * @typedef {import("./types.js").SessionMetadata} SessionMetadata
 * @typedef {import("./types.js").Settings} Settings
 * @typedef {import("./types.js").StateChange} StateChange
 * @typedef {import("./types.js").StoredEvent} StoredEvent
 * @typedef {import("./errors.js").ClientError} ClientError
 */

/**
 * A connection to one session, kept alive across drops. Create with
 * {@link BambooClient.connect}; end with {@link BambooClient#close}.
 *
 * Events it dispatches (as `CustomEvent`s whose `detail` is given; `on()` passes the detail):
 * - `"presence"` ({@link Presence}): a connection joined or left the session;
 * - `"state"` ({@link StateChange}): this client's connection state changed;
 * - `"warning"` (`{ code, message }`): an `error` frame that answers no request.
 */
export class BambooClient extends EventTarget {
  #link;
  #state;

  /** @param {string} url @param {ConnectOptions} options */
  constructor(url, options) {
    super();
    const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketClass !== "function") {
      throw new TypeError("no WebSocket here: pass { WebSocket } (on Node < 22, the ws package's)");
    }
    streamUrl(url); // refuse a bad URL before any I/O
    if (options.sessionId != null) checkSessionId(options.sessionId);
    /** @type {Settings} */
    const settings = {
      create: false,
      role: "client",
      reconnect: true,
      maxRetries: null,
      backoffInitial: 100,
      backoffMax: 5000,
      openTimeout: 10000,
      requestTimeout: null,
      receiveEvents: true,
      maxQueuedEvents: MAX_QUEUED_EVENTS,
      maxQueuedBytes: MAX_QUEUED_BYTES,
      pingInterval: PING_INTERVAL,
      pingTimeout: PING_TIMEOUT,
      minUplinkRate: MIN_UPLINK_RATE,
      ...options,
    };
    for (const name of /** @type {const} */ (["maxQueuedEvents", "maxQueuedBytes"])) {
      const value = settings[name];
      if (!Number.isSafeInteger(value) || value < 1) {
        throw new TypeError(`${name} must be an integer of at least 1, not ${value}`);
      }
    }
    for (const name of /** @type {const} */ (["pingInterval", "pingTimeout", "minUplinkRate"])) {
      const value = settings[name];
      if (name === "pingInterval" && value === null) continue; // no liveness check
      if (typeof value !== "number" || !(value > 0) || !Number.isFinite(value)) {
        const unit = name === "minUplinkRate" ? "bytes a second" : "ms";
        throw new TypeError(`${name} must be a number of ${unit} above 0, not ${value}`);
      }
    }
    this.#link = new Link(this, url, WebSocketClass, settings);
    this.#state = this.#link.state;
    /** @type {string | null} */
    this.connectionId = null;
    /** @type {SessionMetadata | null} the session's metadata as of the last welcome */
    this.session = null;
    /** connections attached to the session (from welcome and presence) */
    this.connections = 0;
    /** @type {string | null} the reason of the server's `closed` frame */
    this.closedReason = null;
    /** successful reconnects so far */
    this.reconnects = 0;
    /** requests sent again after a reconnect */
    this.resent = 0;
    /** events skipped past the full queue, each brought back since by a resume */
    this.skippedEvents = 0;
  }

  /**
   * Attach to a session on the server at `url` (`ws://host:8765`, or in a page
   * `location.origin`). The first connection is not retried: a wrong URL, a refused
   * token or a missing session rejects here.
   * @param {string} url @param {ConnectOptions} [options] @returns {Promise<BambooClient>}
   */
  static async connect(url, options = {}) {
    const client = new BambooClient(url, options);
    try {
      await client.#link.open();
    } catch (error) {
      client.#link.abandon();
      if (error instanceof Retry) throw new ConnectionLost(`cannot connect: ${error.message}`);
      throw error;
    }
    return client;
  }

  /** Close the connection (1000) and stop: waiting requests fail with
   * {@link SessionEnded}, and `events()` ends. Safe to call twice. */
  async close() {
    return this.#link.close();
  }

  // -- state --------------------------------------------------------------------------

  /** @returns {string} the session's id (known once `connect()` resolved) */
  get sessionId() {
    return /** @type {string} */ (this.#state.sessionId);
  }

  /** @returns {string | null} the epoch of the log `lastSeq` belongs to */
  get epoch() {
    return this.#state.epoch;
  }

  /** @returns {number} where a later `connect({ lastSeq, epoch })` resumes from: every
   * seq up to it was seen, as an event or as our own publish's ack (never an ack of ours
   * that other peers' events with lower seqs have not caught up with yet) */
  get lastSeq() {
    return this.#state.lastSeq;
  }

  /** @returns {number} events received and not yet taken from `events()` */
  get queuedEvents() {
    return this.#state.feed.count;
  }

  /** @returns {number} their frames' bytes */
  get queuedBytes() {
    return this.#state.feed.bytes;
  }

  /** @returns {boolean} connected, and every earlier request resent */
  get connected() {
    return this.#link.connected;
  }

  /** @returns {ConnectionState} */
  get state() {
    return this.#link.connectionState;
  }

  /** @returns {boolean} true once the client has ended (see `error`) */
  get finished() {
    return this.#state.failure !== null;
  }

  /** @returns {ClientError | null} why the client ended, once it has */
  get error() {
    return this.#state.failure;
  }

  /**
   * `addEventListener` for the detail alone; returns a function that removes it.
   * @template {"presence" | "state" | "warning"} T
   * @param {T} type
   * @param {(detail: T extends "presence" ? Presence : T extends "state" ? StateChange
   *   : { code: string, message: string }) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    /** @param {Event} event */
    const handler = (event) => listener(/** @type {CustomEvent} */ (event).detail);
    this.addEventListener(type, handler);
    return () => this.removeEventListener(type, handler);
  }

  // -- requests -------------------------------------------------------------------------

  /**
   * Append `event` to the session's log; resolves to its `seq`. Exactly once across
   * drops: `key` (generated when not given; `""` is a key like any other, sent as
   * given) makes the server answer a resend with the first `seq` instead of appending
   * again.
   * @param {AgentEvent} event @param {{ key?: string }} [options] @returns {Promise<number>}
   */
  async publish(event, { key } = {}) {
    const ack = await this.#link.request({ type: "event", event, key: key ?? newKey() }, true);
    return ack.seq;
  }

  /**
   * Append `message` to the history (and as a `message` event to the log); resolves
   * to its `seq`. Exactly once, like {@link BambooClient#publish}.
   * @param {Message} message @param {{ key?: string }} [options] @returns {Promise<number>}
   */
  async sendMessage(message, { key } = {}) {
    const ack = await this.#link.request({ type: "message", message, key: key ?? newKey() }, true);
    return ack.seq;
  }

  /**
   * The newest `limit` messages before index `before` (default: the end), oldest first.
   * @param {{ limit?: number, before?: number }} [options] @returns {Promise<HistoryPage>}
   */
  async history({ limit = 100, before } = {}) {
    const reply = await this.#link.request({ type: "history", limit, before });
    return { messages: reply.messages, hasMore: reply.has_more };
  }

  /**
   * Up to `limit` events of the log with `seq > afterSeq`, oldest first.
   * @param {{ afterSeq?: number, limit?: number }} [options] @returns {Promise<EventPage>}
   */
  async readEvents({ afterSeq = 0, limit = 1000 } = {}) {
    const reply = await this.#link.request({ type: "events", after_seq: afterSeq, limit });
    const epoch = typeof reply.epoch === "string" ? reply.epoch : null;
    return { events: reply.events, lastSeq: reply.last_seq, epoch };
  }

  /**
   * The log after `afterSeq` in pages of at most `page` events (none empty), each read
   * as it is iterated, up to `untilSeq`: by default the log's `lastSeq` as the first
   * page reports it, so that a read of a session that keeps taking events ends all the
   * same, with what the log held when it began (read on from its last seq for the
   * rest). It ends sooner at the log's end, never waiting for events, and yields none
   * past `untilSeq`. All of one log: that of `epoch` when given (say, a saved
   * `lastSeq`'s), else the one the client is attached to now, which `afterSeq` counts
   * in (`client.epoch`). A page of another log (the session was replaced and the client
   * reconnected onto the new one, before the first page as well as between two; its
   * seqs start from 1 again) throws {@link EpochChanged}; a new read reads the new log.
   * Pages without an epoch (servers from before the epoch fence) are not checked: they
   * cannot be, and refusing them would stop every read from such a server. A page
   * whose seqs do not increase from above the seq it was asked after throws
   * {@link SequenceError}.
   * @param {{ afterSeq?: number, page?: number, epoch?: string | null, untilSeq?: number | null }} [options]
   * @returns {AsyncGenerator<EventPage, void, undefined>}
   */
  eventPages({ afterSeq = 0, page = 1000, epoch = null, untilSeq = null } = {}) {
    // Pinned now, not at the first page: a reconnect may come before it, too.
    const pinned = epoch ?? this.epoch;
    const query = { afterSeq, page, epoch: pinned, untilSeq };
    return readPages((asked) => this.readEvents(asked), query);
  }

  /**
   * Every event of the log after `afterSeq` up to `untilSeq` (by default the log's
   * `lastSeq` when the read begins, however fast it grows meanwhile), read with
   * {@link BambooClient#eventPages}: all of one log, else {@link EpochChanged}, never
   * two logs joined.
   * @param {{ afterSeq?: number, page?: number, epoch?: string | null, untilSeq?: number | null }} [options]
   * @returns {Promise<StoredEvent[]>}
   */
  async readAllEvents({ afterSeq = 0, page = 1000, epoch = null, untilSeq = null } = {}) {
    /** @type {StoredEvent[]} */
    const events = [];
    const pages = this.eventPages({ afterSeq, page, epoch, untilSeq });
    for await (const got of pages) events.push(...got.events);
    return events;
  }

  /**
   * Ask for a session state; `"closed"` ends the session for every peer. Resolves to
   * the session's `last_seq`.
   * @param {"active" | "idle" | "closed"} state @returns {Promise<number>}
   */
  async setState(state) {
    const ack = await this.#link.request({ type: "state", state });
    return ack.seq;
  }

  /** A round trip to the server, in ms. @returns {Promise<number>} */
  async ping() {
    const started = performance.now();
    await this.#link.request({ type: "ping" });
    return performance.now() - started;
  }

  /**
   * The session's events as they arrive, resuming across drops with no gap and no
   * duplicate, and `{ reset: true, … }` when a reconnect could not resume. Ends when
   * the session is closed or `close()` is called; throws {@link SequenceError},
   * {@link Refused} or {@link ConnectionLost} when the stream cannot go on, the
   * latter also when the session was closed while events it had skipped (its queue
   * being full) were still to be resumed, or before a resume's replay was all sent:
   * its `afterSeq` says after which seq to read them over HTTP. Our own publishes are not in it. Iterate from one loop at a time.
   * @returns {AsyncGenerator<StoredEvent | Reset, void, undefined>}
   */
  async *events() {
    for (;;) {
      const item = await this.#state.feed.next();
      if (item === END) {
        const failure = this.#state.failure;
        if (failure instanceof SessionEnded) return;
        throw failure;
      }
      yield item;
    }
  }
}
