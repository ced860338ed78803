// @ts-check
/**
 * handshake.js: opening one connection to a session (the upgrade, `hello`, `welcome`),
 * and the one question the client asks the HTTP API on the same port.
 *
 * {@link dial} either hands the welcomed connection over (before its promise resolves,
 * so that no frame of it can be missed) or rejects with what the attempt means: a
 * {@link Retry} when a later attempt may succeed (no route, a timeout, a resumable close
 * code), a typed {@link ClientError} when it would not (a refusal, a closed session, a
 * welcome it cannot use). {@link eventsAfter} asks `GET /api/v1/sessions/{id}/events`
 * whether the log holds an event after a seq, and of which epoch that log is (for a
 * session that ended, or was replaced, while the client was away); told to ask again
 * later (a 429 or a 503 with `Retry-After`), it does, as told.
 *
 * @module bamboo/handshake
 */

import { ClientError, Refused, Retry, closeError } from "./errors.js";
import { decodeFrame, sendQuietly } from "./frames.js";
import { letGo } from "./sockets.js";
import { eventsUrl, isSessionId } from "./urls.js";

export const SUBPROTOCOL = "bamboo.v1";
// Ms {@link eventsAfter} waits in all, as the `Retry-After` of a 429 (its peer's read
// allowance in debt, or its unread answers at their part) or of a 503 (the server's
// buffer for answers full) asks, before it gives up and says why: a client that
// resumed a long log on a busy host may well be in debt when its session ends.
export const RETRY_AFTER_PATIENCE = 60_000;

/**
 * @typedef {object} Dial what one attempt takes from the client, and tells it
 * @property {typeof WebSocket} WebSocket the class to connect with
 * @property {string} url the session's stream URL
 * @property {string | null} sessionId the session asked for, if any
 * @property {number} openTimeout ms for the upgrade, then as many for the welcome
 * @property {() => Record<string, unknown>} hello the `hello`, made once the upgrade is
 *   done (it says where to resume from as of that moment)
 * @property {(ws: WebSocket | null) => void} opening the connection being opened, then
 *   null once the attempt is settled: the client closes it if it ends meanwhile
 * @property {() => ClientError | null} failure why the client ended, if it has
 * @property {(reason: string) => void} closed a `closed` frame came before the welcome
 * @property {(ws: WebSocket, welcome: any) => void} welcomed takes the connection in
 */

/** The token for the next connection: the fixed one, or what the function gives now.
 * @param {import("./types.js").TokenSource | undefined} token
 * @returns {Promise<string | undefined>} */
export async function tokenNow(token) {
  if (typeof token !== "function") return token;
  const fresh = await token();
  if (typeof fresh !== "string") {
    throw new TypeError(`the token function gave ${typeof fresh}, not a string`);
  }
  return fresh;
}

/**
 * One attempt: upgrade, `hello`, `welcome`. Resolves once `d.welcomed` took the
 * connection in; rejects with {@link Retry} for failures worth retrying, a
 * {@link ClientError} for the others.
 * @param {Dial} d @returns {Promise<void>}
 */
