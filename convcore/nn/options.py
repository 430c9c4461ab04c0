"""Training options beyond the optimizer: learning-rate schedules, gradient clipping, early stopping
and keeping the best epoch's parameters, from a job's JSON.

    "schedule":       {"type": "constant" | "step" | "cosine", "warmup_epochs": 0,
                       "step_size": 10, "gamma": 0.1 (step), "min_lr": 0.0 (cosine)}
    "clip_norm":      a number > 0: gradients scaled so their global L2 norm is at most this
    "monitor":        "val_loss" (default), "val_dice", "val_iou", "val_accuracy", "val_mae", "train_loss"
    "early_stopping": {"patience": 5, "min_delta": 0.0}: stop after ``patience`` epochs without improvement
    "keep_best":      true: at the end the model holds the parameters of the best monitored epoch

The learning rate at step t = epoch * steps + step (steps per epoch is fixed by n and batch_size)
is a pure function of t: a run resumed at an epoch boundary continues the schedule exactly.
Warm-up ramps linearly from base_lr / W to base_lr over the first W = warmup_epochs * steps steps;
"step" multiplies by gamma every step_size epochs; "cosine" anneals from base_lr to min_lr over
the steps after the warm-up (PyTorch's CosineAnnealingLR, per step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .layers.base import check_float, check_int
from .metrics import MONITOR_MODES

SCHEDULES = ("constant", "step", "cosine")
OPTION_KEYS = ("schedule", "clip_norm", "monitor", "early_stopping", "keep_best")


class OptionError(ValueError):
    """A bad training option; ``field`` names the job's key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Schedule:
    kind: str = "constant"
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0

    @classmethod
    def from_spec(cls, spec) -> "Schedule":
        if not isinstance(spec, dict) or spec.get("type") not in SCHEDULES:
            raise OptionError("schedule", f"must be an object with a 'type' among {list(SCHEDULES)}, got {spec!r}")
        kind = spec["type"]
        allowed = {"type", "warmup_epochs"} | {"step": {"step_size", "gamma"}, "cosine": {"min_lr"}}.get(kind, set())
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise OptionError("schedule", f"unknown option(s) {unknown} for type {kind!r}; accepted: {sorted(allowed)}")
        try:
            return cls(kind, check_float("warmup_epochs", spec.get("warmup_epochs", 0.0), 0.0, 1e6),
                       check_int("step_size", spec.get("step_size", 10)),
                       check_float("gamma", spec.get("gamma", 0.1), 0.0, 1.0),
                       check_float("min_lr", spec.get("min_lr", 0.0), 0.0, 1e3))
        except ValueError as e:
            raise OptionError("schedule", str(e)) from None

    def lr(self, base_lr: float, epoch: int, step: int, steps: int, epochs: int) -> float:
        """The learning rate of step ``step`` (0-based) of epoch ``epoch`` (0-based)."""
        t, warm = epoch * steps + step, self.warmup_epochs * steps
        if t < warm:
            return base_lr * (t + 1) / warm
        if self.kind == "step":
            return base_lr * self.gamma ** (epoch // self.step_size)
        if self.kind == "cosine":
            span = max(epochs * steps - warm, 1)
            return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * min((t - warm) / span, 1.0)))
        return base_lr

    def spec(self) -> dict:
        out = {"type": self.kind, "warmup_epochs": self.warmup_epochs}
        if self.kind == "step":
            out.update(step_size=self.step_size, gamma=self.gamma)
        if self.kind == "cosine":
            out["min_lr"] = self.min_lr
        return out


@dataclass(frozen=True)
class TrainOptions:
    schedule: Schedule | None = None
    clip_norm: float | None = None
    monitor: str = "val_loss"
    patience: int | None = None     # None: no early stopping
    min_delta: float = 0.0
    keep_best: bool = False

    @classmethod
    def from_spec(cls, job: dict) -> "TrainOptions":
        """The options among a job's keys (others are ignored: they belong to the job)."""
        schedule = job.get("schedule")
        schedule = None if schedule is None else Schedule.from_spec(schedule)
        clip = job.get("clip_norm")
        if clip is not None:
            try:
                clip = check_float("clip_norm", clip, 0.0, 1e12)
            except ValueError as e:
                raise OptionError("clip_norm", str(e)) from None
            if clip <= 0:
                raise OptionError("clip_norm", f"must be > 0 (or null for no clipping), got {job['clip_norm']!r}")
        monitor = job.get("monitor", "val_loss")
        if monitor not in MONITOR_MODES:
            raise OptionError("monitor", f"must be one of {sorted(MONITOR_MODES)}, got {monitor!r}")
        patience, min_delta = None, 0.0
        stopping = job.get("early_stopping")
        if stopping is not None:
            if not isinstance(stopping, dict) or not set(stopping) <= {"patience", "min_delta"}:
                raise OptionError("early_stopping", f"must be an object with 'patience' (and 'min_delta'), "
                                                    f"got {stopping!r}")
            try:
                patience = check_int("patience", stopping.get("patience", 5))
                min_delta = check_float("min_delta", stopping.get("min_delta", 0.0), 0.0, 1e12)
            except ValueError as e:
                raise OptionError("early_stopping", str(e)) from None
        keep_best = job.get("keep_best", False)
        if not isinstance(keep_best, bool):
            raise OptionError("keep_best", f"must be true or false, got {keep_best!r}")
        return cls(schedule, clip, monitor, patience, min_delta, keep_best)

    @property
    def tracks_best(self) -> bool:
        return self.patience is not None or self.keep_best


def clip_global_norm(grads: dict, max_norm: float | None, xp) -> tuple:
    """(grads scaled so their global L2 norm is at most ``max_norm``, the norm before clipping).

    As torch.nn.utils.clip_grad_norm_: scale = max_norm / (norm + 1e-6) when it is below 1.
    """
    norm = math.sqrt(sum(float(xp.vdot(g.ravel(), g.ravel()).real) for g in grads.values()))
    scale = 1.0 if max_norm is None else min(1.0, max_norm / (norm + 1e-6))
    if scale == 1.0:
        return grads, norm
    return {k: g * g.dtype.type(scale) for k, g in grads.items()}, norm
