// @ts-check
/**
 * list.js: the session list. Its filters, sort and page live in the URL's hash
 * (`#/?state=active&offset=50`), so a view can be bookmarked and the back button
 * works; the times are the form's local ones, sent to the API as UTC. "Next" follows
 * the listing's `next_cursor` (`#/?cursor=…&from=50`: `from` only numbers the rows
 * shown), so sessions created or removed meanwhile neither repeat a row nor skip
 * one; "Previous" and the last-page link go by `offset`.
 */

import { ApiError, getJson } from "./api.js";
import { fill, h, notice, timeEl } from "./dom.js";

const STATES = ["active", "idle", "disconnected", "closed", "expired"];
const SORTS = ["last_activity_at", "created_at", "updated_at", "message_count"];
const PAGE_SIZES = ["10", "25", "50", "100"];
const TEXT_FILTERS = ["user_id", "title_contains"];
const TIME_FILTERS = ["created_after", "created_before", "active_after"];

/**
 * @param {HTMLElement} root @param {URLSearchParams} params
 * @param {{ unauthorized(error: unknown): boolean }} context
 */
export function showList(root, params, context) {
  const limit = PAGE_SIZES.includes(params.get("limit") ?? "") ? Number(params.get("limit")) : 25;
  const offset = Math.max(0, Number(params.get("offset")) || 0);
  const cursor = params.get("cursor");
  const results = h("section", { id: "results", class: "results", "aria-live": "polite" });
  fill(root, h("h1", {}, "Sessions"), filterForm(params), results);
  let alive = true;

  const load = async () => {
    notice(results, "Loading…", "info");
    /** @type {Record<string, string | number>} */
    const query = { limit, sort_by: params.get("sort_by") || SORTS[0] };
    if (cursor) query.cursor = cursor;
    else query.offset = offset;
    query.sort_order = params.get("sort_order") === "asc" ? "asc" : "desc";
    for (const name of [...TEXT_FILTERS, "state"]) {
      const value = params.get(name);
      if (value) query[name] = value;
    }
    for (const name of TIME_FILTERS) {
      const value = params.get(name);
      const date = value ? new Date(value) : null; // datetime-local: local time
      if (date && !Number.isNaN(date.getTime())) query[name] = date.toISOString();
    }
    try {
      const page = await getJson("/api/v1/sessions", query, { alive: () => alive });
      const shown = page.sessions.length > 0 || page.total === 0;
      if (alive)
        fill(results, shown ? table(page.sessions) : pastTheEnd(page, params), pager(page, params));
    } catch (error) {
      if (!alive || context.unauthorized(error)) return;
      const text = error instanceof ApiError ? `${error.status}: ${error.message}` : String(error);
      notice(results, `Could not list sessions (${text})`);
    }
  };
  void load();
  return {
    destroy() {
      alive = false;
    },
  };
}

/** @param {URLSearchParams} params */
function filterForm(params) {
  /** @param {string} name @param {string} label @param {HTMLElement} control */
  const field = (name, label, control) => {
    control.id = `f-${name}`;
    control.setAttribute("name", name);
    return h("div", { class: "field" }, h("label", { for: control.id }, label), control);
  };
  /** @param {string} name @param {string[]} options @param {string} [empty] */
  const select = (name, options, empty) => {
    const current = params.get(name) ?? (name === "limit" ? "25" : "");
    const el = h("select", {});
    if (empty !== undefined) el.append(h("option", { value: "" }, empty));
    for (const option of options) {
      el.append(
        h("option", { value: option, selected: option === current }, option.replaceAll("_", " ")),
      );
    }
    return el;
  };
  /** @param {string} name @param {string} type @param {string} [placeholder] */
  const input = (name, type, placeholder) =>
    h("input", { type, value: params.get(name) ?? "", placeholder: placeholder ?? false });

  const form = h(
    "form",
    { id: "filters", class: "filters card", onsubmit: apply },
    field("user_id", "User", input("user_id", "search", "any user")),
    field("state", "State", select("state", STATES, "any state")),
    field("title_contains", "Title contains", input("title_contains", "search")),
    field("created_after", "Created after", input("created_after", "datetime-local")),
    field("created_before", "Created before", input("created_before", "datetime-local")),
    field("active_after", "Active after", input("active_after", "datetime-local")),
    field("sort_by", "Sort by", select("sort_by", SORTS)),
    field("sort_order", "Order", select("sort_order", ["desc", "asc"])),
    field("limit", "Per page", select("limit", PAGE_SIZES)),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("a", { class: "button", href: "#/" }, "Reset"),
    ),
  );
  /** @param {SubmitEvent} event */
  function apply(event) {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [name, value] of new FormData(/** @type {HTMLFormElement} */ (form))) {
      if (typeof value === "string" && value.trim()) next.set(name, value.trim());
    }
    if (next.get("limit") === "25") next.delete("limit");
    if (next.get("sort_by") === SORTS[0]) next.delete("sort_by");
    if (next.get("sort_order") === "desc") next.delete("sort_order");
    navigate(next);
  }
  form.setAttribute("aria-label", "Filters");
  return form;
}

