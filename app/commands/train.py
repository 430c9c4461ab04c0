"""``convnd train job.json --url URL [--api-key K] [--follow]`` and ``convnd train --cancel ID``.

``--follow`` shows a live progress bar with the latest metrics until the job ends;
Ctrl-C detaches (the job goes on), ``--cancel`` stops it.
"""
from __future__ import annotations

import json
import math
import sys

from app.client import Client
from app.commands.common import add_connection_args, reporting

BAR = 24


def register(sub) -> None:
    p = sub.add_parser("train", help="submit a training job file; --follow shows its progress")
    p.add_argument("job", nargs="?", help="job file (JSON: model, dataset, optimizer, loss, epochs, ...)")
    p.add_argument("--follow", "-f", action="store_true", help="show progress until the job ends (Ctrl-C detaches)")
    p.add_argument("--cancel", metavar="ID", help="stop the job ID instead (its last checkpoint is kept)")
    add_connection_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.job and not args.cancel:
        print("convnd train: give a job file, or --cancel ID", file=sys.stderr)
        return 2
    with reporting("train", args.url), Client(args.url, args.api_key) as client:
        if args.cancel:
            view = client.cancel(args.cancel)
            print(f"job {view['id']} {view['state']}")
            return 0
        view = client.train(read_job_file(args.job))
        print(f"job {view['id']} {view['state']}  ({args.url}{view['links']['self']})", flush=True)
        return follow(client, view["id"]) if args.follow else 0


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number (the service reads standard JSON only)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):   # 1e999: a valid JSON number that no float holds
        raise ValueError(f"{text} is out of the range of a float (the service would read it as infinite)")
    return value


def read_job_file(path: str) -> dict:
    """The job file's JSON. Python's parser takes NaN and Infinity, which standard JSON (and so the
    service) does not: they are refused here by name, with the file (the client's encoder said only
    "Out of range float values are not JSON compliant"); a byte-order mark is skipped."""
    with open(path, encoding="utf-8-sig") as f:
        try:
            return json.load(f, parse_constant=_refuse_constant, parse_float=_finite_float)
        except ValueError as exc:
            raise ValueError(f"job file {path}: {exc}") from None


def follow(client: Client, job_id: str, out=sys.stdout) -> int:
    """Render the job's events until it ends; 0 if it succeeded."""
    printed = 0  # epochs already printed as lines
    view = None
    live = out.isatty()  # the redrawn bar only on a terminal; a log gets the epoch lines alone
    clear = "\r\033[K" if live else ""
    try:
        for _kind, view in client.events(job_id):
            progress = view.get("progress") or {}
            for row in (progress.get("history") or [])[printed:]:
                out.write(clear + epoch_line(row, progress.get("epochs")) + "\n")
                printed += 1
            if live and view["state"] in ("queued", "running"):
                out.write(clear + bar_line(view))
            out.flush()
    except KeyboardInterrupt:
        out.write(f"\ndetached; the job goes on: convnd jobs, or convnd train --cancel {job_id}\n")
        return 0
    out.write(clear + end_line(view) + "\n")
    out.flush()
    return 0 if view and view["state"] == "succeeded" else 1


def _num(v, fmt=".4f") -> str:
    return "-" if v is None else format(v, fmt)


def _side(row: dict, side: str) -> str:
    """'loss L acc A' for labels (+ ' dice D' per voxel), 'loss L mae M' for fields; side 'train' or 'val'."""
    text = f"loss {_num(row.get(side + '_loss'))}"
    if row.get(side + "_mae") is not None:
        return f"{text} mae {_num(row[side + '_mae'])}"
    text += f" acc {_num(row.get(side + '_accuracy'))}"
    return text + (f" dice {_num(row[side + '_dice'])}" if row.get(side + "_dice") is not None else "")


def _headline(row: dict) -> tuple[str, float | None]:
    """The validation figure a row is read by: Dice for segmentation, MAE for fields, else accuracy."""
    for key in ("val_dice", "val_mae"):
        if row.get(key) is not None:
            return key[4:], row[key]
    return "acc", row.get("val_accuracy")


def epoch_line(row: dict, epochs) -> str:
    best = "  (best)" if row.get("best_epoch") is not None and row["best_epoch"] == row["epoch"] else ""
    return (f"epoch {row['epoch']}/{epochs}  train {_side(row, 'train')}  val {_side(row, 'val')}"
            f"  {_num(row['seconds'], '.2f')} s{best}")


def bar_line(view: dict) -> str:
    p = view.get("progress") or {}
    if view["state"] == "queued" or "fraction" not in p:
        return f"{view['state']}..."
    filled = int(round(p["fraction"] * BAR))
    latest = p.get("latest") or {}
    eta = f"ETA {p['eta_s']:.0f} s" if p.get("eta_s") is not None else "ETA -"
    name, value = _headline(latest)
    return (f"[{'#' * filled}{'.' * (BAR - filled)}] {100 * p['fraction']:5.1f}%  epoch {p['epoch']}/{p['epochs']}"
            f" step {p['step']}/{p.get('steps') or '?'}  loss {_num(p.get('loss'))}"
            f"  val {name} {_num(value)}  {eta}")


def end_line(view) -> str:
    if view is None:
        return "the event stream ended without news of the job"
    if view["state"] == "succeeded":
        r = view["result"] or {}
        name, value = _headline(r.get("final") or {})
        best = ""
        if r.get("best_epoch") is not None:
            best = (f", best epoch {r['best_epoch']} ({r['monitor']} {_num(r.get('best_value'))})"
                    + (", stopped early" if r.get("early_stopped") else ""))
        return (f"succeeded: {len(r.get('history', []))} epochs in {_num(view['timings']['run_s'], '.1f')} s, "
                f"final val {name} {_num(value)}{best}; model: convnd model {view['id']} -o model.npz")
    error = view.get("error") or {}
    return f"{view['state']}: {error.get('message', '')}"
