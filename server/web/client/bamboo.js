// @ts-check
/**
 * bamboo.js: the JavaScript client of the Bamboo session protocol v1, with resume,
 * gap checks and exactly-once publish built in, for browsers and Node (22+ has a global
 * WebSocket; on older Node pass the `ws` package's as `{ WebSocket }`). It behaves like
 * the Python client, `bamboo_session.protocol.client`. This module is the one to import:
 * it exports the client's whole API, from dependency-free ES modules beside it that it
 * imports by relative URL (so they load from wherever it was loaded, any origin):
 * client.js ({@link BambooClient}), errors.js, types.js (the JSDoc types), urls.js,
 * frames.js, handshake.js, link.js (connections and resume), backoff.js (the waits
 * between attempts), changes.js (the connection state and its `"state"` events),
 * liveness.js (finding a silent connection), sockets.js (letting a connection go),
 * state.js (what the client knows of its session), sequence.js (the gap check),
 * feed.js (the events queue), pending.js (requests awaiting replies) and pages.js (the
 * log page by page).
 *
 * - One connection at a time to one session. When it drops for a reason the protocol
 *   says to resume from (close 1001, 1011, 1012, 1013, 4408, 4429, or a network
 *   failure), the client reconnects with exponential backoff and full jitter, sends
 *   `hello` with `last_seq` and `epoch`, and resends every unanswered request in its
 *   original order before any new one. A connection on which nothing comes for
 *   `pingInterval` (20 s), then nothing either within `pingTimeout` (15 s) of a
 *   `ping` (more when the ping waits behind a large frame: what was sent before it and
 *   not answered yet, at `minUplinkRate`), is silently dead (a browser cannot send WebSocket Pings): it is
 *   dropped without waiting for its close, and resumed the same way. Its socket is
 *   released at once where the WebSocket has `terminate()` (the `ws` package's: pass
 *   it on any Node); a browser ends the unanswered closing handshake itself (Chromium
 *   after 60 s, Firefox 20 s), while Node's built-in WebSocket holds the socket for as
 *   long as the path stays silent (sockets.js).
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
 * @typedef {import("./types.js").ToolResult} ToolResult
 * @typedef {import("./types.js").Usage} Usage
 * @typedef {import("./types.js").ToolCall} ToolCall
 * @typedef {import("./types.js").Message} Message
 * @typedef {import("./types.js").AgentEvent} AgentEvent
 * @typedef {import("./types.js").SessionMetadata} SessionMetadata
 * @typedef {import("./types.js").StoredEvent} StoredEvent
 * @typedef {import("./types.js").Reset} Reset
 * @typedef {import("./types.js").HistoryPage} HistoryPage
 * @typedef {import("./types.js").EventPage} EventPage
 * @typedef {import("./types.js").Presence} Presence
 * @typedef {import("./types.js").ConnectionState} ConnectionState
 * @typedef {import("./types.js").StateChange} StateChange
 * @typedef {import("./types.js").TokenSource} TokenSource
 * @typedef {import("./types.js").ConnectOptions} ConnectOptions
 * @typedef {import("./feed.js").QueueItem} QueueItem
 * @typedef {import("./pending.js").Pending} Pending
 */

export { BambooClient } from "./client.js";
export {
  ClientError,
  ConnectionLost,
  EpochChanged,
  Forbidden,
  NotFound,
  RESUME_CODES,
  Refused,
  RequestError,
  RequestTimeout,
  SequenceError,
  SessionEnded,
  Unauthorized,
} from "./errors.js";
export { MAX_QUEUED_BYTES, MAX_QUEUED_EVENTS } from "./feed.js";
export { newKey } from "./frames.js";
export { SUBPROTOCOL } from "./handshake.js";
export { STREAM_PATH, eventsUrl, streamUrl } from "./urls.js";
