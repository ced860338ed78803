// @ts-check
/**
 * urls.js: where the client connects and reads on a server given by its base URL
 * (`ws://host:8765`, `http://host:8765` or, in a page, a relative URL): the stream
 * endpoint of a session, and its events over HTTP; and what a valid session id is,
 * checked before any of them is built.
 *
 * @module bamboo/urls
 */

export const STREAM_PATH = "/api/v1/stream";
const SESSION_ID = /^[A-Za-z0-9_.-]{1,128}$/;

/** Whether `id` is a valid session id (`.` and `..` are not). @param {string} id */
export function isSessionId(id) {
  return SESSION_ID.test(id) && id !== "." && id !== "..";
}

/** `sessionId`, or a TypeError when it is no valid session id.
 * @param {string} sessionId @returns {string} */
export function checkSessionId(sessionId) {
  if (!isSessionId(sessionId)) {
    throw new TypeError(`invalid session id: ${JSON.stringify(sessionId)}`);
  }
  return sessionId;
}

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
