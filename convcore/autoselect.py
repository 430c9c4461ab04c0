"""Choosing between the FFT and direct algorithms: a cost model, refined by timing.

The model counts the floating-point work of one forward pass plus all three
gradients for each algorithm (on the reduced, stride-1 problem both run) and
divides by rough sustained rates of a 2-core CPU. When the two estimates are
within ``AMBIGUOUS`` of each other, the first call for that geometry times both
algorithms (forward + backward) on the real arrays, and the winner is cached per
geometry, dtype and device for the rest of the process.
"""
from __future__ import annotations

import collections
import math
import os
import time

from . import backend
from .direct_conv import packed_axes
from .reduction import Reduction

# Sustained rates in GFLOP/s for float32 (float64 runs at about half). They only
# need to be right within a small factor: close calls are timed.
GEMM_RATE = 25.0        # float32 GEMM with inner size ~100
FFT_RATE = 3.0          # per 2.5 * L * log2(L) flops of one real transform
CMATMUL_RATE = 8.0      # batched complex matmul over frequencies
MATRIX_CALL_S = 1.5e-6  # fixed cost of each small per-frequency product (one BLAS call each)
COPY_RATE = 4.0         # GB/s streamed through memory by the direct GEMMs
AMBIGUOUS = 3.0
# Fixed seconds of one forward + backward beyond the arithmetic (Python, transform set-up,
# transposes): what decides tiny layers, such as 8x8 images.
CALL_OVERHEAD = {"direct": 4e-4, "fft": 1.5e-3}
MAX_TIMED_SECONDS = 2.0  # don't time configurations estimated to take longer than this
# CONVCORE_AUTOTUNE=0 decides by the cost model alone: the choice (and so every bit of
# the result) then depends only on the shapes, which seeded training runs may want.
AUTOTUNE = os.environ.get("CONVCORE_AUTOTUNE", "1").lower() not in ("0", "false", "no")

_decisions: collections.OrderedDict = collections.OrderedDict()
MAX_DECISIONS = 4096  # geometries remembered; the oldest is forgotten first


def estimate_seconds(geom, itemsize: int, budget: int | None = None) -> dict:
    """Estimated seconds of forward + all three gradients, {'direct': s, 'fft': s}."""
    precision = 1.0 if itemsize == 4 else 2.0
    n = geom.batch

    red = Reduction(None, geom, keep_dilation=True)
    rows = n * math.prod(red.qx) * geom.groups
    taps = math.prod(red.qk)
    packed = math.prod(red.qk[len(red.qk) - packed_axes(red.qk, red.channels):])
    outer = taps // packed
    direct_flops = 3 * 2.0 * rows * taps * red.channels * red.out_channels
    # Every outer tap's GEMM streams its slice of the packed input and its output
    # through memory; with many taps and few channels this, not the flops, dominates.
    traffic = 3 * itemsize * rows * outer * (packed * red.channels + 2 * red.out_channels)
    direct = precision * (direct_flops / (GEMM_RATE * 1e9) + traffic / (COPY_RATE * 1e9)) + CALL_OVERHEAD["direct"]

    from . import fft_conv  # fft_conv reads this module's rates

    budget = budget or 2**62
    fft = fft_conv.estimate_seconds(geom, itemsize, fft_conv.choose_tile(geom, itemsize, budget))
    fft += CALL_OVERHEAD["fft"]
    return {"direct": direct, "fft": fft}


def choose(xp, geom, x, W, budget: int, autotune: bool | None = None):
    """('fft' or 'direct', engine or None): the algorithm for this call, cached per geometry,
    dtype and device. When it was decided by timing, the winning engine (already holding
    its spectra or packed input for these x and W) is returned for reuse."""
    from . import fft_conv

    autotune = AUTOTUNE if autotune is None else autotune
    key = (geom, str(x.dtype), backend.device_name(xp), autotune)  # a timed choice never leaks into untimed
    if key in _decisions:
        _decisions.move_to_end(key)
        return _decisions[key], None
    est = estimate_seconds(geom, x.dtype.itemsize, budget)
    # Tiles as small as the kernel that still overflow the budget: FFT cannot fit.
    if fft_conv.working_set_bytes(geom, x.dtype.itemsize, budget) > budget:
        est["fft"] = math.inf
    best, engine = min(est, key=est.get), None
    other = "fft" if best == "direct" else "direct"
    if autotune and est[other] < AMBIGUOUS * est[best] and est[other] < MAX_TIMED_SECONDS:
        best, engine = _time_both(xp, geom, x, W, budget, est[other])
    _decisions[key] = best
    if len(_decisions) > MAX_DECISIONS:
        _decisions.popitem(last=False)
    return best, engine


def _time_both(xp, geom, x, W, budget, estimate):
    """Time forward + backward of both algorithms on the real arrays; (winner, its engine).

    Calls estimated under 20 ms are timed three times, under 0.5 s twice (best of), so
    that noise on a busy machine does not decide them.
    """
    from .conv import make_engine  # conv imports this module

    gy = xp.ones(geom.out_shape, dtype=x.dtype)
    repeats = 3 if estimate < 0.02 else 2 if estimate < 0.5 else 1
    times, engines = {}, {}
    for name in ("direct", "fft"):
        for _ in range(repeats):
            start = time.perf_counter()
            engine = engines[name] = make_engine(name, xp, geom, x, W, budget)
            engine.forward()
            engine.backward(gy, True, True)
            if backend.is_cupy_array(x):
                xp.cuda.Device().synchronize()
            times[name] = min(times.get(name, math.inf), time.perf_counter() - start)
    best = min(times, key=times.get)
    return best, engines[best]


def clear_cache() -> None:
    _decisions.clear()
