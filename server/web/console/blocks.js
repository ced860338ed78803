// @ts-check
/**
 * blocks.js: a session's events as the tail's blocks (tail.js keeps them, bounded).
 * Consecutive `token` events grow one block of text (and `thinking` ones another),
 * tool calls are collapsible blocks that their result or error completes, and
 * everything else is one block. Each block of an event says its first seq
 * (`data-from`), so that the tail knows which events it no longer shows, and a tool
 * call's block the seq of the result it holds (`data-result`); a result shown without
 * its call (its call's block had left the tail) is `data-kind="result"`, which
 * joinResult puts into the call's block when "Show earlier" brings that back.
 *
 * Events come from any peer of the session, so what they cost the page is bounded:
 * a block shows at most MAX_CHARS characters (a growing text block goes on in a new
 * block; a longer value is cut), because laying out a block costs its whole text. A
 * text block's tokens join its last text node rather than each add a node of its own.
 */

import { NO_RUN, breakable, clip, h, json } from "./dom.js";

/** @typedef {import("./dom.js").RunEnd} RunEnd */
/** @typedef {{ seq: number, ts: string, event: any }} Item */
/** What an event did: `block`, a new block (null: it grew or completed `grown`, a block
 * shown already, or showed nothing); `chars`, the characters it added to `grown`.
 * @typedef {{ block: HTMLElement | null, grown: HTMLElement | null, chars: number }} Shown */

export const MAX_CHARS = 10_000; // characters of one block
const MAX_NAME = 200; // characters of a name or an id in a block's heading

/** A value of an event as text that fits in a block. @param {unknown} value */
function text(value, max = MAX_CHARS) {
  return breakable(clip(typeof value === "string" ? value : String(value ?? ""), max))[0];
}

/** The blocks of one run of events, in order: the text block growing, the tool calls
 * waiting for their result. */
export class Blocks {
  /** @type {{ kind: string, block: HTMLElement, text: HTMLElement, size: number, end: RunEnd } | null}
   * the growing text, its characters, and where it ends (breakable) */
  open = null;
  /** @type {Map<string, HTMLDetailsElement>} */
  tools = new Map();

  /** @param {Item} item @returns {Shown} */
  add(item) {
    const { event } = item;
    if (event.type === "token" || event.type === "thinking")
      return this.#grow(event.type, item.seq, String(event.content ?? ""));
    this.open = null;
    if (event.type === "tool_complete" || event.type === "tool_error") {
      const details = this.tools.get(event.tool_call_id);
      this.tools.delete(event.tool_call_id); // completed: later results get a block of their own
      // (A block that left the tail was forgotten: see forget.)
      if (details !== undefined) return completed(details, item);
    }
    const block = eventBlock(item);
    if (event.type === "tool_start") {
      this.tools.set(event.tool_call_id, /** @type {HTMLDetailsElement} */ (block));
    }
    return { block, grown: block, chars: block.textContent?.length ?? 0 };
  }

  /** The next event starts a block of its own. */
  close() {
    this.open = null;
  }

  /** A running tool call's block brought back into the tail, with no block of its id
   * after it there: its result, when it comes, completes it. @param {HTMLElement} call */
  adopt(call) {
    const id = /** @type {string} */ (call.dataset.tool);
    if (!this.tools.has(id)) this.tools.set(id, /** @type {HTMLDetailsElement} */ (call));
  }

  /** A block that left the tail, or a call's block that a result read back completed
   * (earlier.js): nothing grows it or completes it any more. @param {HTMLElement} block */
  forget(block) {
    if (this.open?.block === block) this.open = null;
    const tool = block.dataset.tool;
    if (tool !== undefined && this.tools.get(tool) === block) this.tools.delete(tool);
  }

  /** @param {string} kind @param {number} seq @param {string} content @returns {Shown} */
  #grow(kind, seq, content) {
    /** @type {HTMLElement | null} */
    let block = null;
    let chars = 0;
    if (this.open?.kind !== kind || this.open.size + content.length > MAX_CHARS) {
      const text = h("span", { class: "text" });
      block = h(
        "div",
        {
          class: `ev ev-${kind === "token" ? "text" : "thinking"}`,
          dataset: { from: seq },
        },
        h("span", { class: "seq" }, `#${seq}`),
        kind === "thinking" ? h("span", { class: "label" }, "thinking") : null,
        text,
      );
      chars = block.textContent?.length ?? 0;
      this.open = { kind, block, text, size: 0, end: NO_RUN };
    }
    const open = this.open;
    const shown = clip(content, MAX_CHARS);
    const [nodes, end] = breakable(shown, open.end); // tokens add up to one run
    // A token is a few characters: as a node of its own each, a full block held
    // thousands of nodes, and the tail's bound hundreds of MB of them. Text that needs
    // no break goes on the block's last text node instead.
    const last = open.text.lastChild;
    if (typeof nodes === "string" && last instanceof Text) last.appendData(nodes);
    else open.text.append(nodes);
    open.size += shown.length;
    open.end = end;
    open.block.dataset.to = String(seq);
    return { block, grown: open.block, chars: chars + shown.length };
  }
}

