"""Losses: each returns (loss as a Python float, gradient w.r.t. the network output).

Both average over the batch like PyTorch's default ``reduction="mean"``.
    logits / y: (n, C);  labels: (n,) ints in [0, C);  targets for MSE: (n, C) or labels (one-hot)
"""
from __future__ import annotations

from ..backend import get_array_module


def _check_labels(labels, n: int, n_classes: int):
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match the output, got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes}), got min {int(labels.min())} max {int(labels.max())}")


def softmax_cross_entropy(logits, labels):
    """Mean of -log softmax(logits)[label]; stable through log-sum-exp.  -> (loss, glogits (n, C))"""
    xp = get_array_module(logits)
    n, C = logits.shape
    _check_labels(labels, n, C)
    shifted = logits - logits.max(axis=1, keepdims=True)  # largest logit is 0: exp cannot overflow
    log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    rows = xp.arange(n)
    loss = -log_p[rows, labels].mean()
    g = xp.exp(log_p)
    g[rows, labels] -= 1
    return float(loss), g / logits.dtype.type(n)


def mse(y, target):
    """Mean over all entries of (y - target)^2; int labels (n,) become one-hot targets.  -> (loss, gy)"""
    xp = get_array_module(y)
    if target.ndim == 1 and target.dtype.kind in "iu" and y.ndim == 2:
        _check_labels(target, y.shape[0], y.shape[1])
        onehot = xp.zeros(y.shape, dtype=y.dtype)
        onehot[xp.arange(y.shape[0]), target] = 1
        target = onehot
    if target.shape != y.shape:
        raise ValueError(f"target must have the output's shape {tuple(y.shape)}, got {tuple(target.shape)}")
    diff = y - target.astype(y.dtype, copy=False)
    return float((diff * diff).mean()), diff * y.dtype.type(2.0 / y.size)


LOSSES = {"cross_entropy": softmax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy, "mse": mse}


def get_loss(name):
    """The loss function for a job's ``loss`` name."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[name]
