// /ui/: the caller's jobs, newest first (GET /v1/jobs), refreshed every couple of seconds.
import { api, duration, el, fmt, frame } from "./common.js";

const REFRESH_MS = 2000;
frame("Jobs");

const stateFilter = document.getElementById("filter-state");
const kindFilter = document.getElementById("filter-kind");
const body = document.querySelector("#jobs tbody");
const kinds = new Set();
let jobs = [];

// Filters live in the query string, so a filtered view can be bookmarked and reloaded.
const query = new URLSearchParams(location.search);
stateFilter.value = query.get("state") || "";

function device(job) {
  return job.device || job.result?.device || job.progress?.device || "—";
}

function progress(job) {
  const p = job.progress || {};
  if (job.state === "succeeded") return "100%";
  if (p.fraction === undefined || p.fraction === null) return "—";
  return `${fmt.pct(p.fraction)}${p.epochs ? ` (epoch ${p.epoch}/${p.epochs})` : ""}`;
}

function row(job) {
  const link = el("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}` }, el("code", {}, job.id.slice(0, 12)));
  return el("tr", { "data-id": job.id, "data-state": job.state, "data-kind": job.kind },
    el("td", {}, link), el("td", {}, job.kind),
    el("td", {}, el("span", { class: `state state-${job.state}` }, job.state)),
    el("td", {}, progress(job)), el("td", {}, device(job)), el("td", {}, fmt.time(job.timings.created_at)),
    el("td", {}, fmt.seconds(duration(job))), el("td", {}, fmt.pct(job.result?.best_val_accuracy)));
}

function render() {
  for (const job of jobs) {
    if (!kinds.has(job.kind)) {
      kinds.add(job.kind);
      kindFilter.append(el("option", {}, job.kind));
    }
  }
  if (query.get("kind") && kinds.has(query.get("kind"))) kindFilter.value = query.get("kind");
  const shown = jobs.filter((j) => (!stateFilter.value || j.state === stateFilter.value) &&
                                   (!kindFilter.value || j.kind === kindFilter.value));
  body.replaceChildren(...shown.map(row));
  document.getElementById("empty").hidden = jobs.length > 0;
}

function remember() {
  const q = new URLSearchParams();
  if (stateFilter.value) q.set("state", stateFilter.value);
  if (kindFilter.value) q.set("kind", kindFilter.value);
  query.delete("state");
  query.delete("kind");
  for (const [k, v] of q) query.set(k, v);
  history.replaceState(null, "", q.size ? `?${q}` : location.pathname);
  render();
}
stateFilter.onchange = remember;
kindFilter.onchange = remember;

async function refresh() {
  try {
    jobs = (await api("/v1/jobs?limit=200")).jobs;
    document.getElementById("error").textContent = "";
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    render();
  } catch (err) {
    document.getElementById("error").textContent = `Cannot list jobs: ${err.message}`;
  }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
