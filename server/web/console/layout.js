// @ts-check
/**
 * layout.js: how a session's page is laid out, and what it says when the server
 * refuses it. {@link layOut} arranges the elements the page fills (session.js makes
 * them): the link back to the list, the title and its badge, the status line, and
 * the cards of metadata, presence and actions, messages and live events.
 * {@link refusalText} words why the server would not let the page see or attach to
 * its session, and {@link deniesSession} whether the page then shows only that.
 */

import { Forbidden, NotFound, Unauthorized } from "/client/bamboo.js";
import { ApiError } from "./api.js";
import { fill, h } from "./dom.js";

/**
 * @typedef {object} SessionParts the elements of a session's page
 * @property {HTMLElement} badge its connection's state (badge.js)
 * @property {HTMLElement} status the line of notices under the title
 * @property {HTMLElement} meta @property {HTMLElement} presence
 * @property {HTMLElement} actions @property {HTMLElement} tail
 * @property {{ older: HTMLElement, el: HTMLElement }} messages the message list's
 *   button for older messages, and its list
 */

/**
 * Fill `root` with the page of session `sessionId`, made of `parts`.
 * @param {HTMLElement} root @param {string} sessionId @param {SessionParts} parts
 * @returns {HTMLElement} the cards
 */
export function layOut(root, sessionId, parts) {
  const cards = h(
    "div",
    { class: "session-grid" },
    h("section", { class: "card" }, h("h2", {}, "Metadata"), parts.meta),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Presence"),
      parts.presence,
      h("h2", {}, "Actions"),
      parts.actions,
    ),
    h(
      "section",
      { class: "card history" },
      h("h2", {}, "Messages"),
      parts.messages.older,
      parts.messages.el,
    ),
    h("section", { class: "card tail-card" }, h("h2", {}, "Live events"), parts.tail),
  );
  fill(
    root,
    h("p", {}, h("a", { href: "#/", class: "back" }, "← Sessions")),
    h(
      "h1",
      { class: "session-title" },
      h("span", { id: "session-title" }, sessionId),
      " ",
      parts.badge,
    ),
    parts.status,
    cards,
  );
  return cards;
}

/**
 * Whether `error` says the page has no session to show: this token may not see it
 * (403, 4403), or there is none (404, 4404). @param {unknown} error @returns {boolean}
 */
export function deniesSession(error) {
  if (error instanceof Forbidden || error instanceof NotFound) return true;
  return error instanceof ApiError && (error.status === 403 || error.status === 404);
}

/** Why the server refused the page, in words. @param {unknown} error @returns {string} */
export function refusalText(error) {
  if (error instanceof Forbidden || (error instanceof ApiError && error.status === 403)) {
    return "This token may not see this session.";
  }
  if (error instanceof NotFound || (error instanceof ApiError && error.status === 404)) {
    return "No such session: it was deleted, or has expired.";
  }
  if (error instanceof Unauthorized) return "The server refused the token.";
  return String(error instanceof Error ? error.message : error);
}