/** @param {URLSearchParams} params */
function navigate(params) {
  const query = params.toString();
  const hash = query ? `#/?${query}` : "#/";
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}

/** @param {any[]} sessions */
function table(sessions) {
  if (sessions.length === 0) return h("p", { class: "empty" }, "No sessions match.");
  const head = [
    "Session",
    "Title",
    "User",
    "State",
    "Msgs",
    "Events",
    "Conns",
    "Created",
    "Last activity",
  ];
  return h(
    "table",
    { id: "sessions", class: "sessions" },
    h("thead", {}, h("tr", {}, ...head.map((name) => h("th", { scope: "col" }, name)))),
    h(
      "tbody",
      {},
      ...sessions.map((s) =>
        h(
          "tr",
          { dataset: { id: s.id } },
          h(
            "td",
            { "data-label": "Session" },
            h("a", { href: `#/s/${encodeURIComponent(s.id)}` }, s.id),
          ),
          h("td", { "data-label": "Title" }, s.title ?? "–"),
          h("td", { "data-label": "User" }, s.user_id ?? "–"),
          h(
            "td",
            { "data-label": "State" },
            h("span", { class: `badge state-${s.state}` }, s.state),
          ),
          h("td", { "data-label": "Msgs", class: "num" }, s.message_count),
          h("td", { "data-label": "Events", class: "num" }, s.last_seq),
          h("td", { "data-label": "Conns", class: "num" }, s.connections),
          h("td", { "data-label": "Created" }, timeEl(s.created_at)),
          h("td", { "data-label": "Last activity" }, timeEl(s.last_activity_at)),
        ),
      ),
    ),
  );
}

/**
 * An empty page of a list that has sessions: its offset is past the end (an old link,
 * or sessions gone since). Say so, with a way back to the last page, rather than "No
 * sessions match" above "0 of 301".
 * @param {{ total: number, limit: number }} page @param {URLSearchParams} params
 */
function pastTheEnd({ total, limit }, params) {
  const next = new URLSearchParams(params);
  next.delete("cursor");
  next.delete("from");
  const last = Math.floor((total - 1) / limit) * limit;
  if (last > 0) next.set("offset", String(last));
  else next.delete("offset");
  return h(
    "p",
    { class: "empty" },
    `No sessions on this page: ${total} match, fewer than its start. `,
    h("a", { id: "last-page", href: `#/?${next}` }, "Go to the last page"),
  );
}

/**
 * @param {{ total: number, offset: number, limit: number, sessions: any[], next_cursor: string | null }} page
 * @param {URLSearchParams} params
 */
function pager(page, params) {
  const { total, limit } = page;
  const offset = params.get("cursor") ? Math.max(0, Number(params.get("from")) || 0) : page.offset;
  const shown = page.sessions.length;
  /** @param {number} to */
  const back = (to) => () => {
    const next = new URLSearchParams(params);
    next.delete("cursor");
    next.delete("from");
    if (to > 0) next.set("offset", String(to));
    else next.delete("offset");
    navigate(next);
  };
  const forward = () => {
    const next = new URLSearchParams(params);
    next.delete("offset");
    next.set("cursor", page.next_cursor ?? "");
    next.set("from", String(offset + shown));
    navigate(next);
  };
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    h(
      "button",
      {
        type: "button",
        id: "prev",
        disabled: offset === 0,
        onclick: back(Math.max(0, offset - limit)),
      },
      "← Previous",
    ),
    h(
      "span",
      { id: "range" },
      shown ? `${offset + 1}–${offset + shown} of ${total}` : `0 of ${total}`,
    ),
    h(
      "button",
      {
        type: "button",
        id: "next",
        disabled: page.next_cursor === null,
        onclick: forward,
      },
      "Next →",
    ),
  );
}
