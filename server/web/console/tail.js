// @ts-check
/**
 * tail.js: a session's events as a person reads them. Consecutive `token` events grow
 * one block of text (and `thinking` ones another), tool calls are collapsible blocks
 * that their result or error completes, and everything else is one line. At most
 * MAX_BLOCKS blocks are kept; older ones are dropped from the page.
 *
 * Events come from any peer of the session, so what they cost the page is bounded:
 * a block shows at most MAX_CHARS characters (a growing text block goes on in a new
 * block; a longer value is cut), because laying out a block costs its whole text, and
 * the page is measured (to follow the end) once per frame, not once per event. A text
 * block's tokens join its last text node rather than each add a node of its own.
 */

import { NO_RUN, breakable, clip, h, json } from "./dom.js";

/** @typedef {import("./dom.js").RunEnd} RunEnd */

export const MAX_BLOCKS = 1000;
const MAX_CHARS = 10_000; // characters of one block
const MAX_NAME = 200; // characters of a name or an id in a block's heading

/** A value of an event as text that fits in a block. @param {unknown} value */
function text(value, max = MAX_CHARS) {
  return breakable(clip(typeof value === "string" ? value : String(value ?? ""), max))[0];
}

export class Tail {
  /** @param {HTMLElement} el */
  constructor(el) {
    this.el = el;
    /** @type {{ kind: string, block: HTMLElement, text: HTMLElement, size: number, end: RunEnd } | null}
     * the growing text, its characters, and where it ends (breakable) */
    this.open = null;
    /** @type {Map<string, HTMLDetailsElement>} */
    this.tools = new Map();
    this.lastSeq = 0;
    /** @type {boolean | null} whether the end was in view when this frame's events began */
    this.following = null;
  }

  /**
   * Show one event. `own`: published from this page (the server does not echo it).
   * @param {{ seq: number, ts: string, event: any }} item @param {boolean} [own]
   */
  add(item, own = false) {
    const { seq, event } = item;
    this.#follow();
    if (event.type === "token" || event.type === "thinking") {
      this.#grow(event.type, seq, String(event.content ?? ""));
    } else {
      this.open = null;
      const block = this.#block(item);
      if (block !== null) this.#append(block, own);
    }
    this.lastSeq = Math.max(this.lastSeq, seq);
    this.el.dataset.lastSeq = String(this.lastSeq);
  }

