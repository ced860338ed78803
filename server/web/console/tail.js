// @ts-check
/**
 * tail.js: the tail of a session's events as a person reads them (each event's block
 * is blocks.js's), bounded, following the end, and with the way back to what it
 * dropped.
 *
 * Bounded in characters as well as blocks: a page left open for hours on a stream
 * held 10 million characters in 1,000 blocks, 181 MB of Blink's heap, and every frame
 * cost half a core (bench/RESULTS.md). The tail drops its oldest blocks while its text
 * passes MAX_TAIL_CHARS or its blocks MAX_BLOCKS, counted as they are added (a sum
 * kept, never a walk of the page), once a frame as it is drawn (the events of one
 * frame hold it at twice the bound at most: see `#trim`; so does a page the browser
 * draws no frame of, a background tab, until it is shown). A viewer scrolled up keeps what
 * they read: the tail then waits until twice the bound before it drops anything, and
 * never holds more (what it held past its bound goes once they scroll back to the
 * end, not at the next event, which a quiet or closed session may never send). Its first line then
 * says which events it does not show, with "Show earlier", which reads them over
 * HTTP (`read`), a page at a time, into its top (earlier.js, which reads a gap's
 * events in its middle the same way); a page opened after events it does not replay
 * starts so (`startAfter`). A read the viewer asked for keeps what it read: a tail
 * following the end (its first line in view: what it holds fits the view) stops
 * following, what was read at the top of the view (`showRead`). A gap's line dropped
 * makes its events the first line's; so does one with no event shown between the
 * first line and it (only notes, as a "Disconnected" one): one line for one run of
 * events not shown. A note says the seq it came after, and the events read back go
 * round it by that (earlier.js).
 *
 * Following the end is a state: whether the viewer was at the end (within END_SLACK)
 * when a frame's changes began, which the frame before left at the end if it was
 * following: so it stays on until the viewer scrolls up, and is on again once they
 * scroll back. (Measured before the frame's changes, not by scroll events: a drop at
 * the top moves the scroll, and its event comes a frame later, when more came below.)
 * A following tail is scrolled to the end once per frame, after that frame's events
 * (the page is measured once per frame, not once per event); one scrolled up keeps its
 * place: the block at the top of the view stays where it was as blocks are dropped or
 * inserted above it. A scroll the viewer makes while a frame has events to draw (on a
 * streaming session, nearly always) lands just before it is drawn, and counts as made
 * (`#settle`): scrolled to the end, they follow from then; scrolled up, they stop
 * following, or go further up, and the place kept is where they scrolled to; a move up
 * the browser makes on its own as the tail gets shorter below the view (a drop at the
 * top, a line taken back) is not theirs (`#scrolledBy`). A wheel turned down to the
 * end follows it, wherever its scroll lands: the browser scrolls by the page as it last
 * had it, a frame or two short of the end on a busy stream (`#wheeled`).
 */

import { Blocks } from "./blocks.js";
import { fill, h } from "./dom.js";
import { lineParts, readInto } from "./earlier.js";
import { passOn, placeIn, topIn } from "./place.js";

/** @typedef {import("./blocks.js").Item} Item */
/** The events after `after` up to `upTo`, oldest first, of the log the tail shows.
 * @typedef {(after: number, upTo: number) => Promise<Item[]>} ReadEvents */
/** @typedef {import("./place.js").Place} Place */
/** What a frame's settle needs (`#settle`): the view as the frame's changes began, and
 * where a read the viewer asked for put its events in it (`showRead`).
 * @typedef {object} Frame
 * @property {Place | null} anchor the block at the top of the view, and where it was
 * @property {number} scrollTop the scroll
 * @property {number} end the scroll at the end
 * @property {Element | null} read the line it read under (or, gone, the first it read)
 * @property {number} takenBack px the browser moved a following tail's scroll up by
 * as lines were taken back in it */