/** A tool call's block, shown already, completed by its result or error.
 * @param {HTMLDetailsElement} details @param {Item} item @returns {Shown} */
function completed(details, { seq, event }) {
  const ok = event.type === "tool_complete" && event.result?.success;
  const body = toolBody(event);
  details.dataset.status = ok ? "done" : "failed";
  details.dataset.result = String(seq); // (so that the tail knows which result it holds)
  const status = details.querySelector(".status");
  const before = status?.textContent?.length ?? 0;
  if (status) status.textContent = ok ? `done (#${seq})` : `failed (#${seq})`;
  details.append(...body);
  const chars = (status?.textContent?.length ?? 0) - before;
  return {
    block: null,
    grown: details,
    chars: body.reduce((n, el) => n + size(el), chars),
  };
}

/**
 * A tool call's block brought back (by the tail's "Show earlier") above a block of its
 * result alone (the call's block had left the tail when the result came): the result
 * goes into the call's block, as it would have had the call's block stayed, and its
 * own block is left empty for the tail to drop. The characters the call's block gained.
 * @param {HTMLElement} call @param {HTMLElement} result @returns {number}
 */
export function joinResult(call, result) {
  const status = call.querySelector("summary .status");
  const before = status?.textContent?.length ?? 0;
  const done = result.querySelector("summary .status")?.textContent ?? "";
  if (status) status.textContent = `${done} (#${result.dataset.from})`;
  call.dataset.status = result.dataset.status;
  call.dataset.result = result.dataset.from;
  const body = [...result.children].filter((child) => child.tagName !== "SUMMARY");
  call.append(...body);
  return body.reduce((n, el) => n + size(el), (status?.textContent?.length ?? 0) - before);
}

/** @param {Node} node */
function size(node) {
  return node.textContent?.length ?? 0;
}

/** The result or the error of a tool call. @param {any} event @returns {HTMLElement[]} */
function toolBody(event) {
  const ok = event.type === "tool_complete" && event.result?.success;
  return event.type === "tool_error"
    ? [h("div", { class: "label" }, "error"), h("pre", {}, text(event.error))]
    : [
        h("div", { class: "label" }, ok ? "result" : "failed"),
        h("pre", {}, text(resultText(event.result))),
      ];
}

/** The block of an event that is not text. @param {Item} item @returns {HTMLElement} */
function eventBlock({ seq, event }) {
  const tag = h("span", { class: "seq" }, `#${seq}`);
  const from = { from: seq };
  switch (event.type) {
    case "message": {
      const m = event.message ?? {};
      return h(
        "div",
        { class: `ev ev-message role-${m.role}`, dataset: from },
        tag,
        h("b", {}, m.role),
        " ",
        text(m.content),
      );
    }
    case "tool_start":
      return h(
        "details",
        {
          class: "ev ev-tool",
          dataset: { ...from, tool: event.tool_call_id, status: "running" },
        },
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
      );
    case "tool_complete":
    case "tool_error": {
      const ok = event.type === "tool_complete" && event.result?.success;
      return h(
        "details",
        {
          class: "ev ev-tool",
          dataset: {
            ...from,
            tool: event.tool_call_id,
            status: ok ? "done" : "failed",
            kind: "result", // a result shown without its call
          },
        },
        h(
          "summary",
          {},
          tag,
          h("b", {}, text(event.tool_call_id, MAX_NAME)),
          " ",
          h("span", { class: "status" }, ok ? "done" : "failed"),
        ),
        ...toolBody(event),
      );
    }
    case "complete": {
      const u = event.usage;
      const usage = u
        ? ` (${u.prompt_tokens} + ${u.completion_tokens} = ${u.total_tokens} tokens)`
        : "";
      return h("div", { class: "ev ev-complete", dataset: from }, tag, `complete${usage}`);
    }
    case "error":
      return h(
        "div",
        { class: "ev ev-error", dataset: from },
        tag,
        text(`error${event.code ? ` ${event.code}` : ""}: ${event.message}`),
      );
    case "state_change":
      return h(
        "div",
        { class: "ev ev-state", dataset: from },
        tag,
        text(`state ${event.from} → ${event.to}`),
      );
    case "custom":
      return h(
        "details",
        { class: "ev ev-custom", dataset: from },
        h("summary", {}, tag, h("b", {}, text(event.name, MAX_NAME))),
        h("pre", {}, text(json(event.data ?? null))),
      );
    default:
      return h("div", { class: "ev", dataset: from }, tag, text(json(event)));
  }
}

/** At most how many characters an event adds to the tail (its block alone, which is
 * at least what it adds to a block shown already). @param {Item} item */
export function shownChars(item) {
  const { event } = item;
  if (event.type === "token" || event.type === "thinking")
    return `#${item.seq}thinking`.length + clip(String(event.content ?? ""), MAX_CHARS).length;
  return size(eventBlock(item));
}

/** @param {any} result */
function resultText(result) {
  if (!result) return "";
  if (result.error) return `${result.content ?? ""}\n${result.error}`.trim();
  return String(result.content ?? "");
}
