// @ts-check
/**
 * badge.js: the badge beside a session's title, its connection's state in words. Its
 * `data-state` is the state itself (the client's, or `refused` when the server would
 * not let the page attach), for tests and styles; `data-reconnects` counts reconnects.
 */

import { h } from "./dom.js";

/** @type {Record<string, string>} what a state is called on the page, when not itself */
const LABELS = { open: "live", refused: "not attached" };

/** @returns {HTMLElement} the badge, saying the page is loading */
export function connBadge() {
  return h("span", { id: "conn-state", class: "badge" }, "loading");
}

/** @param {HTMLElement} badge @param {string} state @param {number} reconnects */
export function setBadge(badge, state, reconnects) {
  badge.textContent = LABELS[state] ?? state;
  badge.className = `badge conn-${state}`;
  badge.dataset.state = state;
  badge.dataset.reconnects = String(reconnects);
}