export function dial(d) {
  return new Promise((resolve, reject) => {
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new d.WebSocket(d.url, [SUBPROTOCOL]);
    } catch (error) {
      reject(new Retry(`cannot connect: ${error}`));
      return;
    }
    ws.binaryType = "arraybuffer";
    d.opening(ws);
    let settled = false;
    let refusal = ""; // an error frame sent before the close
    // The reason of a `closed` frame on this connection: a 1000 or 4409 that follows is
    // the session's end it names. One of an earlier connection (a restart's, before its
    // 1012) says nothing of this one's refusal.
    /** @type {string | null} */
    let closedHere = null;
    /** @param {Error} error @param {boolean} [silent] nothing came in time: the path
     * may be dead, and its socket is released at once where it can be */
    const fail = (error, silent = false) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      d.opening(null);
      letGo(ws, { silent });
      reject(error);
    };
    let timer = setTimeout(() => fail(new Retry("no upgrade in time"), true), d.openTimeout);
    let opened = false;
    ws.onopen = () => {
      opened = true;
      clearTimeout(timer);
      timer = setTimeout(() => fail(new Retry("no welcome in time"), true), d.openTimeout);
      sendQuietly(ws, JSON.stringify(d.hello()));
    };
    // An error before the upgrade is a failed attempt: Node 20's WebSocket reports a
    // refused or unreachable upgrade with `error` alone and never fires `close`, so
    // waiting for the close cost `openTimeout` per attempt instead of the backoff.
    // Browsers and Node 22 fire `close` (1006) after it: `fail` settles once, so that
    // close counts for nothing more. After the upgrade, the close that follows an
    // error says what happened (its code), so the error itself is left to it.
    ws.onerror = () => {
      if (!opened) fail(new Retry("the connection failed before it opened"));
    };
    ws.onclose = (event) => fail(closeError(event.code, event.reason || refusal, closedHere));
    ws.onmessage = (message) => {
      if (settled) return;
      const frame = decodeFrame(message.data);
      const problem = frame?.type === "welcome" ? welcomeProblem(frame, d.sessionId) : null;
      const failure = d.failure();
      if (frame?.type === "welcome" && failure !== null) {
        fail(failure); // closed while this connection was being opened
      } else if (problem !== null) {
        fail(new Refused(1008, `malformed welcome: ${problem}`));
      } else if (frame?.type === "welcome") {
        settled = true;
        clearTimeout(timer);
        d.opening(null);
        d.welcomed(ws, frame);
        resolve();
      } else if (frame?.type === "error") {
        refusal = String(frame.message);
      } else if (frame?.type === "closed") {
        closedHere = String(frame.reason);
        d.closed(closedHere);
      } else {
        fail(new Refused(1008, `no welcome: ${frame === null ? "malformed frame" : frame.type}`));
      }
    };
  });
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
  if (typeof id !== "string" || !isSessionId(id)) return "no valid session id";
  if (sessionId !== null && id !== sessionId) return `session ${id}, not ${sessionId}`;
  if (typeof welcome.epoch !== "string") return "no epoch";
  if (!Number.isSafeInteger(welcome.last_seq) || welcome.last_seq < 0) return "no last_seq";
  return null;
}

/**
 * Whether the session's log holds an event after `afterSeq`, its `last_seq`, and
 * the epoch of that log (null from a server that does not say): `GET
 * /api/v1/sessions/{id}/events?after_seq=…&limit=1` on the server of `baseUrl`, with
 * the client's token, each request within `timeout` ms. A 429 or 503 that says when to
 * ask again (`Retry-After`) is asked again then, through `wait` (which resolves to
 * false when the client has ended meanwhile), for RETRY_AFTER_PATIENCE ms of waits in
 * all. Rejects when the answer cannot be had (no connection, a timeout, a status
 * other than 200, past that patience too, a malformed body).
 * @param {string} baseUrl @param {string} sessionId @param {number} afterSeq
 * @param {() => Promise<string | undefined>} token @param {number} timeout
 * @param {(ms: number) => Promise<boolean>} [wait] waits `ms`; whether to go on
 * @returns {Promise<{ added: boolean, lastSeq: number, epoch: string | null }>}
 */
export async function eventsAfter(baseUrl, sessionId, afterSeq, token, timeout, wait = sleep) {
  if (typeof fetch !== "function") throw new TypeError("no fetch here");
  let waited = 0;
  for (;;) {
    const bearer = await token();
    /** @type {Record<string, string>} */
    const headers = { Accept: "application/json" };
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const response = await fetch(eventsUrl(baseUrl, sessionId, afterSeq, 1), {
      headers,
      signal: AbortSignal.timeout(timeout),
    });
    const delay = retryAfter(response);
    if (delay !== null && waited + delay <= RETRY_AFTER_PATIENCE) {
      await response.body?.cancel();
      if (!(await wait(delay))) throw new Error(`HTTP ${response.status}`);
      waited += delay;
      continue;
    }
    if (response.status !== 200) throw new Error(`HTTP ${response.status}`);
    const page = await response.json();
    if (!Array.isArray(page?.events) || !Number.isSafeInteger(page.last_seq))
      throw new Error("malformed events page");
    const epoch = typeof page.epoch === "string" ? page.epoch : null;
    return { added: page.events.length > 0, lastSeq: page.last_seq, epoch };
  }
}

/**
 * The ms a 429 or a 503 asks to wait before the request is made again (its
 * `Retry-After`, in seconds), else null: another status, or no such header (or one
 * a page of another origin may not read: the server exposes it to the origins it
 * serves). @param {Response} response @returns {number | null}
 */
export function retryAfter(response) {
  if (response.status !== 429 && response.status !== 503) return null;
  const value = response.headers.get("Retry-After")?.trim() ?? "";
  // At least a second: a `Retry-After: 0` would have the client ask again at once.
  return /^[0-9]+$/.test(value) ? Math.max(1, Number(value)) * 1000 : null;
}

/** @param {number} ms @returns {Promise<boolean>} */
function sleep(ms) {
  return new Promise((resolve) => setTimeout(() => resolve(true), ms));
}
