"""Position spaces of the CPU direct engine: which grid positions a pass runs over, cut into blocks
of one strided box each; read-only strided views of a flat grid; the thread pool the blocks share.

A pass's positions are axes ``dims`` with ``strides`` on the flat grid (a ``Space``), row-major. A
block is a range of one axis times the whole of the axes after it, so its positions are one strided
box and its column matrix one basic slice of a single strided view of the pass.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
import threading
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from . import backend


class Block(NamedTuple):
    """Positions [start, start + size) of a space (row-major): ``index`` into the space's axes (the
    outer indices, then a slice of one axis; the axes after it whole), a box of ``shape`` starting
    at flat grid index ``base`` with the space's ``strides``."""
    start: int
    size: int
    base: int
    shape: tuple
    strides: tuple
    index: tuple


class Space(NamedTuple):
    """Positions a pass runs over: axes ``dims`` with ``strides`` in the flat grid (row-major),
    the first at grid cell ``origin``."""
    dims: tuple
    strides: tuple
    origin: int = 0
    run_axes: int = 0   # at most this many trailing axes merge into one run (0: all that are contiguous)

    @property
    def count(self) -> int:
        return math.prod(self.dims)

    def coalesced(self) -> Space:
        """The same positions in the same order with trailing axes that are one contiguous run of
        the grid merged into one axis (a 3-D output space (b, o_1, o_2, q_3) at unit last stride is
        (b, o_1, o_2 * q_3)), at most ``run_axes`` of them when that is set (a run then stays one
        row, or one plane, of a contiguous box)."""
        dims, strides = list(self.dims), list(self.strides)
        most, merged = self.run_axes or len(dims), 1
        while len(dims) > 1 and merged < most and strides[-2] == dims[-1] * strides[-1]:
            dims[-2:] = [dims[-2] * dims[-1]]
            strides[-2:] = [strides[-1]]
            merged += 1
        return Space(tuple(dims), tuple(strides), self.origin, 1 if self.run_axes else 0)

    def merged_axes(self) -> int:
        """How many trailing axes ``coalesced`` merges into one run (1: the last axis alone)."""
        return len(self.dims) - len(self.coalesced().dims) + 1

    def run_choices(self) -> list:
        """This space with each way of cutting its contiguous trailing axes into runs, the longest
        runs first: all of them merged, then one axis fewer, ..., down to runs of the last axis."""
        merged = self.merged_axes()
        return [self._replace(run_axes=0 if a == merged else a) for a in range(merged, 0, -1)]

    def blocks(self, target: int) -> tuple:
        """Blocks of about ``target`` positions (at most): a range of one axis m times all of the axes
        after it, the smallest m whose trailing axes fit, so each block stays one strided box."""
        return _blocks(self, target)


@functools.lru_cache(maxsize=64)   # a network has a few spaces per layer; a space can have thousands of blocks
def _blocks(space: Space, target: int) -> tuple:
    """``Space.blocks``, computed once per space and block size."""
    dims, strides = space.dims, space.strides
    m = next(a for a in range(len(dims)) if math.prod(dims[a + 1:]) <= target)
    tail = math.prod(dims[m + 1:])
    most = max(1, min(dims[m], target // tail))
    rows = -(-dims[m] // -(-dims[m] // most))   # the axis in equal parts: no sliver of a block left over
    out = []
    for outer in itertools.product(*(range(d) for d in dims[:m])):
        start0 = sum(i * math.prod(dims[a + 1:]) for a, i in enumerate(outer))
        base0 = space.origin + sum(i * st for i, st in zip(outer, strides))
        for r0 in range(0, dims[m], rows):
            r = min(rows, dims[m] - r0)
            out.append(Block(start0 + r0 * tail, r * tail, base0 + r0 * strides[m], (r,) + dims[m + 1:],
                              strides[m:], outer + (slice(r0, r0 + r),)))
    return tuple(out)


def strided_view(owner, start: int, shape: tuple, steps: tuple):
    """A read-only view of the C-contiguous ``owner`` (g, rows, n): element ``start`` of the last
    axis of row [0, 0] first, ``shape``, and per axis a step in cells of the last axis (None:
    the owner's own stride of that leading axis). Built with the ndarray constructor, a tenth of
    ``as_strided``'s Python cost: the direct engine makes one per column block."""
    cell = owner.strides[-1]
    strides = tuple(owner.strides[i] if st is None else st * cell for i, st in enumerate(steps))
    view = np.ndarray(shape, owner.dtype, buffer=owner, offset=start * cell, strides=strides)
    view.flags.writeable = False
    return view


_pool = None
_pool_lock = threading.Lock()


def run_parallel(work, parts, blas: bool = True):
    """[work(part) for part in parts], the first on the calling thread and the others on a thread
    pool when there are several, with BLAS single-threaded meanwhile (the threads are the parallelism)
    unless ``blas`` is False: work that calls no BLAS (the compiled passes) skips setting and
    restoring its thread count (5 us a call, a twentieth of a small layer's forward)."""
    global _pool
    pinned = backend._single_threaded_blas() if blas else contextlib.nullcontext()
    if len(parts) == 1:
        with pinned:
            return [work(parts[0])]
    with _pool_lock:
        if _pool is None or _pool[0] < len(parts) - 1:
            _pool = (len(parts) - 1, ThreadPoolExecutor(len(parts) - 1, thread_name_prefix="convcore-direct"))
        pool = _pool[1]
    with pinned:
        # the calling thread takes the first part itself: one thread fewer to wake (after an idle
        # moment a parked thread took milliseconds to get going on this VM; the caller is running)
        others = [pool.submit(work, part) for part in parts[1:]]
        try:
            first = work(parts[0])
        finally:
            futures.wait(others)   # never return (or raise) while a part still writes
        return [first] + [f.result() for f in others]
