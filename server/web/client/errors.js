// @ts-check
/**
 * errors.js: the errors the client throws (every one a {@link ClientError}), and what
 * each close code means: {@link closeError} is the one place that maps a close code to
 * a reconnect and resume ({@link Retry}) or to the typed error that ends the client.
 * The table it follows is docs/protocol.md's "Close codes". {@link closeSeen} and
 * {@link closeOf} say which close the `"state"` event names, as the client
 * reconnects or as it ends.
 *
 * @module bamboo/errors
 */

/** Close codes after which the client reconnects and resumes. */
export const RESUME_CODES = Object.freeze([1001, 1011, 1012, 1013, 4408, 4429]);
const RESUMABLE = new Set(RESUME_CODES);
export const ABNORMAL_CLOSURE = 1006; // what browsers report for a network failure

/** Base of every error the client raises. */
export class ClientError extends Error {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The server refused in a way a reconnect would not fix (1008, 1009, 4401, 4403, 4404, …). */
export class Refused extends ClientError {
  /** @param {number} code the close code @param {string} reason */
  constructor(code, reason) {
    super(
      reason ? `refused by the server (${code}): ${reason}` : `refused by the server (${code})`,
    );
    this.code = code;
    this.reason = reason;
  }
}
/** Close 4401: no token, or a bad one; or a fixed token expired on an open connection. */
export class Unauthorized extends Refused {}
/** Close 4403: this token may not attach to this session. */
export class Forbidden extends Refused {}
/** Close 4404: no such session (attach with `create` to make it). */
export class NotFound extends Refused {}

/** The session was closed (close 1000, or 4409 when attaching), or `close()` was called. */
export class SessionEnded extends ClientError {
  /** @param {string} reason @param {number} code the close code, 1000 or 4409 */
  constructor(reason, code) {
    super(reason);
    this.reason = reason;
    this.code = code;
  }
}

/**
 * The connection dropped and could not be brought back (`maxRetries`, or `reconnect:
 * false`); or the session ended (its `cause`: the {@link SessionEnded}) while events
 * due to this client had been skipped past its full queue (or dropped by the server,
 * 4429), or had not come yet (a resume's replay cut short by the close), and no
 * resume can bring them any more. Either way `events()` delivered every
 * event up to `afterSeq` (when known), but the client's own publishes, and none after
 * it: read the rest over HTTP, `GET /api/v1/sessions/{id}/events?after_seq={afterSeq}`,
 * or, while the session lasts, by connecting again with `lastSeq: afterSeq`.
 */
export class ConnectionLost extends ClientError {
  /**
   * @param {string} message
   * @param {{ afterSeq?: number | null, cause?: unknown }} [options]
   */
  constructor(message, { afterSeq = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    /** @type {number | null} every seq up to it came through `events()` (or was our publish) */
    this.afterSeq = afterSeq;
  }
}

/** The server sent an impossible sequence: a duplicate `seq`, or a gap. */
export class SequenceError extends ClientError {
  /** @param {string} message @param {number} expected @param {number} got */
  constructor(message, expected, got) {
    super(message);
    this.expected = expected;
    this.got = got;
  }
}

/** The server answered a request with an `error` frame (`code`: `bad_request`, `closed`, …). */
export class RequestError extends ClientError {
  /** @param {string} code @param {string} detail */
  constructor(code, detail) {
    super(`${code}: ${detail}`);
    this.code = code;
    this.detail = detail;
  }
}

/**
 * A read of the log page by page (`readAllEvents`, `eventPages`) found a page of another
 * log than the one it was asked of: the session was replaced (deleted and created again
 * under its id, or expired and replaced) and the client reconnected onto the new one
 * before that page (the first one included). The new log's seqs start from 1 again, so
 * its pages are not the rest of the old one, and the read stops rather than join them.
 * `previousEpoch` is the epoch the read was pinned to (the caller's, or the client's when
 * the read was called), `epoch` the new page's, `afterSeq` the seq after which that page
 * was asked. Nothing restarts the read: start a new one to read the new log
 * (`client.epoch` is then the new one's, and `events()` has yielded a reset).
 */
export class EpochChanged extends ClientError {
  /** @param {string} previousEpoch @param {string} epoch @param {number} afterSeq */
  constructor(previousEpoch, epoch, afterSeq) {
    super(
      `the session's log changed from epoch ${previousEpoch} to ${epoch} while it was read` +
        ` page by page (a page asked after seq ${afterSeq}): the session was replaced,` +
        ` and the new log's events are not the rest of the old one's`,
    );
    this.previousEpoch = previousEpoch;
    this.epoch = epoch;
    this.afterSeq = afterSeq;
  }
}

/** A request got no reply within `requestTimeout`. A publish may still be stored. */
export class RequestTimeout extends ClientError {}

/** Internal (bamboo.js does not export it): this connection failed in a way worth a reconnect. */
export class Retry extends Error {}

/**
 * What a close code means: a {@link Retry}, or the error that ends the client.
 * @param {number} code @param {string} reason @param {string | null} closedReason
 * @returns {Retry | ClientError}
 */
export function closeError(code, reason, closedReason) {
  if (code === ABNORMAL_CLOSURE)
    return new Retry(`connection dropped${reason ? `: ${reason}` : ""}`);
  if (RESUMABLE.has(code)) return new Retry(`closed ${code} ${reason}`.trim());
  if (code === 1000 || code === 4409) {
    return new SessionEnded(closedReason || reason || "session closed", code);
  }
  if (code === 4401) return new Unauthorized(code, reason);
  if (code === 4403) return new Forbidden(code, reason);
  if (code === 4404) return new NotFound(code, reason);
  return new Refused(code, reason);
}

/**
 * A close as the `"state"` event reports it: the code and reason of the close that made
 * the client reconnect (`"reconnecting"`) or ended it (`"closed"`).
 * @typedef {{ code: number | null, reason: string }} CloseSeen
 */

/**
 * The close of a connection as the client saw it: its code and reason, or, when no
 * close frame came (1006: the connection dropped), a null code and "connection lost"
 * (or what reason the WebSocket gave).
 * @param {number} code @param {string} reason @returns {CloseSeen}
 */
export function closeSeen(code, reason) {
  if (code === ABNORMAL_CLOSURE) return { code: null, reason: reason || "connection lost" };
  return { code, reason };
}

/**
 * The close that ended a client whose end is `failure`, when no close of a connection
 * says it better: the code and reason of a refusal or of the session's end (a
 * {@link ConnectionLost} whose `cause` is one included: the session ended while the
 * client was behind), so that `code` is the one the error carries; else (given up
 * after `maxRetries`, a frame it cannot take, a token function that threw) a null
 * code and the error's message. (A welcome it cannot use is a {@link Refused} of its
 * own, 1008.)
 * @param {ClientError} failure @returns {CloseSeen}
 */
export function closeOf(failure) {
  const ended = failure instanceof ConnectionLost ? failure.cause : failure;
  if (ended instanceof SessionEnded || ended instanceof Refused) {
    return { code: ended.code, reason: ended.reason };
  }
  return { code: null, reason: failure.message };
}

/** What ends the client for `failure`: itself when a {@link ClientError}, else (a token
 * function that threw) a ClientError whose `cause` it is. @param {unknown} failure */
export function asClientError(failure) {
  if (failure instanceof ClientError) return failure;
  const error = new ClientError(`client failed: ${failure}`);
  error.cause = failure;
  return error;
}
