"""The ``nn.fit`` callback of a training job: progress into the job record, a checkpoint per epoch,
a stop as soon as the job is cancelled or its lease is lost."""
from __future__ import annotations

import time

import numpy as np

from . import metrics
from .store import JobStore

STEP_LOSS_POINTS = 400  # the per-step loss series kept in the progress: every other point goes when full


# Metrics an epoch row may carry besides the ones every row has (nn.fit: by the task).
OPTIONAL_METRICS = ("train_mae", "val_mae", "val_dice", "val_iou", "val_dice_per_class", "val_iou_per_class", "lr",
                    "early_stopped")


def _finite(v):
    if isinstance(v, list):  # per-class Dice / IoU
        return [_finite(e) for e in v]
    return v if v is None or (isinstance(v, float) and np.isfinite(v)) or isinstance(v, int) else None


def _row(event: dict) -> dict:
    """The history row of an "epoch" event: epochs (and the best epoch) counted from 1, NaN as null."""
    row = {"epoch": event["epoch"] + 1, **{k: _finite(event[k]) for k in (
        "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")}}
    row.update({k: _finite(event[k]) for k in OPTIONAL_METRICS if k in event})
    if event.get("best_epoch") is not None:
        row["best_epoch"] = event["best_epoch"] + 1
    return row


class Reporter:
    """The ``nn.fit`` callback of a training job: progress and per-epoch metrics into the job
    record, a checkpoint after every finished epoch, a stop as soon as the job is cancelled.

    Epochs are counted from 1 here (what users read); ``nn.fit`` counts from 0.
    ``checkpoint(epochs_done, history)`` stores the training state. ``monitor``: the metric that
    early stopping / keep_best watch (the result names its best epoch), or None.
    """

    def __init__(self, store: JobStore, job_id: str, epochs: int, start_epoch: int, history: list, attempt: int,
                 checkpoint, should_stop=lambda: False, every_s: float = 0.2, monitor: str | None = None):
        self.store, self.job_id, self.epochs, self.attempt, self.monitor = store, job_id, epochs, attempt, monitor
        self.start_epoch, self.history = start_epoch, list(history)
        self.checkpoint, self.should_stop, self.every_s = checkpoint, should_stop, every_s
        self.t0, self.last, self.steps, self.stopped = time.monotonic(), 0.0, None, False
        # [epochs done (fractional), training loss] of every step (thinned past STEP_LOSS_POINTS), for the
        # loss curve: recorded at each step, not only when progress is published (every_s), so a run whose
        # epochs take less than every_s still has its curve.
        self.step_losses = []
        self._publish(start_epoch, 0, None)

    def __call__(self, event: dict) -> bool:
        if event["kind"] == "epoch":
            self.history.append({**_row(event),
                                 **({"layers": event["layers"]} if "layers" in event else {})})  # nn.health
            self.checkpoint(event["epoch"] + 1, self.history)
            metrics.count_epoch(self.store.r, self.store.prefix)
            self._publish(event["epoch"] + 1, 0, None)
        else:
            self.steps = event["steps"]
            self._record_step(event["epoch"] + event["step"] / event["steps"], event["loss"])
            if time.monotonic() - self.last >= self.every_s:
                self._publish(event["epoch"], event["step"], event["loss"])
        # One HGET per step: a cancel takes effect before the next optimisation step.
        if self.store.cancel_requested(self.job_id) or self.should_stop():
            self.stopped = True
        return self.stopped

    def finish(self) -> None:
        """Final progress of a run that ended early (early stopping): complete, at its last epoch."""
        if self.history and self.history[-1].get("early_stopped"):
            self._publish(self.history[-1]["epoch"], 0, None, complete=True)

    def _publish(self, done: int, step: int, loss, complete: bool = False) -> None:
        """Progress of a job that has finished ``done`` epochs and ``step`` steps of the next."""
        steps = self.steps or 1
        fraction = 1.0 if complete else min((done + step / steps) / self.epochs, 1.0)
        elapsed = time.monotonic() - self.t0
        gained = fraction - self.start_epoch / self.epochs  # rate measured on this attempt only
        eta = elapsed / gained * (1.0 - fraction) if gained > 0 else None
        self.store.set_progress(
            self.job_id, epoch=done if complete else min(done + 1, self.epochs), epochs=self.epochs, step=step,
            steps=self.steps,
            fraction=round(fraction, 4), elapsed_s=round(elapsed, 3), eta_s=None if eta is None else round(eta, 2),
            loss=_finite(loss), latest=self.history[-1] if self.history else None, history=self.history,
            attempt=self.attempt, resumed_from_epoch=self.start_epoch, step_losses=self.step_losses)
        self.last = time.monotonic()

    def _record_step(self, epochs_done: float, loss) -> None:
        if _finite(loss) is not None:
            self.step_losses.append([round(epochs_done, 4), loss])
            if len(self.step_losses) > STEP_LOSS_POINTS:
                self.step_losses = self.step_losses[::2]

    def result(self, n_train: int, n_val: int, device: str) -> dict:
        val = [h["val_accuracy"] for h in self.history if h["val_accuracy"] is not None]
        return {"epochs": self.epochs, "history": self.history, "final": self.history[-1] if self.history else None,
                "best_val_accuracy": max(val) if val else None, "train_samples": n_train, "val_samples": n_val,
                "device": device, "train_seconds": round(sum(h["seconds"] or 0 for h in self.history), 3),
                "attempts": self.attempt, **self._best()}

    def _best(self) -> dict:
        """The dense tasks' best validation figures, and the monitored best epoch when one is tracked."""
        out = {}
        dice = [h["val_dice"] for h in self.history if h.get("val_dice") is not None]
        mae = [h["val_mae"] for h in self.history if h.get("val_mae") is not None]
        if dice:
            out["best_val_dice"] = max(dice)
        if mae:
            out["best_val_mae"] = min(mae)
        if self.monitor is not None and self.history:
            best = self.history[-1].get("best_epoch")
            row = next((h for h in self.history if h["epoch"] == best), None)
            out.update(monitor=self.monitor, best_epoch=best, best_value=row and row.get(self.monitor),
                       early_stopped=bool(self.history[-1].get("early_stopped")))
        return out
