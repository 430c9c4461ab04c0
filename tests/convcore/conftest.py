"""Fixtures of the convcore tests (the ``backend`` fixture lives in tests/conftest.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from convcore import backend as convcore_backend
from convcore import direct_conv


@dataclass
class TransformLog:
    """What went through convcore.backend.rfftn / irfftn: one entry per call.

    ``forward`` entries are (shape of the real input, its dtype, dtype of the
    spectrum, the transformed axes); ``inverse`` entries are (spectrum dtype, dtype of the
    real output).
    """

    forward: list = field(default_factory=list)
    inverse: list = field(default_factory=list)

    def clear(self) -> None:
        self.forward.clear()
        self.inverse.clear()

    def leading(self) -> list:
        """(B, g, C) of each transformed array, in call order. FFTConv transforms channels-last
        views (spatial..., g, B..., C), so the transform writes the products' layout directly, or,
        with frequency-last spectra, the arrays as they are (B..., g, C, spatial...); B may span
        several axes (a batch and its tiles' positions)."""
        out = []
        for shape, _, _, axes in self.forward:
            ndim = len(shape)
            axes = sorted(a % ndim for a in axes)
            rest = [shape[i] for i in range(ndim) if i not in axes]
            if axes[0] == 0:   # channels last: (g, B..., C) left
                out.append((math.prod(rest[1:-1]), rest[0], rest[-1]))
            else:              # frequency last: (B..., g, C) left
                out.append((math.prod(rest[:-2]), rest[-2], rest[-1]))
        return out


@pytest.fixture(autouse=True)
def fresh_shape_memo():
    """Every test starts and ends with the direct engine's per-shape memo empty: tests patch the rules
    behind it (``_compiled``, ``_cut_last``, the machine's vectors) for their own calls only."""
    direct_conv.clear_shape_memo()
    yield
    direct_conv.clear_shape_memo()


@pytest.fixture
def transform_log(monkeypatch) -> TransformLog:
    """Record every real FFT convcore makes, still computing it with the real functions.

    An observation, not a mock: the wrappers call the originals and return their results.
    """
    log = TransformLog()
    rfftn, irfftn = convcore_backend.rfftn, convcore_backend.irfftn

    def counting_rfftn(xp, a, shape, axes):
        spec = rfftn(xp, a, shape, axes)
        log.forward.append((tuple(a.shape), a.dtype, spec.dtype, tuple(axes)))
        return spec

    def counting_irfftn(xp, a, shape, axes, *args, **kwargs):
        out = irfftn(xp, a, shape, axes, *args, **kwargs)
        log.inverse.append((a.dtype, out.dtype))
        return out

    monkeypatch.setattr(convcore_backend, "rfftn", counting_rfftn)
    monkeypatch.setattr(convcore_backend, "irfftn", counting_irfftn)
    return log