export const MAX_BLOCKS = 300;
export const MAX_TAIL_CHARS = 500_000;
const SCROLLED_UP = 2; // times the bound a tail scrolled up keeps
const END_SLACK = 40; // px from the end that still are the end
const LINE_PX = 40; // px of a wheel's line (deltaMode 1, as Firefox may count)

export class Tail {
  /** @type {WeakMap<Element, number>} characters of each block */
  sizes = new WeakMap();
  chars = 0; // characters of the blocks shown
  count = 0; // blocks shown
  lastSeq = 0;
  hidden = 0; // events 1 to this are not shown (dropped, or before the first shown)
  following = true;
  /** @type {Frame | null} */
  frame = null;
  /** Whether the viewer's last wheel down reached the end as the tail was laid out
   * then, and its scroll has not been settled yet (see `#wheeled`). */
  wheeledToEnd = false;
  lastTop = 0; // the scroll as the last scroll event, or the last settle, left it
  /** @type {HTMLElement | null} the first line, saying which events are not shown */
  header = null;
  /** @type {ReadEvents | null} how "Show earlier" (and a gap's "Show them") reads:
   * none, no button */
  read = null;
  /** @type {Map<number, number>} the seq of a tool call whose block left the tail (or
   * that a read of earlier events left out) with its result in it while events between
   * the two stayed, to the result's seq (which a read of the call reads with it); at
   * most the blocks the tail holds and a page (measured: the calls in flight whose
   * blocks it held, 590 at most with 600 held; bench/RESULTS.md) */
  results = new Map();
  /** What a tail scrolled up keeps at most, which a read of earlier events fills. */
  keeps = { chars: MAX_TAIL_CHARS * SCROLLED_UP, blocks: MAX_BLOCKS * SCROLLED_UP };
  /** The first line, as what "Show earlier" reads into (earlier.js).
   * @type {import("./earlier.js").Spot} */
  head = {
    reading: false,
    after: 0,
    line: () => /** @type {HTMLElement} */ (this.header),
    upTo: () => this.hidden,
    stands: (upTo) => this.hidden === upTo,
    say: (state) => this.hide(this.hidden, state),
    shrink: (upTo) => this.hide(upTo),
    shown: () => false,
  };

