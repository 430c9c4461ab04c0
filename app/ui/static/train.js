// /ui/train: pick an example job file, edit it field by field (each value is JSON), POST /v1/train.
// The server validates everything; its answer names a field ("epochs", "model", "dataset", ...)
// and the message is shown next to that field. On success the browser goes to the job's page.
import { api, el, frame } from "./common.js";

frame("Train");
const select = document.getElementById("example");
const fields = document.getElementById("fields");
const formError = document.getElementById("form-error");
let examples = [];

function fieldRow(name, value) {
  const text = JSON.stringify(value, null, typeof value === "object" && value !== null ? 1 : 0);
  const multiline = typeof value === "object" && value !== null;
  const input = multiline
    ? el("textarea", { name, id: `field-${name}`, rows: Math.min(text.split("\n").length, 14), value: text })
    : el("input", { name, id: `field-${name}`, value: text, size: 30 });
  return el("div", { class: "row", "data-field": name },
    el("label", { htmlFor: `field-${name}` }, name), input,
    el("span", { class: "field-error", id: `error-${name}` }));
}

function load(index) {
  const job = examples[index].job;
  fields.replaceChildren(...Object.entries(job).map(([k, v]) => fieldRow(k, v)));
  clearErrors();
}

function clearErrors() {
  formError.textContent = "";
  for (const span of fields.querySelectorAll(".field-error")) span.textContent = "";
}

// "model.3.kernel_size" -> the row of "model"; unknown fields go above the submit button.
function showError(field, message) {
  const top = (field || "").split(".")[0];
  const span = top && document.getElementById(`error-${top}`);
  if (span) {
    span.textContent = message;
    span.closest(".row").querySelector("input, textarea").focus();
  } else {
    formError.textContent = field ? `${field}: ${message}` : message;
  }
}

function collect() {
  const job = {};
  let ok = true;
  for (const input of fields.querySelectorAll("input, textarea")) {
    try {
      job[input.name] = JSON.parse(input.value);
    } catch (err) {
      showError(input.name, `not valid JSON: ${err.message}`);
      ok = false;
    }
  }
  return ok ? job : null;
}

document.getElementById("job-form").onsubmit = async (ev) => {
  ev.preventDefault();
  clearErrors();
  const job = collect();
  if (!job) return;
  const button = document.getElementById("submit");
  button.disabled = true;
  try {
    const view = await api("/v1/train", { method: "POST", body: job });
    location.assign(`/ui/jobs/${encodeURIComponent(view.id)}`);
  } catch (err) {
    showError(err.field, err.message);
  } finally {
    button.disabled = false;
  }
};

select.onchange = () => load(Number(select.value));

try {
  examples = (await api("/ui/examples")).examples;
  select.replaceChildren(...examples.map((e, i) => el("option", { value: String(i) }, e.name)));
  const wanted = new URLSearchParams(location.search).get("example");
  const start = Math.max(examples.findIndex((e) => e.name === wanted), 0);
  select.value = String(start);
  load(start);
} catch (err) {
  formError.textContent = `Cannot load the examples: ${err.message}`;
}
