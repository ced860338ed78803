// @ts-check
/**
 * session.js: one session's page (laid out by layout.js, which also words a refusal):
 * its metadata (meta.js), message history (paged, newest first loaded; messages.js),
 * presence and actions (attached.js), and a live tail of its events, through the JavaScript client: the page attaches to the session resuming a
 * little before its last event, so the tail opens with the latest events and then
 * follows live, across server restarts, with no gap and no duplicate (the tail says
 * when it was disconnected and how it resumed, and why the connection ended, with the
 * close code and reason: reconnects.js). A closed session
 * shows what storage keeps (history, metadata, its newest events). Should the session
 * end while the page is behind (the client ends with `ConnectionLost`: events after its
 * `afterSeq` never came), the rest is read over HTTP into the tail before the page says
 * the session ended, once the session's epoch says they are of the log the stream had:
 * a session deleted and created again under the same id meanwhile is shown as replaced,
 * none of its events in the old one's tail; so is one the client found replaced when
 * its resume was refused (its reset, then the end, with none of the new log's events).
 * Should that read fail, the page says which events may be missing, and its Reload
 * reads them again, into the tail as it is. That catch-up is catchup.js's, which calls
 * the page's public methods (show, ended, replaced, …); its read and notices are
 * missed.js's.
 */

import { BambooClient, ConnectionLost, SessionEnded } from "/client/bamboo.js";
import { getJson, getToken } from "./api.js";
import { actions, detached, presence } from "./attached.js";
import { connBadge, setBadge } from "./badge.js";
import { CatchUp } from "./catchup.js";
import { breakable, fill, h, notice } from "./dom.js";
import { deniesSession, layOut, refusalText } from "./layout.js";
import { MessageList, PAGE } from "./messages.js";
import { showActivity, showMeta } from "./meta.js";
import * as missed from "./missed.js";
import { ReconnectNotes } from "./reconnects.js";
import { Tail } from "./tail.js";

const TAIL_REPLAY = 200; // events replayed into the tail when the page opens

/**
 * @param {HTMLElement} root @param {string} sessionId
 * @param {{ unauthorized(error: unknown, sentWith?: string | null): boolean }} context
 */
export function showSession(root, sessionId, context) {
  const view = new SessionView(root, sessionId, context);
  void view.start();
  return { destroy: () => view.destroy() };
}

class SessionView {
  /** @type {BambooClient | null} */
  client = null;
  alive = true;
  /** @type {Map<string, string>} connection id -> role, as presence told */
  peers = new Map();
  /** @type {Set<number>} seqs of the events this page published (shown already) */
  own = new Set();
  /** @type {ReconnectNotes | null} what the tail says of the connection, once attached */
  reconnects = null;
  /** @type {string | null} the token the stream was opened with, which a 4401 refuses */
  streamToken = null;

  /**
   * @param {HTMLElement} root @param {string} sessionId
   * @param {{ unauthorized(error: unknown, sentWith?: string | null): boolean }} context
   */
  constructor(root, sessionId, context) {
    this.id = sessionId;
    this.context = context;
    this.status = h("p", { id: "status", class: "status", role: "status" });
    this.meta = h("dl", { id: "meta", class: "meta" });
    this.presence = h("div", { id: "presence" });
    this.actions = h("div", { id: "actions" });
    const unauthorized = (/** @type {unknown} */ error) => this.unauthorized(error);
    this.messages = new MessageList(this.status, () => this.alive, unauthorized);
    this.tailEl = h("div", { id: "tail", class: "tail", "aria-live": "off" });
    this.tail = new Tail(this.tailEl);
    this.catchUp = new CatchUp(this);
    this.connState = connBadge();
    this.cards = layOut(root, sessionId, {
      badge: this.connState,
      status: this.status,
      meta: this.meta,
      presence: this.presence,
      actions: this.actions,
      messages: this.messages,
      tail: this.tailEl,
    });
  }

  destroy() {
    this.alive = false;
    void this.client?.close();
  }

  async start() {
    let stored;
    try {
      // The metadata and the newest page: without a limit the answer would be the
      // whole history, however long.
      stored = await getJson(this.path(), { limit: PAGE }, { alive: () => this.alive });
    } catch (error) {
      if (this.alive && !this.unauthorized(error)) this.#refused(error, true);
      return;
    }
    if (!this.alive) return;
    const metadata = stored.metadata;
    this.#showMeta(metadata);
    if (metadata.state === "closed" || metadata.state === "expired") {
      this.#showStored(stored, `This session is ${metadata.state}: no live events.`);
      return;
    }
    await this.#attach(metadata, stored);
  }

