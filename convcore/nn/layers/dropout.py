"""Inverted dropout: in training, zero each entry with probability ``rate`` and scale the rest
by 1 / (1 - rate); identity at evaluation. The mask comes from a seeded NumPy generator so a
CPU run is reproducible (``reseed`` restarts it, e.g. per epoch, so a resumed run matches)."""
from __future__ import annotations

import numpy as np

from ...backend import get_array_module
from .base import Layer, check_float


class Dropout(Layer):
    type_name = "dropout"

    def __init__(self, rate=0.5):
        super().__init__()
        self.rate = check_float("rate", rate, 0.0, 1.0, high_open=True)
        self._rng = np.random.default_rng(0)
        self._scale = None

    def reseed(self, seed_seq):
        self._rng = np.random.default_rng(seed_seq)

    def forward(self, x, training=False):
        if not training or self.rate == 0.0:
            self._scale = None
            return x
        xp = get_array_module(x)
        keep = self._rng.random(x.shape) >= self.rate
        self._scale = xp.asarray(keep.astype(x.dtype) / x.dtype.type(1.0 - self.rate))
        return x * self._scale

    def backward(self, gy):
        return gy if self._scale is None else gy * self._scale

    def config(self):
        return {"rate": self.rate}
