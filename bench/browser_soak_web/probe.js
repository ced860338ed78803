// The browser soak's probe (bench/browser_soak.py), run in every page before its own
// scripts: it counts the page's timers still pending (setTimeout not yet fired nor
// cleared, setInterval not cleared) and its WebSockets not yet closed, which a leak on
// reconnects would make grow, and reads what the console's session page shows
// (`__soakShown`), for the checks at the end.
(() => {
  const pending = new Map(); // timer id: "timeout" | "interval"
  const native = {
    setTimeout: window.setTimeout.bind(window),
    clearTimeout: window.clearTimeout.bind(window),
    setInterval: window.setInterval.bind(window),
    clearInterval: window.clearInterval.bind(window),
  };
  window.setTimeout = (handler, ms, ...args) => {
    const id = native.setTimeout(
      (...given) => {
        pending.delete(id);
        if (typeof handler === "function") handler(...given);
      },
      ms,
      ...args,
    );
    pending.set(id, "timeout");
    return id;
  };
  window.setInterval = (handler, ms, ...args) => {
    const id = native.setInterval(handler, ms, ...args);
    pending.set(id, "interval");
    return id;
  };
  window.clearTimeout = (id) => {
    pending.delete(id);
    native.clearTimeout(id);
  };
  window.clearInterval = (id) => {
    pending.delete(id);
    native.clearInterval(id);
  };

  const open = new Set();
  let made = 0;
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      made += 1;
      open.add(this);
      this.addEventListener("close", () => open.delete(this));
    }
  };

  /** What the probe counts now. */
  window.__soakProbe = () => {
    let intervals = 0;
    for (const kind of pending.values()) if (kind === "interval") intervals += 1;
    const tail = document.getElementById("tail");
    // The tail's blocks and their characters, as tail.js bounds them (its first line,
    // which says which events it does not show, is not one).
    const blocks = tail ? [...tail.querySelectorAll(":scope > .ev")] : null;
    return {
      timers: pending.size,
      intervals,
      sockets: open.size,
      socketsMade: made,
      tailBlocks: blocks ? blocks.length : null,
      tailChars: blocks ? blocks.reduce((n, b) => n + b.textContent.length, 0) : null,
      messages: document.querySelectorAll("#messages > li").length,
    };
  };

  /** The console's session page as shown: its tail's blocks, its message list, the
   * badge, in the page's order. */
  window.__soakShown = () => {
    const seqOf = (el) => {
      const tag = el?.querySelector(".seq");
      return tag ? Number(tag.textContent.replace("#", "")) : null;
    };
    const blocks = [];
    for (const el of document.getElementById("tail")?.children ?? []) {
      const kind = [...el.classList].find((c) => c.startsWith("ev-")) ?? "ev";
      const block = { kind, seq: seqOf(el) };
      if (kind === "ev-text" || kind === "ev-thinking") {
        block.from = Number(el.dataset.from);
        block.to = Number(el.dataset.to);
        block.text = el.querySelector(".text")?.textContent ?? "";
      } else if (kind === "ev-tool") {
        block.tool = el.dataset.tool;
        block.status = el.dataset.status;
        const done = /#(\d+)\)/.exec(el.querySelector("summary .status")?.textContent ?? "");
        block.done = done ? Number(done[1]) : null;
      } else if (kind === "ev-message") {
        block.role = el.querySelector("b")?.textContent ?? "";
        block.text = el.textContent;
      } else if (kind === "ev-note") {
        block.text = el.textContent;
      }
      blocks.push(block);
    }
    const messages = [...document.querySelectorAll("#messages > li")].map((li) => ({
      index: Number(li.dataset.index),
      text: li.querySelector(".msg-body")?.textContent ?? "",
    }));
    const badge = document.getElementById("conn-state");
    return {
      blocks,
      messages,
      lastSeq: Number(document.getElementById("tail")?.dataset.lastSeq ?? 0),
      state: badge?.dataset.state ?? null,
      reconnects: Number(badge?.dataset.reconnects ?? 0),
      status: document.getElementById("status")?.textContent ?? "",
    };
  };
})();
