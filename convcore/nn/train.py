"""Training loops: ``train_epoch``, ``evaluate``, ``fit``, and checkpointable training state.

Pure library code: arrays in, metrics out. ``callback(event)`` is called after every
optimisation step ({"kind": "step", ...}) and after every epoch ({"kind": "epoch", ...});
returning True asks to stop, which happens before the next step. Batch order is drawn
from ``(seed, epoch)`` and dropout streams are reseeded per epoch, so resuming from a
checkpoint taken at the end of epoch k repeats the uninterrupted run on the CPU.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .losses import get_loss
from .optim import Optimizer


class TrainingDiverged(RuntimeError):
    """A non-finite loss; ``epoch``, ``step``, ``layer`` (index or None) and ``layer_type`` say where."""

    def __init__(self, epoch, step, layer, layer_type, what):
        self.epoch, self.step, self.layer, self.layer_type = epoch, step, layer, layer_type
        where = f"layer {layer} ({layer_type})" if layer is not None else "the loss"
        super().__init__(f"training diverged at epoch {epoch}, step {step}: non-finite {what} in {where}")


def _loss_fn(loss):
    return get_loss(loss) if isinstance(loss, str) else loss


def _accuracy(out, y) -> float:
    if out.ndim != 2 or y.ndim != 1:
        return math.nan
    return float((out.argmax(axis=1) == y).mean())


def find_divergence(model, x):
    """(layer index, type, what) of the first layer with non-finite parameters or output."""
    xp = model.xp
    for i, layer in enumerate(model.layers):
        for name, p in layer.params.items():
            if not bool(xp.isfinite(p).all()):
                return i, layer.type_name, f"parameter {name}"
    for i, layer in enumerate(model.layers):
        x = layer.forward(x, False)
        if not bool(xp.isfinite(x).all()):
            return i, layer.type_name, "output"
    return None, None, "loss"


def train_epoch(model, x, y, optimizer: Optimizer, loss="cross_entropy", batch_size=32, seed=0, epoch=0,
                callback=None) -> dict:
    """One pass over (x, y) in shuffled mini-batches. Returns {"loss", "accuracy", "steps", "stopped"}."""
    xp, loss_fn = model.xp, _loss_fn(loss)
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"x and y must hold the same, non-zero number of samples, got {len(x)} and {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    steps = math.ceil(n / batch_size)
    model.reseed(seed, epoch)
    total, correct, seen, stopped = 0.0, 0.0, 0, False
    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        xb = xp.asarray(x[idx], dtype=model.dtype)
        yb = xp.asarray(y[idx])
        out = model.forward(xb, training=True)
        value, gout = loss_fn(out, yb)
        if not math.isfinite(value):
            layer, kind, what = find_divergence(model, xb)
            raise TrainingDiverged(epoch, step, layer, kind, what)
        model.backward(gout)
        optimizer.step(model.parameters(), model.gradients())
        total += value * len(idx)
        correct += _accuracy(out, yb) * len(idx)
        seen += len(idx)
        if callback is not None and callback({"kind": "step", "epoch": epoch, "step": step + 1,
                                              "steps": steps, "loss": value}):
            stopped = True
            break
    return {"loss": total / max(seen, 1), "accuracy": correct / max(seen, 1), "steps": step + 1,
            "stopped": stopped}


def evaluate(model, x, y, loss="cross_entropy", batch_size=256) -> dict:
    """Mean loss and accuracy in evaluation mode. Returns {"loss", "accuracy"}."""
    xp, loss_fn = model.xp, _loss_fn(loss)
    total, correct = 0.0, 0.0
    for lo in range(0, len(x), batch_size):
        xb = xp.asarray(x[lo:lo + batch_size], dtype=model.dtype)
        yb = xp.asarray(y[lo:lo + batch_size])
        out = model.forward(xb, training=False)
        total += loss_fn(out, yb)[0] * len(xb)
        correct += _accuracy(out, yb) * len(xb)
    n = max(len(x), 1)
    return {"loss": total / n, "accuracy": correct / n}


def fit(model, x, y, optimizer: Optimizer, loss="cross_entropy", epochs=10, batch_size=32, seed=0,
        x_val=None, y_val=None, callback=None, start_epoch=0) -> list:
    """Train epochs ``start_epoch .. epochs-1``; returns one metrics dict per epoch run.

    Each dict: epoch, train_loss, train_accuracy, val_loss, val_accuracy (None without
    validation data), seconds, stopped. The "epoch" callback event carries the same dict and is
    sent only for finished epochs, so it is the moment to checkpoint with
    ``get_training_state(model, optimizer, epoch=row["epoch"] + 1)``. A stop requested by the
    callback ends training before the next step; that partial epoch is last in the history
    with stopped=True and gets no "epoch" event.
    """
    history = []
    for epoch in range(start_epoch, epochs):
        start = time.perf_counter()
        tr = train_epoch(model, x, y, optimizer, loss, batch_size, seed, epoch, callback)
        val = evaluate(model, x_val, y_val, loss) if x_val is not None and len(x_val) else None
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "val_loss": val and val["loss"], "val_accuracy": val and val["accuracy"],
               "seconds": time.perf_counter() - start, "stopped": tr["stopped"]}
        history.append(row)
        if tr["stopped"]:
            break
        if callback is not None and callback({"kind": "epoch", **row}):
            break
    return history


def get_training_state(model, optimizer: Optimizer, epoch: int) -> dict:
    """Everything needed to resume, as a flat dict of NumPy arrays (save it with ``io.save_arrays``).

    ``epoch`` is the number of finished epochs (the next one to run).
    """
    from ..backend import to_host
    from .io import model_arrays
    state = {k: to_host(v).copy() for k, v in model_arrays(model).items()}  # a snapshot, not views
    state.update({"optim/" + k: v for k, v in optimizer.state_dict().items()})
    state["epoch"] = np.asarray(int(epoch), dtype=np.int64)
    return state


def set_training_state(model, optimizer: Optimizer, state: dict) -> int:
    """Restore what ``get_training_state`` returned; returns the epoch to resume from."""
    model.load_arrays({k[6:]: v for k, v in state.items() if k.startswith("param/")},
                      {k[7:]: v for k, v in state.items() if k.startswith("buffer/")})
    optimizer.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("optim/")}, xp=model.xp)
    return int(state["epoch"])
