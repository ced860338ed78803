// tests/test_client_soak_findings.py's follower: the JavaScript client on one session
// through the test's proxy, with a quick liveness check; prints each state it is told,
// one JSON line each, and closes on SIGTERM. With "ws" after the session's id it
// connects with the ws package's WebSocket (tests/js/node_modules), else Node's own.
import { BambooClient } from "../../server/web/client/bamboo.js";

const [url, sessionId, implementation] = process.argv.slice(2);
const WebSocket = implementation === "ws" ? (await import("ws")).WebSocket : globalThis.WebSocket;
const client = await BambooClient.connect(url, {
  sessionId,
  WebSocket,
  create: true,
  pingInterval: 500,
  pingTimeout: 500,
});
client.on("state", (change) => {
  process.stdout.write(JSON.stringify({ state: change.state, reason: change.reason }) + "\n");
});
process.stdout.write(JSON.stringify({ state: "connected" }) + "\n");
process.on("SIGTERM", async () => {
  await client.close();
  process.exit(0);
});
for await (const item of client.events()) void item;
