// @ts-check
/**
 * earlier.js: the events the tail (tail.js) does not show, read back into it under the
 * line that stands for them: its first line's "Show earlier" (the events before the
 * first block it shows, which it dropped or never had) and a gap's "Show them" (a run of
 * events in its middle that it never had: those a catch-up left out, catchup.js). Both
 * read the newest page of the events their line stands for (EARLIER_PAGE), pair its
 * tool calls with their results (those the page holds; those the tail shows alone below
 * it; those the tail remembers of calls that left it with them, `results`, read with
 * their call; a result whose call the tail shows above the line, still running), and
 * put below the line the newest of those blocks that fit in what a tail scrolled up
 * keeps, each after the notes under the line that came before it (a note says the seq
 * it came after: a "Disconnected after #5" goes between #5 and #6, and no text block
 * runs across it). The line then says which are still not shown, or goes once none is.
 */

import { Blocks, joinResult } from "./blocks.js";
import { fill, h } from "./dom.js";

/** @typedef {import("./blocks.js").Item} Item */
/** @typedef {import("./tail.js").Tail} Tail */
/**
 * A line of the tail that stands for the events after `after` up to `upTo()`.
 * @typedef {object} Spot
 * @property {boolean} reading a read of them is under way
 * @property {number} after
 * @property {() => HTMLElement} line the line; the events go right after it
 * @property {() => number} upTo the last of them now (a trim moves the first line's)
 * @property {(upTo: number) => boolean} stands it still stands for the same events
 * @property {(state: string) => void} say what a read of them did ("": nothing to say)
 * @property {(upTo: number) => void} shrink events after `after` up to `upTo` are still
 * not shown (none when `upTo` is `after`)
 * @property {(seq: number) => boolean} shown an event the tail shows already elsewhere
 */

export const EARLIER_PAGE = 1000; // events read at a time

/**
 * A line's parts: what it says, what a read did, and its button, when there is a way to
 * read them and none is under way.
 * @param {string} what @param {string} state @param {string} label
 * @param {(() => void) | null} click
 */
export function lineParts(what, state, label, click) {
  /** @type {Array<Node | string>} */
  const parts = [h("span", { class: "what" }, what)];
  if (state) parts.push(" · ", h("span", { class: "state" }, state));
  if (click !== null) {
    const button = h("button", { type: "button", class: "link" }, label);
    button.addEventListener("click", click);
    parts.push(" · ", button);
  }
  return parts;
}

/** What `spot` stands for, read into the tail after its line. @param {Tail} tail
 * @param {Spot} spot */
export async function readInto(tail, spot) {
  const read = tail.read;
  const upTo = spot.upTo();
  if (read === null || spot.reading || upTo <= spot.after) return;
  const after = Math.max(spot.after, upTo - EARLIER_PAGE);
  spot.reading = true;
  spot.say("reading…");
  /** @type {Page} */
  let page;
  try {
    const events = await read(after, upTo);
    page = new Page(notesAfter(spot.line()).map((note) => Number(note.dataset.after)));
    for (const item of events) if (item.seq <= upTo && !spot.shown(item.seq)) page.add(item);
    // The results of its calls the tail remembers: each completes its call.
    for (const result of await resultsOf(tail, page, read)) page.add(result);
  } catch (error) {
    spot.reading = false;
    const why = error instanceof Error ? error.message : String(error);
    spot.say(`reading them failed (${why})`);
    return;
  }
  spot.reading = false;
  // More were dropped meanwhile (this page would leave a gap below it), or the line
  // went with them: ask again.
  if (!spot.stands(upTo)) spot.say("");
  else insert(tail, spot, after, page);
}

/**
 * The results the tail remembers (`results`) of the calls still running in `page`, read
 * a run at a time: the seqs within EARLIER_PAGE of the first of a run, in one read (one
 * read a result made a "Show earlier" of a stream of 290 calls in flight read 160 times,
 * bench/RESULTS.md), the events between them not kept.
 * @param {Tail} tail @param {Page} page @param {import("./tail.js").ReadEvents} read
 * @returns {Promise<Item[]>}
 */
