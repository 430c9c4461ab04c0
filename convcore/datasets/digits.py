"""The 8x8 handwritten digits that scikit-learn ships (1797 images, 10 classes; no download)."""
from __future__ import annotations

import numpy as np

INPUT_SHAPE = (1, 8, 8)
N_CLASSES = 10


def load_digits():
    """x (1797, 1, 8, 8) float32 in [0, 1], y (1797,) int64 in [0, 10)."""
    from sklearn.datasets import load_digits as sk_load

    data = sk_load()
    x = (data.images / 16.0).astype(np.float32)[:, None]  # pixel values are 0..16
    return x, data.target.astype(np.int64)