  /** @param {HTMLElement} el */
  constructor(el) {
    this.el = el;
    this.blocks = new Blocks();
    el.addEventListener("scroll", () => this.#scrolled(), { passive: true });
    el.addEventListener("wheel", (event) => this.#wheeled(event), { passive: true });
  }

  /** Events 1 to `seq` are not shown (the tail starts after them), with "Show earlier"
   * to read them: call before the first event is added. @param {number} seq */
  startAfter(seq) {
    if (seq > this.hidden) this.hide(seq);
  }

  /**
   * Show one event. `own`: published from this page (the server does not echo it).
   * @param {Item} item @param {boolean} [own]
   */
  add(item, own = false) {
    this.changing();
    const shown = this.blocks.add(item);
    if (shown.block !== null) {
      if (own) shown.block.classList.add("own");
      this.el.append(shown.block);
      this.count += 1;
    }
    if (shown.grown !== null) this.grew(shown.grown, shown.chars);
    this.#trim(SCROLLED_UP);
    this.lastSeq = Math.max(this.lastSeq, item.seq);
    this.el.dataset.lastSeq = String(this.lastSeq);
  }

  /** A line saying that events were skipped or the stream changed. It says the seq it
   * came after (`data-after`), where events read back above it go round it.
   * @param {string} text @returns {HTMLElement} the line (to take it back: `remove`) */
  note(text) {
    this.changing();
    this.blocks.close();
    const after = Math.max(this.lastSeq, this.hidden);
    const line = h("div", { class: "ev ev-note", dataset: { after } }, text);
    this.el.append(line);
    this.count += 1;
    this.grew(line, text.length);
    this.#trim(SCROLLED_UP);
    return line;
  }

  /** Take back a line `note` added, if it is still shown. From a following tail, the
   * move up the browser makes as it lays out the tail shorter is the frame's
   * (`#scrolledBy`): measured (a layout forced, as rarely as lines are taken back),
   * not the line's height, which it may not move at all. @param {HTMLElement} line */
  remove(line) {
    if (line.parentElement !== this.el || line === this.header) return;
    this.changing();
    const frame = this.following ? this.frame : null;
    const top = frame === null ? 0 : this.el.scrollTop;
    this.drop(line);
    if (frame !== null) frame.takenBack += top - this.el.scrollTop;
  }

  /** A line `note` added says `text` now. @param {HTMLElement} line @param {string} text */
  retext(line, text) {
    if (line.parentElement !== this.el) return;
    this.changing();
    this.grew(line, text.length - (line.textContent?.length ?? 0));
    line.textContent = text;
  }

  /** A line `note` added holds `parts` now. @param {HTMLElement} line
   * @param {Array<Node | string>} parts */
  refill(line, ...parts) {
    if (line.parentElement !== this.el) return;
    this.changing();
    const before = line.textContent?.length ?? 0;
    fill(line, ...parts);
    this.grew(line, (line.textContent?.length ?? 0) - before);
  }

  /** A read the viewer asked for ("Show earlier", a gap's "Show them": earlier.js)
   * put events in this frame, under `block` (their line, or the first of them once it
   * went): it keeps what it read. A following tail, which would drop to its bound as
   * the frame is drawn, stops following, `block` at the top of the view, and keeps
   * what a tail scrolled up keeps; one scrolled up keeps its place, as for any events
   * put above it. @param {Element} block */
  showRead(block) {
    if (this.frame !== null) this.frame.read = block;
  }

  /** A block (or line) shown has `chars` more characters (earlier.js's too).
   * @param {Element} block @param {number} chars */
  grew(block, chars) {
    this.sizes.set(block, (this.sizes.get(block) ?? 0) + chars);
    this.chars += chars;
  }

  /** A block (or line) shown goes (earlier.js's too). @param {HTMLElement} block */
  drop(block) {
    this.chars -= this.sizes.get(block) ?? 0;
    this.count -= 1;
    this.blocks.forget(block);
    block.remove();
  }

  /** The oldest blocks go while the tail passes `times` its bound. Events up to the
   * last one dropped are then not shown (blocks are in seq order; a line has no seq).
   * An event added trims at twice the bound; a following tail drops to its bound at
   * its frame's settle, not as events come: a drop makes the tail shorter, and a
   * layout any script forces in the middle of the frame (one reading `scrollHeight`)
   * then moves the scroll up to the end as laid out then, which, with events added
   * below after it, `#settle` could only take for the viewer's scroll up: the tail
   * stopped following. (A line taken back is allowed for: `#scrolledBy`.)
   * @param {number} times */
  #trim(times) {
    let hidden = this.hidden;
    while (
      this.count > 0 &&
      (this.chars > MAX_TAIL_CHARS * times || this.count > MAX_BLOCKS * times)
    ) {
      const oldest = /** @type {HTMLElement} */ (
        this.header === null ? this.el.firstElementChild : this.header.nextElementSibling
      );
      this.changing();
      hidden = Math.max(hidden, Number(oldest.dataset.to ?? oldest.dataset.from ?? 0));
      if (oldest.dataset.result !== undefined)
        this.results.set(Number(oldest.dataset.from), Number(oldest.dataset.result));
      if (this.frame?.anchor?.block === oldest) passOn(this.el, this.frame.anchor);
      this.drop(oldest);
    }
    if (hidden !== this.hidden) this.hide(hidden);
  }

  /** Events 1 to `upTo` are not shown: the first line says so (none: no line); a read
   * of them (earlier.js) did `state`. @param {number} upTo @param {string} [state] what a read of them did */
  hide(upTo, state = "") {
    this.hidden = upTo;
    // Results up to it are among the events "Show earlier" reads.
    for (const [call, result] of this.results) if (result <= upTo) this.results.delete(call);
    if (upTo <= 0) {
      this.header?.remove();
      this.header = null;
      return;
    }
    if (this.header === null) {
      // (Not a live region: it changes as each block goes.)
      this.header = h("div", { id: "tail-earlier", class: "tail-earlier" });
      this.el.prepend(this.header);
    }
    const what = upTo === 1 ? "Event 1 not shown" : `Events 1–${upTo} not shown`;
    const read = () => void readInto(this, this.head);
    const click = this.read === null || this.head.reading ? null : read;
    fill(this.header, ...lineParts(what, state, "Show earlier", click));
    this.joinGap();
  }

  /** A gap's line (earlier.js) with no event shown between the first line and it, only
   * lines (a "Disconnected" note): its events run on from the first line's, so the
   * first line says them all, and the gap's line goes (two lines for one run, split by
   * a note, read as two runs). The notes stay under the first line; "Show earlier" puts
   * the events it reads round them by the seq each came after. */
  joinGap() {
    /** @type {HTMLElement | null} */
    let line = this.header;
    while ((line = /** @type {HTMLElement | null} */ (line?.nextElementSibling ?? null))) {
      if (line.dataset.from !== undefined) return; // an event shown between
      if (!line.classList.contains("tail-gap")) continue;
      this.changing();
      const upTo = Math.max(this.hidden, Number(line.dataset.to));
      this.drop(line);
      this.hide(upTo);
      return;
    }
  }

  /** The viewer scrolled: back at the end, a tail that kept more than its bound while
   * they were up drops it now, not at the next event (the session may be quiet, or
   * over). With a frame to settle, its settle sees where they went (`#settle`). */
  #scrolled() {
    const from = this.lastTop;
    const top = (this.lastTop = this.el.scrollTop);
    if (top < from) this.wheeledToEnd = false; // (up: whatever the wheel said)
    if (this.frame !== null) return;
    const wheeled = this.wheeledToEnd && top > from && !this.following;
    if (!wheeled && this.chars <= MAX_TAIL_CHARS && this.count <= MAX_BLOCKS) return;
    if (!wheeled && !this.#atEnd()) return;
    this.changing(); // (its settle drops a following tail to its bound, at its end)
    if (wheeled) this.following = true;
    this.wheeledToEnd = false;
  }

  /** A wheel turned: down to the end as laid out now, its scroll, in whichever frame
   * it lands, is to the end, and the viewer follows it from there. The browser scrolls
   * by the page as it last had it, which on a busy stream is a frame or two behind:
   * with a real wheel on a session streaming 200 events a second, 4 scrolls to the end
   * in 30 landed 50 to 110 px short of it, where the tail did not follow. A wheel up,
   * or one short of the end, says the viewer does not go there.
   * @param {WheelEvent} event */
  #wheeled(event) {
    const unit = event.deltaMode === 1 ? LINE_PX : event.deltaMode === 2 ? this.el.clientHeight : 1;
    const to = this.el.scrollTop + event.deltaY * unit;
    this.wheeledToEnd = to > this.el.scrollHeight - this.el.clientHeight - END_SLACK;
  }

