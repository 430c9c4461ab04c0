"""Per-epoch metrics beside the loss, by the kind of target.

    task "classify": labels (n,), outputs (n, C)            -> accuracy
    task "segment":  labels (n, d...), outputs (n, C, d...) -> accuracy (per voxel), dice, iou
                     (dataset-level counts of the argmax class map; ``dice`` / ``iou`` are the
                     means over the foreground classes 1..C-1, ``*_per_class`` list every class)
    task "regress":  targets like the outputs                -> mae
A class absent from both prediction and truth scores 1 (nothing to find, nothing found).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module, to_host

TASKS = ("classify", "segment", "regress")
# Which way is better, for the metrics an epoch reports (monitoring for early stopping / best epoch).
MONITOR_MODES = {"val_loss": "min", "train_loss": "min", "val_mae": "min",
                 "val_accuracy": "max", "val_dice": "max", "val_iou": "max"}
MONITORS_BY_TASK = {"classify": ("val_loss", "train_loss", "val_accuracy"),
                    "segment": ("val_loss", "train_loss", "val_accuracy", "val_dice", "val_iou"),
                    "regress": ("val_loss", "train_loss", "val_mae")}


def task_of(out_shape: tuple, y) -> str:
    """The task for outputs of per-sample shape ``out_shape`` and targets ``y`` (n, ...)."""
    if y.dtype.kind in "iu" and y.ndim == 1 and len(out_shape) == 1:
        return "classify"
    if y.dtype.kind in "iu" and y.ndim == len(out_shape):
        return "segment"
    return "regress"


class MetricSums:
    """Running sums over batches of one evaluation; ``result()`` gives the epoch's metrics."""

    def __init__(self, task: str):
        self.task, self.seen, self.correct, self.abs_err, self.values = task, 0, 0.0, 0.0, 0
        self.confusion = None   # (C, C) counts: rows truth, columns prediction

    def add(self, out, y) -> None:
        self.seen += len(out)
        if self.task == "regress":
            xp = get_array_module(out)
            self.abs_err += float(xp.abs(out - y.astype(out.dtype, copy=False)).sum())
            self.values += out.size
            return
        pred = out.argmax(axis=1)
        self.correct += float((pred == y).sum())
        self.values += y.size
        if self.task == "segment":
            C = out.shape[1]
            xp = get_array_module(out)
            counts = xp.bincount((y.reshape(-1) * C + pred.reshape(-1)).astype(xp.int64), minlength=C * C)
            counts = to_host(counts).reshape(C, C)
            self.confusion = counts if self.confusion is None else self.confusion + counts

    def result(self, prefix: str = "") -> dict:
        if self.task == "regress":
            return {prefix + "mae": self.abs_err / max(self.values, 1)}
        out = {prefix + "accuracy": self.correct / max(self.values, 1)}
        if self.task == "segment" and self.confusion is not None:
            dice, iou = dice_iou(self.confusion)
            fg = slice(1, None) if len(dice) > 1 else slice(None)
            out.update({prefix + "dice": float(np.mean(dice[fg])), prefix + "iou": float(np.mean(iou[fg])),
                        prefix + "dice_per_class": [float(v) for v in dice],
                        prefix + "iou_per_class": [float(v) for v in iou]})
        return out


def dice_iou(confusion: np.ndarray) -> tuple:
    """Per-class Dice 2TP / (2TP + FP + FN) and IoU TP / (TP + FP + FN) from a (C, C) confusion matrix."""
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 1.0)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 1.0)
    return dice, iou


def better(metric: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether ``value`` of ``metric`` improves on ``best`` by more than ``min_delta``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best - min_delta if MONITOR_MODES[metric] == "min" else value > best + min_delta
