// @ts-check
/**
 * stats.js: the server's figures in the top bar, read from `/api/v1/stats` every two
 * seconds; events per second is the change of `events_appended` between two reads.
 * While the server does not answer (restarting, say), the figures shown are its last:
 * the bar says so, greys them and shows no rate, rather than a rate it no longer has.
 * A failed sync of the store (`store_sync_failed`, 1 until the server restarts) is
 * shown as a warning above the page, saying what it means and what to do; it stays
 * while the server is away (the failure is its last word) and goes once the server
 * says 0, as the restarted one does. One read at a time: one that hears nothing for
 * SILENCE_MS (its connection died silently) counts as the server away.
 */

import { getJson } from "./api.js";

const PERIOD_MS = 2000;
// A read that hears nothing for this long (ms) finds the server away, as a refused one
// does: its connection may have died silently, which no error would ever say.
const SILENCE_MS = 5 * PERIOD_MS;

/** @param {string} id @param {string} text */
function put(id, text) {
  const el = document.getElementById(id);
  if (el) el.textContent = text;
}

/** Whether the figures shown are no longer the server's. @param {boolean} stale */
function away(stale) {
  const stats = document.getElementById("stats");
  const badge = document.getElementById("stats-away");
  if (stats) stats.dataset.stale = String(stale);
  if (badge) badge.hidden = !stale;
}

/** Shows or hides the warning of a failed store sync. @param {unknown} figure */
function syncFailed(figure) {
  const warning = document.getElementById("store-sync-failed");
  // A server from before the figure sends none: nothing is known to have failed.
  if (warning) warning.hidden = !(typeof figure === "number" && figure > 0);
}

export function watchStats() {
  /** @type {{ time: number, events_appended: number } | null} */
  let previous = null;
  let reading = false;
  const read = async () => {
    // One read at a time: reads that hang (a server that accepts and never answers)
    // would otherwise take a new connection every period, and the browser's few to
    // this origin with them, which the page's other reads then wait for.
    if (reading) return;
    reading = true;
    try {
      const figures = await getJson("/api/v1/stats", {}, { silence: SILENCE_MS });
      put("stat-connections", String(figures.connections));
      put("stat-live", String(figures.sessions_live));
      put("stat-parked", String(figures.sessions_parked));
      syncFailed(figures.store_sync_failed);
      if (previous !== null && figures.time > previous.time) {
        const rate =
          (figures.events_appended - previous.events_appended) / (figures.time - previous.time);
        put("stat-rate", rate >= 10 ? rate.toFixed(0) : rate.toFixed(1));
      }
      previous = figures;
      away(false);
    } catch {
      previous = null; // the server is away (restarting?): show the last figures
      put("stat-rate", "–");
      away(true);
    } finally {
      reading = false;
    }
  };
  void read();
  setInterval(read, PERIOD_MS);
}
