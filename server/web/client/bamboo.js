// @ts-check
/**
 * bamboo.js: the JavaScript client of the Bamboo session protocol v1, with resume,
 * gap checks and exactly-once publish built in. One dependency-free ES module for
 * browsers and Node (22+ has a global WebSocket; on older Node pass the `ws` package's
 * as `{ WebSocket }`). It behaves like the Python client, `bamboo_session.protocol.client`.
 *
 * - One connection at a time to one session. When it drops for a reason the protocol
 *   says to resume from (close 1001, 1011, 1012, 1013, 4408, 4429, or a network
 *   failure), the client reconnects with exponential backoff and full jitter, sends
 *   `hello` with `last_seq` and `epoch`, and resends every unanswered request in its
 *   original order before any new one.
 * - Every publish carries an idempotency key (generated when none is given), so a
 *   resent publish the server had already stored is answered with its first `seq`.
 * - Every `event` must carry the next `seq` after those seen; seqs of our own
 *   publishes count as seen (the server never echoes them back). A hole is tolerated
 *   while an unanswered publish of ours could fill it; a duplicate or an unexplained
 *   gap ends the client with a {@link SequenceError}.
 * - A reconnect the server cannot resume (`resumed: false`) is yielded by
 *   {@link BambooClient#events} as `{ reset: true, … }`; reload with `history()` and
 *   `readEvents()`. So is a session found replaced (another epoch) after a resume
 *   refused with 4409, before `events()` ends.
 * - Events wait for `events()` in a queue bounded in count and bytes
 *   (`maxQueuedEvents`, `maxQueuedBytes`). A browser's WebSocket cannot stop reading,
 *   so an event that finds the queue full is skipped, with every later one, and the
 *   client closes the connection (state `"paused"`) as soon as no request of it awaits
 *   a reply; once the application has read the queue down to half, it reconnects and
 *   resumes from the last event it queued, which brings the skipped ones back, in
 *   order. Nothing is lost, and requests are answered all along. Should the session
 *   be closed before that resume (1000, or the resume refused with 4409), the skipped
 *   events can only be read over HTTP: `events()` yields what was queued, then throws
 *   {@link ConnectionLost}, whose `afterSeq` says after which seq they are
 *   (`GET /api/v1/sessions/{id}/events?after_seq=…`), rather than just end. So does
 *   a session that ends before every event up to the last seq known to be in it came
 *   (the welcome's `last_seq`, which a resume's replay goes up to): the close cuts a
 *   replay short when the client has not taken it within the server's close timeout.
 * - Refusals end the client with a typed error: {@link Unauthorized} (4401),
 *   {@link Forbidden} (4403), {@link NotFound} (4404), {@link SessionEnded} (1000, 4409;
 *   but see the queue above).
 *   The one exception: given a token function, a 4401 that ends an open connection
 *   (its token expired) is a reconnect with a fresh token and resume.
 *
 * @example
 * import { BambooClient } from "/client/bamboo.js";
 * const c = await BambooClient.connect(location.origin, { sessionId: "chat-1", create: true });
 * const seq = await c.publish({ type: "token", content: "Hi" });
 * for await (const item of c.events()) console.log(item);
 *
 * @module bamboo
 */

/**
 * @typedef {{ success: boolean, content?: string, error?: string | null }} ToolResult
 * @typedef {{ prompt_tokens?: number, completion_tokens?: number, total_tokens?: number }} Usage
 * @typedef {{ id: string, name: string, arguments?: unknown }} ToolCall
 * @typedef {{
 *   id?: string, role: "system" | "user" | "assistant" | "tool", content: string,
 *   created_at?: string, tool_calls?: ToolCall[], tool_call_id?: string,
 *   metadata?: Record<string, unknown>
 * }} Message
 * @typedef {{ type: "token", content: string }
 *   | { type: "thinking", content: string }
 *   | { type: "message", message: Message }
 *   | { type: "tool_start", tool_call_id: string, tool_name: string, arguments?: unknown }
 *   | { type: "tool_complete", tool_call_id: string, result: ToolResult }
 *   | { type: "tool_error", tool_call_id: string, error: string }
 *   | { type: "complete", usage?: Usage }
 *   | { type: "error", message: string, code?: string }
 *   | { type: "state_change", from: string, to: string }
 *   | { type: "custom", name: string, data?: unknown }} AgentEvent
 * @typedef {{
 *   id: string, user_id: string | null, title: string | null,
 *   state: "active" | "idle" | "disconnected" | "closed" | "expired",
 *   created_at: string, updated_at: string, last_activity_at: string,
 *   expires_at: string | null, message_count: number, extra: Record<string, unknown>,
 *   last_seq: number, epoch: string, connections: number, ttl: number | null
 * }} SessionMetadata
 * @typedef {{ seq: number, ts: string, event: AgentEvent }} StoredEvent
 *   An event of the session's log: `seq` from 1 with no gaps, `ts` RFC 3339 UTC.
 * @typedef {{ reset: true, epoch: string, lastSeq: number,
 *   previousEpoch: string | null, previousLastSeq: number }} Reset
 *   A (re)connect could not resume: events after `previousLastSeq` up to `lastSeq`
 *   were not replayed. Live events continue after `lastSeq`.
 * @typedef {{ messages: Message[], hasMore: boolean }} HistoryPage
 * @typedef {{ events: StoredEvent[], lastSeq: number, epoch: string | null }} EventPage
 *   `epoch`: of the log the events were read from (null from a server that does not say).
 * @typedef {{ joined?: string, left?: string, role: string, connections: number }} Presence
 * @typedef {"connecting" | "open" | "reconnecting" | "paused" | "closed"} ConnectionState
 *   `"paused"`: disconnected on purpose while the events queue is full; it reconnects
 *   and resumes once `events()` has taken the queue down to half, or at a request.
 * @typedef {{ state: ConnectionState, error?: ClientError }} StateChange
 * @typedef {string | (() => string | Promise<string>)} TokenSource
 *   A JWT, or a function that returns one (or a promise of one), asked before every
 *   connection.
 *
 * @typedef {object} ConnectOptions
 * @property {string} [sessionId] the session to attach to; none: a new session
 * @property {boolean} [create] create `sessionId` if it does not exist (get-or-create)
 * @property {string} [userId] owner of a session created here (ignored under auth)
 * @property {string} [title] title of a session created here
 * @property {TokenSource} [token] a JWT, when the server requires one; or a function
 *   returning a fresh one, asked before every connection: then a 4401 that closes an open
 *   connection (its token expired) is a reconnect with a new token and resume, not the end
 * @property {"client" | "agent"} [role] shown in presence; default "client"
 * @property {number} [lastSeq] resume after this seq (0 replays the retained log)
 * @property {string} [epoch] the epoch `lastSeq` belongs to
 * @property {boolean} [reconnect] resume on its own after a drop; default true
 * @property {number | null} [maxRetries] reconnect attempts since the last connection
 *   that held 10 s before {@link ConnectionLost}; default null (no limit)
 * @property {number} [backoffInitial] first backoff ceiling in ms; default 100
 * @property {number} [backoffMax] largest backoff ceiling in ms; default 5000
 * @property {number} [openTimeout] ms for the upgrade and for the welcome (and for the
 *   one HTTP request of a session that ended while the client was away); default 10000
 * @property {number | null} [requestTimeout] ms a request may wait for its reply,
 *   across reconnects; default null (no limit)
 * @property {boolean} [receiveEvents] false: a publish-only client whose events are
 *   checked but not queued for `events()`; default true
 * @property {number} [maxQueuedEvents] events received and not yet taken from
 *   `events()`, at most; default 10000
 * @property {number} [maxQueuedBytes] their frames' bytes (UTF-8), at most; default
 *   16 MiB (one event always fits in an empty queue)
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (Node < 22: the `ws` package's)
 */

