"""Shared test fixtures: the array backends every convcore test body runs under, and the service
stack of tests/service and tests/ui (tests/support/stack.py, registered below).

``backend`` is parametrized over NumPy (always), ``cupy_standin`` (always: a strict CPU
stand-in for CuPy from tests/support, which refuses implicit host conversions and host
operands; it checks the device-generic code, it is not a GPU run) and CuPy (only with a
CUDA device; otherwise the case shows up as SKIPPED with the reason, so a CPU-only run
says plainly that the GPU path was not exercised). ``gpu_backend`` is the stand-in and CuPy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from support import cupy_standin

from convcore import backend as convcore_backend

convcore_backend.register_device_module(cupy_standin, cupy_standin.ndarray, cupy_standin.scipy_fft, cupy_standin.cublas)

# The real service stack (Valkey, one worker, API subprocesses) is registered here once so that
# tests/service and tests/ui share one set of session fixtures: a full run starts one stack. A
# GPU machine that runs only tests/convcore and tests/nn (benchmarks/gpu_check.sh) has none of the
# service packages; there the fixtures are absent and only the service tests could miss them.
try:
    from support.stack import api_factory, base_env, rdb, redis_url, worker  # noqa: F401
except ImportError as exc:  # pragma: no cover - only on a machine without the service packages
    if (exc.name or "").split(".")[0] in ("app", "worker", "convcore", "support"):
        raise  # our own code is broken: say so

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


_CUPY_PARAM = pytest.param("cupy", id="cupy", marks=[
    pytest.mark.gpu,
    pytest.mark.skipif(not convcore_backend.cupy_available(), reason=_NO_GPU_REASON),
])
_STANDIN_PARAM = pytest.param("cupy_standin", id="cupy_standin")
BACKEND_PARAMS = [pytest.param("numpy", id="numpy"), _STANDIN_PARAM, _CUPY_PARAM]


def _make_backend(name: str) -> Backend:
    if name == "numpy":
        return Backend("numpy", np)
    if name == "cupy_standin":
        return Backend("cupy_standin", cupy_standin)
    return _cupy_backend()


@pytest.fixture(scope="session", params=BACKEND_PARAMS)
def backend(request) -> Backend:
    """The backend a test body runs under: numpy, the CuPy stand-in, or cupy when a CUDA device is present."""
    return _make_backend(request.param)


@pytest.fixture(scope="session", params=[_STANDIN_PARAM, _CUPY_PARAM])
def gpu_backend(request) -> Backend:
    """A device backend: the CuPy stand-in (always), and CuPy (skips visibly without a CUDA device)."""
    return _make_backend(request.param)

