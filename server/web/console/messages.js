// @ts-check
/**
 * messages.js: a session's message list on its page. History comes a page at a time,
 * newest first: the page that ends where the list begins, through the client while
 * the page is attached, else from the HTTP API (a closed session's storage). Messages
 * that arrive live are appended; past MAX_MESSAGES shown, the oldest go (and "Load
 * older" brings them back), so a session flooded with messages cannot fill the page.
 * A long value is cut: laying out a block of text costs its whole length. The list
 * opens scrolled to its newest message, and follows live ones while its end is in view,
 * as a chat does: the newest page's oldest message first would hide what just happened.
 */

import { getJson } from "./api.js";
import { breakable, clip, fill, h, json, timeEl } from "./dom.js";

export const PAGE = 50; // messages per history page
const MAX_MESSAGES = 500;
const MAX_CHARS = 20_000; // characters of one message's content, or of one tool call's arguments

/** @typedef {(before: number) => Promise<{ messages: any[], hasMore: boolean }>} FetchPage */

/**
 * The pages of the stored history of the session at `path` (its `/api/v1/sessions/…`),
 * read while `alive()`. @param {string} path @param {() => boolean} alive
 * @returns {FetchPage}
 */
function storedPages(path, alive) {
  return async (before) => {
    const page = await getJson(path, { limit: PAGE, before }, { alive });
    return { messages: page.messages, hasMore: page.has_more };
  };
}

export class MessageList {
  oldest = 0; // index of the oldest message shown
  /** @type {boolean | null} whether the end was in view when this frame's messages began */
  following = null;
  /** @type {FetchPage} */
  fetchPage = async () => ({ messages: [], hasMore: false });

  /**
   * @param {HTMLElement} status where a failed read is said
   * @param {() => boolean} alive whether the page still shows the session
   * @param {(error: unknown) => boolean} [unauthorized] takes a refused token (401) in
   *   hand, as every read of the page does (app.js): true when it did
   */
  constructor(status, alive, unauthorized = () => false) {
    this.status = status;
    this.alive = alive;
    this.unauthorized = unauthorized;
    this.el = h("ol", { id: "messages", class: "messages" });
    this.older = h(
      "button",
      { type: "button", id: "older", hidden: true, onclick: () => this.loadOlder() },
      "Load older messages",
    );
  }

  /**
   * History read with `fetchPage`, from its newest page: the one that ends at `end`.
   * @param {FetchPage} fetchPage @param {number} end
   */
  async open(fetchPage, end) {
    this.fetchPage = fetchPage;
    this.oldest = end;
    await this.loadOlder();
  }

  /**
   * History from storage (a closed session): the page already read, then older ones
   * from the HTTP API, each ending where the last began.
   * @param {string} path @param {any} stored the answer of the HTTP API
   */
  showStored(path, stored) {
    this.fetchPage = storedPages(path, this.alive);
    this.#showPage(stored);
  }

  /**
   * The list from storage again, newest page first (what the page showed may lack some).
   * @param {string} path
   */
  reload(path) {
    this.fetchPage = storedPages(path, this.alive);
    fill(this.el);
    void getJson(path, { limit: PAGE }, { alive: this.alive })
      .then((stored) => {
        if (this.alive()) this.#showPage(stored);
      })
      .catch((error) => {
        if (this.alive() && !this.unauthorized(error))
          this.status.append(` Could not load messages: ${error}`);
      });
  }

  async loadOlder() {
    const before = this.oldest;
    this.older.setAttribute("disabled", "");
    try {
      const page = await this.fetchPage(before);
      if (this.oldest !== before) {
        // Live messages took the list past its cap meanwhile and its oldest went: the
        // page no longer joins it. Nothing is added; the button asks from the new start.
        this.older.hidden = false;
        return;
      }
      this.#prepend(page.messages, page.hasMore);
    } catch (error) {
      if (this.alive() && !this.unauthorized(error))
        this.status.textContent = `Could not load messages: ${error}`;
    } finally {
      this.older.removeAttribute("disabled");
    }
  }

  /** A message that arrived live, at the end. @param {any} message */
  add(message) {
    this.#follow();
    this.el.append(this.#message(message, this.el.childElementCount + this.oldest));
    while (this.el.childElementCount > MAX_MESSAGES) {
      this.el.firstElementChild?.remove();
      this.oldest += 1;
      this.older.hidden = false;
    }
    const count = document.getElementById("meta-message_count");
    if (count) count.textContent = String(this.oldest + this.el.childElementCount);
  }

  /** Keep the end in view if it was: measured once a frame, as the tail does (tail.js). */
  #follow() {
    if (this.following !== null) return;
    const el = this.el;
    this.following = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    requestAnimationFrame(() => {
      if (this.following) el.scrollTop = el.scrollHeight;
      this.following = null;
    });
  }

  /** The newest page of an answer of the HTTP API. @param {any} stored */
  #showPage(stored) {
    this.oldest = stored.start + stored.messages.length;
    this.#prepend(stored.messages, stored.has_more);
  }

  /** @param {any[]} messages the page that ends at this.oldest @param {boolean} hasMore */
  #prepend(messages, hasMore) {
    const first = this.el.childElementCount === 0; // the newest page: show its end
    this.oldest -= messages.length;
    this.el.prepend(...messages.map((m, i) => this.#message(m, this.oldest + i)));
    this.older.hidden = !hasMore;
    if (first) this.el.scrollTop = this.el.scrollHeight;
  }

  /** @param {any} m @param {number} index */
  #message(m, index) {
    return h(
      "li",
      { class: `msg role-${m.role}`, dataset: { index } },
      h(
        "div",
        { class: "msg-head" },
        h("span", { class: `badge role-${m.role}` }, m.role),
        " ",
        timeEl(m.created_at),
      ),
      h("div", { class: "msg-body" }, breakable(clip(String(m.content ?? ""), MAX_CHARS))[0]),
      ...(m.tool_calls ?? []).map((/** @type {any} */ call) =>
        h(
          "details",
          { class: "tool-call" },
          h("summary", {}, clip(`tool call: ${call.name}`, 200)),
          h("pre", {}, clip(json(call.arguments ?? null), MAX_CHARS)),
        ),
      ),
    );
  }
}