  /** Whether the view is at the end (within END_SLACK), as laid out now. */
  #atEnd() {
    const el = this.el;
    return el.scrollHeight - el.scrollTop - el.clientHeight < END_SLACK;
  }

  /** Something in the tail changes: settle its scroll once this frame is drawn. The
   * view is measured as the frame's changes begin (laid out then, as last drawn: once
   * a frame): whether it follows the end, and the block at the top of the view, which
   * a viewer scrolled up keeps, and one who scrolls up in this frame too. */
  changing() {
    if (this.frame !== null) return;
    const { scrollTop, scrollHeight, clientHeight } = this.el;
    const end = scrollHeight - clientHeight; // the scrollTop at the end
    this.following = end - scrollTop < END_SLACK;
    const anchor = placeIn(this.el, this.header === null ? 0 : 1); // (not the first line)
    this.frame = { anchor, scrollTop, end, read: null, takenBack: 0 };
    requestAnimationFrame(() => this.#settle());
  }

  /**
   * A frame is drawn: where the viewer is now is theirs to say, whatever `following`
   * was as the frame began. The browser applies a wheel's (or a scrollbar's) scroll
   * just before the frame, after its events came; on a session streaming tens of events
   * a second nearly every frame has some, so a scroll made in one must count as the
   * scroll it is, not be undone. A viewer who went to the end follows it from now: the
   * tail drops to its bound (`#wentToEnd`). One who scrolled up stops following
   * (`#scrolledBy`): the next frames keep their place, not pull them back to the end.
   * One still following whose frame a read they asked for put events in stops
   * following too, to keep them (`showRead`). Then a following tail goes to its end;
   * one the read was for puts it at the top of the view; one scrolled up puts the block
   * that was at the top of the view back where it was (blocks went or came above it),
   * moved by as far as the viewer scrolled in the frame, up or down.
   */
  #settle() {
    const frame = this.frame;
    if (frame === null) return;
    const scrolled = this.#scrolledBy(frame);
    const wheeled = this.wheeledToEnd && scrolled > 0;
    let read = null;
    if (!this.following && (wheeled || this.#wentToEnd(frame))) {
      this.following = true;
      this.wheeledToEnd = false;
    } else if (this.following && scrolled < 0 && this.el.scrollTop < frame.end - END_SLACK) {
      this.following = false; // up, out of the end as it was drawn
    } else if (this.following && frame.read?.parentElement === this.el) {
      this.following = false; // up, to what the viewer asked to read (`showRead`)
      read = frame.read;
    }
    if (this.following) this.#trim(1); // (in this frame still: its drops are settled here)
    this.frame = null;
    if (this.following) this.el.scrollTop = this.el.scrollHeight;
    else if (read !== null) this.el.scrollTop += topIn(this.el, read);
    else if (frame.anchor && frame.anchor.block.parentElement === this.el) {
      this.el.scrollTop += topIn(this.el, frame.anchor.block) - frame.anchor.top + scrolled;
    } // (a viewer whose block and every one after it were dropped: nothing to keep)
    this.lastTop = this.el.scrollTop;
  }

  /** How far the viewer scrolled since `frame` began, in px down (up: less than 0).
   * The browser moves the scroll up on its own when the tail gets shorter below the
   * view (blocks dropped above it, a note taken back), to the end as laid out: a move
   * up to the end is taken for that one (its viewer's place is kept as it was: the end
   * came up to them), and so is a following tail's by no more than the browser moved
   * it as the frame took lines back (`remove`): with events added below after it, that
   * one ends above the end, and taken for the viewer's it stopped the tail following
   * (a line's height allowed instead took a viewer's scroll up within it for the
   * browser's when the events came before any layout: the browser had not moved it).
   * Others are the viewer's. (Not told apart:
   * that move made by `#trim`'s drops past twice the bound in a frame of that many
   * events, or on a tail scrolled up to near its end; taken for the viewer's, the place
   * kept is where it moved to.)
   * @param {{ scrollTop: number, takenBack: number }} frame */
  #scrolledBy(frame) {
    const moved = this.el.scrollTop - frame.scrollTop;
    return moved < 0 && (this.#atEnd() || -moved <= frame.takenBack) ? 0 : moved;
  }

  /** Whether the viewer scrolled down to the end since `frame` began: to where the end
   * was then (a wheel scrolls by the page the browser last drew, without what the frame
   * added below), or to the end now (the frame may have made the tail shorter). Only
   * down: see `#scrolledBy`. @param {{ scrollTop: number, end: number }} frame */
  #wentToEnd(frame) {
    const top = this.el.scrollTop;
    return top > frame.scrollTop && (top > frame.end - END_SLACK || this.#atEnd());
  }
}
