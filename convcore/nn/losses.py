"""Losses: each returns (loss as a Python float, gradient w.r.t. the network output).

Whole-sample and dense (per-voxel) targets alike, averaged like PyTorch's ``reduction="mean"``:
    logits / y: (n, C) or (n, C, d_1..d_N)
    labels:     (n,) or (n, d_1..d_N) ints in [0, C)   (cross_entropy, dice; mse one-hot encodes them)
    targets:    y's shape, floats                      (mse, l1)
A job names a loss by a string, or by {"type": "cross_entropy", "class_weights": [...]}.
"""
from __future__ import annotations

import functools
import math

from ..backend import get_array_module

DICE_SMOOTH = 1e-5   # MONAI's DiceLoss smooth_nr = smooth_dr: an empty class in an empty sample scores 1


def check_labels(labels, out_shape: tuple) -> None:
    """Labels (n,) or (n, d...) of int classes in [0, C) for an output (n, C) or (n, C, d...)."""
    n, C = out_shape[:2]
    want = (n,) + tuple(out_shape[2:])
    if tuple(labels.shape) != want:
        raise ValueError(f"labels must have shape {want} to match the output {tuple(out_shape)}, "
                         f"got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= C):
        raise ValueError(f"labels must be in [0, {C}), got min {int(labels.min())} max {int(labels.max())}")


def _one_hot(labels, C, dtype):
    """(n, d...) ints -> (n, C, d...)."""
    xp = get_array_module(labels)
    return xp.moveaxis(xp.eye(C, dtype=dtype)[labels], -1, 1)


def softmax_cross_entropy(logits, labels, class_weights=None):
    """Mean over samples (and voxels) of -w[label] log softmax(logits)[label] / mean weight, as PyTorch's
    F.cross_entropy(weight=...); stable through log-sum-exp.  -> (loss, glogits like logits)"""
    xp = get_array_module(logits)
    check_labels(labels, logits.shape)
    # In the (n, C, d...) layout, reducing over the channel axis runs along long contiguous
    # rows; one row per voxel would reduce C (often 2-10) values at a time, 3-4x slower.
    C = logits.shape[1]
    shifted = logits - logits.max(axis=1, keepdims=True)  # largest logit is 0: exp cannot overflow
    log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    hit = labels[:, None] == xp.arange(C).reshape((1, C) + (1,) * (logits.ndim - 2))   # one-hot, bool
    g = xp.exp(log_p)
    g -= hit
    picked = xp.where(hit, log_p, 0).sum(axis=1)                     # (n, d...): log p of each label
    if class_weights is None:
        return float(-picked.mean()), g / logits.dtype.type(labels.size)
    w = xp.asarray(class_weights, dtype=logits.dtype)[labels]        # (n, d...)
    total = w.sum()
    return float(-(w * picked).sum() / total), g * (w / total)[:, None]


def dice_loss(logits, labels):
    """Soft multi-class Dice on softmax(logits) over channels, per sample and class, 1 - mean
    (MONAI's DiceLoss(softmax=True, to_onehot_y=True)).  -> (loss, glogits like logits)"""
    xp = get_array_module(logits)
    check_labels(labels, logits.shape)
    axes = tuple(range(2, logits.ndim))
    e = xp.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    t = _one_hot(labels, logits.shape[1], logits.dtype)
    inter = (p * t).sum(axis=axes, keepdims=True)                     # (n, C, 1...)
    denom = p.sum(axis=axes, keepdims=True) + t.sum(axis=axes, keepdims=True) + DICE_SMOOTH
    dice = (2 * inter + DICE_SMOOTH) / denom
    count = logits.dtype.type(inter.size)
    gp = -(2 * t * denom - (2 * inter + DICE_SMOOTH)) / (denom * denom) / count   # dL/dp
    g = p * (gp - (gp * p).sum(axis=1, keepdims=True))                # through the softmax
    return float(1 - dice.mean()), g


def _dense_target(y, target):
    """Labels (n,) / (n, d...) one-hot encoded for an output (n, C) / (n, C, d...); floats as they are."""
    if target.dtype.kind in "iu" and target.ndim == y.ndim - 1:
        check_labels(target, y.shape)
        return _one_hot(target, y.shape[1], y.dtype)
    if target.shape != y.shape:
        raise ValueError(f"target must have the output's shape {tuple(y.shape)}, got {tuple(target.shape)}")
    return target.astype(y.dtype, copy=False)


def mse(y, target):
    """Mean over all entries of (y - target)^2; int labels become one-hot targets.  -> (loss, gy)"""
    diff = y - _dense_target(y, target)
    return float((diff * diff).mean()), diff * y.dtype.type(2.0 / y.size)


def l1(y, target):
    """Mean over all entries of |y - target| (gradient sign(y - target), 0 where equal, as PyTorch)."""
    diff = y - _dense_target(y, target)
    return float(get_array_module(y).abs(diff).mean()), get_array_module(y).sign(diff) * y.dtype.type(1.0 / y.size)


LOSSES = {"cross_entropy": softmax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy,
          "dice": dice_loss, "mse": mse, "l1": l1}
LABEL_LOSSES = ("cross_entropy", "softmax_cross_entropy", "dice")   # take logits and integer labels
WEIGHTED = ("cross_entropy", "softmax_cross_entropy")


def loss_name(spec) -> str:
    """The loss's name in a job's ``loss`` (a string or {"type": ...}); ValueError if unknown."""
    name = spec.get("type") if isinstance(spec, dict) else spec
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or {{\"type\": ..., options}}, got {spec!r}")
    return name


def get_loss(spec, n_classes: int | None = None):
    """The loss function for a job's ``loss``: a name, or {"type": "cross_entropy", "class_weights": [...]}."""
    name = loss_name(spec)
    options = {k: v for k, v in spec.items() if k != "type"} if isinstance(spec, dict) else {}
    unknown = sorted(set(options) - ({"class_weights"} if name in WEIGHTED else set()))
    if unknown:
        raise ValueError(f"loss {name!r}: unknown option(s) {unknown}"
                         + ("; accepted: ['class_weights']" if name in WEIGHTED else "; it takes none"))
    weights = options.get("class_weights")
    if weights is None:
        return LOSSES[name]
    if (not isinstance(weights, (list, tuple)) or not weights
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < math.inf for w in weights)
            or not any(weights)):
        raise ValueError(f"loss {name!r}: class_weights must be a list of finite numbers >= 0, not all 0, "
                         f"got {weights!r}")
    if n_classes is not None and len(weights) != n_classes:
        raise ValueError(f"loss {name!r}: class_weights needs one weight per class ({n_classes}), got {len(weights)}")
    return functools.partial(softmax_cross_entropy, class_weights=[float(w) for w in weights])