  /** app.js's, told the token a stream's 4401 refuses. @param {unknown} error */
  unauthorized(error) {
    return this.context.unauthorized(error, this.streamToken);
  }

  /** @param {any} metadata @param {any} stored the answer of the HTTP API */
  async #attach(metadata, stored) {
    let client;
    this.streamToken = getToken();
    const replayAfter = Math.max(0, metadata.last_seq - TAIL_REPLAY);
    try {
      client = await BambooClient.connect(location.origin, {
        sessionId: this.id,
        token: this.streamToken ?? undefined,
        lastSeq: replayAfter,
        epoch: metadata.epoch,
      });
    } catch (error) {
      if (!this.alive || this.unauthorized(error)) return;
      if (error instanceof SessionEnded)
        this.#showStored(stored, "This session is closed: no live events.");
      else this.#refused(error, true);
      return;
    }
    if (!this.alive) {
      void client.close();
      return;
    }
    this.client = client;
    this.#readEarlier(client.epoch ?? metadata.epoch);
    this.tail.startAfter(replayAfter); // the events before the replay: "Show earlier"
    const session = /** @type {any} */ (client.session);
    const attachedAt = session.last_seq; // message events after this are new messages
    this.#showMeta(session);
    this.setConnState(client.state);
    const reconnects = new ReconnectNotes(this.tail);
    this.reconnects = reconnects;
    client.on("state", (change) => {
      this.setConnState(change.state);
      // Back after a drop: the peers presence told of were the connections before it.
      if (reconnects.state(client, change)) {
        this.peers.clear();
        this.#showPresence();
      }
    });
    client.on("presence", (p) => {
      if (p.joined) this.peers.set(p.joined, p.role);
      if (p.left) this.peers.delete(p.left);
      this.#showPresence();
    });
    this.#showPresence();
    this.#showActions();
    await this.messages.open(
      async (before) => client.history({ limit: PAGE, before }),
      session.message_count,
    );
    // The last item, when it said the session was replaced: its line in the tail.
    /** @type {{ after: number, line: HTMLElement } | null} */
    let replaced = null;
    try {
      for await (const item of client.events()) {
        replaced = null;
        reconnects.item(item);
        if ("reset" in item) {
          const line = this.tail.note(missed.resetText(item));
          if (missed.wasReplaced(item)) {
            fill(this.status, missed.replacedNotice(item.previousLastSeq));
            replaced = { after: item.previousLastSeq, line };
          }
          continue;
        }
        this.show(item, attachedAt);
      }
      if (!this.alive) return;
      // Replaced, and the session now under this id ended with no event of it shown
      // (as when the client, its resume refused, found another epoch's log over HTTP):
      // the page shows the earlier session, as when its catch-up read finds that.
      // Why it ended: the end the client saw (the `closed` frame's reason when that came
      // before the close, else the refusal's); `closedReason` may be the frame of a
      // connection before it (a restart's "server restarting", then a refused resume).
      const ended = client.error instanceof SessionEnded ? client.error.reason : null;
      const reason = ended ?? client.closedReason ?? "client closed";
      if (replaced !== null) {
        this.tail.remove(replaced.line);
        this.replaced(replaced.after, reason);
      } else this.ended(reason);
    } catch (error) {
      if (!this.alive || this.unauthorized(error)) return;
      // The session ended while this page was behind: the events after `afterSeq`
      // never came, and only the HTTP API has them now.
      if (
        error instanceof ConnectionLost &&
        error.afterSeq !== null &&
        error.cause instanceof SessionEnded
      ) {
        const epoch = /** @type {string} */ (client.epoch);
        await this.catchUp.run(error.afterSeq, attachedAt, error.cause.reason, epoch);
      } else {
        // The stream ended for good (deleted, refused): no controls of a live session.
        this.#refused(error);
        reconnects.noteEnd();
        detached(this.presence, this.actions, false);
        this.#put("meta-connections", "–");
      }
    }
  }

  /**
   * One event of the session in the tail, and in the metadata and the message list.
   * @param {{ seq: number, ts: string, event: any }} item
   * @param {number} attachedAt message events after this seq are new messages
   */
  show(item, attachedAt) {
    this.tail.add(item);
    this.#put("meta-last_seq", String(item.seq));
    showActivity(item.ts);
    if (item.event.type === "message" && item.seq > attachedAt)
      this.messages.add(item.event.message);
    if (item.event.type === "state_change") this.#put("meta-state", item.event.to);
  }

  /**
   * The session was replaced while this page was behind: deleted and created again
   * under the same id (or its log reset), so it has another log, whose seqs start
   * again from 1. What the page shows is the earlier session's, up to `after`; the
   * events after it went with that log. Say so, with a Reload that opens the session
   * now under this id.
   * @param {number} after @param {string} reason
   */
  replaced(after, reason) {
    this.setConnState("closed");
    this.reconnects?.noteEnd();
    this.#put("meta-state", "closed"); // the stream ended as the earlier session closed
    this.tail.note(`Session closed: ${reason}`);
    this.tail.note(
      `The session was replaced: events after #${after} of this one are gone, and the` +
        " session now under this id is another one (another log, its own seqs).",
    );
    detached(this.presence, this.actions, true);
    fill(this.status, missed.replacedNotice(after));
  }

  /**
   * A closed session: what storage keeps, and `text` in the tail.
   * @param {any} stored the answer of the HTTP API @param {string} text
   */
  #showStored(stored, text) {
    this.setConnState("closed");
    fill(this.actions, h("p", { class: "muted" }, "No actions on a closed session."));
    fill(this.presence, h("p", { class: "muted" }, "Nobody can attach."));
    this.messages.showStored(this.path(), stored);
    const alive = () => this.alive;
    const path = this.path();
    this.#readEarlier(stored.metadata.epoch);
    void missed
      .showStoredTail(this.tail, path, stored.metadata, TAIL_REPLAY, alive)
      .then((error) => {
        if (error !== null && this.unauthorized(error)) return;
        if (this.alive) this.tail.note(text);
      });
  }

  /** The tail's "Show earlier" reads the events of the log of `epoch` (the one it
   * shows). @param {string} epoch */
  #readEarlier(epoch) {
    const alive = () => this.alive;
    this.tail.read = (after, upTo) => missed.readEarlier(this.path(), after, upTo, epoch, alive);
  }

  path() {
    return `/api/v1/sessions/${encodeURIComponent(this.id)}`;
  }

  /**
   * The session ended: say so, and show its metadata (as given, else as read).
   * @param {string} reason @param {any} [metadata] @returns {HTMLElement} the tail's line
   */
  ended(reason, metadata) {
    this.setConnState("closed");
    this.reconnects?.noteEnd();
    const line = this.tail.note(`Session closed: ${reason}`);
    detached(this.presence, this.actions, true);
    if (metadata !== undefined) this.#showMeta(metadata);
    else
      void getJson(this.path(), { limit: 1 }, { alive: () => this.alive }) // its metadata
        .then((stored) => {
          if (this.alive) this.#showMeta(stored.metadata);
        })
        .catch(() => {
          // The metadata shown stays; the notice above says what happened.
        });
    return line;
  }

  /**
   * @param {unknown} error
   * @param {boolean} [opening] the page was refused as it opened, nothing shown yet
   */
  #refused(error, opening = false) {
    this.setConnState("refused"); // not "closed": the session may well be live
    notice(this.status, refusalText(error));
    // No session to show this token (403, 404): empty cards would say there is one.
    if (opening && deniesSession(error)) this.cards.remove();
  }

  /** @param {string} state */
  setConnState(state) {
    setBadge(this.connState, state, this.client?.reconnects ?? 0);
  }

  /** @param {any} m the session's metadata */
  #showMeta(m) {
    showMeta(this.meta, m);
    document.getElementById("session-title")?.replaceChildren(breakable(m.title || m.id)[0]);
  }

  #showPresence() {
    const client = this.client;
    if (client === null) return;
    this.#put("meta-connections", String(client.connections));
    fill(this.presence, ...presence(client, this.peers));
  }

  #showActions() {
    const client = /** @type {BambooClient} */ (this.client);
    const published = (/** @type {number} */ seq, /** @type {any} */ event) => {
      this.own.add(seq);
      this.tail.add({ seq, ts: new Date().toISOString(), event }, true);
    };
    fill(this.actions, ...actions(client, published));
  }

  /** @param {string} id @param {string} text */
  #put(id, text) {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  }
}
