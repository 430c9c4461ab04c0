"""Timing, peak memory and output checks for the convolution benchmark.

Every measured callable runs forward + all three gradients and takes ``fetch``:
with ``fetch=True`` it returns host NumPy (y, gx, gW, gb) for the check against
convcore; timed calls pass ``fetch=False`` so no copy is timed.
"""
from __future__ import annotations

import statistics
import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

LONG_RUN_S = 10.0   # a warm-up this slow is the one and only sample (one-off costs are noise)


@dataclass
class Timing:
    """Median wall time of the timed runs (seconds), how many, and the warm-up's outputs."""

    median: float
    runs: int
    outputs: tuple = field(repr=False, default=None)


def time_call(run, repeats: int, budget_s: float) -> Timing:
    """Warm up once (that call's outputs are kept for the check), then time up to ``repeats`` runs.

    Slow callables get fewer runs: as many as fit ``budget_s`` judged from the first
    timed run (the warm-up carries one-off costs: thread pools, plans, page faults),
    at least one; a warm-up longer than LONG_RUN_S is the only sample.
    """
    start = time.perf_counter()
    outputs = run(fetch=True)
    warm = time.perf_counter() - start
    if warm > LONG_RUN_S:
        return Timing(warm, 0, outputs)
    samples = []
    while not samples or (len(samples) < repeats and sum(samples) + samples[0] <= budget_s):
        start = time.perf_counter()
        run(fetch=False)
        samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples), len(samples), outputs)


def peak_bytes_cpu(run) -> int:
    """Peak bytes allocated during one call, above what was live before it (tracemalloc).

    NumPy reports its data buffers to tracemalloc, so this counts every array the call
    creates (spectra, column matrices, outputs); scratch memory inside pocketfft and
    BLAS is not counted. Measured on a separate, untimed call: tracing slows Python down.
    """
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        run(fetch=False)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def peak_bytes_cuda(run) -> int:
    """Peak bytes taken from CuPy's memory pool during one call (a pool memory hook)."""
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        name = "PeakHook"

        def __init__(self):
            self.live = self.peak = 0
            self.sizes = {}

        # CuPy calls these hooks with keyword arguments (device_id, size, mem_size, mem_ptr, pmem_id).
        def malloc_postprocess(self, **kw):
            self.sizes[kw["mem_ptr"]] = kw["mem_size"]
            self.live += kw["mem_size"]
            self.peak = max(self.peak, self.live)

        def free_postprocess(self, **kw):
            self.live -= self.sizes.pop(kw["mem_ptr"], kw["mem_size"])

    hook = PeakHook()
    with hook:
        run(fetch=False)
    return hook.peak


def max_relative_error(reference: tuple, other: tuple) -> float:
    """max over (y, gx, gW, gb) of max|ref - other| / max|ref|."""
    worst = 0.0
    for r, o in zip(reference, other):
        r = np.asarray(r, np.float64)
        o = np.asarray(o, np.float64)
        if r.shape != o.shape:
            return float("inf")
        scale = max(float(np.abs(r).max()), 1e-30)
        worst = max(worst, float(np.abs(r - o).max()) / scale)
    return worst
