// /ui/jobs/{id}: one job. Training jobs follow GET /v1/jobs/{id}/events (server-sent events) and
// draw their curves and layer health; other jobs are polled until they end.
import { LineChart } from "./charts.js";
import { api, download, duration, el, FINAL, fmt, frame, streamEvents } from "./common.js";

frame("Jobs");
const jobId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const $ = (id) => document.getElementById(id);
$("job-id").textContent = jobId;
document.title = `Job ${jobId.slice(0, 12)} · convnd`;

let view = null;
const charts = {};
const stepLoss = new Map();   // x = epochs done (fractional) -> training loss, for runs without a stored series

function summaryRows(target, rows) {
  target.replaceChildren(...rows.flatMap(([k, v]) => [el("span", {}, k), el("span", { "data-key": k }, v)]));
}

function progressBar(p) {
  const bar = el("progress", { max: 1, value: view.state === "succeeded" ? 1 : p.fraction || 0 });
  const eta = FINAL.includes(view.state) || p.eta_s === null || p.eta_s === undefined ? "" : `, ETA ${fmt.seconds(p.eta_s)}`;
  const running = view.state === "running" && p.steps;
  const where = p.epochs ? ` epoch ${p.epoch}/${p.epochs}${running ? `, step ${p.step}/${p.steps}` : ""}` : "";
  return el("span", {}, bar, ` ${fmt.pct(view.state === "succeeded" ? 1 : p.fraction || 0)}${where}${eta}`);
}

function errorText(error, p) {
  const epoch = error.epoch ?? (p.epochs ? p.epoch : null);
  const where = epoch ? ` at epoch ${epoch}${error.step ? `, step ${error.step}` : ""}` : "";
  const layer = error.layer !== undefined && error.layer !== null ? ` (layer ${error.layer}, ${error.layer_type})` : "";
  return `${view.state}${where}: ${error.type}: ${error.message}${layer}`;
}

function history() {
  return view.result?.history || view.progress?.history || [];
}

function render() {
  const p = view.progress || {};
  $("state").textContent = view.state;
  $("state").className = `state state-${view.state}`;
  const training = view.kind === "train";
  summaryRows($("summary"), [
    ["Kind", view.kind],
    ["Progress", progressBar(p)],
    ["Device", view.device || view.result?.device || "—"],
    ["Created", fmt.time(view.timings.created_at)],
    ["Duration", fmt.seconds(duration(view))],
    ...(training ? [["Final val. accuracy", fmt.pct(view.result?.final?.val_accuracy)],
                    ["Best val. accuracy", fmt.pct(view.result?.best_val_accuracy)]] : []),
  ]);
  $("error").textContent = view.error && view.state !== "cancelled" ? errorText(view.error, p) : "";
  $("cancel").hidden = FINAL.includes(view.state);
  $("download").hidden = !(training && history().length > 0);
  if (view.params) $("spec").textContent = JSON.stringify(view.params, null, 2);
  if (training) renderTraining(p);
  else renderConv();
}

