// @ts-check
/**
 * types.js: the shapes of what the client takes and gives, as JSDoc types (no code):
 * the events of the protocol, the session's metadata, the pages and resets it returns,
 * its states, and the options of `BambooClient.connect`. bamboo.js exports each
 * under the same name.
 *
 * @module bamboo/types
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
 * @typedef {{ state: ConnectionState, error?: import("./errors.js").ClientError,
 *   code?: number | null, reason?: string }} StateChange
 *   `error`, with `"closed"`: why the client ended. `code` and `reason`, with
 *   `"reconnecting"`: the close that made it reconnect, as the client saw it (the
 *   server's close code and reason; a null code and `"connection lost"` when no close
 *   frame came, as when the network dropped; a null code and `"connection silent"`
 *   when nothing came on it in time, a ping's answer included (`pingTimeout`); 1000
 *   and `"events queue full"` when it closed the connection itself to pause). With `"closed"`: the close that ended it,
 *   the code `error` carries: the server's (1000 or 4409 and `"session closed"` when
 *   the session ended, 4404 `"session deleted"`, 4401 `"token expired"`, …, also when
 *   `error` is a `ConnectionLost` whose `cause` is the session's end), 1000 and
 *   `"client closed"` after `close()`; with `reconnect: false`, the close that would
 *   have been resumed (as `"reconnecting"` says it); else (given up after
 *   `maxRetries`, a frame it cannot take, a token function that threw) a null code
 *   and `error`'s message.
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
 * @property {number | null} [maxRetries] failed reconnect attempts in a row before
 *   {@link ConnectionLost}, counted since the last connection that recovered (brought
 *   an event new to the client or an ack of its publish, or held 10 s); a connection
 *   welcomed and dropped with nothing new is a failed attempt; default null (no limit)
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
 * @property {number | null} [pingInterval] ms without a frame from the server after
 *   which the client sends a `ping`; null: no liveness check; default 20000
 * @property {number} [pingTimeout] ms after that `ping` without any frame after which
 *   the connection is dead (though not closed: a silent network) and the client resumes
 *   on another, beyond the ping's time behind the client's own bytes; default 15000
 * @property {number} [minUplinkRate] bytes a second the connection carries the client's
 *   frames at, at least, while alive: the wait for a `ping`'s answer grows by what was
 *   sent before it, not answered yet, and may still be ahead of it at that rate (a
 *   large publish over a slow uplink); default 8192
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (Node < 22: the `ws` package's)
 *
 * @typedef {ConnectOptions & {
 *   create: boolean, role: "client" | "agent", reconnect: boolean,
 *   maxRetries: number | null, backoffInitial: number, backoffMax: number,
 *   openTimeout: number, requestTimeout: number | null, receiveEvents: boolean,
 *   maxQueuedEvents: number, maxQueuedBytes: number, pingInterval: number | null,
 *   pingTimeout: number, minUplinkRate: number
 * }} Settings
 *   The options with their defaults filled in, as the client keeps them (internal:
 *   bamboo.js does not export it).
 */

export {};
