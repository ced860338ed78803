// @ts-check
/**
 * state.js: what a client knows of its session and what it still owes, kept across
 * connections, with no I/O of its own: the session's id and epoch, the seq check, the
 * events queued for `events()` ({@link EventFeed}), the requests awaiting replies
 * ({@link PendingRequests}), and why the client ended, once it has.
 *
 * The link (link.js) asks it for each connection's `hello`, tells it each `welcome`,
 * and hands it every frame: it answers waiting requests, checks seqs, queues events and
 * resets, and keeps the public face's metadata, presence count and `closedReason`
 * current. When the feed is full it skips events (a browser cannot stop reading) and
 * says so (`overflowed`), for the link to pause the connection. At the session's end it
 * says what `events()` ends with: {@link SessionEnded}, or {@link ConnectionLost} naming
 * the seq to read after while events due to this client were never delivered.
 *
 * @module bamboo/state
 */

import { ClientError, ConnectionLost, RequestError, SessionEnded } from "./errors.js";
import { END, EventFeed } from "./feed.js";
import { PendingRequests } from "./pending.js";
import { SequenceCheck } from "./sequence.js";

/**
 * @typedef {import("./types.js").Settings} Settings
 * @typedef {import("./client.js").BambooClient} BambooClient
 * @typedef {{ added: boolean, lastSeq: number, epoch: string | null }} LogAnswer
 */

export class ClientState {
  #client;
  #options;
  #pauseIfIdle;
  /** @type {string | null} */
  #sessionId;
  /** @type {number | null} what the first hello asks to resume from */
  #resumeFrom;
  /** @type {string | null} */
  #epoch;
  #seq;
  // This connection skipped an event past the full queue: it skips every later one, and
  // is closed once no request awaits a reply on it.
  #overflowed = false;
  // A connection ended with events due to us undelivered (skipped past the full queue,
  // or dropped by the server as too slow to read): until a welcome resumes (or resets),
  // the session's end is no clean end of events().
  #behind = false;
  // The last seq the session is known to have reached, as of the last welcome (its
  // last_seq: a resume's replay goes up to it); events and acks since may say more.
  #reached = 0;
  /** @type {ClientError | null} why this client is finished */
  #failure = null;
  // Events taken that were new to this client, and publishes acknowledged, so far (all
  // connections): a connection that added to it did useful work, and is no failed
  // attempt for the reconnect's backoff (backoff.js).
  #progress = 0;

  /**
   * @param {BambooClient} client the public face, whose metadata fields this keeps
   * @param {Settings} options
   * @param {{ pauseIfIdle: () => void, taken: () => void }} link what the link does
   *   when an event was skipped or a reply came (pause a connection that skipped, once
   *   idle), and when `events()` took an item
   */
  constructor(client, options, link) {
    this.#client = client;
    this.#options = options;
    this.#pauseIfIdle = link.pauseIfIdle;
    this.#sessionId = options.sessionId ?? null;
    this.#resumeFrom = options.lastSeq ?? null;
    this.#epoch = options.epoch ?? null;
    this.#seq = new SequenceCheck(options.lastSeq ?? 0);
    this.#reached = options.lastSeq ?? 0;
    this.feed = new EventFeed(options.maxQueuedEvents, options.maxQueuedBytes, link.taken);
    this.pending = new PendingRequests();
  }

  /** @returns {string | null} the session's id, once known */
  get sessionId() {
    return this.#sessionId;
  }

  /** @returns {string | null} the epoch of the log `lastSeq` belongs to */
  get epoch() {
    return this.#epoch;
  }

  /** @returns {number} every seq up to it was seen (see `BambooClient#lastSeq`) */
  get lastSeq() {
    return this.#seq.resumePoint;
  }

  /** @returns {number} events new to this client and publishes acknowledged, so far */
  get progress() {
    return this.#progress;
  }

  /** @returns {ClientError | null} why the client ended, once it has */
  get failure() {
    return this.#failure;
  }

  /** @returns {boolean} this connection skipped an event past the full queue */
  get overflowed() {
    return this.#overflowed;
  }

  /** A connection went with events due to us undelivered: only a resume brings them. */
  fellBehind() {
    this.#behind = true;
  }