export const STREAM_PATH = "/api/v1/stream";
export const SUBPROTOCOL = "bamboo.v1";
/** Close codes after which the client reconnects and resumes. */
export const RESUME_CODES = Object.freeze([1001, 1011, 1012, 1013, 4408, 4429]);
const RESUMABLE = new Set(RESUME_CODES);
const ABNORMAL_CLOSURE = 1006; // what browsers report for a network failure
// A connection that held less than this (ms) was no recovery: the backoff goes on growing
// and counting towards maxRetries instead of starting again from the first wait, so a
// server that welcomes then closes at once (or tokens that expire at once) is not hammered.
const STABLE_AFTER = 10_000;
const SESSION_ID = /^[A-Za-z0-9_.-]{1,128}$/;
export const MAX_QUEUED_EVENTS = 10_000;
export const MAX_QUEUED_BYTES = 16 * 1024 * 1024;

// -- errors -------------------------------------------------------------------------

/** Base of every error the client raises. */
export class ClientError extends Error {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The server refused in a way a reconnect would not fix (1008, 1009, 4401, 4403, 4404, …). */
export class Refused extends ClientError {
  /** @param {number} code the close code @param {string} reason */
  constructor(code, reason) {
    super(
      reason ? `refused by the server (${code}): ${reason}` : `refused by the server (${code})`,
    );
    this.code = code;
    this.reason = reason;
  }
}
/** Close 4401: no token, or a bad one; or a fixed token expired on an open connection. */
export class Unauthorized extends Refused {}
/** Close 4403: this token may not attach to this session. */
export class Forbidden extends Refused {}
/** Close 4404: no such session (attach with `create` to make it). */
export class NotFound extends Refused {}

/** The session was closed (close 1000, or 4409 when attaching), or `close()` was called. */
export class SessionEnded extends ClientError {
  /** @param {string} reason @param {number} code the close code, 1000 or 4409 */
  constructor(reason, code) {
    super(reason);
    this.reason = reason;
    this.code = code;
  }
}

/**
 * The connection dropped and could not be brought back (`maxRetries`, or `reconnect:
 * false`); or the session ended (its `cause`: the {@link SessionEnded}) while events
 * due to this client had been skipped past its full queue (or dropped by the server,
 * 4429), or had not come yet (a resume's replay cut short by the close), and no
 * resume can bring them any more. Either way `events()` delivered every
 * event up to `afterSeq` (when known), but the client's own publishes, and none after
 * it: read the rest over HTTP, `GET /api/v1/sessions/{id}/events?after_seq={afterSeq}`,
 * or, while the session lasts, by connecting again with `lastSeq: afterSeq`.
 */
export class ConnectionLost extends ClientError {
  /**
   * @param {string} message
   * @param {{ afterSeq?: number | null, cause?: unknown }} [options]
   */
  constructor(message, { afterSeq = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    /** @type {number | null} every seq up to it came through `events()` (or was our publish) */
    this.afterSeq = afterSeq;
  }
}

/** The server sent an impossible sequence: a duplicate `seq`, or a gap. */
export class SequenceError extends ClientError {
  /** @param {string} message @param {number} expected @param {number} got */
  constructor(message, expected, got) {
    super(message);
    this.expected = expected;
    this.got = got;
  }
}

/** The server answered a request with an `error` frame (`code`: `bad_request`, `closed`, …). */
export class RequestError extends ClientError {
  /** @param {string} code @param {string} detail */
  constructor(code, detail) {
    super(`${code}: ${detail}`);
    this.code = code;
    this.detail = detail;
  }
}

/**
 * A read of the log page by page (`readAllEvents`, `eventPages`) found a page of another
 * log than its first: the session was replaced (deleted and created again under its id,
 * or expired and replaced) and the client reconnected onto the new one between two
 * pages. The new log's seqs start from 1 again, so its pages are not the rest of the old
 * one, and the read stops rather than join them. `previousEpoch` is the epoch the read
 * was pinned to (its first page's, or the caller's), `epoch` the new page's, `afterSeq`
 * the seq after which that page was asked. Nothing restarts the read: start a new one to
 * read the new log (`client.epoch` is then the new one's, and `events()` has yielded a
 * reset).
 */
export class EpochChanged extends ClientError {
  /** @param {string} previousEpoch @param {string} epoch @param {number} afterSeq */
  constructor(previousEpoch, epoch, afterSeq) {
    super(
      `the session's log changed from epoch ${previousEpoch} to ${epoch} while it was read` +
        ` page by page (a page asked after seq ${afterSeq}): the session was replaced,` +
        ` and the new log's events are not the rest of the old one's`,
    );
    this.previousEpoch = previousEpoch;
    this.epoch = epoch;
    this.afterSeq = afterSeq;
  }
}

/** A request got no reply within `requestTimeout`. A publish may still be stored. */
export class RequestTimeout extends ClientError {}

/** Internal: this connection failed in a way worth a reconnect. */
class Retry extends Error {}

/**
 * What a close code means: a {@link Retry}, or the error that ends the client.
 * @param {number} code @param {string} reason @param {string | null} closedReason
 * @returns {Retry | ClientError}
 */
function closeError(code, reason, closedReason) {
  if (code === ABNORMAL_CLOSURE)
    return new Retry(`connection dropped${reason ? `: ${reason}` : ""}`);
  if (RESUMABLE.has(code)) return new Retry(`closed ${code} ${reason}`.trim());
  if (code === 1000 || code === 4409) {
    return new SessionEnded(closedReason || reason || "session closed", code);
  }
  if (code === 4401) return new Unauthorized(code, reason);
  if (code === 4403) return new Forbidden(code, reason);
  if (code === 4404) return new NotFound(code, reason);
  return new Refused(code, reason);
}

// -- helpers ----------------------------------------------------------------------------

/**
 * The stream endpoint for `sessionId` (a new session when omitted) under a server's
 * base URL: `ws://host:8765`, `http://host:8765` or, in a page, a relative URL.
 * @param {string} baseUrl @param {string | null} [sessionId] @returns {string}
 */
export function streamUrl(baseUrl, sessionId) {
  const base = globalThis.location ? globalThis.location.href : undefined;
  const url = new URL(baseUrl, base);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new TypeError(`URL must be ws://, wss://, http:// or https://: ${baseUrl}`);
  }
  let path = url.pathname.replace(/\/+$/, "");
  if (!path.endsWith(STREAM_PATH)) path += STREAM_PATH;
  if (sessionId != null) path += `/${encodeURIComponent(checkSessionId(sessionId))}`;
  url.pathname = path;
  url.search = "";
  url.hash = "";
  return url.href;
}

/**
 * `GET /api/v1/sessions/{id}/events?after_seq=…&limit=…` on the server of `baseUrl` (as
 * {@link streamUrl} takes it): the same host, port and path prefix, over http for ws
 * and https for wss.
 * @param {string} baseUrl @param {string} sessionId @param {number} afterSeq
 * @param {number} limit @returns {string}
 */
export function eventsUrl(baseUrl, sessionId, afterSeq, limit) {
  const url = new URL(streamUrl(baseUrl));
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  const prefix = url.pathname.slice(0, -STREAM_PATH.length);
  url.pathname = `${prefix}/api/v1/sessions/${encodeURIComponent(checkSessionId(sessionId))}/events`;
  url.search = new URLSearchParams({
    after_seq: String(afterSeq),
    limit: String(limit),
  }).toString();
  return url.href;
}

/** @param {string} sessionId @returns {string} */
function checkSessionId(sessionId) {
  if (!SESSION_ID.test(sessionId) || sessionId === "." || sessionId === "..") {
    throw new TypeError(`invalid session id: ${JSON.stringify(sessionId)}`);
  }
  return sessionId;
}

/** A fresh idempotency key: 128 random bits in hex (works outside secure contexts too). */
export function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Checks that seqs arrive with no gap and no duplicate, as the Python client's
 * `SequenceChecker` does (docs/protocol.md, "Checking for gaps"). `contiguous`: every
 * seq up to here was seen; `above`: seqs seen beyond it; `lastEvent`: the last event
 * frame's seq (or where this connection's events start); `echoes`: our own seqs beyond
 * where this connection resumed, which it sends back as events. A hole below the last
 * event is fine while an unanswered publish of ours could fill it; a hole above it (an
 * `ack` of ours that overtook other peers' events) is fine: those events are on their way.
 */
class SequenceCheck {
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

/** Queued after the last item of events(). @type {unique symbol} */
const END = Symbol("end");
/** @typedef {StoredEvent | Reset | typeof END} QueueItem */

/**
 * @typedef {object} Pending a request waiting for its reply; resent after a reconnect
 * @property {string} data the request, encoded
 * @property {string} type its frame type
 * @property {(value: any) => void} resolve
 * @property {(error: Error) => void} reject
 * @property {boolean} isPublish
 * @property {number} sentOn the connection generation it was last sent on
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
  #baseUrl;
  #options;
  /** @type {typeof WebSocket} */
  #WebSocket;
  /** @type {string | null} */
  #sessionId;
  /** @type {number | null} what the first hello asks to resume from */
  #resumeFrom;
  /** @type {string | null} */
  #epoch;
  #seq;
  #nextId = 1;
  /** @type {Map<number, Pending>} */
  #pending = new Map();
  /** @type {Array<[QueueItem, number]>} items for events(), with their sizes in bytes */
  #queue = [];
  #queuedBytes = 0;
  // This connection skipped an event past the full queue: it skips every later one, and
  // is closed once no request awaits a reply on it.
  #overflowed = false;
  // A connection ended with events due to us undelivered (skipped past the full queue,
  // or dropped by the server as too slow to read): until a welcome resumes (or resets),
  // the session's end is no clean end of events().
  #behind = false;
  // The last seq the session is known to have reached, as of the last welcome (its
  // last_seq: a resume's replay goes up to it); events and acks since may say more.
  #reached = 0;
  #paused = false; // disconnected on purpose until the queue is read down (or a request)
  /** @type {((item: QueueItem) => void) | null} */
  #waiter = null;
  /** @type {WebSocket | null} the connection in use, once welcomed */
  #ws = null;
  /** @type {WebSocket | null} a connection being opened */
  #opening = null;
  #generation = 0;
  #ready = false; // connected, and every earlier request resent
  #attempts = 0; // reconnect attempts since the last connection that held STABLE_AFTER
  #welcomedAt = 0; // performance.now() at the last welcome
  /** @type {ClientError | null} why this client is finished */
  #failure = null;
  /** @type {{ timer: ReturnType<typeof setTimeout>, wake: () => void } | null} */
  #sleeper = null;
  /** @type {ConnectionState} */
  #state = "connecting";

  /** @param {string} url @param {ConnectOptions} options */
  constructor(url, options) {
    super();
    const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketClass !== "function") {
      throw new TypeError("no WebSocket here: pass { WebSocket } (on Node < 22, the ws package's)");
    }
    streamUrl(url); // refuse a bad URL before any I/O
    if (options.sessionId != null) checkSessionId(options.sessionId);
    this.#baseUrl = url;
    this.#WebSocket = WebSocketClass;
    this.#options = {
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
      ...options,
    };
    for (const name of /** @type {const} */ (["maxQueuedEvents", "maxQueuedBytes"])) {
      const value = this.#options[name];
      if (!Number.isSafeInteger(value) || value < 1) {
        throw new TypeError(`${name} must be an integer of at least 1, not ${value}`);
      }
    }
    this.#sessionId = options.sessionId ?? null;
    this.#resumeFrom = options.lastSeq ?? null;
    this.#epoch = options.epoch ?? null;
    this.#seq = new SequenceCheck(options.lastSeq ?? 0);
    this.#reached = options.lastSeq ?? 0;
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
      await client.#open();
    } catch (error) {
      client.#state = "closed";
      if (error instanceof Retry) throw new ConnectionLost(`cannot connect: ${error.message}`);
      throw error;
    }
    return client;
  }

  /** Close the connection (1000) and stop: waiting requests fail with
   * {@link SessionEnded}, and `events()` ends. Safe to call twice. */
  async close() {
    this.#finish(new SessionEnded("client closed", 1000));
    const ws = this.#ws ?? this.#opening;
    if (ws === null || ws.readyState === ws.CLOSED) return;
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 2000);
      ws.addEventListener("close", () => {
        clearTimeout(timer);
        resolve(undefined);
      });
    });
  }

  // -- state --------------------------------------------------------------------------

  /** @returns {string} the session's id (known once `connect()` resolved) */
  get sessionId() {
    return /** @type {string} */ (this.#sessionId);
  }

  /** @returns {string | null} the epoch of the log `lastSeq` belongs to */
  get epoch() {
    return this.#epoch;
  }

  /** @returns {number} where a later `connect({ lastSeq, epoch })` resumes from: every
   * seq up to it was seen, as an event or as our own publish's ack (never an ack of ours
   * that other peers' events with lower seqs have not caught up with yet) */
  get lastSeq() {
    return this.#seq.resumePoint;
  }

  /** @returns {number} events received and not yet taken from `events()` */
  get queuedEvents() {
    return this.#queue.length - (this.#queue.at(-1)?.[0] === END ? 1 : 0);
  }

  /** @returns {number} their frames' bytes */
  get queuedBytes() {
    return this.#queuedBytes;
  }

  /** @returns {boolean} connected, and every earlier request resent */
  get connected() {
    return this.#ready;
  }

  /** @returns {ConnectionState} */
  get state() {
    return this.#state;
  }

  /** @returns {boolean} true once the client has ended (see `error`) */
  get finished() {
    return this.#failure !== null;
  }

  /** @returns {ClientError | null} why the client ended, once it has */
  get error() {
    return this.#failure;
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
    const ack = await this.#request({ type: "event", event, key: key ?? newKey() }, true);
    return ack.seq;
  }

  /**
   * Append `message` to the history (and as a `message` event to the log); resolves
   * to its `seq`. Exactly once, like {@link BambooClient#publish}.
   * @param {Message} message @param {{ key?: string }} [options] @returns {Promise<number>}
   */
  async sendMessage(message, { key } = {}) {
    const ack = await this.#request({ type: "message", message, key: key ?? newKey() }, true);
    return ack.seq;
  }

  /**
   * The newest `limit` messages before index `before` (default: the end), oldest first.
   * @param {{ limit?: number, before?: number }} [options] @returns {Promise<HistoryPage>}
   */
  async history({ limit = 100, before } = {}) {
    const reply = await this.#request({ type: "history", limit, before });
    return { messages: reply.messages, hasMore: reply.has_more };
  }

  /**
   * Up to `limit` events of the log with `seq > afterSeq`, oldest first.
   * @param {{ afterSeq?: number, limit?: number }} [options] @returns {Promise<EventPage>}
   */
  async readEvents({ afterSeq = 0, limit = 1000 } = {}) {
    const reply = await this.#request({ type: "events", after_seq: afterSeq, limit });
    const epoch = typeof reply.epoch === "string" ? reply.epoch : null;
    return { events: reply.events, lastSeq: reply.last_seq, epoch };
  }

  /**
   * The log after `afterSeq` in pages of at most `page` events (none empty), each read
   * as it is iterated, up to the log's `lastSeq`; all of one log: that of `epoch` when
   * given (say, a saved `lastSeq`'s), else the first page's. A page of another log (the
   * session was replaced and the client reconnected onto the new one; its seqs start
   * from 1 again) throws {@link EpochChanged}; a new read reads the new log. Pages
   * without an epoch (servers from before the epoch fence) are not checked: they cannot
   * be, and refusing them would stop every read from such a server.
   * @param {{ afterSeq?: number, page?: number, epoch?: string | null }} [options]
   * @returns {AsyncGenerator<EventPage, void, undefined>}
   */
  async *eventPages({ afterSeq = 0, page = 1000, epoch = null } = {}) {
    // An `events` reply is fenced by its connection's epoch, but two pages may come on
    // two connections: the second, after a reconnect, onto a session that replaced ours.
    let pinned = epoch ?? null;
    for (;;) {
      const got = await this.readEvents({ afterSeq, limit: page });
      if (got.epoch !== null) {
        if (pinned === null) pinned = got.epoch;
        else if (got.epoch !== pinned) throw new EpochChanged(pinned, got.epoch, afterSeq);
      }
      const last = got.events.at(-1);
      if (last === undefined) return;
      yield got;
      if (last.seq >= got.lastSeq) return;
      afterSeq = last.seq;
    }
  }

  /**
   * Every event of the log after `afterSeq`, read with {@link BambooClient#eventPages}:
   * all of one log, else {@link EpochChanged}, never two logs joined.
   * @param {{ afterSeq?: number, page?: number, epoch?: string | null }} [options]
   * @returns {Promise<StoredEvent[]>}
   */
  async readAllEvents({ afterSeq = 0, page = 1000, epoch = null } = {}) {
    /** @type {StoredEvent[]} */
    const events = [];
    for await (const got of this.eventPages({ afterSeq, page, epoch })) events.push(...got.events);
    return events;
  }

  /**
   * Ask for a session state; `"closed"` ends the session for every peer. Resolves to
   * the session's `last_seq`.
   * @param {"active" | "idle" | "closed"} state @returns {Promise<number>}
   */
  async setState(state) {
    const ack = await this.#request({ type: "state", state });
    return ack.seq;
  }

  /** A round trip to the server, in ms. @returns {Promise<number>} */
  async ping() {
    const started = performance.now();
    await this.#request({ type: "ping" });
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
      const item = await this.#next();
      if (item === END) {
        if (this.#failure instanceof SessionEnded) return;
        throw this.#failure;
      }
      yield item;
    }
  }

  // -- request plumbing -------------------------------------------------------------------

  /** @param {Record<string, unknown>} frame @param {boolean} [isPublish] @returns {Promise<any>} */
  #request(frame, isPublish = false) {
    if (this.#failure !== null) return Promise.reject(this.#failure);
    const id = this.#nextId++;
    frame.id = id;
    // Encoded now: a resend carries exactly what was asked, whatever the caller does
    // with its objects afterwards.
    const data = JSON.stringify(frame);
    /** @type {Pending} */
    const pending = {
      data,
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
    this.#pending.set(id, pending);
    if (this.#paused) this.#unpause(); // its reply must come, whatever the queue holds
    if (this.#ready && this.#ws !== null) {
      // Sent now; if the connection drops first, the reconnect resends it.
      pending.sentOn = this.#generation;
      this.#send(this.#ws, data);
    } else {
      this.#pauseIfIdle(); // held back from a connection that skips: resume to send it
    }
    const timeout = this.#options.requestTimeout;
    if (timeout == null) return reply;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // A publish stays pending until answered: it may be stored already, and its
        // seq must be accounted for.
        if (!isPublish && this.#pending.delete(id)) this.#pauseIfIdle();
        reject(new RequestTimeout(`no reply to ${pending.type} in ${timeout} ms`));
      }, timeout);
      reply.then(
        (value) => (clearTimeout(timer), resolve(value)),
        (error) => (clearTimeout(timer), reject(error)),
      );
    });
  }

  /** @param {unknown} id @param {any} result @param {Error} [error] */
  #answer(id, result, error) {
    const pending = typeof id === "number" ? this.#pending.get(id) : undefined;
    if (pending === undefined) return; // a reply to no waiting request
    this.#pending.delete(/** @type {number} */ (id));
    if (error) pending.reject(error);
    else pending.resolve(result);
    if (pending.isPublish) this.#seq.check(this.#unansweredPublishes());
    this.#pauseIfIdle();
  }

  #unansweredPublishes() {
    let count = 0;
    for (const pending of this.#pending.values()) if (pending.isPublish) count += 1;
    return count;
  }

  /** @param {WebSocket} ws @param {string} data a JSON frame */
  #send(ws, data) {
    try {
      ws.send(data);
    } catch {
      // The connection is going: its close handler reconnects and resends.
    }
  }

  /** Send every request not yet sent on this connection, oldest first. @param {WebSocket} ws */
  #resend(ws) {
    for (const pending of this.#pending.values()) {
      if (pending.sentOn === this.#generation) continue;
      if (pending.sentOn >= 0) this.resent += 1;
      pending.sentOn = this.#generation;
      this.#send(ws, pending.data);
    }
  }

  /** @returns {Promise<QueueItem>} */
  #next() {
    const head = this.#queue[0];
    if (head === undefined) return new Promise((resolve) => (this.#waiter = resolve));
    const [item, size] = head;
    if (item === END) return Promise.resolve(item); // END stays, for any later iteration
    this.#queue.shift();
    this.#queuedBytes -= size;
    if (this.#overflowed && this.#drained()) {
      if (this.#paused) this.#unpause();
      else {
        // Requests await replies on this connection: send no more on it, and let the
        // last reply close it (#pauseIfIdle) and resume at once.
        this.#ready = false;
        this.#pauseIfIdle();
      }
    }
    return Promise.resolve(item);
  }

  /** @param {QueueItem} item @param {number} [size] its frame's bytes */
  #push(item, size = 0) {
    const waiter = this.#waiter;
    if (waiter !== null && this.#queue.length === 0) {
      this.#waiter = null;
      waiter(item);
      if (item !== END) return;
    }
    this.#queue.push([item, size]);
    this.#queuedBytes += size;
  }

  #full() {
    const { maxQueuedEvents, maxQueuedBytes } = this.#options;
    return this.#queue.length >= maxQueuedEvents || this.#queuedBytes >= maxQueuedBytes;
  }

  /** Read down to half of both bounds. */
  #drained() {
    const { maxQueuedEvents, maxQueuedBytes } = this.#options;
    const half = (/** @type {number} */ n) => Math.floor(n / 2);
    return this.#queue.length <= half(maxQueuedEvents) && this.#queuedBytes <= half(maxQueuedBytes);
  }

  /** Requests sent on this connection and not yet answered. */
  #inFlight() {
    let count = 0;
    for (const pending of this.#pending.values()) {
      if (pending.sentOn === this.#generation) count += 1;
    }
    return count;
  }

  /**
   * A connection that skipped events is closed as soon as no reply is awaited on it
   * (a reply after the close would be lost): the next connection resumes from the last
   * event queued. Paused until the queue is read down; at once when it already is.
   */
  #pauseIfIdle() {
    const ws = this.#ws;
    if (!this.#overflowed || ws === null || this.#inFlight() > 0) return;
    this.#ws = null; // its close is ours: #onClose ignores it
    this.#ready = false;
    ws.close(1000, "events queue full");
    this.#behind = true; // it skipped events: only a resume brings them
    this.#paused = true;
    if (this.#drained()) this.#unpause();
    else this.#setState("paused");
  }

  /** Connect again after a pause, resuming from the last event queued. */
  #unpause() {
    this.#paused = false;
    if (!this.#options.reconnect) {
      const why = "events skipped past the full events queue need a resume";
      this.#finish(this.#lost(`${why}, and reconnect is off`));
      return;
    }
    this.#attempts = 0; // a pause is no failure: its connection was fine
    void this.#reconnect(new Retry("events queue read down"));
  }

  // -- connection -------------------------------------------------------------------------

  /** @param {string | undefined} token */
  #hello(token) {
    const first = this.#generation === 0;
    const lastSeq = first ? this.#resumeFrom : this.#seq.resume();
    const o = this.#options;
    return {
      type: "hello",
      token,
      user_id: o.userId,
      title: o.title,
      create: Boolean(o.create) && first, // a reconnect never creates a session
      last_seq: lastSeq ?? undefined,
      epoch: lastSeq != null ? (this.#epoch ?? undefined) : undefined,
      role: o.role,
    };
  }

  /**
   * One connection: the current token, upgrade, hello, welcome, then every unanswered
   * request resent. Rejects with {@link Retry} for failures worth retrying, a
   * {@link ClientError} for the others, and what a token function threw.
   * @returns {Promise<void>}
   */
  async #open() {
    const token = await this.#currentToken();
    if (this.#failure !== null) throw this.#failure; // closed while the token came
    return this.#dial(token);
  }

  /** The token for the next connection: the fixed one, or what the function gives now.
   * @returns {Promise<string | undefined>} */
  async #currentToken() {
    const { token } = this.#options;
    if (typeof token !== "function") return token;
    const fresh = await token();
    if (typeof fresh !== "string") {
      throw new TypeError(`the token function gave ${typeof fresh}, not a string`);
    }
    return fresh;
  }

  /** @param {string | undefined} token @returns {Promise<void>} */
  #dial(token) {
    const url = streamUrl(this.#baseUrl, this.#sessionId);
    return new Promise((resolve, reject) => {
      /** @type {WebSocket} */
      let ws;
      try {
        ws = new this.#WebSocket(url, [SUBPROTOCOL]);
      } catch (error) {
        reject(new Retry(`cannot connect: ${error}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      this.#opening = ws;
      let settled = false;
      let refusal = ""; // an error frame sent before the close
      /** @param {Error} error */
      const fail = (error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#opening = null;
        if (ws.readyState !== ws.CLOSED) ws.close();
        reject(error);
      };
      let timer = setTimeout(
        () => fail(new Retry("no upgrade in time")),
        this.#options.openTimeout,
      );
      ws.onopen = () => {
        clearTimeout(timer);
        timer = setTimeout(() => fail(new Retry("no welcome in time")), this.#options.openTimeout);
        this.#send(ws, JSON.stringify(this.#hello(token)));
      };
      ws.onerror = () => {}; // the close event that follows says what happened
      ws.onclose = (event) =>
        fail(closeError(event.code, event.reason || refusal, this.closedReason));
      ws.onmessage = (message) => {
        if (settled) return;
        const frame = decodeFrame(message.data);
        const problem = frame?.type === "welcome" ? welcomeProblem(frame, this.#sessionId) : null;
        if (frame?.type === "welcome" && this.#failure !== null) {
          fail(this.#failure); // closed while this connection was being opened
        } else if (problem !== null) {
          fail(new Refused(1008, `malformed welcome: ${problem}`));
        } else if (frame?.type === "welcome") {
          settled = true;
          clearTimeout(timer);
          this.#opening = null;
          this.#welcomed(frame);
          this.#attach(ws);
          resolve();
        } else if (frame?.type === "error") {
          refusal = String(frame.message);
        } else if (frame?.type === "closed") {
          this.closedReason = String(frame.reason);
        } else {
          fail(new Refused(1008, `no welcome: ${frame === null ? "malformed frame" : frame.type}`));
        }
      };
    });
  }

  /** @param {any} welcome */
  #welcomed(welcome) {
    const askedToResume = this.#generation > 0 || this.#resumeFrom !== null;
    const previousEpoch = this.#epoch;
    const previousLastSeq = this.#seq.resumePoint; // what the hello asked
    this.#overflowed = false;
    this.#behind = false; // resumed, or reset (a Reset tells the application)
    this.#reached = welcome.last_seq;
    this.#sessionId = welcome.session.id;
    this.session = welcome.session;
    this.connectionId = welcome.connection_id;
    this.connections = welcome.session.connections;
    this.closedReason = null;
    this.#epoch = welcome.epoch;
    if (!askedToResume) {
      this.#seq = new SequenceCheck(welcome.last_seq); // live events only, from here
    } else if (!welcome.resumed) {
      this.#seq = new SequenceCheck(welcome.last_seq);
      if (this.#options.receiveEvents) {
        this.#push({
          reset: true,
          epoch: welcome.epoch,
          lastSeq: welcome.last_seq,
          previousEpoch,
          previousLastSeq,
        });
      }
    }
  }

  /** Make a welcomed connection the one in use. @param {WebSocket} ws */
  #attach(ws) {
    this.#ws = ws;
    this.#welcomedAt = performance.now();
    this.#generation += 1;
    if (this.#generation > 1) this.reconnects += 1;
    ws.onmessage = (message) => this.#onMessage(ws, message.data);
    this.#paused = false;
    ws.onclose = (event) => this.#onClose(ws, event.code, event.reason);
    this.#resend(ws);
    this.#ready = true;
    this.#setState("open");
  }

  /** @param {WebSocket} ws @param {unknown} data */
  #onMessage(ws, data) {
    if (ws !== this.#ws || this.#failure !== null) return;
    const frame = decodeFrame(data);
    try {
      if (frame === null) throw new ClientError("malformed frame from the server");
      this.#handle(frame, typeof data === "string" ? utf8Length(data) : byteLength(data));
    } catch (error) {
      this.#finish(error instanceof ClientError ? error : new ClientError(String(error)));
    }
  }

  /** @param {any} frame @param {number} size its bytes */
  #handle(frame, size) {
    switch (frame.type) {
      case "event": {
        if (!Number.isSafeInteger(frame.seq)) throw new ClientError("event without a seq");
        if (this.#options.receiveEvents && (this.#overflowed || this.#full())) {
          // Not checked, not queued: as if it had not come. The next connection
          // resumes before it.
          this.#overflowed = true;
          this.skippedEvents += 1;
          this.#pauseIfIdle();
          break;
        }
        const deliver = this.#seq.event(frame.seq, this.#unansweredPublishes());
        if (deliver && this.#options.receiveEvents) {
          this.#push({ seq: frame.seq, ts: frame.ts, event: frame.event }, size);
        }
        break;
      }
      case "ack": {
        const pending = typeof frame.id === "number" ? this.#pending.get(frame.id) : undefined;
        if (pending?.isPublish) {
          // A seq that is no whole number (0.5) would count as seen and hide a gap.
          if (!Number.isSafeInteger(frame.seq)) throw new ClientError("ack without a seq");
          if (!frame.duplicate) this.#seq.see(frame.seq, "ack");
          // Stored before a drop that lost its ack: it fills the hole.
          else if (this.#seq.isHole(frame.seq)) this.#seq.see(frame.seq, "ack");
        }
        this.#answer(frame.id, frame);
        break;
      }
      case "history":
      case "events":
      case "pong":
        this.#answer(frame.id, frame);
        break;
      case "error":
        if (frame.id == null) {
          this.#dispatch("warning", { code: frame.code, message: frame.message });
        } else {
          this.#answer(frame.id, null, new RequestError(frame.code, frame.message));
        }
        break;
      case "presence":
        this.connections = frame.connections;
        this.#dispatch("presence", {
          joined: frame.joined ?? undefined,
          left: frame.left ?? undefined,
          role: frame.role,
          connections: frame.connections,
        });
        break;
      case "closed":
        this.closedReason = frame.reason;
        break;
      default: // a second welcome, or a frame type from a later protocol version
        break;
    }
  }

  /** @param {WebSocket} ws @param {number} code @param {string} reason */
  #onClose(ws, code, reason) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    this.#ready = false;
    if (this.#failure !== null) return;
    const error = this.#tokenExpired(code)
      ? new Retry("token expired")
      : closeError(code, reason, this.closedReason);
    // What the server still had for us went with this connection when it skipped
    // events, or when the server dropped us as too slow to read.
    if (error instanceof Retry && (this.#overflowed || code === 4429)) this.#behind = true;
    if (!(error instanceof Retry)) this.#finish(this.#unlessBehind(error));
    else if (!this.#options.reconnect)
      this.#finish(this.#lost(`connection lost: ${error.message}`));
    else void this.#reconnect(error);
  }

  /**
   * Events due to this client were not delivered, and only a resume brings them:
   * skipped past its full queue, or dropped with a connection (`#behind`,
   * `#overflowed`), or not received at all: `events()` stops below the last seq the
   * session is known to have reached (a welcome's `last_seq`, which a resume's replay
   * goes up to, or a higher seq from an event or an ack of ours), as when the session
   * is closed while the replay is being sent and the client does not take it in time.
   * A publish-only client (`receiveEvents: false`) is owed none, whatever dropped its
   * connections (a 4429 for its own frame rate included).
   * @returns {boolean}
   */
  #owesEvents() {
    if (!this.#options.receiveEvents) return false;
    if (this.#behind || this.#overflowed) return true;
    return this.#seq.resumePoint < Math.max(this.#reached, this.#seq.highest);
  }

  /**
   * `error`, unless the session ended (1000, or a resume refused with 4409) while
   * events due to this client were not delivered (`#owesEvents`): skipped past
   * its full queue, dropped with a connection, or a replay the close cut short. No
   * resume can bring those now, so `events()` must not end as if it had them all: a
   * {@link ConnectionLost} names the seq to read after.
   * @param {ClientError} error @returns {ClientError}
   */
  #unlessBehind(error) {
    if (!(error instanceof SessionEnded) || !this.#owesEvents()) return error;
    return this.#lostAfter(error);
  }

  /**
   * The end of a client whose session ended while it was disconnected (a resume
   * refused with 4409): it saw no `closed` on a connection it read, so events may have
   * been appended while it was away (a publisher that resumed first after a restart,
   * then closed the session). A client that takes events asks the HTTP API once
   * whether the log holds one after the last it delivered: if so, or if the answer
   * cannot be had, the end is a {@link ConnectionLost} naming that seq; if not, `error`.
   * Should the answer be of another epoch's log (the session was replaced meanwhile:
   * deleted and created again under its id), the events after that seq went with the
   * log they were of, and none of the new one follows it: `events()` yields a
   * {@link Reset} saying so, then ends with `error`, as for a resume refused because
   * of another epoch.
   * @param {SessionEnded} error @returns {Promise<ClientError>}
   */
  async #endedWhileAway(error) {
    if (!this.#options.receiveEvents || this.#owesEvents() || this.#sessionId === null) {
      return this.#unlessBehind(error);
    }
    let found;
    try {
      found = await this.#eventsAfter(this.#sessionId, this.#seq.resumePoint);
    } catch (failure) {
      return this.#lostAfter(error, failure instanceof Error ? failure.message : String(failure));
    }
    if (this.#failure !== null) return error; // closed meanwhile: it is over already
    if (found.epoch !== null && found.epoch !== this.#epoch) {
      const reset = {
        reset: /** @type {const} */ (true),
        epoch: found.epoch,
        lastSeq: found.lastSeq,
        previousEpoch: this.#epoch,
        previousLastSeq: this.#seq.resumePoint,
      };
      this.#epoch = found.epoch;
      this.#seq = new SequenceCheck(found.lastSeq);
      this.#push(reset);
      return error;
    }
    return found.added ? this.#lostAfter(error) : error;
  }

  /**
   * Whether the session's log holds an event after `afterSeq`, its `last_seq`, and
   * the epoch of that log (null from a server that does not say): `GET
   * /api/v1/sessions/{id}/events?after_seq=…&limit=1` on the server's port, with this
   * client's token, within `openTimeout`. Rejects when the answer cannot be had (no
   * connection, a timeout, a status other than 200, a malformed body).
   * @param {string} sessionId @param {number} afterSeq
   * @returns {Promise<{ added: boolean, lastSeq: number, epoch: string | null }>}
   */
  async #eventsAfter(sessionId, afterSeq) {
    if (typeof fetch !== "function") throw new TypeError("no fetch here");
    const token = await this.#currentToken();
    /** @type {Record<string, string>} */
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(eventsUrl(this.#baseUrl, sessionId, afterSeq, 1), {
      headers,
      signal: AbortSignal.timeout(this.#options.openTimeout),
    });
    if (response.status !== 200) throw new Error(`HTTP ${response.status}`);
    const page = await response.json();
    if (!Array.isArray(page?.events) || !Number.isSafeInteger(page.last_seq))
      throw new Error("malformed events page");
    const epoch = typeof page.epoch === "string" ? page.epoch : null;
    return { added: page.events.length > 0, lastSeq: page.last_seq, epoch };
  }

  /**
   * The {@link ConnectionLost} that ends a client whose session ended before it had
   * every event: those after the last it delivered are to be read over HTTP.
   * `unchecked`: why the server could not be asked whether there are any (then they
   * *may* be missing).
   * @param {SessionEnded} error @param {string} [unchecked] @returns {ConnectionLost}
   */
  #lostAfter(error, unchecked) {
    const after = this.#seq.resumePoint;
    const read = `read them over HTTP: GET /api/v1/sessions/${this.#sessionId}/events?after_seq=${after}`;
    if (unchecked !== undefined) {
      return this.#lost(
        `${error.reason} while this client was away, and the events after seq ${after}` +
          ` may not have been delivered to it: asking the server failed (${unchecked}; ${read})`,
        error,
      );
    }
    return this.#lost(
      `${error.reason}, with the events after seq ${after} not delivered to this client (${read})`,
      error,
    );
  }

  /** A {@link ConnectionLost} that ends this client, naming the last seq delivered.
   * @param {string} message @param {ClientError} [cause] */
  #lost(message, cause) {
    return new ConnectionLost(message, { afterSeq: this.#seq.resumePoint, cause });
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

  /** Reconnect with backoff until welcomed, refused, given up or closed. @param {Error} error */
  async #reconnect(error) {
    this.#setState("reconnecting");
    if (performance.now() - this.#welcomedAt >= STABLE_AFTER) this.#attempts = 0;
    const { maxRetries } = this.#options;
    while (this.#failure === null) {
      const attempts = this.#attempts;
      if (maxRetries != null && attempts >= maxRetries) {
        this.#finish(this.#lost(`gave up after ${attempts} attempts: ${error.message}`));
        return;
      }
      await this.#sleep(this.#backoff(attempts));
      if (this.#failure !== null) return;
      this.#attempts += 1;
      try {
        await this.#open();
        return;
      } catch (failure) {
        if (failure instanceof Retry) error = failure;
        else if (failure instanceof SessionEnded) this.#finish(await this.#endedWhileAway(failure));
        else this.#finish(this.#unlessBehind(asClientError(failure)));
      }
    }
  }

  /** Full jitter: uniform in [0, min(max, initial * 2**attempt)]; the first retry waits
   * at least half of it, so a closing server is not hammered. @param {number} attempt */
  #backoff(attempt) {
    const { backoffInitial, backoffMax } = this.#options;
    const ceiling = Math.min(backoffMax, backoffInitial * 2 ** attempt);
    const floor = attempt === 0 ? ceiling / 2 : 0;
    return floor + Math.random() * (ceiling - floor);
  }

  /** A wait that `close()` cuts short. @param {number} ms @returns {Promise<void>} */
  #sleep(ms) {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#sleeper = null;
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.#sleeper = { timer, wake };
    });
  }

  /** End this client: fail what waits, end `events()`, close the connection.
   * @param {ClientError} failure */
  #finish(failure) {
    if (this.#failure !== null) return;
    this.#failure = failure;
    this.#ready = false;
    for (const pending of this.#pending.values()) pending.reject(failure);
    this.#pending.clear();
    this.#push(END);
    this.#sleeper?.wake();
    for (const ws of [this.#ws, this.#opening]) {
      if (ws !== null && ws.readyState !== ws.CLOSING && ws.readyState !== ws.CLOSED) {
        ws.close(1000);
      }
    }
    this.#setState("closed", failure);
  }

  /** @param {ConnectionState} state @param {ClientError} [error] */
  #setState(state, error) {
    if (this.#state === state) return;
    this.#state = state;
    this.#dispatch("state", error ? { state, error } : { state });
  }

  /** @param {string} type @param {unknown} detail */
  #dispatch(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** What ends the client for `failure`: itself when a {@link ClientError}, else (a token
 * function that threw) a ClientError whose `cause` it is. @param {unknown} failure */
function asClientError(failure) {
  if (failure instanceof ClientError) return failure;
  const error = new ClientError(`client failed: ${failure}`);
  error.cause = failure;
  return error;
}

/**
 * What makes a welcome unusable, or null. Checked before the client takes it in, so
 * that a broken (or hostile) server's welcome is a refusal rather than a connect that
 * never settles; and one for another session than the one asked for is refused too.
 * @param {any} welcome @param {string | null} sessionId the session asked for, if any
 * @returns {string | null}
 */
function welcomeProblem(welcome, sessionId) {
  const session = welcome.session;
  if (session === null || typeof session !== "object") return "no session";
  const id = session.id;
  if (typeof id !== "string" || !SESSION_ID.test(id) || id === "." || id === "..") {
    return "no valid session id";
  }
  if (sessionId !== null && id !== sessionId) return `session ${id}, not ${sessionId}`;
  if (typeof welcome.epoch !== "string") return "no epoch";
  if (!Number.isSafeInteger(welcome.last_seq) || welcome.last_seq < 0) return "no last_seq";
  return null;
}

/** The bytes of `text` in UTF-8, without encoding it. @param {string} text */
function utf8Length(text) {
  let bytes = text.length; // one per UTF-16 unit, then what more each takes
  for (let i = 0; i < text.length; i += 1) {
    const unit = text.charCodeAt(i);
    if (unit >= 0x800) bytes += unit >= 0xd800 && unit <= 0xdfff ? 1 : 2;
    else if (unit >= 0x80) bytes += 1;
  }
  return bytes;
}

/** @param {unknown} data a binary frame */
function byteLength(data) {
  return data instanceof ArrayBuffer || ArrayBuffer.isView(data) ? data.byteLength : 0;
}

/** A server frame as an object, or null when it is not one. @param {unknown} data */
function decodeFrame(data) {
  try {
    const text =
      typeof data === "string" ? data : new TextDecoder().decode(/** @type {ArrayBuffer} */ (data));
    const frame = JSON.parse(text);
    return frame !== null && typeof frame === "object" && typeof frame.type === "string"
      ? frame
      : null;
  } catch {
    return null;
  }
}