  /** Keep the end in view if it was: measured at the first event of a frame only, as
   * a measure lays out what changed since, and scrolled when the frame is drawn. */
  #follow() {
    if (this.following !== null) return;
    this.following = this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 40;
    requestAnimationFrame(() => {
      if (this.following) this.el.scrollTop = this.el.scrollHeight;
      this.following = null;
    });
  }

  /** A line saying that events were skipped or the stream changed.
   * @param {string} text @returns {HTMLElement} the line (to take it back) */
  note(text) {
    this.#follow(); // a line, as an event: two in a row would leave the end behind
    this.open = null;
    const line = h("div", { class: "ev ev-note" }, text);
    this.#append(line);
    return line;
  }

  /** @param {string} kind @param {number} seq @param {string} content */
  #grow(kind, seq, content) {
    if (this.open?.kind !== kind || this.open.size + content.length > MAX_CHARS) {
      const text = h("span", { class: "text" });
      const block = h(
        "div",
        { class: `ev ev-${kind === "token" ? "text" : "thinking"}`, dataset: { from: seq } },
        h("span", { class: "seq" }, `#${seq}`),
        kind === "thinking" ? h("span", { class: "label" }, "thinking") : null,
        text,
      );
      this.open = { kind, block, text, size: 0, end: NO_RUN };
      this.#append(block);
    }
    const shown = clip(content, MAX_CHARS);
    const [nodes, end] = breakable(shown, this.open.end); // tokens add up to one run
    // A token is a few characters: as a node of its own each, a full block held
    // thousands of nodes, and the tail's bound hundreds of MB of them. Text that needs
    // no break goes on the block's last text node instead.
    const last = this.open.text.lastChild;
    if (typeof nodes === "string" && last instanceof Text) last.appendData(nodes);
    else this.open.text.append(nodes);
    this.open.size += shown.length;
    this.open.end = end;
    this.open.block.dataset.to = String(seq);
  }

  /** A new block, or null when the event completed a block already shown.
   * @param {{ seq: number, ts: string, event: any }} item @returns {HTMLElement | null} */
  #block({ seq, event }) {
    const tag = h("span", { class: "seq" }, `#${seq}`);
    switch (event.type) {
      case "message": {
        const m = event.message ?? {};
        return h(
          "div",
          { class: `ev ev-message role-${m.role}` },
          tag,
          h("b", {}, m.role),
          " ",
          text(m.content),
        );
      }
      case "tool_start": {
        const details = /** @type {HTMLDetailsElement} */ (
          h(
            "details",
            { class: "ev ev-tool", dataset: { tool: event.tool_call_id, status: "running" } },
            h(
              "summary",
              {},
              tag,
              h("b", {}, text(event.tool_name, MAX_NAME)),
              " ",
              h("span", { class: "status" }, "running…"),
            ),
            h("div", { class: "label" }, "arguments"),
            h("pre", {}, text(json(event.arguments ?? null))),
          )
        );
        this.tools.set(event.tool_call_id, details);
        return details;
      }
      case "tool_complete":
      case "tool_error": {
        const details = this.tools.get(event.tool_call_id);
        const ok = event.type === "tool_complete" && event.result?.success;
        const body =
          event.type === "tool_error"
            ? [h("div", { class: "label" }, "error"), h("pre", {}, text(event.error))]
            : [
                h("div", { class: "label" }, ok ? "result" : "failed"),
                h("pre", {}, text(resultText(event.result))),
              ];
        this.tools.delete(event.tool_call_id); // completed: later results get a block of their own
        if (details !== undefined && details.isConnected) {
          details.dataset.status = ok ? "done" : "failed";
          const status = details.querySelector(".status");
          if (status) status.textContent = ok ? `done (#${seq})` : `failed (#${seq})`;
          details.append(...body);
          return null;
        }
        return h(
          "details",
          {
            class: "ev ev-tool",
            dataset: { tool: event.tool_call_id, status: ok ? "done" : "failed" },
          },
          h(
            "summary",
            {},
            tag,
            h("b", {}, text(event.tool_call_id, MAX_NAME)),
            " ",
            h("span", { class: "status" }, ok ? "done" : "failed"),
          ),
          ...body,
        );
      }
      case "complete": {
        const u = event.usage;
        const usage = u
          ? ` (${u.prompt_tokens} + ${u.completion_tokens} = ${u.total_tokens} tokens)`
          : "";
        return h("div", { class: "ev ev-complete" }, tag, `complete${usage}`);
      }
      case "error":
        return h(
          "div",
          { class: "ev ev-error" },
          tag,
          text(`error${event.code ? ` ${event.code}` : ""}: ${event.message}`),
        );
      case "state_change":
        return h("div", { class: "ev ev-state" }, tag, text(`state ${event.from} → ${event.to}`));
      case "custom":
        return h(
          "details",
          { class: "ev ev-custom" },
          h("summary", {}, tag, h("b", {}, text(event.name, MAX_NAME))),
          h("pre", {}, text(json(event.data ?? null))),
        );
      default:
        return h("div", { class: "ev" }, tag, text(json(event)));
    }
  }

  /** @param {HTMLElement} block @param {boolean} [own] */
  #append(block, own = false) {
    if (own) block.classList.add("own");
    this.el.append(block);
    while (this.el.childElementCount > MAX_BLOCKS) {
      const gone = /** @type {HTMLElement} */ (this.el.firstElementChild);
      gone.remove();
      // A tool call that never completed goes from the map too, not to be kept alive by it.
      const tool = gone.dataset.tool;
      if (tool !== undefined && this.tools.get(tool) === gone) this.tools.delete(tool);
    }
  }
}

/** @param {any} result */
function resultText(result) {
  if (!result) return "";
  if (result.error) return `${result.content ?? ""}\n${result.error}`.trim();
  return String(result.content ?? "");
}
