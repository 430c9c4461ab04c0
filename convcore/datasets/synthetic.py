"""Seeded synthetic N-D set (N = 1..4): a solid ball, a hollow shell or two small balls.

All three classes stay distinct in every N (in 1-D: one segment, its two end caps,
two short segments). Random radius and centre, Gaussian noise; generated in memory.
"""
from __future__ import annotations

import numpy as np

CLASSES = ("ball", "shell", "pair")
DEFAULT_SIZE = {1: 32, 2: 16, 3: 12, 4: 8}


def make_synthetic(ndim=2, n=600, size=None, noise=0.2, seed=0):
    """x (n, 1, size, ..., size) float32 (ndim spatial axes), y (n,) int64 in [0, 3)."""
    if isinstance(ndim, bool) or not isinstance(ndim, (int, np.integer)) or not 1 <= ndim <= 4:
        raise ValueError(f"ndim must be an int in 1..4, got {ndim!r}")
    size = DEFAULT_SIZE[ndim] if size is None else size
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    rng.shuffle(y)
    s = float(size)
    grid = np.indices((size,) * ndim, dtype=np.float32) + 0.5          # (N, d...)
    expand = (slice(None), slice(None)) + (None,) * ndim

    def dist(centres):                                                   # centres (n, N) -> (n, d...)
        diff = grid[None] - centres[expand].astype(np.float32)
        return np.sqrt((diff * diff).sum(axis=1))

    r = (rng.uniform(0.25, 0.38, n) * s)[(slice(None),) + (None,) * ndim]
    centre = rng.uniform(0.4, 0.6, (n, ndim)) * s
    main = dist(centre)
    # Pair: two balls of radius r/2.5 placed symmetrically about the centre along a random direction.
    direction = rng.normal(size=(n, ndim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    offset = direction * (r.reshape(n, 1) * 0.6)
    small = r / 2.5
    pair = (dist(centre + offset) <= small) | (dist(centre - offset) <= small)
    masks = {0: main <= r, 1: (main <= r) & (main >= r * 0.6), 2: pair}
    x = np.zeros((n,) + (size,) * ndim, dtype=np.float32)
    for label, mask in masks.items():
        x[y == label] = mask[y == label]
    x += rng.normal(0, noise, x.shape).astype(np.float32)
    return x[:, None], y.astype(np.int64)
