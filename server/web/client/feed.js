// @ts-check
/**
 * feed.js: the events the client received and its application has not taken from
 * `events()` yet, in order, bounded in count and in bytes, with the item that ends
 * `events()` last. It never refuses an item: whoever puts one asks {@link EventFeed#full}
 * first, and when it is full skips the event (a browser's WebSocket cannot stop
 * reading) and resumes before it later, once the application has read the feed down to
 * half ({@link EventFeed#drained}).
 *
 * @module bamboo/feed
 */

export const MAX_QUEUED_EVENTS = 10_000;
export const MAX_QUEUED_BYTES = 16 * 1024 * 1024;

/** Queued after the last item of events(). @type {unique symbol} */
export const END = Symbol("end");
/**
 * @typedef {import("./types.js").StoredEvent} StoredEvent
 * @typedef {import("./types.js").Reset} Reset
 * @typedef {StoredEvent | Reset | typeof END} QueueItem
 */

export class EventFeed {
  #maxEvents;
  #maxBytes;
  #taken;
  /** @type {Array<[QueueItem, number]>} items for events(), with their sizes in bytes */
  #queue = [];
  #bytes = 0;
  /** @type {((item: QueueItem) => void) | null} */
  #waiter = null;

  /**
   * @param {number} maxEvents @param {number} maxBytes
   * @param {() => void} taken called whenever `next()` takes an item out of the queue
   */
  constructor(maxEvents, maxBytes, taken) {
    this.#maxEvents = maxEvents;
    this.#maxBytes = maxBytes;
    this.#taken = taken;
  }

  /** @returns {number} events (and resets) queued, the end not counted */
  get count() {
    return this.#queue.length - (this.#queue.at(-1)?.[0] === END ? 1 : 0);
  }

  /** @returns {number} their frames' bytes */
  get bytes() {
    return this.#bytes;
  }

  /** The next item, once there is one. @returns {Promise<QueueItem>} */
  next() {
    const head = this.#queue[0];
    if (head === undefined) return new Promise((resolve) => (this.#waiter = resolve));
    const [item, size] = head;
    if (item === END) return Promise.resolve(item); // END stays, for any later iteration
    this.#queue.shift();
    this.#bytes -= size;
    this.#taken();
    return Promise.resolve(item);
  }

  /** @param {QueueItem} item @param {number} [size] its frame's bytes */
  push(item, size = 0) {
    const waiter = this.#waiter;
    if (waiter !== null && this.#queue.length === 0) {
      this.#waiter = null;
      waiter(item);
      if (item !== END) return;
    }
    this.#queue.push([item, size]);
    this.#bytes += size;
  }

  /** At either bound: the next event must be skipped. */
  full() {
    return this.#queue.length >= this.#maxEvents || this.#bytes >= this.#maxBytes;
  }

  /** Read down to half of both bounds. */
  drained() {
    const half = (/** @type {number} */ n) => Math.floor(n / 2);
    return this.#queue.length <= half(this.#maxEvents) && this.#bytes <= half(this.#maxBytes);
  }
}
