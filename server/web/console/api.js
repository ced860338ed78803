// @ts-check
/**
 * api.js: the console's side of the server's JSON API, and the token it uses.
 *
 * The token lives in sessionStorage (this tab only, gone when it closes, or as soon
 * as the server refuses it: app.js) and travels as `Authorization: Bearer …`, never
 * in a URL.
 *
 * A read the server refuses for now, saying when to ask again (a 429: this browser's
 * reads are over their allowance, or its answers not yet read over their part; a 503
 * with `Retry-After`: the server's buffer for answers is full), is asked again then,
 * for as long as the view that asked is shown: a console left open on a busy server,
 * or paging back through a long history, waits as told instead of ending on an error.
 * Each wait is announced on {@link waits} (the top of the page says it).
 */

const TOKEN_KEY = "bamboo.console.token";
// Ms of waits one read makes in all before it gives up and says why.
const RETRY_PATIENCE = 10 * 60_000;
// Ms a read may go without a byte of its answer before it gives up. A connection that
// died silently (a NAT that forgot it, a partition: no FIN, no RST) held a read, and the
// page's "Loading…", for as long as the browser kept the socket: a quarter of an hour of
// TCP retries, or for ever behind a proxy that still acknowledges. The browser reuses
// an idle kept-alive connection for the next read, so the first read after such a death
// lands on it. A page of the API is at most 1 MiB, sent as it is read.
export const READ_SILENCE = 30_000;

/**
 * Where the waits of reads told to ask again are announced: a `wait` event (`detail`:
 * `{ seconds, status, message }`) as one begins, a `waited` event as it ends.
 */
export const waits = new EventTarget();

/**
 * An HTTP error from the API: `status`, the `code` of its JSON error body, and the
 * `token` the request carried (null: none), which a 401 refuses.
 */
export class ApiError extends Error {
  /**
   * @param {number} status @param {string} code @param {string} message
   * @param {string | null} [token]
   */
  constructor(status, code, message, token = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.token = token;
  }
}

/** @returns {string | null} */
export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// A JWT (RFC 7519, compact form): letters, digits, `-` and `_`, in three parts joined by
// dots; each part may end in the `=` of base64 padding, which RFC 7515 leaves out but
// the server takes (PyJWT), so an issuer that pads locks nobody out. What a paste
// brings besides: the scheme of the header it was copied from, line breaks of a
// terminal that wrapped it, invisible characters of a web page.
const JWT = /^[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]*={0,2}$/;
const INVISIBLE = /[\u200b-\u200d\u2060\ufeff]/g;

/**
 * The token in what the sign-in form was given, or null when it holds none: without a
 * leading `Bearer` (any case), invisible characters and blanks. A JWT has no blank,
 * and a paste of one wrapped over lines has them where its line breaks were (an input
 * field turns each into a space).
 * @param {string} pasted @returns {string | null}
 */
export function tokenOf(pasted) {
  const text = pasted.replace(INVISIBLE, "").trim();
  const token = text.replace(/^bearer\s+/i, "").replace(/\s+/g, "");
  return JWT.test(token) ? token : null;
}

/**
 * Whether `token` can travel in a header: a browser's fetch throws a TypeError for
 * one that cannot (a character past Latin-1, a line break), before anything is sent,
 * where a token put in the tab's storage other than by the form would make every read
 * fail the same way.
 * @param {string} token @returns {boolean}
 */
function fitsAHeader(token) {
  return /^[\x21-\x7e]+$/.test(token);
}

/** @param {string | null} token */
export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/**
 * The claims a JWT says it carries (unverified: for display only; the server checks).
 * @param {string | null} token @returns {{ sub?: string, role?: string, sid?: string } | null}
 */
export function tokenClaims(token) {
  const payload = token?.split(".")[1];
  if (!payload) return null;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** A read given up: nothing of its answer came for `silence` ms. */
export class ReadSilent extends Error {
  /** @param {number} silence */
  constructor(silence) {
    super(`no answer from the server for ${Math.round(silence / 1000)} s`);
    this.name = "ReadSilent";
  }
}

/**
 * `fetch(url)` and its body as text, given up with {@link ReadSilent} (its socket
 * with it) once `silence` ms pass without a byte of the answer: before the head, or
 * between two chunks of the body.
 * @param {URL} url @param {Record<string, string>} headers @param {number} silence
 * @returns {Promise<{ response: Response, text: string }>}
 */
async function fetchText(url, headers, silence) {
  const controller = new AbortController();
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const heard = () => {
    clearTimeout(timer);
    timer = setTimeout(() => controller.abort(new ReadSilent(silence)), silence);
  };
  heard();
  try {
    const response = await fetch(url, { headers, cache: "no-store", signal: controller.signal });
    heard();
    const decoder = new TextDecoder();
    let text = "";
    const reader = /** @type {ReadableStream<Uint8Array>} */ (response.body).getReader();
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      heard();
      text += decoder.decode(chunk.value, { stream: true });
    }
    return { response, text: text + decoder.decode() };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * GET a JSON resource of this server; throws {@link ApiError} on an HTTP error, and
 * {@link ReadSilent} when nothing of the answer came for `silence` ms (READ_SILENCE).
 * A 429 or a 503 with `Retry-After` is asked again after it, while `alive()` (the view
 * that asked is still shown), for RETRY_PATIENCE ms of waits at most.
 * @param {string} path @param {Record<string, string | number | undefined>} [params]
 * @param {{ alive?: () => boolean, silence?: number }} [options]
 * @returns {Promise<any>}
 */
export async function getJson(
  path,
  params = {},
  { alive = () => true, silence = READ_SILENCE } = {},
) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== "") url.searchParams.set(name, String(value));
  }
  let waited = 0;
  for (;;) {
    /** @type {Record<string, string>} */
    const headers = { Accept: "application/json" };
    const token = getToken();
    if (token && !fitsAHeader(token)) {
      // Refused as the server would refuse it, so that it is forgotten and another asked for.
      throw new ApiError(401, "unauthorized", "the token cannot be sent in a header", token);
    }
    if (token) headers.Authorization = `Bearer ${token}`;
    const { response, text } = await fetchText(url, headers, silence);
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      // Not JSON (a proxy's error page, say): the status says what happened.
    }
    if (response.ok) return body;
    const error = body?.error ?? {};
    const failure = new ApiError(
      response.status,
      error.code ?? "http",
      error.message ?? response.statusText,
      token,
    );
    const seconds = retryAfter(response);
    if (seconds === null || waited + seconds * 1000 > RETRY_PATIENCE || !alive()) throw failure;
    const detail = { seconds, status: failure.status, message: failure.message };
    waits.dispatchEvent(new CustomEvent("wait", { detail }));
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    waits.dispatchEvent(new Event("waited"));
    waited += seconds * 1000;
    if (!alive()) throw failure;
  }
}

/**
 * The seconds a 429 or a 503 asks to wait before the request is made again (its
 * `Retry-After`, in seconds), else null. @param {Response} response
 * @returns {number | null}
 */
function retryAfter(response) {
  if (response.status !== 429 && response.status !== 503) return null;
  const value = response.headers.get("Retry-After")?.trim() ?? "";
  // At least a second: a `Retry-After: 0` would have the console ask again at once.
  return /^[0-9]+$/.test(value) ? Math.max(1, Number(value)) : null;
}
