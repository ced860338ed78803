// @ts-check
/**
 * reconnects.js: what the session page's tail says when its connection drops and comes
 * back (a server restart, a network blip). The badge alone goes to "reconnecting" and
 * back to "live": an operator could not tell from the page whether the tail went on
 * whole. So the tail gets a line as the connection is lost, saying why (the close the
 * client saw: "1012 server restarting", or "connection lost" when no close frame
 * came), and one as it comes back, which says, once the stream goes on, whether it
 * resumed with nothing missed (the next event follows the last one shown; the client
 * checks there is no gap or repeat after it) or the resume was refused (the Reset's
 * own line then says what is missing). When the connection ends for good, the page
 * says why ({@link ReconnectNotes#noteEnd}) with the close that ended the client: its
 * code tells a session closed (1000, or 4409 for a resume refused) from one deleted
 * (4404) or a token refused (4401), which the reasons alone may not.
 */

/** @typedef {import("/client/bamboo.js").BambooClient} BambooClient */
/** @typedef {import("/client/bamboo.js").StateChange} StateChange */
/** @typedef {import("./tail.js").Tail} Tail */

export class ReconnectNotes {
  /** @type {{ after: number, line: HTMLElement, left: number } | null} the line of the
   * last reconnect, until the stream says how it resumed; `left`: items still to come
   * from `events()` that were queued before it (the first after them is its answer) */
  pending = null;
  lost = false; // the connection dropped and has not come back yet
  /** @type {{ code: number | null, reason: string } | null} the close that ended the
   * client (its `"closed"` state change), once it has */
  closed = null;
  endNoted = false; // the tail said why the connection ended

  /** @param {Tail} tail */
  constructor(tail) {
    this.tail = tail;
  }

  /**
   * The client's connection state changed (its `state` event).
   * @param {BambooClient} client @param {StateChange} change
   * @returns {boolean} whether the connection just came back (presence is stale then:
   * the connections it told of were of the server before)
   */
  state(client, { state, code = null, reason = "" }) {
    if (state === "closed") {
      // Said once the page has shown what `events()` still held (noteEnd).
      this.closed = { code, reason };
      return false;
    }
    if (state === "reconnecting" && !this.lost) {
      this.lost = true;
      this.pending = null;
      const why = closeText(code, reason);
      this.tail.note(`Disconnected${since(this.tail.lastSeq)} (${why}): reconnecting…`);
      return false;
    }
    if (state !== "open" || !this.lost) return state === "open";
    this.lost = false;
    const after = this.tail.lastSeq;
    // Events received before the drop and not yet shown come first; a Reset, when the
    // resume was refused, was queued last (or handed over already when none waited).
    this.pending = {
      after,
      line: this.tail.note(`Reconnected${since(after)}: resuming…`),
      left: client.queuedEvents,
    };
    return true;
  }

  /**
   * An item the page takes from `events()`, before it shows it: settles the line of the
   * last reconnect when it answers how the stream resumed.
   * @param {{ seq: number } | { reset: true }} item
   */
  item(item) {
    const pending = this.pending;
    if (pending === null) return;
    if ("reset" in item) {
      this.tail.retext(pending.line, `Reconnected${since(pending.after)}: could not resume.`);
      this.pending = null;
    } else if (pending.left > 0) {
      pending.left -= 1; // queued before the reconnect
    } else {
      this.tail.retext(
        pending.line,
        `Reconnected${since(pending.after)}: resumed, no event missed (#${item.seq} follows).`,
      );
      this.pending = null;
    }
  }

  /**
   * The stream ended for good: a line saying why the connection ended, the close that
   * ended the client ("4409 session closed", "4404 session deleted"). Written once, by
   * whichever end the page shows first; none before the client has ended.
   */
  noteEnd() {
    if (this.closed === null || this.endNoted) return;
    this.endNoted = true;
    this.tail.note(`Connection ended: ${closeText(this.closed.code, this.closed.reason)}.`);
  }
}

/**
 * Where in the stream a connection note falls: " after #5", or " before any event" on a
 * page that has shown none (not "after #0": there is no event 0).
 * @param {number} lastSeq @returns {string}
 */
function since(lastSeq) {
  return lastSeq > 0 ? ` after #${lastSeq}` : " before any event";
}

/**
 * A close in words: its code and reason ("1012 server restarting"), or the reason alone
 * when no close code came ("connection lost").
 * @param {number | null} code @param {string} reason @returns {string}
 */
function closeText(code, reason) {
  return `${code ?? ""} ${reason}`.trim() || "connection lost";
}
