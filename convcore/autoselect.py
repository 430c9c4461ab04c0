"""Choosing between the FFT and direct algorithms: a cost model, refined by timing.

The model counts floating-point work of one forward+backward pass and divides by
rough sustained rates on a CPU (BLAS GEMM, FFT, batched complex matmul). When the
two estimates are close (within ``AMBIGUOUS``), the first call for that geometry
times both forward passes on the real arrays and the winner is cached per
geometry, dtype and device for the rest of the process.
"""
from __future__ import annotations

import math
import time

from . import backend
from .direct_conv import DirectConv
from .fft_conv import FFTConv
from .geometry import ConvGeometry

# Sustained rates in GFLOP/s, float32 on a 2-core CPU (float64 runs at about half).
# They only need to be right to within a small factor: close calls are timed.
GEMM_RATE = 40.0
FFT_RATE = 3.0
CMATMUL_RATE = 8.0
COPY_RATE = 1.0   # GB/s-equivalent cost of the im2col gather/scatter
AMBIGUOUS = 3.0

_decisions: dict = {}


def estimate_seconds(geom: ConvGeometry, itemsize: int) -> dict:
    """Estimated seconds of forward + all three gradients for each algorithm."""
    precision = 1.0 if itemsize == 4 else 2.0
    n, c_in, c_out, g = geom.batch, geom.in_channels, geom.out_channels, geom.groups
    out = math.prod(geom.out_spatial)
    taps = math.prod(geom.kernel)
    direct_flops = 3 * 2.0 * n * out * c_out * (c_in // g) * taps
    col_bytes = 3 * itemsize * n * out * taps * c_in
    direct = precision * (direct_flops / (GEMM_RATE * 1e9) + col_bytes / (COPY_RATE * 1e9 * 4))

    s = math.prod(geom.stride)
    qx = tuple(-(-p // st) for p, st in zip(geom.padded, geom.stride))
    L = tuple(backend.next_fast_len(q) for q in qx)
    size = math.prod(L)
    freqs = math.prod(L[:-1]) * (L[-1] // 2 + 1)
    transforms = 2 * (n * c_in * s) + 2 * (c_out * (c_in // g) * s) + 2 * (n * c_out)  # fwd + bwd
    fft_flops = transforms * 2.5 * size * math.log2(max(size, 2))
    mm_flops = 3 * 8.0 * freqs * n * (c_in // g) * s * c_out
    fft = precision * (fft_flops / (FFT_RATE * 1e9) + mm_flops / (CMATMUL_RATE * 1e9))
    return {"direct": direct, "fft": fft}


def choose(xp, geom: ConvGeometry, x, W, budget: int) -> str:
    """'fft' or 'direct' for this call."""
    key = (geom, str(x.dtype), backend.device_name(xp) if xp is not None else "cpu")
    if key in _decisions:
        return _decisions[key]
    est = estimate_seconds(geom, x.dtype.itemsize)
    # An FFT plan whose filter spectra alone overflow the budget cannot be chunked away.
    if FFTConv.working_set_bytes(geom, x.dtype.itemsize, 1) > budget:
        est["fft"] = math.inf
    best = min(est, key=est.get)
    other = "fft" if best == "direct" else "direct"
    if est[other] < AMBIGUOUS * est[best] and est[best] < 2.0:
        best = _time_both(xp, geom, x, W, budget)
    _decisions[key] = best
    return best


def _time_both(xp, geom, x, W, budget) -> str:
    from .conv import make_engine  # local import: conv imports this module

    times = {}
    for name in ("direct", "fft"):
        start = time.perf_counter()
        make_engine(name, xp, geom, x, W, budget).forward()
        if xp is not None and xp.__name__ == "cupy":
            xp.cuda.Device().synchronize()
        times[name] = time.perf_counter() - start
    return min(times, key=times.get)


def clear_cache() -> None:
    _decisions.clear()


__all__ = ["choose", "estimate_seconds", "clear_cache", "DirectConv", "FFTConv"]
