// @ts-check
/**
 * frames.js: the client's side of the frames themselves: a fresh idempotency key for
 * each publish, a server frame decoded (or refused as malformed), its size as the
 * events queue counts it, and a send that leaves a failing connection to its close.
 *
 * @module bamboo/frames
 */

/** A fresh idempotency key: 128 random bits in hex (works outside secure contexts too). */
export function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A server frame as an object, or null when it is not one. @param {unknown} data */
export function decodeFrame(data) {
  try {
    const text =
      typeof data === "string" ? data : new TextDecoder().decode(/** @type {ArrayBuffer} */ (data));
    const frame = JSON.parse(text);
    return frame !== null && typeof frame === "object" && typeof frame.type === "string"
      ? frame
      : null;
  } catch {
    return null;
  }
}

/** A frame's bytes as the events queue counts them: UTF-8 for text. @param {unknown} data */
export function frameBytes(data) {
  return typeof data === "string" ? utf8Length(data) : byteLength(data);
}

/** The bytes of `text` in UTF-8, without encoding it. @param {string} text */
function utf8Length(text) {
  let bytes = text.length; // one per UTF-16 unit, then what more each takes
  for (let i = 0; i < text.length; i += 1) {
    const unit = text.charCodeAt(i);
    if (unit >= 0x800) bytes += unit >= 0xd800 && unit <= 0xdfff ? 1 : 2;
    else if (unit >= 0x80) bytes += 1;
  }
  return bytes;
}

/** @param {unknown} data a binary frame */
function byteLength(data) {
  return data instanceof ArrayBuffer || ArrayBuffer.isView(data) ? data.byteLength : 0;
}

/** Send `data` (a JSON frame), or nothing: a connection that cannot send is going, and
 * its close handler reconnects and resends. @param {WebSocket} ws @param {string} data */
export function sendQuietly(ws, data) {
  try {
    ws.send(data);
  } catch {
    // The connection is going: its close handler reconnects and resends.
  }
}
