// @ts-check
/**
 * dom.js: small DOM helpers of the console. Text always goes in as text (never as
 * HTML): the page runs under Trusted Types, where an HTML string sink would throw.
 */

/**
 * An element with attributes and children: `h("a", { href: "#/" }, "home")`.
 * Attributes starting with `on` are event listeners; `false`/`null` ones are left out.
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {...(Node | string | number | null | undefined | false)} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value == null) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === "number" ? String(child) : child);
  }
  return el;
}

/** Replace every child of `el`, leaving out nulls.
 * @param {Element} el @param {...(Node | string | null)} children */
export function fill(el, ...children) {
  el.replaceChildren(...children.filter((child) => child !== null));
  return el;
}

/** An RFC 3339 time as local date and time, or "–". @param {string | null | undefined} iso */
export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/** How long ago, briefly ("5 s ago", "3 min ago"). @param {string | null | undefined} iso */
export function ago(iso) {
  if (!iso) return "–";
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!Number.isFinite(seconds)) return iso;
  /** @type {Array<[number, string]>} */
  const units = [
    [86400, "d"],
    [3600, "h"],
    [60, "min"],
    [1, "s"],
  ];
  for (const [size, unit] of units) {
    if (Math.abs(seconds) >= size) return `${Math.floor(seconds / size)} ${unit} ago`;
  }
  return "just now";
}

/** A `<time>` element: relative text, the exact time as its tooltip. @param {string | null} iso */
export function timeEl(iso) {
  return h("time", { datetime: iso ?? false, title: when(iso) }, ago(iso));
}

/**
 * Every `<time>` of the page says again how long ago it was: a page left open must not
 * go on saying "5 s ago" an hour later. app.js calls it every few seconds.
 */
export function refreshTimes() {
  for (const el of document.querySelectorAll("time[datetime]")) {
    const text = ago(el.getAttribute("datetime"));
    if (el.textContent !== text) el.textContent = text;
  }
}

/** Any JSON value, indented. @param {unknown} value */
export function json(value) {
  return JSON.stringify(value, null, 2) ?? "null";
}

/**
 * `text` cut to `max` characters, saying how many more it had: what one value may put
 * on the page, since laying out a block of text costs its whole length.
 * @param {string} text @param {number} max
 */
export function clip(text, max) {
  if (text.length <= max) return text;
  let end = max;
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end -= 1; // not half of a surrogate pair
  return `${text.slice(0, end)}… (${text.length - end} more characters)`;
}

/** Characters a run without white space may have before the page may break it. */
const WRAP_RUN = 64;
/** Characters either side of a break that say whether it falls inside a grapheme: a
 * cluster longer than that (a letter under dozens of marks) is broken like a run, since
 * laying it out whole costs some fonts quadratic time too. */
const GRAPHEME_WINDOW = 32;
const graphemes = new Intl.Segmenter(undefined, { granularity: "grapheme" });

/** @typedef {{ run: number, before: string }} RunEnd where a text ends: the length of
 * the run without white space it ends with, and its last GRAPHEME_WINDOW characters */
/** Where nothing ends: a text that continues none. @type {RunEnd} */
export const NO_RUN = Object.freeze({ run: 0, before: "" });

/**
 * `text` with a break opportunity (`<wbr>`) every WRAP_RUN characters of a run without
 * white space, never inside a grapheme (a letter and its marks, a flag, an emoji
 * sequence) of GRAPHEME_WINDOW characters at most. Laying out one long unbreakable run
 * costs some fonts time quadratic in its length (10,000 "A"s, or Arabic letters, took
 * this Chromium a second in system-ui, for each layout of the page); with breaks every
 * 64, milliseconds. Copying the text, or its `textContent`, gives it unchanged. `end`:
 * where the text it continues ends (a growing block's end, which may be half a grapheme).
 * @param {string} text @param {RunEnd} [end]
 * @returns {[Node | string, RunEnd]} the text to append, and where it ends
 */
export function breakable(text, end = NO_RUN) {
  /** @type {Array<Node | string>} */
  const parts = [];
  let { run } = end;
  let from = 0;
  let graphemeEnd = 0; // no break before it: the end of a grapheme found inside
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    // Only these: a no-break space, or a BOM, is white space to /\s/ but no break.
    if (code === 32 || code === 10 || code === 9) {
      run = 0;
      continue;
    }
    if (run >= WRAP_RUN && i >= graphemeEnd) {
      graphemeEnd = nextGraphemeStart(end.before, text, i);
      if (graphemeEnd === i) {
        parts.push(text.slice(from, i), document.createElement("wbr"));
        from = i;
        run = 0;
      }
    }
    run++;
  }
  const before =
    text.length >= GRAPHEME_WINDOW
      ? text.slice(-GRAPHEME_WINDOW)
      : (end.before + text).slice(-GRAPHEME_WINDOW);
  if (parts.length === 0) return [text, { run, before }];
  parts.push(text.slice(from));
  const fragment = document.createDocumentFragment();
  fragment.append(...parts);
  return [fragment, { run, before }];
}

/**
 * `i` if a break may fall before `text[i]`: a grapheme starts there, or the one there
 * started GRAPHEME_WINDOW characters before or more; else where to look next (the end of
 * that grapheme within GRAPHEME_WINDOW of `i`, or past the second half of a surrogate
 * pair). `before`: the text that `text` continues.
 * @param {string} before @param {string} text @param {number} i
 */
function nextGraphemeStart(before, text, i) {
  const left =
    i >= GRAPHEME_WINDOW
      ? text.slice(i - GRAPHEME_WINDOW, i)
      : (before + text.slice(0, i)).slice(-GRAPHEME_WINDOW);
  const around = graphemes.segment(left + text.slice(i, i + GRAPHEME_WINDOW));
  const grapheme = /** @type {Intl.SegmentData} */ (around.containing(left.length));
  const tooLong = grapheme.index === 0 && left.length === GRAPHEME_WINDOW;
  if (grapheme.index === left.length || tooLong) return lowSurrogate(text, i) ? i + 1 : i;
  return i + grapheme.index + grapheme.segment.length - left.length;
}

/** Whether `text[i]` is the second half of a surrogate pair. @param {string} text @param {number} i */
function lowSurrogate(text, i) {
  return (text.charCodeAt(i) & 0xfc00) === 0xdc00;
}

/** A message to the user inside `root`. @param {Element} root @param {string} text @param {string} [kind] */
export function notice(root, text, kind = "error") {
  return fill(
    root,
    h("p", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" }, text),
  );
}
