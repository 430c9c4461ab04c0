"""Seeded 3-D segmentation volumes: a few solids on a noisy background, labelled per voxel.

Classes: 0 background, 1 ball, 2 box, 3 rod (a cylinder along a random axis). Each volume holds
3 to 5 solids of random class, size and centre (a later solid covers an earlier one); the
solids differ in shape and in brightness (1, -1, 2 on a 0 background), and Gaussian noise
of ``noise`` (comparable to the brightness gaps) makes single voxels ambiguous, so a network
must read each voxel's neighbourhood.
"""
from __future__ import annotations

import numpy as np

CLASSES = ("background", "ball", "box", "rod")
BRIGHTNESS = (0.0, 1.0, -1.0, 2.0)


def make_segmentation3d(n=200, size=16, noise=0.4, seed=0):
    """x (n, 1, size, size, size) float32, y (n, size, size, size) int64 in [0, 4)."""
    if size < 8:
        raise ValueError(f"size must be >= 8 for the solids to fit, got {size}")
    rng = np.random.default_rng(seed)
    s = float(size)
    grid = np.indices((size,) * 3, dtype=np.float32) + 0.5            # (3, d, d, d)
    y = np.zeros((n, size, size, size), dtype=np.int64)
    for i in range(n):
        for _ in range(rng.integers(3, 6)):
            label = int(rng.integers(1, len(CLASSES)))
            r = rng.uniform(0.18, 0.3) * s
            d = grid - (rng.uniform(0.2, 0.8, 3) * s)[:, None, None, None].astype(np.float32)
            if label == 1:
                mask = (d * d).sum(axis=0) <= r * r
            elif label == 2:
                mask = (np.abs(d) <= (rng.uniform(0.6, 1.0, 3) * r)[:, None, None, None]).all(axis=0)
            else:
                axis = int(rng.integers(0, 3))
                radial = (d * d).sum(axis=0) - d[axis] ** 2
                mask = (radial <= (0.55 * r) ** 2) & (np.abs(d[axis]) <= 1.6 * r)
            y[i][mask] = label
    x = np.asarray(BRIGHTNESS, dtype=np.float32)[y] + rng.normal(0, noise, y.shape).astype(np.float32)
    return x[:, None], y
