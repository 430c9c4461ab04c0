"""A whole training job checked before it runs, and predictions for it: the entry points a service
needs besides ``fit``.

    plan = check_job(job)          # JobError(field, message) if impossible; info of an upload: check_job(job, info)
    out = predict_outputs(model, x, loss=job["loss"], task=plan["task"])

A job is a dict with "model" (a list or a graph), "loss" (a name or {"type": ..., options}),
"optimizer", and the training options of options.py ("schedule", "clip_norm", "monitor",
"early_stopping", "keep_best"); "dataset", "epochs", "batch_size", "seed", "validation_split"
belong to the caller.
"""
from __future__ import annotations

from .. import datasets
from ..backend import get_array_module
from .losses import LABEL_LOSSES, get_loss, loss_name
from .metrics import MONITORS_BY_TASK
from .optim import make_optimizer
from .options import OptionError, TrainOptions
from .spec import infer_shapes, parse_model


class JobError(ValueError):
    """An impossible job; ``field`` names the job's key ("model", "loss", "optimizer", "schedule", ...)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def expected_output(info) -> tuple:
    """The per-sample output a dataset's targets need: (C,), (C, d...) or the field's shape."""
    if info.task == "regress":
        return tuple(info.target_shape)
    return (info.n_classes,) + tuple(info.target_shape)


def _describe_targets(info) -> str:
    if info.task == "classify":
        return f"one label per sample among {info.n_classes} classes"
    if info.task == "segment":
        return f"a label per voxel among {info.n_classes} classes over {tuple(info.target_shape)}"
    return f"fields of shape {tuple(info.target_shape)}"


def check_job(job: dict, info=None, has_validation: bool | None = None) -> dict:
    """Check the dataset, model, loss, optimizer and training options of ``job`` without allocating
    any parameter or generating any data.

    ``info``: the dataset's ``convcore.datasets.DatasetInfo`` (default: ``datasets.info(job["dataset"])``
    for a built-in set; pass ``datasets.info_of_arrays(...)`` or the stored info for an upload).
    ``has_validation``: whether the run will have validation data (default: validation_split > 0),
    which monitoring a val_* metric needs. Returns {"task", "layer_shapes", "output_shape",
    "options": TrainOptions}. Raises JobError whose ``field`` names the job's key and whose message
    names the node, its type and the shapes.
    """
    if info is None:
        try:
            info = datasets.info(job.get("dataset"))
        except datasets.DatasetError as exc:
            raise JobError("dataset", f"dataset: {exc}") from None
    split = job.get("validation_split", 0.2)
    if has_validation is None:   # the samples train_val_split will hold out: round(split * n)
        has_validation = isinstance(split, (int, float)) and datasets.validation_count(info.n, split) > 0
    try:
        topo = parse_model(job.get("model"))
        shapes = infer_shapes(topo, info.input_shape)
    except ValueError as exc:
        raise JobError("model", f"model: {exc}") from None
    want, out = expected_output(info), shapes[topo.output]
    if out != want:
        hint = (f"e.g. a dense layer with out_features={info.n_classes}" if info.task == "classify" else
                f"e.g. a last conv with out_channels={want[0]} and padding='same'")
        raise JobError("model", f"model: {topo.where(topo.output)} outputs shape {out} but the targets are "
                                f"{_describe_targets(info)}: the output must be {want}, {hint}")
    loss = job.get("loss", "cross_entropy")
    try:
        name = loss_name(loss)
        get_loss(loss, info.n_classes or None)
    except ValueError as exc:
        raise JobError("loss", str(exc)) from None
    if info.task == "regress" and name in LABEL_LOSSES:
        raise JobError("loss", f"loss {name!r} needs class labels, but the targets are {_describe_targets(info)}: "
                               "use 'mse' or 'l1'")
    if name == "dice" and info.task != "segment":
        raise JobError("loss", f"loss 'dice' scores per-voxel labels, but the targets are {_describe_targets(info)}")
    try:
        make_optimizer(job.get("optimizer", {"type": "adam", "lr": 0.001}))
    except (ValueError, TypeError) as exc:
        raise JobError("optimizer", str(exc)) from None
    try:
        options = TrainOptions.from_spec(job)
    except OptionError as exc:
        raise JobError(exc.field, str(exc)) from None
    if options.tracks_best:
        allowed = MONITORS_BY_TASK[info.task]
        if options.monitor not in allowed:
            raise JobError("monitor", f"monitor: {options.monitor!r} is not measured for "
                                      f"{_describe_targets(info)}; choose one of {list(allowed)}")
        if options.monitor.startswith("val_") and not has_validation:
            why = (f"validation_split={split} holds out round({split} * {info.n}) = 0 of the {info.n} samples"
                   if split else "set validation_split > 0")
            raise JobError("monitor", f"monitor: {options.monitor!r} (early_stopping / keep_best) needs validation "
                                      f"data: {why}")
    return {"task": info.task, "layer_shapes": [list(s) for s in shapes], "output_shape": list(out),
            "options": options}


def predict_outputs(model, x, loss="cross_entropy", task: str | None = None, batch_size: int = 64) -> dict:
    """The model's dense outputs for x (n, *input_shape), in evaluation mode, on the model's device,
    ``batch_size`` samples at a time (a service passes ``evaluation_batch`` of its training job's).

    {"outputs": (n, *output_shape)}, plus for class targets ("classify" / "segment", or any
    label loss) "classes" (n,) or (n, d...) int64 (argmax over channels) and, for losses that
    take logits (cross_entropy, dice), "probabilities" (softmax over channels, like outputs).
    """
    out = model.predict(model.xp.asarray(x), batch_size=batch_size)
    result = {"outputs": out}
    labels = loss_name(loss) in LABEL_LOSSES
    if task == "regress" or (task is None and not labels):
        return result
    xp = get_array_module(out)
    result["classes"] = out.argmax(axis=1).astype(xp.int64)
    if labels:
        e = xp.exp(out - out.max(axis=1, keepdims=True))
        result["probabilities"] = e / e.sum(axis=1, keepdims=True)
    return result
