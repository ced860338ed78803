// The load driver for the Socket.IO peer (socket.io-client 4.8), one process of it.
//
// It drives server.js with the same load shape as the Python drivers give Bamboo and
// the relay (bench/peers.py, bench/latency_worker.py), and talks to the Python bench
// script in JSON lines:
//   stdin         the config, {mode, url, sessions: [names], ...}
//   stdout        {"ready": true} once every connection is up
//   stdin         {"start": T}: go (T: the open loop's start, CLOCK_MONOTONIC seconds,
//                 the clock of Python's time.perf_counter)
//   stdout        {"result": {...}}
// and then takes the next config, or exits at the end of stdin. One process can so run
// job after job with its JIT warm, as the Python throughput driver runs in-process: a
// fresh Node process reached 14,000 events/s at 20 sessions, and 51,000 by its fourth
// run. In mode "throughput" the connections are closed (and the server has answered the
// close) before the result, so the server CPU counted covers connect + run + close, as
// for the Python driver; in mode "latency" they are closed after it.
//
// mode "throughput": per session one agent emits `events` token events with an
// acknowledgement callback, at most `window` unacknowledged, and one viewer checks that
// `seq` arrives in order with no gap; the result is the time from go to the last
// delivery. mode "latency": `rate` events a second for `seconds`, round-robin over the
// agents, each carrying its scheduled send time; viewers note the arrival time. The
// latencies (seconds, native float64) are written to `samples_path`.
//
// A Python client (python-socketio) was measured first: ~130 µs of driver CPU per event
// against ~25 µs for the Python Bamboo driver, so it capped Socket.IO at ~7,500 events/s
// and measured the client, not the server.
"use strict";

const fs = require("node:fs");
const readline = require("node:readline");
const { io } = require("socket.io-client");

const CONNECT_CONCURRENCY = 50;
const CONNECT_TIMEOUT_MS = 30000;
const TICK_MS = 1; // the open loop wakes this often and sends every event that is due
const STRAGGLER_WAIT_S = 5.0; // how long events still in flight are awaited
const CLOSE_TIMEOUT_S = 10.0;

const now = () => Number(process.hrtime.bigint()) / 1e9;

const lines = readline.createInterface({ input: process.stdin });
const pending = [];
const waiters = [];
let stdinClosed = false;
lines.on("line", (line) => (waiters.length ? waiters.shift().resolve(line) : pending.push(line)));
lines.on("close", () => {
  stdinClosed = true; // the bench script went away: a step still waiting for it fails
  for (const waiter of waiters.splice(0)) waiter.reject(new Error("stdin closed"));
});
const nextLine = () =>
  new Promise((resolve, reject) => {
    if (pending.length) resolve(pending.shift());
    else if (stdinClosed) reject(new Error("stdin closed"));
    else waiters.push({ resolve, reject });
  });
const say = (object) => process.stdout.write(JSON.stringify(object) + "\n");

function connect(url, auth) {
  return new Promise((resolve, reject) => {
    const socket = io(url, {
      transports: ["websocket"],
      forceNew: true,
      reconnection: false,
      timeout: CONNECT_TIMEOUT_MS,
      auth,
    });
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (error) => reject(error));
  });
}

async function connectAll(url, sessions, role) {
  const sockets = new Array(sessions.length);
  let next = 0;
  async function worker() {
    while (next < sessions.length) {
      const index = next++;
      const auth = role === "agent" ? { session: sessions[index], role } : { session: sessions[index] };
      sockets[index] = await connect(url, auth);
    }
  }
  await Promise.all(Array.from({ length: CONNECT_CONCURRENCY }, worker));
  return sockets;
}

function viewInOrder(socket, events) {
  return new Promise((resolve, reject) => {
    let expected = 1;
    socket.on("event", (frame) => {
      if (frame.seq !== expected) {
        reject(new Error(`event ${frame.seq} arrived, expected ${expected}`));
        return;
      }
      expected += 1;
      if (expected > events) resolve(now());
    });
    socket.once("disconnect", (reason) => {
      if (expected <= events) reject(new Error(`viewer disconnected: ${reason}`));
    });
  });
}

function publishWindowed(socket, events, window) {
  return new Promise((resolve) => {
    let sent = 0;
    let acked = 0;
    const onAck = () => {
      acked += 1;
      if (acked === events) resolve();
      else pump();
    };
    const pump = () => {
      while (sent < events && sent - acked < window) {
        const index = sent++;
        socket.emit("event", { type: "token", content: `token ${index} of a bench run` }, onAck);
      }
    };
    pump();
  });
}