async function resultsOf(tail, page, read) {
  const wanted = new Set();
  for (const call of page.blocks.tools.values()) {
    const seq = tail.results.get(Number(call.dataset.from));
    if (seq !== undefined) wanted.add(seq);
  }
  const seqs = [...wanted].sort((a, b) => a - b);
  /** @type {Item[]} */
  const found = [];
  for (let first = 0; first < seqs.length;) {
    let last = first;
    while (last + 1 < seqs.length && seqs[last + 1] - seqs[first] < EARLIER_PAGE) last += 1;
    for (const item of await read(seqs[first] - 1, seqs[last]))
      if (wanted.has(item.seq)) found.push(item);
    first = last + 1;
  }
  return found;
}

/** Events `spot` stands for (every one after `after`), built as `page`, after its line:
 * the newest of them that fit in what a tail scrolled up keeps. Their tool calls still
 * running are completed by a result the tail shows alone below (its call's block had
 * gone, or was never shown, when it came), which then goes, or by a result to come; a
 * result of theirs whose call the tail shows above, running, goes into that call's block.
 * @param {Tail} tail @param {Spot} spot @param {number} after @param {Page} page */
function insert(tail, spot, after, page) {
  const blocks = [...page.built];
  let from = blocks.length;
  let chars = tail.chars;
  while (
    from > 0 &&
    chars + blocks[from - 1][1] <= tail.keeps.chars &&
    tail.count + blocks.length - from < tail.keeps.blocks
  ) {
    from -= 1;
    chars += blocks[from][1];
  }
  if (from === blocks.length && blocks.length > 0) {
    spot.say("the tail holds no more: scroll to its end first");
    return;
  }
  tail.changing();
  const line = spot.line();
  const shown = blocks.slice(from);
  const inserted = new Set(shown.map(([block]) => block));
  // Each call still running, and the first block of its id below (before they go in);
  // each result alone, and the block of its id above the line.
  const running = [...page.blocks.tools.values()]
    .filter((call) => inserted.has(call))
    .map((call) => ({ call, next: nextOf(tail, line, call) }));
  const alone = shown
    .filter(([block]) => block.dataset.kind === "result")
    .map(([result]) => ({ result, call: lastBefore(tail, line, result) }));
  // Each goes after the notes under the line that came before it (by the seq each
  // came after: a "Disconnected after #5" between #5 and #6), before the others.
  const notes = notesAfter(line);
  let next = line.nextElementSibling;
  for (const [block, size] of shown) {
    const from = Number(block.dataset.from);
    while (next !== null && next === notes[0] && Number(notes[0].dataset.after) < from) {
      notes.shift();
      next = next.nextElementSibling;
    }
    tail.el.insertBefore(block, next);
    tail.sizes.set(block, size);
    tail.count += 1;
    tail.results.delete(Number(block.dataset.from)); // (read with its call)
  }
  tail.chars = chars;
  // A call left out with a result it holds: a read reads that with the call (the
  // result's seq may be past the events its line then says are not shown).
  for (const [block] of blocks.slice(0, from)) {
    const result = block.dataset.result;
    if (result !== undefined) tail.results.set(Number(block.dataset.from), Number(result));
  }
  for (const { call, next } of running) {
    if (next === null) tail.blocks.adopt(call);
    else if (next.dataset.kind === "result") {
      tail.grew(call, joinResult(call, next));
      tail.drop(next);
    } // (another call of its id comes first: the result is that one's)
  }
  for (const { result, call } of alone) {
    if (call === null || call.dataset.status !== "running" || call.dataset.kind !== undefined)
      continue; // (none above, or the last of its id there is complete: not its call)
    tail.grew(call, joinResult(call, result));
    tail.blocks.forget(call); // (complete: a later result of its id is a block of its own)
    tail.drop(result);
  }
  const oldest = /** @type {HTMLElement | undefined} */ (blocks[from]?.[0]);
  spot.shrink(from === 0 ? after : Number(oldest?.dataset.from ?? spot.upTo() + 1) - 1);
  const first = line.parentElement === tail.el ? line : oldest; // (the line went: all read)
  if (first !== undefined) tail.showRead(first);
}

/** The notes right under `line` (before any event's block or a gap's line), in order:
 * lines that say the seq they came after (tail.js's `note`). @param {HTMLElement | null} line
 * @returns {HTMLElement[]} */
