// @ts-check
/**
 * changes.js: a client's connection state, and the telling of its changes as `"state"`
 * events, each told to every listener before the next, in the order they were made.
 *
 * @module bamboo/changes
 */

/**
 * @typedef {import("./types.js").ConnectionState} ConnectionState
 * @typedef {import("./types.js").StateChange} StateChange
 * @typedef {import("./errors.js").CloseSeen} CloseSeen
 * @typedef {import("./errors.js").ClientError} ClientError
 */

export class ConnectionStates {
  #target;
  /** @type {ConnectionState} */
  #current = "connecting";
  /** @type {StateChange[]} the state change being told (first), and any made meanwhile */
  #told = [];

  /** @param {EventTarget} target where the `"state"` events are dispatched */
  constructor(target) {
    this.#target = target;
  }

  /** @returns {ConnectionState} */
  get current() {
    return this.#current;
  }

  /** The first connection failed (`connect()` rejects): closed, with no `"state"` event. */
  abandon() {
    this.#current = "closed";
  }

  /**
   * @param {ConnectionState} state
   * @param {CloseSeen & { error?: ClientError }} [why] what the change says besides
   *   the state: the close that made it reconnect (`"reconnecting"`), or the one that
   *   ended it and why (`"closed"`)
   */
  change(state, why) {
    if (this.#current === state) return;
    this.#current = state;
    /** @type {StateChange} */
    const detail = { state, ...why };
    const told = this.#told;
    told.push(detail);
    // A listener that changes the state as it is told of a change (`close()` as it
    // hears "reconnecting") has the new change told once every listener heard the one
    // before: told at once, the listeners after it would hear "closed" first, then
    // "reconnecting" last, as if the client went on.
    if (told.length > 1) return;
    while (told.length > 0) {
      this.#target.dispatchEvent(new CustomEvent("state", { detail: told[0] }));
      told.shift();
    }
  }
}
