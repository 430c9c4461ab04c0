"""Measure the cost model's rates on the device at hand (a second or so), e.g. at worker start.

The tables in costs.py are a 2-core CPU's and a data-centre GPU's; a worker on other
hardware calls ``calibrate(xp)`` once and ``auto`` then compares engines (and the FFT
engine picks tiles) with its own device's figures. Every timing runs once untimed
first (kernel compilation, FFT plans) and ends with a device sync.

Measured rates vary from run to run, so after ``calibrate`` even ``autotune=False``
choices (``convcore.nn``'s) depend on the measurement, not only on the shapes: a
service that promises bit-for-bit repeatable training calibrates GPUs only, or not at all.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from . import backend, costs
from .engines import engine_names, make_engine, unsupported_reason
from .geometry import make_geometry

_TINY = make_geometry((1, 2, 8, 8), (2, 2, 3, 3), padding=1)   # the layer that times each engine's fixed cost


def calibrate(xp, *, repeats: int = 3, install: bool = True, small: bool | None = None) -> costs.Rates:
    """Rates measured on ``xp``'s current device (float32); installed for it unless ``install=False``.

    ``small`` (default: on the host) uses problem sizes a CPU finishes in well under a
    second; a GPU needs larger ones to reach its sustained rates.
    """
    base = costs.CPU_RATES if backend.is_host_module(xp) else costs.GPU_RATES
    small = backend.is_host_module(xp) if small is None else small
    n = 256 if small else 2048
    a = xp.ones((n, n), dtype=xp.float32)
    gemm = 2.0 * n**3 / _best(xp, lambda: backend.matmul(xp, a, a), repeats)

    L, batch = (64, 64), 16 if small else 256
    signal = xp.ones((batch,) + L, dtype=xp.float32)
    size = math.prod(L)
    fft = batch * 2.5 * size * math.log2(size) / _best(
        xp, lambda: backend.rfftn(xp, signal, L, (-2, -1)), repeats)

    F, c = (128, 32) if small else (4096, 64)
    spec = xp.ones((F, c, c), dtype=xp.complex64)
    cmatmul = 8.0 * F * c**3 / _best(xp, lambda: backend.matmul(xp, spec, spec), repeats)

    block = xp.ones(2**22 if small else 2**26, dtype=xp.float32)
    copy = 2 * block.nbytes / _best(xp, lambda: block.copy(), repeats)   # read + write

    kind = "cpu" if backend.is_host_module(xp) else "gpu"
    overhead = {name: _tiny_call_seconds(xp, name, repeats) for name in engine_names()
                if unsupported_reason(name, _TINY, kind) is None}
    rates = dataclasses.replace(base, gemm=gemm, fft=fft, cmatmul=cmatmul, copy=copy, call_overhead=overhead)
    if install:
        costs.set_rates(xp, rates)
    return rates


def _tiny_call_seconds(xp, name: str, repeats: int) -> float:
    """Forward + backward of an 8x8 layer: the fixed cost that decides tiny layers."""
    geom = _TINY
    x = xp.asarray(np.ones(geom.in_shape, np.float32))
    W = xp.asarray(np.ones(geom.kernel_shape, np.float32))
    gy = xp.ones(geom.out_shape, dtype=xp.float32)

    def run():
        engine = make_engine(name, xp, geom, x, W, 2**30)
        engine.forward()
        engine.backward(gy, True, True)

    return _best(xp, run, repeats)


def _best(xp, task, repeats: int) -> float:
    """Best wall time of ``task`` over ``repeats`` synchronized runs, after one untimed warm-up."""
    task()
    backend.synchronize(xp)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        task()
        backend.synchronize(xp)
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)
