// @ts-check
/**
 * catchup.js: the end of a session that the page was behind for. Should the session
 * end while the page is behind (the client ends with `ConnectionLost`: events after
 * its `afterSeq` never came), only the HTTP API has the rest: the catch-up reads them
 * (missed.js's readMissed) and, when they are of the log the page's stream had (its
 * epoch), shows them as the live path does, then that the session ended; when they
 * are another log's, that the session was replaced. When more were missed than the
 * tail shows, a line before them says which are not (a Gap: its "Show them" reads
 * them in, as "Show earlier" does the tail's first ones). Should the read fail, the tail
 * says which events may be missing and a notice has a Reload that reads them again,
 * into the tail as it is (the lines that said they may be missing go).
 */

import { fill } from "./dom.js";
import { Gap } from "./earlier.js";
import * as missed from "./missed.js";

/** @typedef {import("./blocks.js").Item} Item */
/**
 * What the catch-up needs of the session's page (session.js's).
 * @typedef {object} Page
 * @property {boolean} alive the page is still shown
 * @property {import("./tail.js").Tail} tail
 * @property {HTMLElement} status where its notices go
 * @property {import("./messages.js").MessageList} messages
 * @property {Set<number>} own seqs of the events the page published (shown already)
 * @property {() => string} path the session's `/api/v1/sessions/…`
 * @property {(error: unknown) => boolean} unauthorized app.js's, for a refused token
 * @property {(state: string) => void} setConnState
 * @property {(item: Item, attachedAt: number) => void} show an event, as the live path
 * @property {(reason: string, metadata?: any) => HTMLElement} ended says it ended; its line
 * @property {(after: number, reason: string) => void} replaced says it was replaced
 */

export class CatchUp {
  /** @type {HTMLElement[]} lines of the tail that a read of the missed events that
   * failed added, taken back when a Reload reads them */
  unread = [];

  /** @param {Page} page */
  constructor(page) {
    this.page = page;
  }

  /**
   * The session ended with the events after `after` not delivered to the page: read
   * them over HTTP, then show them and that the session ended (`reason`), or that it
   * was replaced; if the read fails, say which events may be missing, with a Reload
   * that calls this again (`again`): the tail stays as it is and gets them, and the
   * message list is read again from storage.
   * @param {number} after @param {number} attachedAt message events after this seq are
   * new messages @param {string} reason @param {string} epoch the stream's log's
   * @param {boolean} [again] a Reload's read
   */
  async run(after, attachedAt, reason, epoch, again = false) {
    const page = this.page;
    page.setConnState("closed");
    let read;
    try {
      read = await missed.readMissed(page.path(), after, epoch, () => page.alive);
    } catch (error) {
      if (!page.alive || page.unauthorized(error)) return;
      this.#takeBackUnread();
      this.unread.push(page.ended(reason));
      this.#missing(after, error, () => this.run(after, attachedAt, reason, epoch, true));
      return;
    }
    if (!page.alive) return;
    this.#takeBackUnread();
    fill(page.status);
    if (read.metadata.epoch !== epoch) {
      page.replaced(after, reason);
      return;
    }
    if (read.leftOut !== null) {
      // More than the tail holds: its newest, after a line saying what is not shown,
      // whose "Show them" reads those in as "Show earlier" does the tail's first ones.
      const why = "the session ended while this page was behind";
      new Gap(page.tail, after, read.leftOut, why, (seq) => page.own.has(seq));
    }
    // The page's own publishes are shown already (the stream does not echo them).
    for (const item of read.events) if (!page.own.has(item.seq)) page.show(item, attachedAt);
    page.ended(reason, read.metadata);
    // Messages among the events left out are not in the list: show the stored ones. So
    // does a Reload, which shows the session as the server has it.
    if (read.leftOut !== null || again) page.messages.reload(page.path());
  }

  /**
   * Events after `after` may be missing from the tail (a read of them failed): a line
   * in the tail, and a notice with a Reload that calls `retry`.
   * @param {number} after @param {unknown} error @param {() => Promise<void>} retry
   */
  #missing(after, error, retry) {
    const why = error instanceof Error ? error.message : String(error);
    this.unread.push(
      this.page.tail.note(`Events after #${after} may be missing: reading them failed (${why}).`),
    );
    fill(this.page.status, missed.missingNotice(after, why, retry));
  }

  /** The lines a failed read of the missed events added to the tail, gone. */
  #takeBackUnread() {
    for (const line of this.unread.splice(0)) this.page.tail.remove(line);
  }
}
