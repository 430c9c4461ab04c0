"""Fixtures of the convcore tests (the ``backend`` fixture lives in tests/conftest.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from convcore import backend as convcore_backend


@dataclass
class TransformLog:
    """What went through convcore.backend.rfftn / irfftn: one entry per call.

    ``forward`` entries are (shape of the real input, its dtype, dtype of the
    spectrum); ``inverse`` entries are (spectrum dtype, dtype of the real output).
    """

    forward: list = field(default_factory=list)
    inverse: list = field(default_factory=list)

    def clear(self) -> None:
        self.forward.clear()
        self.inverse.clear()

    def leading(self) -> list:
        """(B, g, C) of each transformed array, in call order. FFTConv transforms channels-last
        views (spatial..., g, B, C), so the transform writes the products' layout directly."""
        return [(shape[-2], shape[-3], shape[-1]) for shape, _, _ in self.forward]


@pytest.fixture
def transform_log(monkeypatch) -> TransformLog:
    """Record every real FFT convcore makes, still computing it with the real functions.

    An observation, not a mock: the wrappers call the originals and return their results.
    """
    log = TransformLog()
    rfftn, irfftn = convcore_backend.rfftn, convcore_backend.irfftn

    def counting_rfftn(xp, a, shape, axes):
        spec = rfftn(xp, a, shape, axes)
        log.forward.append((tuple(a.shape), a.dtype, spec.dtype))
        return spec

    def counting_irfftn(xp, a, shape, axes, *args, **kwargs):
        out = irfftn(xp, a, shape, axes, *args, **kwargs)
        log.inverse.append((a.dtype, out.dtype))
        return out

    monkeypatch.setattr(convcore_backend, "rfftn", counting_rfftn)
    monkeypatch.setattr(convcore_backend, "irfftn", counting_irfftn)
    return log
