// A minimal chat view on the Bamboo JavaScript client.
//
// Open index.html?server=http://127.0.0.1:8765&session=demo (both optional). The
// client module comes from the Bamboo server itself. The page keeps its position in
// the session (lastSeq, epoch) in sessionStorage, so a reload resumes: events missed
// meanwhile are replayed, and history fills in the rest. Messages are shown once each,
// by id, whichever way they arrive.

const params = new URLSearchParams(location.search);
const server = params.get("server") ?? "http://127.0.0.1:8765";
const sessionId = params.get("session") ?? "demo";
const { BambooClient, newKey } = await import(`${server}/client/bamboo.js`);

const list = document.getElementById("messages");
const status = document.getElementById("status");
const form = document.getElementById("composer");
const input = document.getElementById("text");
const shown = new Set(); // message ids on the page
let streaming = null; // the assistant's reply while its tokens arrive

const positionKey = `bamboo.example.${sessionId}`;
const saved = JSON.parse(sessionStorage.getItem(positionKey) ?? "null");

const client = await BambooClient.connect(server, {
  sessionId,
  create: true,
  title: "Browser example",
  lastSeq: saved?.lastSeq,
  epoch: saved?.epoch,
});
client.on("state", ({ state }) => (status.textContent = state === "open" ? "connected" : state));
status.textContent = "connected";

function bubble(role, text) {
  const li = document.createElement("li");
  li.className = `msg ${role}`;
  li.textContent = text;
  list.append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function showMessage(message) {
  if (shown.has(message.id)) return;
  shown.add(message.id);
  if (message.role === "assistant" && streaming !== null) {
    streaming.remove(); // the whole reply replaces its streamed tokens
    streaming = null;
  }
  bubble(message.role, message.content).dataset.id = message.id;
}

async function loadHistory() {
  const page = await client.history({ limit: 50 });
  for (const message of page.messages) showMessage(message);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const content = input.value.trim();
  if (!content) return;
  input.value = "";
  // Our own messages are not echoed back: show it now, under the id we give it.
  const message = { id: newKey(), role: "user", content };
  showMessage(message);
  await client.sendMessage(message);
});

await loadHistory();
for await (const item of client.events()) {
  if (item.reset) {
    await loadHistory(); // what happened meanwhile could not be replayed
    continue;
  }
  const { event } = item;
  if (event.type === "message") {
    showMessage(event.message);
  } else if (event.type === "token") {
    streaming ??= bubble("assistant streaming", "");
    streaming.append(event.content);
  } else if (event.type === "complete" && streaming !== null) {
    streaming.classList.remove("streaming");
    streaming = null;
  }
  sessionStorage.setItem(
    positionKey,
    JSON.stringify({ lastSeq: client.lastSeq, epoch: client.epoch }),
  );
}
status.textContent = client.closedReason ? `closed: ${client.closedReason}` : "closed";
