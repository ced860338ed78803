// @ts-check
/**
 * meta.js: a session's metadata as the page shows it, a definition list with a row per
 * field. Each value's element has the id `meta-<field>`, by which the live path
 * updates it in place (the state, the last seq, the connections, the last activity).
 */

import { breakable, fill, h, json, timeEl, when } from "./dom.js";

/** The rows of `dl`, from `m` (the session's metadata). @param {HTMLElement} dl @param {any} m */
export function showMeta(dl, m) {
  /** @type {Array<[string, string | Node]>} */
  const rows = [
    ["id", m.id],
    ["title", m.title ?? "–"],
    ["user_id", m.user_id ?? "–"],
    ["state", m.state],
    ["created_at", when(m.created_at)],
    ["last_activity_at", timeEl(m.last_activity_at)],
    ["expires_at", m.expires_at ? when(m.expires_at) : "never"],
    ["message_count", String(m.message_count)],
    ["last_seq", String(m.last_seq)],
    ["epoch", m.epoch],
    ["connections", String(m.connections)],
  ];
  fill(
    dl,
    ...rows.flatMap(([name, value]) => [
      h("dt", {}, name.replaceAll("_", " ")),
      h("dd", { id: `meta-${name}` }, typeof value === "string" ? breakable(value)[0] : value),
    ]),
  );
  if (Object.keys(m.extra ?? {}).length)
    dl.append(h("dt", {}, "extra"), h("dd", {}, h("pre", {}, json(m.extra))));
}

/** The session was active at `ts` (a live event's time). @param {string} ts */
export function showActivity(ts) {
  document.getElementById("meta-last_activity_at")?.replaceChildren(timeEl(ts));
}
