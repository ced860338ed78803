// @ts-check
/**
 * api.js: the console's side of the server's JSON API, and the token it uses.
 *
 * The token lives in sessionStorage (this tab only, gone when it closes) and travels
 * as `Authorization: Bearer …`, never in a URL.
 */

const TOKEN_KEY = "bamboo.console.token";

/** An HTTP error from the API: `status`, and the `code` of its JSON error body. */
export class ApiError extends Error {
  /** @param {number} status @param {string} code @param {string} message */
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
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
 * GET a JSON resource of this server; throws {@link ApiError} on an HTTP error.
 * @param {string} path @param {Record<string, string | number | undefined>} [params]
 * @returns {Promise<any>}
 */
export async function getJson(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== "") url.searchParams.set(name, String(value));
  }
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, { headers, cache: "no-store" });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body?.error ?? {};
    throw new ApiError(response.status, error.code ?? "http", error.message ?? response.statusText);
  }
  return body;
}