async function throughput(config, agents, viewers) {
  await nextLine();
  const start = now();
  const delivered = viewers.map((v) => viewInOrder(v, config.events));
  await Promise.all([...agents.map((a) => publishWindowed(a, config.events, config.window)), ...delivered]);
  return { seconds: now() - start };
}

async function latency(config, agents, viewers) {
  const { start } = JSON.parse(await nextLine());
  const measureFrom = start + config.warmup;
  const samples = [];
  for (const viewer of viewers) {
    viewer.on("event", (frame) => {
      const arrived = now();
      const sent = frame.event?.data?.t;
      if (typeof sent === "number" && sent >= measureFrom) samples.push(arrived - sent);
    });
  }
  const total = Math.floor(config.rate * config.seconds);
  const onAck = () => {}; // the server's ack is read (and dropped), as a real agent does
  const sendLags = new Float64Array(total);
  let sent = 0;
  let expected = 0; // events scheduled after the warm-up: each should give one sample
  let lastSend = start;
  const cpuAtStart = process.cpuUsage();
  await new Promise((resolve) => {
    const tick = () => {
      const t = now();
      const due = Math.min(total, Math.floor((t - start) * config.rate) + 1);
      while (sent < due) {
        const scheduled = start + sent / config.rate;
        if (scheduled >= measureFrom) {
          sendLags[expected] = t - scheduled; // lags at start-up are warm-up too
          expected += 1;
        }
        const event = { type: "custom", name: "t", data: { t: scheduled } };
        agents[sent % agents.length].emit("event", event, onAck);
        sent += 1;
      }
      lastSend = t;
      if (sent < total) setTimeout(tick, TICK_MS);
      else resolve();
    };
    setTimeout(tick, Math.max(0, (start - now()) * 1000));
  });
  const offerCpu = process.cpuUsage(cpuAtStart);
  const deadline = now() + STRAGGLER_WAIT_S;
  while (samples.length < expected && now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  fs.writeFileSync(config.samples_path, new Float64Array(samples));
  const lags = sendLags.subarray(0, expected).sort();
  return {
    sent,
    expected,
    measured: samples.length,
    // the nearest-rank percentile, as percentile() in common.py
    send_lag_p99_s: expected ? lags[Math.max(0, Math.floor(0.99 * expected + 0.5) - 1)] : 0,
    worst_lag_s: expected ? lags[expected - 1] : 0,
    last_send_s: lastSend - start,
    offer_cpu_s: (offerCpu.user + offerCpu.system) / 1e6, // while sending: is it saturated?
  };
}

async function closeAll(sockets) {
  // socket.disconnect() starts the WebSocket closing handshake; wait for the server's
  // answer (ws's CLOSED state), as the Python driver's ws.close() does.
  const transports = sockets.map((s) => s.io.engine?.transport?.ws).filter(Boolean);
  for (const socket of sockets) socket.disconnect();
  const deadline = now() + CLOSE_TIMEOUT_S;
  while (transports.some((ws) => ws.readyState !== ws.CLOSED) && now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function job(config) {
  const cpuBefore = process.cpuUsage();
  const viewers = await connectAll(config.url, config.sessions, "viewer");
  const agents = await connectAll(config.url, config.sessions, "agent");
  say({ ready: true });
  const throughputMode = config.mode === "throughput";
  const result = throughputMode
    ? await throughput(config, agents, viewers)
    : await latency(config, agents, viewers);
  if (throughputMode) await closeAll([...agents, ...viewers]);
  const cpu = process.cpuUsage(cpuBefore);
  say({ result: { ...result, driver_cpu_s: (cpu.user + cpu.system) / 1e6 } });
  if (!throughputMode) await closeAll([...agents, ...viewers]);
}

async function main() {
  for (;;) {
    let line;
    try {
      line = await nextLine();
    } catch {
      return; // end of stdin: no more jobs
    }
    await job(JSON.parse(line));
  }
}

main()
  .then(() => process.exit(0)) // stdout is a pipe, written synchronously on Linux
  .catch((error) => {
    process.stderr.write(`socketio driver: ${error.stack ?? error}\n`);
    process.exit(1);
  });
