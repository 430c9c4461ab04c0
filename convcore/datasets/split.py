"""Validation split: a seeded hold-out of round(fraction * n) samples, stratified by class for
per-sample labels (each class in proportion to its size); a plain seeded hold-out for per-voxel
labels and fields."""
from __future__ import annotations

import numpy as np


def validation_count(n: int, validation_split: float) -> int:
    """How many of ``n`` samples ``train_val_split`` holds out: round(validation_split * n), whatever
    the classes (so that a service can check a split from the dataset's size alone)."""
    return int(round(validation_split * n))


def class_quotas(counts, total: int, tiebreak=None) -> np.ndarray:
    """Per-class validation counts summing to ``total`` (< the sum of ``counts``), in proportion to
    ``counts`` by largest remainder: each class floor(share), then one more for the largest
    fractional parts. The extra ones go first to classes that still keep a training sample, in
    rounds (else a one-sample class went wholly to validation whenever it had the largest
    remainder), then to the others only if the total needs them; equal remainders in the order of ``tiebreak`` (a
    permutation of the classes; default: by class). Rounding each class on its own made the sum
    drift from round(f * n): 0.998 of the digits' ~180 samples per class held every sample out of
    training, though round(0.998 * 1797) leaves 4, and a service that checks round(f * n) queued
    jobs that then failed."""
    counts = np.asarray(counts, dtype=np.int64)
    share = counts * (total / max(1, int(counts.sum())))   # float: no int64 product to overflow
    quota = np.minimum(np.floor(share).astype(np.int64), np.maximum(counts - 1, 0))
    rank = np.argsort(np.arange(len(counts)) if tiebreak is None else np.asarray(tiebreak), kind="stable")
    extra = total - int(quota.sum())
    for keeps_one in (True, False):
        while extra > 0:   # in rounds: a big class may take more than one while small ones keep theirs
            order = sorted((c for c in range(len(counts)) if quota[c] < counts[c] - (1 if keeps_one else 0)),
                           key=lambda c: (-(share[c] - quota[c]), rank[c]))
            if not order:
                break
            for c in order[:extra]:
                quota[c] += 1
            extra -= min(extra, len(order))
    return quota


def train_val_split(x, y, validation_split=0.2, seed=0):
    """(x_train, y_train, x_val, y_val): ``validation_count(n, validation_split)`` samples held out,
    shared between the classes in proportion to their sizes (``class_quotas``; for dense targets, one
    group of all samples).

    ``validation_split`` in [0, 1): 0 gives an empty validation set.
    """
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) \
            or not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
    if len(x) != len(y):
        raise ValueError(f"x and y must hold the same number of samples, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    # Dense targets (per-voxel labels, fields) have no per-sample class: one group of all samples.
    groups = [np.flatnonzero(y == label) for label in np.unique(y)] if y.ndim == 1 else [np.arange(len(y))]
    # ties between equal remainders in a seeded order of their own (the main stream stays as it was)
    quotas = class_quotas([len(g) for g in groups], validation_count(len(y), validation_split),
                          np.random.default_rng([int(seed), 1]).permutation(len(groups)))
    val = [rng.permutation(group)[:quota] for group, quota in zip(groups, quotas)]
    val_idx = rng.permutation(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    is_val = np.zeros(len(y), dtype=bool)
    is_val[val_idx] = True
    train_idx = rng.permutation(np.flatnonzero(~is_val))
    if len(train_idx) == 0:
        raise ValueError(f"validation_split={validation_split} leaves no training samples out of {len(y)}")
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]
