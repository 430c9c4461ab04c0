"""Shared test fixtures: the array backends every convcore test body runs under.

``backend`` is parametrized over NumPy (always) and CuPy (only with a CUDA device;
otherwise the case shows up as SKIPPED with the reason, so a CPU-only run says
plainly that the GPU path was not exercised).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from convcore import backend as convcore_backend

_NO_GPU_REASON = "CuPy with a CUDA device is not available on this machine"


@dataclass(frozen=True)
class Backend:
    """One array backend: ``xp`` plus host <-> device copies for the test bodies."""

    name: str
    xp: object

    def asarray(self, a):
        """NumPy array -> array of this backend (a copy on the GPU)."""
        return a if self.xp is np else self.xp.asarray(a)

    def to_numpy(self, a):
        """Array of this backend (or None) -> NumPy array (or None)."""
        if a is None or isinstance(a, np.ndarray):
            return a
        return self.xp.asnumpy(a)


def _cupy_backend() -> Backend:
    import cupy

    return Backend("cupy", cupy)


BACKEND_PARAMS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("cupy", id="cupy", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not convcore_backend.cupy_available(), reason=_NO_GPU_REASON),
    ]),
]


@pytest.fixture(scope="session", params=BACKEND_PARAMS)
def backend(request) -> Backend:
    """The backend a test body runs under: numpy, or cupy when a CUDA device is present."""
    if request.param == "numpy":
        return Backend("numpy", np)
    return _cupy_backend()


@pytest.fixture(scope="session")
def gpu_backend() -> Backend:
    """CuPy only; skips visibly with a reason on machines without a CUDA device."""
    if not convcore_backend.cupy_available():
        pytest.skip(_NO_GPU_REASON)
    return _cupy_backend()