function renderConv() {
  $("conv").hidden = false;
  const r = view.result || {};
  const params = view.params || {};
  summaryRows($("conv-summary"), [
    ["Parameters", Object.entries(params).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ") || "—"],
    ["Algorithm", r.algorithm || "—"],
    ["Device", r.device || "—"],
    ["Compute", fmt.seconds(r.compute_s)],
    ["Queued", fmt.seconds(view.timings.queued_s)],
    ["Run", fmt.seconds(view.timings.run_s)],
  ]);
}

function chart(id, names, options) {
  const key = `${id}:${names.join("|")}`;
  if (!charts[id] || charts[id].key !== key) {
    charts[id]?.chart.destroy();
    $(id).replaceChildren();
    charts[id] = { key, chart: new LineChart($(id), names, options) };
  }
  return charts[id].chart;
}

const positive = (v) => (v === null || v === undefined || !(v > 0) ? null : v);   // log scales skip 0

function renderTraining(p) {
  $("training").hidden = false;
  const rows = history();
  const epochs = rows.map((r) => r.epoch);
  chart("chart-loss", ["train loss", "val loss"], { title: "Loss per epoch", y: "loss" })
    .set(epochs, [rows.map((r) => r.train_loss), rows.map((r) => r.val_loss)]);
  chart("chart-accuracy", ["train accuracy", "val accuracy"], { title: "Accuracy per epoch", y: "accuracy" })
    .set(epochs, [rows.map((r) => r.train_accuracy), rows.map((r) => r.val_accuracy)]);
  if (view.state === "running" && p.loss !== null && p.loss !== undefined && p.steps) {
    stepLoss.set((p.epoch - 1) + p.step / p.steps, p.loss);
  }
  const series = p.step_losses || [...stepLoss.entries()].sort((a, b) => a[0] - b[0]);
  chart("chart-steps", ["training loss"], { title: "Training loss per step", x: "epochs", y: "loss" })
    .set(series.map((s) => s[0]), [series.map((s) => s[1])]);
  renderHealth(rows);
}

function renderHealth(rows) {
  const layers = rows.length && rows[rows.length - 1].layers ? rows[rows.length - 1].layers : [];
  const names = layers.map((l) => `${l.index} ${l.type}`);
  const per = (key) => layers.map((_, i) => rows.map((r) => positive(r.layers?.[i]?.[key])));
  const epochs = rows.map((r) => r.epoch);
  if (layers.length) {
    chart("chart-weights", names, { title: "Weight norm per layer", y: "‖W‖", log: true }).set(epochs, per("weight_norm"));
    chart("chart-grads", names, { title: "Mean gradient norm per layer", y: "‖∂L/∂W‖", log: true })
      .set(epochs, per("grad_norm"));
  }
  const flags = [];
  for (const r of rows) {
    for (const l of r.layers || []) {
      if (l.exploding) flags.push(`layer ${l.index} (${l.type}) exploding at epoch ${r.epoch}: ${l.reason}`);
    }
  }
  const err = view.error;
  if (err?.layer !== undefined && err?.layer !== null && err.type === "TrainingDiverged") {
    flags.push(`layer ${err.layer} (${err.layer_type}) diverged at epoch ${err.epoch}, step ${err.step}`);
  }
  $("exploding").className = flags.length ? "exploding" : "notice";
  $("exploding").textContent = flags.length ? flags.join("; ") : (layers.length ? "No layer is exploding." : "");
  const last = rows.length ? rows[rows.length - 1] : null;
  $("health").querySelector("tbody").replaceChildren(...layers.map((l) => el("tr", {},
    el("td", {}, String(l.index)), el("td", {}, l.type), el("td", {}, fmt.num(l.weight_norm)),
    el("td", {}, fmt.num(l.grad_norm)), el("td", {}, fmt.num(l.update_ratio)),
    el("td", { class: l.exploding ? "exploding" : "" }, l.exploding ? `exploding (epoch ${last.epoch})` : "ok"))));
}

function show(next) {
  view = next;
  render();
}

async function follow() {
  // A job shown already ended has nothing to follow (a second fetch would only re-render it).
  while (!FINAL.includes(view.state)) {
    try {
      if (view.kind === "train") {
        await streamEvents(`/v1/jobs/${encodeURIComponent(jobId)}/events`, (_event, data) => {
          if (data.kind) show(data);   // an "end" of an expired job carries only id and state
        });
      } else {
        show(await api(`/v1/jobs/${encodeURIComponent(jobId)}`));
      }
    } catch (err) {
      if (err.status === 404) {   // expired (or deleted) while we watched
        $("error").textContent = `Job ${jobId} is gone: ${err.message}`;
        return;
      }
      $("error").textContent = `Lost contact: ${err.message}; retrying`;
    }
    if (FINAL.includes(view.state)) return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (view.kind === "train") show(await api(`/v1/jobs/${encodeURIComponent(jobId)}`).catch(() => view));
  }
}

$("cancel").onclick = async () => {
  $("cancel").disabled = true;
  try {
    show(await api(`/v1/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" }));
  } catch (err) {
    $("error").textContent = `Cannot cancel: ${err.message}`;
  } finally {
    $("cancel").disabled = false;
  }
};

$("download").onclick = () => download(`/v1/jobs/${encodeURIComponent(jobId)}/model`, `model-${jobId}.npz`)
  .catch((err) => { $("error").textContent = `Cannot download: ${err.message}`; });

try {
  show(await api(`/v1/jobs/${encodeURIComponent(jobId)}`));
  follow();
} catch (err) {
  $("error").textContent = err.status === 404 ? `No job ${jobId} (unknown, expired or not yours).` : err.message;
}