function notesAfter(line) {
  const notes = [];
  for (let el = line?.nextElementSibling; el instanceof HTMLElement; el = el.nextElementSibling) {
    const { from, after } = el.dataset;
    if (from !== undefined || after === undefined || el.classList.contains("tail-gap")) break;
    notes.push(el);
  }
  return notes;
}

/** The first block of the tool call `call`'s id after `line`. @param {Tail} tail
 * @param {Element} line @param {HTMLElement} call */
function nextOf(tail, line, call) {
  for (const block of ofId(tail, call))
    if (line.compareDocumentPosition(block) & Node.DOCUMENT_POSITION_FOLLOWING) return block;
  return null;
}

/** The last block of the tool call `result`'s id before `line`. @param {Tail} tail
 * @param {Element} line @param {HTMLElement} result */
function lastBefore(tail, line, result) {
  /** @type {HTMLElement | null} */
  let last = null;
  for (const block of ofId(tail, result))
    if (line.compareDocumentPosition(block) & Node.DOCUMENT_POSITION_PRECEDING) last = block;
    else break;
  return last;
}

/** The blocks of the tail of the tool call id `block`'s, in order. @param {Tail} tail
 * @param {HTMLElement} block @returns {NodeListOf<HTMLElement>} */
function ofId(tail, block) {
  const id = CSS.escape(/** @type {string} */ (block.dataset.tool));
  return tail.el.querySelectorAll(`:scope > [data-tool="${id}"]`);
}

/** A run of events in the tail's middle that it never had (after `after` up to `upTo`):
 * a line that says so (`why` they are not shown) with "Show them", which reads them in
 * as "Show earlier" does its own; the line shrinks as they come in, and goes once all
 * have. A trim that drops the line makes them the tail's first line's (its `data-to`).
 * @implements {Spot} */
export class Gap {
  reading = false;

  /**
   * @param {Tail} tail @param {number} after @param {number} upTo @param {string} why
   * @param {(seq: number) => boolean} shown events the tail shows already elsewhere
   */
  constructor(tail, after, upTo, why, shown) {
    this.tail = tail;
    this.after = after;
    this.top = upTo;
    this.why = why;
    this.shown = shown;
    this.el = tail.note("");
    this.el.classList.add("tail-gap");
    this.el.dataset.after = String(after);
    this.say("");
    tail.joinGap(); // (no event shown between the first line and it: one run, one line)
  }

  line() {
    return this.el;
  }

  upTo() {
    return this.top;
  }

  /** @param {number} upTo */
  stands(upTo) {
    return this.el.parentElement === this.tail.el && this.top === upTo;
  }

  /** @param {string} state */
  say(state) {
    if (this.el.parentElement !== this.tail.el) return;
    const first = this.after + 1;
    const what =
      first === this.top
        ? `Event ${first} is not shown (${this.why})`
        : `Events ${first}–${this.top} are not shown (${this.why})`;
    const click = this.tail.read === null || this.reading ? null : () => void this.show();
    this.el.dataset.to = String(this.top);
    this.tail.refill(this.el, ...lineParts(what, state, "Show them", click));
  }

  /** @param {number} upTo */
  shrink(upTo) {
    this.top = upTo;
    if (upTo <= this.after) this.tail.remove(this.el);
    else this.say("");
  }

  /** "Show them": the newest page of them, read in. */
  show() {
    return readInto(this.tail, this);
  }
}

/** Events read back, as blocks not in the tail yet, each with its characters. */
class Page {
  blocks = new Blocks();
  /** @type {Map<HTMLElement, number>} the page's blocks, in order, and their characters */
  built = new Map();

  /** @param {number[]} breaks the seqs after which a note of the tail stands: no text
   * block runs across one (it goes between, as in the live tail) */
  constructor(breaks) {
    this.breaks = breaks.sort((a, b) => a - b);
    this.next = 0; // the first of `breaks` no event added has passed
  }

  /** @param {Item} item */
  add(item) {
    for (; this.next < this.breaks.length && item.seq > this.breaks[this.next]; this.next += 1)
      this.blocks.close();
    const shown = this.blocks.add(item);
    if (shown.block !== null) this.built.set(shown.block, 0);
    const grown = shown.grown;
    if (grown !== null) this.built.set(grown, (this.built.get(grown) ?? 0) + shown.chars);
  }
}
