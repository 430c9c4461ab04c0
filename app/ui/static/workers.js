// /ui/workers: live workers (device, start-up self-test) and queue lengths, from GET /v1/workers.
import { api, el, fmt, frame } from "./common.js";

const REFRESH_MS = 2000;
frame("Workers");

function selfTest(w) {
  const t = w.selftest;
  if (!t) return "—";
  return `${t.ok ? "passed" : "FAILED"}${t.summary ? `: ${t.summary}` : ""}`;
}

async function refresh() {
  try {
    const { workers, queues } = await api("/v1/workers");
    document.querySelector("#workers tbody").replaceChildren(...workers.map((w) => el("tr", { "data-id": w.id },
      el("td", {}, el("code", {}, w.id)), el("td", {}, w.device), el("td", {}, w.serves ?? "—"),
      el("td", {}, selfTest(w)), el("td", {}, w.reason ?? ""),
      el("td", {}, fmt.time(w.started_at)))));
    document.getElementById("no-workers").hidden = workers.length > 0;
    document.querySelector("#queues tbody").replaceChildren(...queues.map((q) => el("tr", { "data-queue": q.name },
      el("td", {}, el("code", {}, q.name)), el("td", {}, String(q.length)))));
    document.getElementById("error").textContent = "";
  } catch (err) {
    document.getElementById("error").textContent = `Cannot list workers: ${err.message}`;
  }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
