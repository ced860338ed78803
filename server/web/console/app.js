// @ts-check
/**
 * app.js: the console's entry point. Routes on the URL's hash (`#/?filters` for the
 * session list, `#/s/<id>` for one session), asks for a token when the server wants
 * one, and keeps the server's figures in the top bar up to date.
 */

import { ApiError, getToken, setToken, tokenClaims, tokenOf, waits } from "./api.js";
import { fill, h, notice, refreshTimes } from "./dom.js";
import { showList } from "./list.js";
import { showSession } from "./session.js";
import { watchStats } from "./stats.js";

const main = /** @type {HTMLElement} */ (document.getElementById("main"));
const who = /** @type {HTMLElement} */ (document.getElementById("who"));
const waiting = /** @type {HTMLElement} */ (document.getElementById("waiting"));

/** @typedef {{ destroy(): void }} View */
/** @type {View | null} */
let current = null;

/**
 * What views call when the server wants a (better) token.
 * @param {string} [reason]
 */
function askForToken(reason) {
  current?.destroy();
  current = null;
  shown += 1; // what the gone view's reads say now says nothing of the next token
  // The top bar names no one while the page asks for a token: the one it named (and
  // would sign out) is refused, expired maybe while a page was watched.
  fill(who);
  const input = h("input", {
    id: "token-input",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "eyJhbGciOi…",
  });
  const form = h(
    "form",
    {
      id: "login",
      class: "card login",
      onsubmit: (/** @type {SubmitEvent} */ event) => {
        event.preventDefault();
        const token = tokenOf(/** @type {HTMLInputElement} */ (input).value);
        if (token === null) {
          askForToken(
            "That is not a token: a JWT is three parts of letters, digits, - and _ joined by dots.",
          );
          return;
        }
        setToken(token);
        render();
      },
    },
    h("h1", {}, "Sign in"),
    h("p", {}, "This server requires a token (a JWT). It is kept in this tab only."),
    reason ? h("p", { class: "notice notice-error", role: "alert" }, reason) : null,
    h("label", { for: "token-input" }, "Token"),
    input,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  fill(main, form);
  input.focus();
}

function showWho() {
  const token = getToken();
  if (!token) {
    fill(who);
    return;
  }
  const claims = tokenClaims(token);
  const label = claims?.sub ? `${claims.sub} (${claims.role ?? "user"})` : "token set";
  fill(
    who,
    h("span", { id: "who-name" }, label),
    h(
      "button",
      {
        type: "button",
        class: "link",
        onclick: () => {
          setToken(null);
          render();
        },
      },
      "Sign out",
    ),
  );
}

// Counts what the page showed (views, sign-in forms, …): a view's refusal counts only
// while nothing replaced it. A read a view made before it went may be answered after another token was
// given (sign out, sign in): its 401 is of the token it was made with, not of this one.
let shown = 0;

/**
 * The error handler of the view about to be shown: a refused token (401 over HTTP, 4401
 * on the stream: invalid, or expired) asks for a token; the rest is shown. A refusal
 * that comes once that view is gone is handled by doing nothing: the view is not
 * shown, and the token it names may be an earlier one. A refusal of another token than
 * the one in this tab's storage now (put there by something else than this page: a
 * script, the user's own tools; this page shows a view again whenever it sets one)
 * says nothing of that one either: the page is shown again with it, instead of
 * forgetting it as refused. Its own refusal, the first one, forgets it.
 */
function contextOfNextView() {
  const view = shown;
  return {
    /**
     * @param {unknown} error
     * @param {string | null} [sentWith] the token of a refusal that does not say it
     *   (the stream's 4401); an {@link ApiError} carries its own
     * @returns {boolean} true when handled (asking for a token, showing the page
     *   again, or nothing when the view is gone)
     */
    unauthorized(error, sentWith = null) {
      const status = error instanceof ApiError ? error.status : /** @type {any} */ (error)?.code;
      if (status !== 401 && status !== 4401) return false;
      if (view !== shown) return true;
      const refusedToken = error instanceof ApiError ? error.token : sentWith;
      if (refusedToken !== getToken()) {
        render();
        return true;
      }
      // Forgotten now, not when another is given: a reload would send it again, and ask
      // only once it is refused again. A server away or busy (no answer, a 503) is no
      // refusal, and its token is kept.
      setToken(null);
      askForToken(
        refusedToken !== null ? "That token was refused: it is invalid or has expired." : undefined,
      );
      return true;
    },
  };
}

/**
 * The session id of a `#/s/<id>` route, or null when it cannot be one: a link to the
 * console may say anything, and a `%` that decodes to nothing or an id such as `..`
 * (which would make the API's URL another path) must not get as far as a request.
 * @param {string} encoded @returns {string | null}
 */
function sessionIdOf(encoded) {
  let id;
  try {
    id = decodeURIComponent(encoded);
  } catch {
    return null;
  }
  return /^[A-Za-z0-9_.-]{1,128}$/.test(id) && id !== "." && id !== ".." ? id : null;
}

function render() {
  current?.destroy();
  shown += 1;
  showWho();
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?", 2);
  if (path.startsWith("/s/")) {
    const id = sessionIdOf(path.slice(3));
    if (id === null) {
      current = null;
      notice(main, "No such session: the address names no valid session id.");
    } else current = showSession(main, id, contextOfNextView());
  } else {
    current = showList(main, new URLSearchParams(query), contextOfNextView());
  }
}

/**
 * Reads the server told to ask again later (api.js) say so at the top of the page, for
 * as long as one of them waits: the page is not stuck, nor has it failed.
 */
function showWaits() {
  let count = 0;
  waits.addEventListener("wait", (event) => {
    const { seconds, status, message } = /** @type {CustomEvent} */ (event).detail;
    count += 1;
    waiting.hidden = false;
    waiting.textContent =
      `The server asked this console to wait (${status}: ${message}):` +
      ` asking again in ${seconds} s…`;
  });
  waits.addEventListener("waited", () => {
    count -= 1;
    if (count === 0) {
      waiting.hidden = true;
      waiting.textContent = "";
    }
  });
}

const TIMES_EVERY_MS = 10_000; // how often "… ago" is said again

window.addEventListener("hashchange", render);
showWaits();
render();
watchStats();
setInterval(refreshTimes, TIMES_EVERY_MS);
