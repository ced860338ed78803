// @ts-check
/**
 * place.js: where a viewer is in a scrolled column of blocks (the tail's, tail.js): the
 * first block in its view and how far that is from the view's top, which the tail
 * keeps where it was as blocks go and come above it, and passes on to the block after
 * it when that one goes.
 */

/** A block and how far its top is from the top of the view (px).
 * @typedef {{ block: Element, top: number }} Place */

/** The first of `el`'s children from the `first`th on that is in its view, and where it
 * is (null: none is). A binary search: the children are laid out in order.
 * @param {HTMLElement} el @param {number} first @returns {Place | null} */
export function placeIn(el, first) {
  const children = el.children;
  const viewTop = el.getBoundingClientRect().top;
  let low = first;
  let high = children.length;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (children[mid].getBoundingClientRect().bottom > viewTop) high = mid;
    else low = mid + 1;
  }
  if (low >= children.length) return null;
  return { block: children[low], top: topIn(el, children[low]) };
}

/** Where `block` is, from the top of `el`'s view (px). @param {HTMLElement} el
 * @param {Element} block */
export function topIn(el, block) {
  return block.getBoundingClientRect().top - el.getBoundingClientRect().top;
}

/** The block the viewer reads (`place`'s) goes: the one after it is kept where it was
 * instead (how far below the one that goes it is does not change as blocks above go),
 * so the view stays on what follows rather than jump by what went (to the end, even,
 * which made the tail follow again and drop to its bound).
 * @param {HTMLElement} el @param {Place} place */
export function passOn(el, place) {
  const next = place.block.nextElementSibling;
  if (next === null) return; // (the settle finds it gone: nothing to keep)
  place.top += topIn(el, next) - topIn(el, place.block);
  place.block = next;
}
