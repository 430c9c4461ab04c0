"""Validation split: a seeded hold-out, stratified by class for per-sample labels so every class
appears in both parts; a plain seeded hold-out for per-voxel labels and fields."""
from __future__ import annotations

import numpy as np


def train_val_split(x, y, validation_split=0.2, seed=0):
    """(x_train, y_train, x_val, y_val); each class contributes round(fraction * its count) to val
    (for dense targets: round(fraction * n) samples).

    ``validation_split`` in [0, 1): 0 gives an empty validation set.
    """
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) \
            or not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
    if len(x) != len(y):
        raise ValueError(f"x and y must hold the same number of samples, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    val = []
    # Dense targets (per-voxel labels, fields) have no per-sample class: one group of all samples.
    groups = [np.flatnonzero(y == label) for label in np.unique(y)] if y.ndim == 1 else [np.arange(len(y))]
    for group in groups:
        members = rng.permutation(group)
        val.append(members[:int(round(validation_split * len(members)))])
    val_idx = rng.permutation(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    is_val = np.zeros(len(y), dtype=bool)
    is_val[val_idx] = True
    train_idx = rng.permutation(np.flatnonzero(~is_val))
    if len(train_idx) == 0:
        raise ValueError(f"validation_split={validation_split} leaves no training samples out of {len(y)}")
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]
