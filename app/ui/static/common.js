// Shared by every page: the API key (asked once per tab, sent as a header), JSON calls,
// server-sent events read with fetch (EventSource cannot send headers), the nav bar, formatting.
// The pages are thin views over /v1: nothing here that the API does not also offer.

const KEY_STORE = "convnd.apiKey";   // sessionStorage: this tab only, this origin only, never a URL

export class ApiError extends Error {
  constructor(status, detail, field) {
    super(detail);
    this.status = status;
    this.field = field || null;
  }
}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { ...extra, "X-API-Key": key } : extra;
}

let asking = null;   // one login dialog at a time, however many calls are waiting on it

function askKey(message) {
  if (asking) return asking;
  const dialog = document.getElementById("login");
  dialog.querySelector(".login-message").textContent = message;
  const form = dialog.querySelector("form");
  const input = dialog.querySelector("input");
  input.value = "";
  asking = new Promise((resolve) => {
    form.onsubmit = (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY_STORE, input.value.trim());
      dialog.close();
      asking = null;
      resolve();
    };
  });
  dialog.showModal();
  input.focus();
  return asking;
}

// fetch() with the key; asks for a key on 401 and for another one on 403, then retries.
async function authorized(path, init) {
  for (;;) {
    const response = await fetch(path, { cache: "no-store", credentials: "omit", ...init,
                                         headers: authHeaders(init.headers) });
    if (response.status === 401) {
      await askKey("This service needs an API key.");
    } else if (response.status === 403) {
      sessionStorage.removeItem(KEY_STORE);
      await askKey("That key was not accepted. Try another.");
    } else {
      return response;
    }
  }
}

async function failure(response) {
  let body = {};
  try { body = await response.json(); } catch { /* not JSON: keep the status text */ }
  return new ApiError(response.status, body.detail || response.statusText, body.field);
}

// JSON in, JSON out; a non-2xx answer throws ApiError(status, detail, field).
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await authorized(path, init);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// Save a binary answer (e.g. a model) under the server's file name.
export async function download(path, fallbackName) {
  const response = await authorized(path, { headers: {} });
  if (!response.ok) throw await failure(response);
  const disposition = response.headers.get("Content-Disposition") || "";
  const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || fallbackName;
  const url = URL.createObjectURL(await response.blob());
  const a = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// Server-sent events: onEvent(event, data) for each event until the stream ends or signal aborts.
export async function streamEvents(path, onEvent, signal) {
  const response = await authorized(path, { headers: { Accept: "text/event-stream" }, signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

// The nav bar and the login dialog every page shares.
export function frame(active) {
  const links = [["/ui/", "Jobs"], ["/ui/train", "Train"], ["/ui/workers", "Workers"]];
  const nav = document.createElement("nav");
  nav.innerHTML = `<strong>convnd</strong>` + links.map(([href, text]) =>
    `<a href="${href}"${text === active ? ' aria-current="page"' : ""}>${text}</a>`).join("") +
    `<a href="/docs">API</a><button type="button" id="forget-key" hidden>Forget key</button>`;
  document.body.prepend(nav);
  const forget = nav.querySelector("#forget-key");
  forget.hidden = !sessionStorage.getItem(KEY_STORE);
  forget.onclick = () => { sessionStorage.removeItem(KEY_STORE); location.reload(); };
  const dialog = document.createElement("dialog");
  dialog.id = "login";
  dialog.innerHTML = `<form method="dialog"><p class="login-message"></p>
    <label>API key <input type="password" name="key" autocomplete="off" required></label>
    <button type="submit">Use this key</button></form>`;
  document.body.append(dialog);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export const fmt = {
  time: (s) => (s ? new Date(s * 1000).toLocaleString() : "—"),
  seconds(s) {
    if (s === null || s === undefined) return "—";
    if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
    if (s < 120) return `${s.toFixed(1)} s`;
    return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  },
  pct: (v) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)}%`),
  num: (v, digits = 4) => (v === null || v === undefined ? "—" : Number(v).toPrecision(digits)),
};

// Duration of a job: run time when it started, else time waited so far / until it ended.
export function duration(job) {
  const t = job.timings || {};
  if (t.started_at) return (t.finished_at || Date.now() / 1000) - t.started_at;
  return t.finished_at ? t.finished_at - t.created_at : null;
}

export const FINAL = ["succeeded", "failed", "cancelled"];
