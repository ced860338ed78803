// @ts-check
/**
 * attached.js: what a page attached to a live session shows beside its events. Who is
 * attached (presence: this page, the peers presence told of, and a count of those that
 * attached before it), and the actions: publish a test event, close the session for
 * everyone (after a confirmation). session.js puts them in their cards, and takes them
 * back when the page is no longer attached.
 */

import { SessionEnded } from "/client/bamboo.js";
import { h } from "./dom.js";

/** @typedef {import("/client/bamboo.js").BambooClient} BambooClient */

/**
 * The presence card's content.
 * @param {BambooClient} client @param {Map<string, string>} peers connection id -> role
 */
export function presence(client, peers) {
  const known = [
    ["you", "client", client.connectionId],
    ...[...peers].map(([id, role]) => [id, role, id]),
  ];
  const unknown = Math.max(0, client.connections - known.length);
  return [
    h(
      "p",
      {},
      h("strong", { id: "presence-count" }, String(client.connections)),
      client.connections === 1 ? " connection attached" : " connections attached",
    ),
    h(
      "ul",
      { id: "presence-list", class: "presence" },
      ...known.map(([label, role, id]) =>
        h(
          "li",
          { title: id ?? "", dataset: { role } },
          h("span", { class: `badge role-${role}` }, role),
          " ",
          label,
        ),
      ),
    ),
    unknown ? h("p", { class: "muted" }, `${unknown} attached before you (roles not known)`) : null,
  ];
}

/**
 * The presence and actions cards once the page's stream ended for good (the session
 * closed, or was deleted): who was attached, and actions on it, are no longer so.
 * @param {HTMLElement} presenceCard @param {HTMLElement} actionsCard
 * @param {boolean} closed whether the session closed (else the page was refused)
 */
export function detached(presenceCard, actionsCard, closed) {
  const [nobody, none] = closed
    ? ["Nobody can attach.", "The session is closed."]
    : ["This page is no longer attached.", "No actions: not attached."];
  presenceCard.replaceChildren(h("p", { class: "muted" }, nobody));
  actionsCard.replaceChildren(h("p", { class: "muted" }, none));
}

/**
 * The actions card's content. `published` is told of each event published from it
 * (the server does not echo it).
 * @param {BambooClient} client @param {(seq: number, event: any) => void} published
 */
export function actions(client, published) {
  const result = h("span", { id: "pub-result", class: "muted", role: "status" });
  return [publishForm(client, result, published), closeButtons(client, result)];
}

/**
 * @param {BambooClient} client @param {HTMLElement} result where the outcome is said
 * @param {(seq: number, event: any) => void} published
 */
function publishForm(client, result, published) {
  const type = h(
    "select",
    { id: "pub-type", name: "type" },
    h("option", { value: "custom" }, "custom event"),
    h("option", { value: "token" }, "token"),
  );
  const text = h("input", {
    id: "pub-text",
    name: "text",
    type: "text",
    value: "hello from the console",
    required: true,
  });
  return h(
    "form",
    {
      id: "publish",
      class: "inline",
      onsubmit: async (/** @type {SubmitEvent} */ event) => {
        event.preventDefault();
        const value = /** @type {HTMLInputElement} */ (text).value;
        const event_ =
          /** @type {HTMLSelectElement} */ (type).value === "token"
            ? { type: "token", content: value }
            : { type: "custom", name: "console.test", data: { text: value } };
        try {
          const seq = await client.publish(/** @type {any} */ (event_));
          published(seq, event_);
          result.textContent = `published as #${seq}`;
        } catch (error) {
          result.textContent = `not published: ${error instanceof Error ? error.message : error}`;
        }
      },
    },
    h("label", { for: "pub-type" }, "Publish a test event"),
    type,
    text,
    h("button", { type: "submit" }, "Publish"),
    result,
  );
}

/** @param {BambooClient} client @param {HTMLElement} result where a failure is said */
function closeButtons(client, result) {
  const confirm = h(
    "button",
    { type: "button", id: "confirm-close", class: "danger", hidden: true },
    "Yes, close it for everyone",
  );
  const ask = h(
    "button",
    { type: "button", id: "close-session", class: "danger" },
    "Close session…",
  );
  ask.addEventListener("click", () => {
    confirm.hidden = !confirm.hidden;
  });
  confirm.addEventListener("click", async () => {
    confirm.setAttribute("disabled", "");
    try {
      await client.setState("closed");
    } catch (error) {
      if (!(error instanceof SessionEnded))
        result.textContent = `not closed: ${error instanceof Error ? error.message : error}`;
    }
  });
  return h("div", { class: "inline" }, ask, confirm);
}
