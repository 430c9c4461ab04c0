"""Interleaved timing, peak memory and output checks for the convolution benchmark.

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


SETTLE_S = 0.02   # pause before each timed run (see time_interleaved)
HOT_S = 0.25      # a side faster than this runs untimed right before each timed run...
WARM_S = 0.03     # ...for at least this long (at least once; see time_interleaved)


@dataclass
class Timing:
    """Median wall time of the timed runs (seconds), how many, and the warm-up's outputs."""

    median: float
    runs: int
    outputs: tuple = field(repr=False, default=None)


def time_interleaved(runs: dict, samples: int, side_budget_s: float, warm_s: float = WARM_S) -> dict:
    """Time several callables (name -> run) in turns, so that load from other processes
    falls on every side alike: one warm-up each (its outputs kept for the check), then
    rounds in which every side still short of its sample count runs once (in a rotating
    order, each after a SETTLE_S pause). A side whose second call (after the warm-up, which may
    compile or autotune) took under HOT_S runs untimed right before each timed run, call after
    call until ``warm_s`` (default WARM_S) have passed, at least once, its budget counting those
    calls: the pause lets every library's threads sleep, and a training loop, calling layer after
    layer, never pays for waking them. Waking cost PyTorch up to 7 ms on a 1 ms layer here (0.96 ms
    back to back, 7.8 ms after a 20 ms pause, 3-D 16 channels on 8^3). One call was not enough for
    threads that sleep between the parts of a call (convcore's pool; OpenMP's spin): on this VM a
    halted CPU wakes slowly until it has had some 20 ms of steady work (2-D 7x7 16 channels, the
    direct engine: 5.7 ms back to back, 9.1 ms after a 20 ms pause and one untimed call, 6.0 ms
    after three). The timed run then sees what it sees inside such a loop.

    Each side gets ``samples`` timed runs, fewer only when they would exceed
    ``side_budget_s`` judged from its second call (then as many as fit, at least one); a
    warm-up longer than the budget is that side's only sample (runs = 0).
    Returns name -> Timing.
    """
    outputs, warm, hot, want = {}, {}, {}, {}
    for name, run in runs.items():
        start = time.perf_counter()
        outputs[name] = run(fetch=True)
        warm[name] = time.perf_counter() - start
        if warm[name] > side_budget_s:
            want[name], hot[name] = 0, False
            continue
        start = time.perf_counter()
        run(fetch=False)
        second = time.perf_counter() - start
        hot[name] = second < HOT_S
        per_sample = second + (max(second, warm_s) if hot[name] else 0)
        want[name] = max(1, min(samples, int(side_budget_s // per_sample)))
    taken = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(max(want.values(), default=0)):
        # Rotate the order each round and let other libraries' worker threads go idle
        # (OpenMP and Eigen pools spin a while after their work): no side always runs
        # right after the same busy neighbour.
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            if round_ < want[name]:
                time.sleep(SETTLE_S)
                if hot[name]:
                    until = time.perf_counter() + warm_s
                    runs[name](fetch=False)
                    while time.perf_counter() < until:
                        runs[name](fetch=False)
                start = time.perf_counter()
                runs[name](fetch=False)
                taken[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(taken[name]) if taken[name] else warm[name], len(taken[name]),
                         outputs[name]) for name in runs}


def transform_seconds(run, module) -> tuple:
    """(wall seconds of one ``run``, seconds of it spent inside ``module.rfftn`` / ``irfftn``).

    The FFT engine calls its transforms through ``convcore.backend``; wrapping them for
    one untimed call measures the engine's six transform sets (x, W, gy forward; y, gx,
    gW inverse), the method's floor, beside everything else it does.
    """
    spent = [0.0]
    originals = module.rfftn, module.irfftn

    def timed(f):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return call

    module.rfftn, module.irfftn = timed(originals[0]), timed(originals[1])
    try:
        start = time.perf_counter()
        run(fetch=False)
        return time.perf_counter() - start, spent[0]
    finally:
        module.rfftn, module.irfftn = originals


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
