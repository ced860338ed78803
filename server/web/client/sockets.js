// @ts-check
/**
 * sockets.js: letting go of a connection the client will not hear from again (given up
 * as silent, timed out while opening, paused, or the client ended), so that its socket
 * does not outlive it.
 *
 * The WHATWG WebSocket has no abort: `close()` starts a closing handshake, and the
 * socket is released only when the server's close comes back or the environment stops
 * waiting for it. Browsers bound that wait themselves (Chromium 60 s,
 * `kClosingHandshakeTimeoutSeconds` in net/websockets/websocket_channel.cc; Firefox
 * 20 s, `network.websocket.timeout.close`); Node's built-in WebSocket (undici) does not,
 * so on a path that stays silent its socket stays open until the path delivers the
 * server's close or TCP gives the connection up. The `ws` package's WebSocket has
 * `terminate()`, which destroys the socket: {@link letGo} uses it where it exists.
 *
 * @module bamboo/sockets
 */

// Ms a connection let go of while not known to be dead (a pause, the client's end) is
// given to finish its closing handshake before a socket that can be terminated is: a
// live path answers in a round trip, a dead one never. `close()` waits as long.
export const CLOSE_BOUND = 2000;

/**
 * Close `ws` (the server hears `code` and `reason` if the path still carries them) and,
 * where the socket can be terminated, release it: at once when the connection is
 * known to be dead (`silent`), else once {@link CLOSE_BOUND} passes without its close.
 * @param {WebSocket} ws @param {{ code?: number, reason?: string, silent?: boolean }} how
 */
export function letGo(ws, { code, reason, silent = false }) {
  if (ws.readyState === ws.CLOSED) return;
  if (ws.readyState !== ws.CLOSING) ws.close(code, reason);
  const terminate = terminateOf(ws);
  if (terminate === null || ws.readyState === ws.CLOSED) return;
  if (silent) {
    terminate();
    return;
  }
  const timer = setTimeout(terminate, CLOSE_BOUND);
  ws.addEventListener("close", () => clearTimeout(timer), { once: true });
}

/** The socket's `terminate()` (the `ws` package's), bound to it, or null where the
 * WebSocket is the WHATWG one alone. @param {WebSocket} ws @returns {(() => void) | null} */
function terminateOf(ws) {
  const terminate = /** @type {{ terminate?: unknown }} */ (ws).terminate;
  return typeof terminate === "function" ? () => terminate.call(ws) : null;
}
