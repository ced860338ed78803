// @ts-check
/**
 * tail.js: a session's events as a person reads them. Consecutive `token` events grow
 * one block of text (and `thinking` ones another), tool calls are collapsible blocks
 * that their result or error completes, and everything else is one line. At most
 * MAX_BLOCKS blocks are kept; older ones are dropped from the page.
 */

import { h, json } from "./dom.js";

const MAX_BLOCKS = 1000;

export class Tail {
  /** @param {HTMLElement} el */
  constructor(el) {
    this.el = el;
    /** @type {{ kind: string, block: HTMLElement, text: HTMLElement } | null} the growing text */
    this.open = null;
    /** @type {Map<string, HTMLDetailsElement>} */
    this.tools = new Map();
    this.lastSeq = 0;
  }

  /**
   * Show one event. `own`: published from this page (the server does not echo it).
   * @param {{ seq: number, ts: string, event: any }} item @param {boolean} [own]
   */
  add(item, own = false) {
    const { seq, event } = item;
    const stick = this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 40;
    if (event.type === "token" || event.type === "thinking") {
      this.#grow(event.type, seq, String(event.content ?? ""));
    } else {
      this.open = null;
      const block = this.#block(item);
      if (block !== null) this.#append(block, own);
    }
    this.lastSeq = Math.max(this.lastSeq, seq);
    this.el.dataset.lastSeq = String(this.lastSeq);
    if (stick) this.el.scrollTop = this.el.scrollHeight;
  }

  /** A line saying that events were skipped or the stream changed. @param {string} text */
  note(text) {
    this.open = null;
    this.#append(h("div", { class: "ev ev-note" }, text));
  }

  /** @param {string} kind @param {number} seq @param {string} content */
  #grow(kind, seq, content) {
    if (this.open?.kind !== kind) {
      const text = h("span", { class: "text" });
      const block = h(
        "div",
        { class: `ev ev-${kind === "token" ? "text" : "thinking"}`, dataset: { from: seq } },
        h("span", { class: "seq" }, `#${seq}`),
        kind === "thinking" ? h("span", { class: "label" }, "thinking") : null,
        text,
      );
      this.open = { kind, block, text };
      this.#append(block);
    }
    this.open.text.append(content); // a text node per token: no re-layout of the whole
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
          m.content ?? "",
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
              h("b", {}, event.tool_name),
              " ",
              h("span", { class: "status" }, "running…"),
            ),
            h("div", { class: "label" }, "arguments"),
            h("pre", {}, json(event.arguments ?? null)),
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
            ? [h("div", { class: "label" }, "error"), h("pre", {}, String(event.error))]
            : [
                h("div", { class: "label" }, ok ? "result" : "failed"),
                h("pre", {}, resultText(event.result)),
              ];
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
            h("b", {}, event.tool_call_id),
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
          `error${event.code ? ` ${event.code}` : ""}: ${event.message}`,
        );
      case "state_change":
        return h("div", { class: "ev ev-state" }, tag, `state ${event.from} → ${event.to}`);
      case "custom":
        return h(
          "details",
          { class: "ev ev-custom" },
          h("summary", {}, tag, h("b", {}, event.name)),
          h("pre", {}, json(event.data ?? null)),
        );
      default:
        return h("div", { class: "ev" }, tag, json(event));
    }
  }

  /** @param {HTMLElement} block @param {boolean} [own] */
  #append(block, own = false) {
    if (own) block.classList.add("own");
    this.el.append(block);
    while (this.el.childElementCount > MAX_BLOCKS) this.el.firstElementChild?.remove();
  }
}

/** @param {any} result */
function resultText(result) {
  if (!result) return "";
  if (result.error) return `${result.content ?? ""}\n${result.error}`.trim();
  return String(result.content ?? "");
}