  /** The `hello` of a connection. @param {string | undefined} token @param {boolean} first
   * the client's first connection, which alone may create the session */
  hello(token, first) {
    const lastSeq = first ? this.#resumeFrom : this.#seq.resume();
    const o = this.#options;
    return {
      type: "hello",
      token,
      user_id: o.userId,
      title: o.title,
      create: Boolean(o.create) && first, // a reconnect never creates a session
      last_seq: lastSeq ?? undefined,
      epoch: lastSeq != null ? (this.#epoch ?? undefined) : undefined,
      role: o.role,
    };
  }

  /** @param {any} welcome @param {boolean} first the client's first connection */
  welcomed(welcome, first) {
    const askedToResume = !first || this.#resumeFrom !== null;
    const previousEpoch = this.#epoch;
    const previousLastSeq = this.#seq.resumePoint; // what the hello asked
    this.#overflowed = false;
    this.#behind = false; // resumed, or reset (a Reset tells the application)
    this.#reached = welcome.last_seq;
    this.#sessionId = welcome.session.id;
    const client = this.#client;
    client.session = welcome.session;
    client.connectionId = welcome.connection_id;
    client.connections = welcome.session.connections;
    client.closedReason = null;
    this.#epoch = welcome.epoch;
    if (!askedToResume) {
      this.#seq = new SequenceCheck(welcome.last_seq); // live events only, from here
    } else if (!welcome.resumed) {
      this.#seq = new SequenceCheck(welcome.last_seq);
      if (this.#options.receiveEvents) {
        this.feed.push({
          reset: true,
          epoch: welcome.epoch,
          lastSeq: welcome.last_seq,
          previousEpoch,
          previousLastSeq,
        });
      }
    }
  }

  /** A frame of the connection in use; throws what ends the client.
   * @param {any} frame @param {number} size its bytes */
  handle(frame, size) {
    switch (frame.type) {
      case "event": {
        if (!Number.isSafeInteger(frame.seq)) throw new ClientError("event without a seq");
        if (this.#options.receiveEvents && (this.#overflowed || this.feed.full())) {
          // Not checked, not queued: as if it had not come. The next connection
          // resumes before it.
          this.#overflowed = true;
          this.#client.skippedEvents += 1;
          this.#pauseIfIdle();
          break;
        }
        const deliver = this.#seq.event(frame.seq, this.pending.unansweredPublishes());
        if (deliver) this.#progress += 1;
        if (deliver && this.#options.receiveEvents) {
          this.feed.push({ seq: frame.seq, ts: frame.ts, event: frame.event }, size);
        }
        break;
      }
      case "ack": {
        const pending = this.pending.get(frame.id);
        if (pending?.isPublish) {
          // A seq that is no whole number (0.5) would count as seen and hide a gap.
          if (!Number.isSafeInteger(frame.seq)) throw new ClientError("ack without a seq");
          if (!frame.duplicate) this.#seq.see(frame.seq, "ack");
          // Stored before a drop that lost its ack: it fills the hole.
          else if (this.#seq.isHole(frame.seq)) this.#seq.see(frame.seq, "ack");
          this.#progress += 1;
        }
        this.#answer(frame.id, frame);
        break;
      }
      case "history":
      case "events":
      case "pong":
        this.#answer(frame.id, frame);
        break;
      case "error":
        if (frame.id == null) {
          this.#dispatch("warning", { code: frame.code, message: frame.message });
        } else {
          this.#answer(frame.id, null, new RequestError(frame.code, frame.message));
        }
        break;
      case "presence":
        this.#client.connections = frame.connections;
        this.#dispatch("presence", {
          joined: frame.joined ?? undefined,
          left: frame.left ?? undefined,
          role: frame.role,
          connections: frame.connections,
        });
        break;
      case "closed":
        this.#client.closedReason = frame.reason;
        break;
      default: // a second welcome, or a frame type from a later protocol version
        break;
    }
  }

