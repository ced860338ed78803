// The Socket.IO peer of the Bamboo benches: what a user might run instead of Bamboo.
//
// socket.io 4.8 with its in-memory connection state recovery (every broadcast is kept
// for two minutes with an offset, so a client that drops and comes back within that
// time gets what it missed): the closest Socket.IO gets to Bamboo's resume, without a
// disk. One room per session, named by the `session` field of the handshake's `auth`.
// A connection with `role: "agent"` publishes: each `event` it emits is numbered in its
// room (the analogue of Bamboo's seq), broadcast to the room's other members as
// `{seq, ts, event}`, and acknowledged with its seq (the analogue of Bamboo's `ack`).
//
//   node bench/socketio/server.js --host 127.0.0.1 --port 0
//
// prints "socketio listening on HOST:PORT" on stderr once listening; SIGTERM closes
// every connection and exits, like the Bamboo server and the relay.
"use strict";

const http = require("node:http");
const { parseArgs } = require("node:util");
const { Server } = require("socket.io");

const RECOVERY_WINDOW_MS = 2 * 60 * 1000; // socket.io's default, said out loud
const MAX_FRAME_BYTES = 1024 * 1024; // Bamboo's default frame limit
const LISTEN_BACKLOG = 4096; // as Bamboo's

const { values: options } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "8767" },
  },
});

const httpServer = http.createServer();
const io = new Server(httpServer, {
  serveClient: false,
  maxHttpBufferSize: MAX_FRAME_BYTES,
  pingInterval: 20000,
  pingTimeout: 20000,
  perMessageDeflate: false,
  connectionStateRecovery: {
    maxDisconnectionDuration: RECOVERY_WINDOW_MS,
    skipMiddlewares: true,
  },
});

const lastSeq = new Map(); // room -> seq of its newest event

io.on("connection", (socket) => {
  const { session, role } = socket.handshake.auth ?? {};
  if (typeof session !== "string" || session.length === 0 || session.length > 128) {
    socket.disconnect(true);
    return;
  }
  if (!socket.recovered) {
    socket.join(session); // a recovered socket is back in its rooms already
  }
  if (role === "agent") {
    socket.on("event", (event, ack) => {
      const seq = (lastSeq.get(session) ?? 0) + 1;
      lastSeq.set(session, seq);
      socket.to(session).emit("event", { seq, ts: new Date().toISOString(), event });
      if (typeof ack === "function") {
        ack({ seq });
      }
    });
  }
});

httpServer.listen({ host: options.host, port: Number(options.port), backlog: LISTEN_BACKLOG }, () => {
  const { address, port } = httpServer.address();
  process.stderr.write(`socketio listening on ${address}:${port}\n`);
});

function stop() {
  io.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
