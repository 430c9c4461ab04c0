"""Training loops: ``train_epoch``, ``evaluate``, ``fit``, and checkpointable training state.

Pure library code: arrays in, metrics out. ``callback(event)`` is called after every
optimisation step ({"kind": "step", ...}) and after every epoch ({"kind": "epoch", ...});
returning True asks to stop, which happens before the next step. Batch order is drawn
from ``(seed, epoch)``, dropout streams are reseeded per epoch, the learning-rate schedule is a
function of (epoch, step), and the early-stopping / best-epoch bookkeeping lives in a ``FitState``
saved with the checkpoint, so resuming from a checkpoint taken at the end of epoch k repeats the
uninterrupted run on the CPU.

Targets: class labels (n,), per-voxel labels (n, d...) or fields like the output (n, c, d...);
the metrics follow the task (metrics.py).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..backend import to_host
from .health import LayerHealth, NonFiniteGradient
from .losses import get_loss
from .metrics import MetricSums, better, task_of
from .optim import Optimizer
from .options import TrainOptions, clip_global_norm


class TrainingDiverged(RuntimeError):
    """A non-finite loss; ``epoch``, ``step``, ``layer`` (index or None) and ``layer_type`` say where."""

    def __init__(self, epoch, step, layer, layer_type, what):
        self.epoch, self.step, self.layer, self.layer_type = epoch, step, layer, layer_type
        # what went non-finite, where: "non-finite output in layer 3 (conv)", "a non-finite loss"
        self.detail = f"non-finite {what} in layer {layer} ({layer_type})" if layer is not None else f"a non-finite {what}"
        super().__init__(f"training diverged at epoch {epoch}, step {step} (counting from 0): {self.detail}")


@dataclass
class FitState:
    """What ``fit`` carries from epoch to epoch besides parameters and optimizer: the monitored
    metric's best value and epoch, the early-stopping patience counter, and the best epoch's
    parameters and buffers (host copies, with ``keep_best``). Saved in the checkpoint."""

    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    early_stopped: bool = False
    best_params: dict = field(default_factory=dict)
    best_buffers: dict = field(default_factory=dict)

    def arrays(self) -> dict:
        out = {"fit/best_value": np.asarray(np.nan if self.best_value is None else self.best_value),
               "fit/best_epoch": np.asarray(-1 if self.best_epoch is None else self.best_epoch, dtype=np.int64),
               "fit/bad_epochs": np.asarray(self.bad_epochs, dtype=np.int64),
               "fit/early_stopped": np.asarray(self.early_stopped)}
        out.update({"best/param/" + k: v for k, v in self.best_params.items()})
        out.update({"best/buffer/" + k: v for k, v in self.best_buffers.items()})
        return out

    @classmethod
    def from_arrays(cls, state: dict) -> "FitState":
        if "fit/bad_epochs" not in state:   # a checkpoint written before these options existed
            return cls()
        value, epoch = float(state["fit/best_value"]), int(state["fit/best_epoch"])
        return cls(None if math.isnan(value) else value, None if epoch < 0 else epoch,
                   int(state["fit/bad_epochs"]), bool(state["fit/early_stopped"]),
                   {k[len("best/param/"):]: v for k, v in state.items() if k.startswith("best/param/")},
                   {k[len("best/buffer/"):]: v for k, v in state.items() if k.startswith("best/buffer/")})


def _loss_fn(loss):
    return get_loss(loss) if isinstance(loss, (str, dict)) else loss


def find_divergence(model, x):
    """(layer index, type, what) of the first layer with non-finite parameters or output."""
    xp = model.xp
    for i, layer in enumerate(model.layers):
        for name, p in layer.params.items():
            if not bool(xp.isfinite(p).all()):
                return i, layer.type_name, f"parameter {name}"
    for i, layer, out in model.trace(x):
        if not bool(xp.isfinite(out).all()):
            return i, layer.type_name, "output"
    return None, None, "loss"


def _check_data(x, y, batch_size):
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"x and y must hold the same, non-zero number of samples, got {len(x)} and {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")


def _targets(xp, y, dtype):
    """A batch of targets on the model's device: labels stay ints, fields take the model's dtype."""
    return xp.asarray(y) if y.dtype.kind in "iu" else xp.asarray(y, dtype=dtype)


def train_epoch(model, x, y, optimizer: Optimizer, loss="cross_entropy", batch_size=32, seed=0, epoch=0,
                callback=None, *, lr_at=None, clip_norm=None, health: LayerHealth | None = None) -> dict:
    """One pass over (x, y) in shuffled mini-batches.

    ``lr_at(step, steps)`` sets the optimizer's learning rate before each step; ``clip_norm`` clips
    the gradients' global norm; ``health`` (health.py) records every step's gradients and stops at
    a non-finite one before it reaches the parameters.
    Returns {"loss", "accuracy" (nan for fields, which get "mae"), "steps", "stopped", "lr"}.
    """
    xp, loss_fn = model.xp, _loss_fn(loss)
    _check_data(x, y, batch_size)
    n = len(x)
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    steps = math.ceil(n / batch_size)
    model.reseed(seed, epoch)
    sums = MetricSums(task_of(model.output_shape, y))
    total, seen, stopped = 0.0, 0, False
    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        xb = xp.asarray(x[idx], dtype=model.dtype)
        yb = _targets(xp, y[idx], model.dtype)
        out = model.forward(xb, training=True)
        value, gout = loss_fn(out, yb)
        if not math.isfinite(value):
            layer, kind, what = find_divergence(model, xb)
            raise TrainingDiverged(epoch, step, layer, kind, what)
        model.backward(gout)
        if health is not None:
            try:
                health.add_gradients()
            except NonFiniteGradient as exc:
                raise TrainingDiverged(epoch, step, exc.layer, exc.layer_type, "gradient") from None
        if lr_at is not None:
            optimizer.lr = lr_at(step, steps)
        grads, norm = clip_global_norm(model.gradients(), clip_norm, xp)
        optimizer.step(model.parameters(), grads)
        total += value * len(idx)
        seen += len(idx)
        sums.add(out, yb)
        if callback is not None and callback({"kind": "step", "epoch": epoch, "step": step + 1,
                                              "steps": steps, "loss": value, "lr": optimizer.lr,
                                              "grad_norm": norm}):
            stopped = True
            break
    metrics = sums.result()
    return {"loss": total / max(seen, 1), "accuracy": metrics.get("accuracy", math.nan), "steps": step + 1,
            "stopped": stopped, "lr": optimizer.lr, **{k: v for k, v in metrics.items() if k != "accuracy"}}


EVAL_BATCH = 256                 # samples per evaluation batch, at most
EVAL_FLOOR_BYTES = 64 * 2**20    # activations an evaluation batch may always hold (the service allows 8 GiB)


def evaluation_batch(model, batch_size: int) -> int:
    """The batch ``fit`` evaluates (and a service predicts) in: up to EVAL_BATCH samples, but no
    more activations than a training step of ``batch_size`` holds (its activations and their
    gradients: what ``footprint`` counts and a service checks before it queues the job) or
    EVAL_FLOOR_BYTES. A fixed 256 let a job checked at batch_size 1 need 256 times that (a probe:
    8 MiB estimated, 1 GiB measured in the validation pass)."""
    per_sample = model.dtype.itemsize * (math.prod(model.input_shape) + sum(math.prod(s) for s in model.shapes))
    allowance = max(2 * batch_size * per_sample, EVAL_FLOOR_BYTES)
    return int(max(1, min(EVAL_BATCH, allowance // max(1, per_sample))))


def evaluate(model, x, y, loss="cross_entropy", batch_size=EVAL_BATCH) -> dict:
    """Mean loss and the task's metrics in evaluation mode: {"loss", "accuracy"} for labels
    (+ "dice", "iou", "dice_per_class", "iou_per_class" for per-voxel labels), {"loss", "mae"} for fields."""
    xp, loss_fn = model.xp, _loss_fn(loss)
    total = 0.0
    sums = MetricSums(task_of(model.output_shape, y))
    for lo in range(0, len(x), batch_size):
        xb = xp.asarray(x[lo:lo + batch_size], dtype=model.dtype)
        yb = _targets(xp, y[lo:lo + batch_size], model.dtype)
        out = model.forward(xb, training=False)
        total += loss_fn(out, yb)[0] * len(xb)
        sums.add(out, yb)
    return {"loss": total / max(len(x), 1), **sums.result()}


def fit(model, x, y, optimizer: Optimizer, loss="cross_entropy", epochs=10, batch_size=32, seed=0,
        x_val=None, y_val=None, callback=None, start_epoch=0, *, options: TrainOptions | None = None,
        state: FitState | None = None, layer_health: bool = False) -> list:
    """Train epochs ``start_epoch .. epochs-1``; returns one metrics dict per epoch run.

    Each dict: epoch, train_loss, train_accuracy, val_loss, val_accuracy (None without
    validation data), the task's other metrics (val_dice, val_iou, val_dice_per_class,
    val_iou_per_class; val_mae, train_mae), lr (of the epoch's last step), best_epoch,
    early_stopped, seconds, stopped. The "epoch" callback event carries the same dict and is
    sent only for finished epochs, so it is the moment to checkpoint with
    ``get_training_state(model, optimizer, row["epoch"] + 1, state)``. A stop requested by the
    callback ends training before the next step; that partial epoch is last in the history
    with stopped=True and gets no "epoch" event.

    ``options`` (TrainOptions): schedule, clip_norm, monitor, early stopping, keep_best. ``state``
    (FitState, updated in place; pass the one restored by ``set_training_state`` to resume).
    With keep_best, the model holds the best epoch's parameters when fit returns.
    ``layer_health``: each row gets "layers", the per-layer norms of health.py.
    """
    options = options or TrainOptions()
    state = state if state is not None else FitState()
    has_val = x_val is not None and len(x_val) > 0
    if options.tracks_best and options.monitor.startswith("val_") and not has_val:
        raise ValueError(f"monitor {options.monitor!r} (for early_stopping / keep_best) needs validation data")
    _check_data(x, y, batch_size)
    base_lr = optimizer.base_lr
    history = []
    health = LayerHealth(model) if layer_health else None
    for epoch in range(start_epoch, epochs):
        if state.early_stopped:
            break
        start = time.perf_counter()
        if health is not None:
            health.start_epoch()
        lr_at = None
        if options.schedule is not None:
            lr_at = lambda step, steps_, e=epoch: options.schedule.lr(base_lr, e, step, steps_, epochs)  # noqa: E731
        tr = train_epoch(model, x, y, optimizer, loss, batch_size, seed, epoch, callback, lr_at=lr_at,
                         clip_norm=options.clip_norm, health=health)
        val = evaluate(model, x_val, y_val, loss, evaluation_batch(model, batch_size)) if has_val else {}
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
               "val_loss": val.get("loss"), "val_accuracy": val.get("accuracy")}
        row.update({"train_" + k: v for k, v in tr.items() if k == "mae"})
        row.update({"val_" + k: v for k, v in val.items() if k not in ("loss", "accuracy")})
        row.update(lr=tr["lr"], seconds=time.perf_counter() - start, stopped=tr["stopped"])
        if health is not None:
            row["layers"] = health.epoch_rows()
        if tr["stopped"]:
            history.append(row)
            break
        if options.tracks_best:
            _track_best(model, options, state, row)
        row.update(best_epoch=state.best_epoch, early_stopped=state.early_stopped)
        history.append(row)
        if callback is not None and callback({"kind": "epoch", **row}):
            break
    if options.keep_best and state.best_params:
        model.load_arrays(state.best_params, state.best_buffers)
    return history


def _track_best(model, options: TrainOptions, state: FitState, row: dict) -> None:
    """Update the best epoch, its parameters (keep_best) and the patience counter from ``row``."""
    value = row.get(options.monitor)
    if better(options.monitor, value, state.best_value, options.min_delta if state.best_value is not None else 0):
        state.best_value, state.best_epoch, state.bad_epochs = float(value), row["epoch"], 0
        if options.keep_best:
            state.best_params = {k: to_host(v).copy() for k, v in model.parameters().items()}
            state.best_buffers = {k: to_host(v).copy() for k, v in model.buffers().items()}
    else:
        state.bad_epochs += 1
        if options.patience is not None and state.bad_epochs >= options.patience:
            state.early_stopped = True


def get_training_state(model, optimizer: Optimizer, epoch: int, fit_state: FitState | None = None) -> dict:
    """Everything needed to resume, as a flat dict of NumPy arrays (save it with ``io.save_arrays``).

    ``epoch`` is the number of finished epochs (the next one to run); ``fit_state`` adds the
    early-stopping / best-epoch bookkeeping and the best parameters (under "best/param/...").
    """
    from .io import model_arrays
    state = {k: to_host(v).copy() for k, v in model_arrays(model).items()}  # a snapshot, not views
    state.update({"optim/" + k: v for k, v in optimizer.state_dict().items()})
    state["epoch"] = np.asarray(int(epoch), dtype=np.int64)
    if fit_state is not None:
        state.update(fit_state.arrays())
    return state


def set_training_state(model, optimizer: Optimizer, state: dict, fit_state: FitState | None = None) -> int:
    """Restore what ``get_training_state`` returned; returns the epoch to resume from.

    A given ``fit_state`` is overwritten with the checkpoint's bookkeeping."""
    model.load_arrays({k[6:]: v for k, v in state.items() if k.startswith("param/")},
                      {k[7:]: v for k, v in state.items() if k.startswith("buffer/")})
    optimizer.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("optim/")}, xp=model.xp)
    if fit_state is not None:
        restored = FitState.from_arrays(state)
        fit_state.__dict__.update(restored.__dict__)
    return int(state["epoch"])


def final_model_arrays(state: dict) -> dict:
    """The model file's arrays (spec, param/..., buffer/...) of a training state: the best epoch's
    parameters when the run kept them, else the last ones."""
    best = any(k.startswith("best/param/") for k in state)
    out = {"spec": state["spec"]}
    for kind in ("param/", "buffer/"):
        source = "best/" + kind if best else kind
        out.update({kind + k[len(source):]: v for k, v in state.items() if k.startswith(source)})
    return out
