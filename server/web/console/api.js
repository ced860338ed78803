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

/**
 * GET a JSON resource of this server; throws {@link ApiError} on an HTTP error. A 429 or
 * a 503 with `Retry-After` is asked again after it, while `alive()` (the view that
 * asked is still shown), for RETRY_PATIENCE ms of waits at most.
 * @param {string} path @param {Record<string, string | number | undefined>} [params]
 * @param {{ alive?: () => boolean }} [options]
 * @returns {Promise<any>}
 */
export async function getJson(path, params = {}, { alive = () => true } = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== "") url.searchParams.set(name, String(value));
  }
  let waited = 0;
  for (;;) {
    /** @type {Record<string, string>} */
    const headers = { Accept: "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(url, { headers, cache: "no-store" });
    const body = await response.json().catch(() => null);
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
