"""Seeded synthetic 3-D shapes: classify a sphere, cube, cylinder or torus in a noisy volume.

Each sample is one solid of random size, centre and (for the cylinder and torus) axis,
drawn in a (size, size, size) volume with Gaussian noise; generated in memory, vectorised
over samples.
"""
from __future__ import annotations

import numpy as np

CLASSES = ("sphere", "cube", "cylinder", "torus")


def make_shapes3d(n=1000, size=16, noise=0.2, seed=0):
    """x (n, 1, size, size, size) float32, y (n,) int64 in [0, 4), classes balanced."""
    if size < 8:
        raise ValueError(f"size must be >= 8 for shapes to be recognisable, got {size}")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    rng.shuffle(y)
    s = float(size)
    r = rng.uniform(0.18, 0.3, n) * s                    # main radius / half side
    centre = rng.uniform(0.5 - 0.12, 0.5 + 0.12, (n, 3)) * s
    axis = rng.integers(0, 3, n)                          # cylinder / torus axis
    grid = np.indices((size,) * 3, dtype=np.float32) + 0.5  # (3, d, d, d)
    d = grid[None] - centre[:, :, None, None, None].astype(np.float32)  # (n, 3, d, d, d)
    along = np.take_along_axis(d, axis[:, None, None, None, None], axis=1)[:, 0]  # coordinate on the axis
    radial = np.sqrt(np.maximum((d * d).sum(axis=1) - along * along, 0))        # distance from the axis
    rr = r[:, None, None, None]
    masks = {
        0: (d * d).sum(axis=1) <= rr ** 2,
        1: np.abs(d).max(axis=1) <= rr * 0.85,
        2: (radial <= rr * 0.6) & (np.abs(along) <= rr * 1.1),
        3: (radial - rr) ** 2 + along ** 2 <= (rr * 0.35) ** 2,
    }
    x = np.zeros((n, size, size, size), dtype=np.float32)
    for label, mask in masks.items():
        x[y == label] = mask[y == label]
    x += rng.normal(0, noise, x.shape).astype(np.float32)
    return x[:, None], y.astype(np.int64)