  /** @param {unknown} id @param {any} result @param {Error} [error] */
  #answer(id, result, error) {
    const pending = this.pending.answer(id, result, error);
    if (pending === undefined) return; // a reply to no waiting request
    if (pending.isPublish) this.#seq.check(this.pending.unansweredPublishes());
    this.#pauseIfIdle();
  }

  /** @param {string} type @param {unknown} detail */
  #dispatch(type, detail) {
    this.#client.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * Events due to this client were not delivered, and only a resume brings them:
   * skipped past its full queue, or dropped with a connection (`#behind`,
   * `#overflowed`), or not received at all: `events()` stops below the last seq the
   * session is known to have reached (a welcome's `last_seq`, which a resume's replay
   * goes up to, or a higher seq from an event or an ack of ours), as when the session
   * is closed while the replay is being sent and the client does not take it in time.
   * A publish-only client (`receiveEvents: false`) is owed none, whatever dropped its
   * connections (a 4429 for its own frame rate included).
   * @returns {boolean}
   */
  owesEvents() {
    if (!this.#options.receiveEvents) return false;
    if (this.#behind || this.#overflowed) return true;
    return this.#seq.resumePoint < Math.max(this.#reached, this.#seq.highest);
  }

  /**
   * `error`, unless the session ended (1000, or a resume refused with 4409) while
   * events due to this client were not delivered (`owesEvents`): skipped past
   * its full queue, dropped with a connection, or a replay the close cut short. No
   * resume can bring those now, so `events()` must not end as if it had them all: a
   * {@link ConnectionLost} names the seq to read after.
   * @param {ClientError} error @returns {ClientError}
   */
  unlessBehind(error) {
    if (!(error instanceof SessionEnded) || !this.owesEvents()) return error;
    return this.lostAfter(error);
  }

  /**
   * The end of a client whose session ended while it was disconnected (a resume
   * refused with 4409): it saw no `closed` on a connection it read, so events may have
   * been appended while it was away (a publisher that resumed first after a restart,
   * then closed the session). A client that takes events asks the HTTP API once
   * (`ask`: whether the log holds one after the last it delivered): if so, or if the
   * answer cannot be had, the end is a {@link ConnectionLost} naming that seq; if not,
   * `error`. Should the answer be of another epoch's log (the session was replaced
   * meanwhile: deleted and created again under its id), the events after that seq went
   * with the log they were of, and none of the new one follows it: `events()` yields a
   * {@link Reset} saying so, then ends with `error`, as for a resume refused because
   * of another epoch.
   * @param {SessionEnded} error
   * @param {(sessionId: string, afterSeq: number) => Promise<LogAnswer>} ask
   * @returns {Promise<ClientError>}
   */
  async endedWhileAway(error, ask) {
    if (!this.#options.receiveEvents || this.owesEvents() || this.#sessionId === null) {
      return this.unlessBehind(error);
    }
    let found;
    try {
      found = await ask(this.#sessionId, this.#seq.resumePoint);
    } catch (failure) {
      return this.lostAfter(error, failure instanceof Error ? failure.message : String(failure));
    }
    if (this.#failure !== null) return error; // closed meanwhile: it is over already
    if (found.epoch !== null && found.epoch !== this.#epoch) {
      const reset = {
        reset: /** @type {const} */ (true),
        epoch: found.epoch,
        lastSeq: found.lastSeq,
        previousEpoch: this.#epoch,
        previousLastSeq: this.#seq.resumePoint,
      };
      this.#epoch = found.epoch;
      this.#seq = new SequenceCheck(found.lastSeq);
      this.feed.push(reset);
      return error;
    }
    return found.added ? this.lostAfter(error) : error;
  }

  /**
   * The {@link ConnectionLost} that ends a client whose session ended before it had
   * every event: those after the last it delivered are to be read over HTTP.
   * `unchecked`: why the server could not be asked whether there are any (then they
   * *may* be missing).
   * @param {SessionEnded} error @param {string} [unchecked] @returns {ConnectionLost}
   */
  lostAfter(error, unchecked) {
    const after = this.#seq.resumePoint;
    const read = `read them over HTTP: GET /api/v1/sessions/${this.#sessionId}/events?after_seq=${after}`;
    if (unchecked !== undefined) {
      return this.lost(
        `${error.reason} while this client was away, and the events after seq ${after}` +
          ` may not have been delivered to it: asking the server failed (${unchecked}; ${read})`,
        error,
      );
    }
    return this.lost(
      `${error.reason}, with the events after seq ${after} not delivered to this client (${read})`,
      error,
    );
  }

  /** A {@link ConnectionLost} that ends this client, naming the last seq delivered.
   * @param {string} message @param {ClientError} [cause] */
  lost(message, cause) {
    return new ConnectionLost(message, { afterSeq: this.#seq.resumePoint, cause });
  }

  /**
   * End this client, once: fail what waits, end `events()`. Whether it ended now (not
   * before). @param {ClientError} failure
   */
  finish(failure) {
    if (this.#failure !== null) return false;
    this.#failure = failure;
    this.pending.rejectAll(failure);
    this.feed.push(END);
    return true;
  }
}
