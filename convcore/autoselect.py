"""Choosing between the FFT and direct algorithms: a cost model, refined by timing.

The model counts the floating-point work of one forward pass plus all three
gradients for each algorithm (on the reduced, stride-1 problem both run) and
divides by rough sustained rates of a 2-core CPU. When the two estimates are
within ``AMBIGUOUS`` of each other, the first call for that geometry times both
algorithms (forward + backward) on the real arrays, and the winner is cached per
geometry, dtype and device for the rest of the process.
"""
from __future__ import annotations

import math
import time

from . import backend
from .direct_conv import packed_axes
from .reduction import Reduction

# Sustained rates in GFLOP/s for float32 (float64 runs at about half). They only
# need to be right within a small factor: close calls are timed.
GEMM_RATE = 25.0        # float32 GEMM with inner size ~100
FFT_RATE = 3.0          # per 2.5 * L * log2(L) flops of one real transform
CMATMUL_RATE = 8.0      # batched complex matmul over frequencies
COPY_RATE = 2.0         # GB/s of packing / transposes
AMBIGUOUS = 3.0
MAX_TIMED_SECONDS = 2.0  # don't time configurations estimated to take longer than this

_decisions: dict = {}


def estimate_seconds(geom, itemsize: int, budget: int | None = None) -> dict:
    """Estimated seconds of forward + all three gradients, {'direct': s, 'fft': s}."""
    precision = 1.0 if itemsize == 4 else 2.0
    n, O = geom.batch, geom.out_channels

    red = Reduction(None, geom, keep_dilation=True)
    rows = n * math.prod(red.qx)
    taps = math.prod(red.qk)
    direct_flops = 3 * 2.0 * rows * taps * red.channels * O
    packed_taps = math.prod(red.qk[len(red.qk) - packed_axes(red.qk, red.channels):])
    # x and gy are each packed once (packed_taps copies), plus the transposes in and out.
    copies = 2 * itemsize * rows * geom.groups * (packed_taps * (red.channels + red.out_channels)
                                                  + 2 * (red.channels + red.out_channels))
    direct = precision * (direct_flops / (GEMM_RATE * 1e9) + copies / (COPY_RATE * 1e9))

    from . import fft_conv  # fft_conv reads this module's rates

    budget = budget or 2**62
    fft = fft_conv.estimate_seconds(geom, itemsize, fft_conv.choose_tile(geom, itemsize, budget))
    return {"direct": direct, "fft": fft}


def choose(xp, geom, x, W, budget: int) -> str:
    """'fft' or 'direct' for this call (cached per geometry, dtype and device)."""
    from . import fft_conv

    key = (geom, str(x.dtype), backend.device_name(xp))
    if key in _decisions:
        return _decisions[key]
    est = estimate_seconds(geom, x.dtype.itemsize, budget)
    # Tiles as small as the kernel that still overflow the budget: FFT cannot fit.
    if fft_conv.working_set_bytes(geom, x.dtype.itemsize, budget) > budget:
        est["fft"] = math.inf
    best = min(est, key=est.get)
    other = "fft" if best == "direct" else "direct"
    if est[other] < AMBIGUOUS * est[best] and est[other] < MAX_TIMED_SECONDS:
        best = _time_both(xp, geom, x, W, budget)
    _decisions[key] = best
    return best


def _time_both(xp, geom, x, W, budget) -> str:
    """Time forward + backward of both algorithms once on the real arrays."""
    from .conv import make_engine  # conv imports this module

    gy = xp.ones(geom.out_shape, dtype=x.dtype)
    times = {}
    for name in ("direct", "fft"):
        start = time.perf_counter()
        engine = make_engine(name, xp, geom, x, W, budget)
        engine.forward()
        engine.backward(gy, True, True)
        if backend.is_cupy_array(x):
            xp.cuda.Device().synchronize()
        times[name] = time.perf_counter() - start
    return min(times, key=times.get)


def clear_cache() -> None:
    _decisions.clear()
