"""The Winograd engine: F(m, 3) minimal filtering per axis for 3^N kernels, stride 1, on the host.

Lavin & Gray (2016) in N dims: the FFT engine's structure with a small exact real transform in
place of the DFT. A tile of m^N outputs is computed from an a^N patch of the padded input
(a = m + 2 points per axis):

    U = G-along-every-axis(w)              (a^N, c_O, c_I)     once per call
    V = B^T-along-every-axis(patch)        (a^N, c_I)          per tile
    y_tile = A^T-along-every-axis(U V)     (m^N, c_O)          a channel product per point

so a tile costs a^N c_I c_O multiply-adds against m^N 3^N c_I c_O directly: with F(2, 3), 3.4x
fewer in 3-D and 5x in 4-D; with F(3, 3), 5.8x in 3-D; with F(4, 3), 4x in 2-D and 2x in 1-D. The backward pass is its
adjoint, tile by tile:

    Gt = A-along-every-axis(gy_tile)                   (a^N, c_O)
    gU = sum over tiles of Gt V^T   ->   gW = G^T-along-every-axis(gU)
    gx += B-along-every-axis(U^T Gt)   at the tile's patch

``tile_size`` picks m: F(2, 3)'s transforms hold only 0, +-1 and 1/2 and its float32 results are
as accurate as the direct engine's; larger tiles' constants cost about a digit, which is paid where
the errors stay PyTorch's direct path's size (F(4, 3) up to 2-D, F(3, 3) in 3-D) and not above.
The tile loops are compiled (winograd_kernel.py, Numba): without Numba, or with
``CONVCORE_COMPILED=0``, the engine refuses to run and ``auto`` does not consider it. Shapes: x (n,
c_I, d...), W (c_O, c_I/g, 3...), y and gy (n, c_O, o...).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import math

import numpy as np

from . import backend, layout, resources, winograd_kernel
from .costs import Estimate, Rates
from .geometry import ConvGeometry

KERNEL = 3
# G of F(m, 3) (Lavin & Gray 2016, sections 4.1-4.2): y = A^T [(G g) . (B^T d)]. The loops hold
# B^T, B, A^T and A written out (winograd_kernel.py); G is applied here, to the filters.
G = {2: np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
     3: np.array([[1 / 2, 0, 0], [-1 / 2, -1 / 2, -1 / 2], [-1 / 6, 1 / 6, -1 / 6], [1 / 6, 1 / 3, 2 / 3], [0, 0, 1]]),
     4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])}


def tile_size(geom: ConvGeometry) -> int:
    """m of F(m, 3) for a layer. The float32 error (median of the largest output's, 16 channels, over
    random tiles) decides which sizes a dimension may use; the cost model picks among them:
    - up to 2-D, F(4, 3): ~1e-6 in 2-D, PyTorch's direct path's size (F(2, 3) was slower but on one
      128-channel layer in seven);
    - 3-D, F(2, 3) (2e-7) or F(3, 3) (1.5e-6), whichever the model finds cheaper: F(3, 3) needs 4.6
      points per output against 8, but rounds each axis up to a multiple of 3 (a 16^3 volume
      computes 18^3: slower; 24^3 or 12^3: 1.2-1.5x faster, and the model called all 12 measured
      layers right);
    - 4-D and up, F(2, 3) (3e-7): F(3, 3) would be 4.7e-6 there, F(4, 3) in 3-D 5.3e-6."""
    if geom.ndim <= 2:
        return 4
    if geom.ndim > 3:
        return 2
    return min((2, 3), key=lambda m: _units_cost(geom, m))


def _units_cost(geom: ConvGeometry, m: int) -> float:
    """One thread's modelled work of the layer with F(m, 3), in the model's units (whole blocks)."""
    g, N = geom.groups, geom.ndim
    C, O = geom.in_channels // g, geom.out_channels // g
    tiles = geom.batch * math.prod(-(-o // m) for o in geom.out_spatial)
    TB = winograd_kernel.TB
    points = g * -(-tiles // TB) * TB * (m + KERNEL - 1) ** N
    return TRANSFORM_FLOPS[m] * points * (C + O) * (N + 1) + PRODUCT_FLOPS[m] * points * C * O


CHUNKS = 16   # units of backward work: fixed, so results do not depend on the thread count
SPLIT_MADDS = 1 << 22   # channel-product multiply-adds below which a second thread costs more than it saves
# The cost model, in units of the rates table's GEMM flops (so that it follows a calibrated machine as
# the direct engine's model does): one thread spends TRANSFORM_FLOPS[m] / gemm seconds per lane,
# point, channel (in or out) and axis (plus one: gathers and scatters), and PRODUCT_FLOPS[m] / gemm
# per lane, point and channel pair (the three BLAS products together). Fitted per tile size on one
# thread, lanes counting whole blocks of TB tiles per chunk: F(4, 3) on 11 1-D and 2-D layers, each
# within 0.76-1.17x of the measured time; F(2, 3) and F(3, 3) together on 12 3-D to 5-D layers of
# 4-64 channels (docs/benchmarks.md, thirteenth round).
TRANSFORM_FLOPS = {2: 72.4, 3: 98.2, 4: 80.6}
PRODUCT_FLOPS = {2: 9.7, 3: 15.4, 4: 26.1}
THREAD_EFFICIENCY = 0.9


def unsupported(geom: ConvGeometry, device_kind: str = "cpu") -> str | None:
    """Why the engine cannot run this layer on this kind of device, or None when it can.

    Cheap (estimates ask it for every layer, in the API process too): it does not build the loops.
    ``ready`` builds them; a build that fails makes every later answer say so."""
    if device_kind != "cpu":
        return "algorithm='winograd' runs on the CPU only (use 'auto', 'direct' or 'fft' on a GPU)"
    if not (all(k == KERNEL for k in geom.kernel) and all(s == 1 for s in geom.stride)
            and all(d == 1 for d in geom.dilation) and geom.padding_mode == "zeros"):
        return (f"algorithm='winograd' runs kernels of size 3 on every axis with stride 1, dilation 1 and "
                f"padding_mode 'zeros'; got {geom.describe()}")
    if not resources.compiled_enabled():
        return "algorithm='winograd' is not available: switched off (CONVCORE_COMPILED=0)"
    if not _numba_installed() or (_working.cache_info().currsize and not _working()):
        return "algorithm='winograd' is not available: Numba is not installed or does not compile its loops here"
    return None


def ready(xp) -> bool:
    """Build (or load from Numba's disk cache) the loops now and say whether they run for ``xp``:
    ``auto`` asks before it runs or times the engine, so that neither pays for a first build."""
    return xp is np and resources.compiled_enabled() and _working()



@functools.cache
def _numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


@functools.cache
def _working() -> bool:
    """Build the loops and run them once per dtype on a tiny layer (compiling them: 10-30 s the
    first time on a machine, then ~0.3 s from Numba's disk cache), so that a failure shows here,
    once. BLAS is not pinned meanwhile (``_pin_blas``): a compile is long, and pinning is global."""
    if winograd_kernel.kernels() is None:
        return False
    try:
        for dtype in (np.float32, np.float64):
            geom = ConvGeometry((1, 1, 4), (1, 1, 3), (1,), (1,), ((1, 1),), 1, "zeros")
            x, W = np.ones((1, 1, 4), dtype), np.ones((1, 1, 3), dtype)
            engine = WinogradConv(np, geom, x, W, 2**30, _checked=True)
            engine._pin_blas = False
            engine.forward()
            engine.backward(np.ones((1, 1, 4), dtype), True, True)
    except Exception as exc:  # noqa: BLE001 - Numba failing to compile on this machine: not available
        winograd_kernel.log.warning("the Winograd loops do not compile (%s): that engine is not available", exc)
        return False
    return True


KRON_MAX_VALUES = 1 << 18   # G's Kronecker power is used up to this many entries (2 MiB in float64)


@functools.cache
def filter_transform(m: int, N: int) -> np.ndarray:
    """G of F(m, 3) along every one of N axes, as one matrix (a^N, 3^N) on row-major flattened
    filters (a Kronecker power): the filters' transform is one product for all channel pairs (G
    along each axis in turn took 0.7 ms for 64 x 64 3x3 filters, about half a forward pass).
    Used while it has at most KRON_MAX_VALUES entries (F(2, 3) up to 5-D): it grows as 12^N."""
    mat = np.ones((1, 1))
    for _ in range(N):
        mat = np.kron(mat, G[m])
    mat.flags.writeable = False
    return mat


def transform_filters(m: int, N: int, w: np.ndarray, adjoint: bool = False) -> np.ndarray:
    """G along every filter axis: w (g, F, 3^N) -> (g, a^N, F), float64; with ``adjoint``, G^T
    back: w (g, a^N, F) -> (g, F, 3^N). One product with ``filter_transform`` where that matrix
    is small, else one axis at a time. BLAS on one thread: its own threads would spin on after
    these small products, on the CPUs the tile loops are about to use (the next forward pass ran
    2x slower)."""
    a = m + KERNEL - 1
    with backend._single_threaded_blas():
        if a ** N * KERNEL ** N <= KRON_MAX_VALUES:
            mat = filter_transform(m, N)
            return w.transpose(0, 2, 1) @ mat if adjoint else mat @ w.transpose(0, 2, 1)
        g, F = w.shape[0], w.shape[1] if not adjoint else w.shape[2]
        arr = (w.transpose(0, 2, 1) if adjoint else w).reshape((g, F) + ((a,) if adjoint else (KERNEL,)) * N)
        mat = G[m].T if adjoint else G[m]
        for ax in range(2, 2 + N):
            arr = np.moveaxis(np.tensordot(mat, arr, axes=(1, ax)), 0, ax)
        arr = arr.reshape(g, F, -1)
        return arr if adjoint else arr.transpose(0, 2, 1)


def _offsets(shape: tuple, extent: int, axes: int) -> np.ndarray:
    """Flat offsets, in a C-contiguous array of spatial ``shape``, of the cells of an extent^axes
    box over its first ``axes`` axes (row-major; [0] for none)."""
    strides = [math.prod(shape[j + 1:]) for j in range(axes)]
    grids = np.meshgrid(*[np.arange(extent) * s for s in strides], indexing="ij")
    return sum(grids, np.zeros((extent,) * axes, np.int64)).reshape(-1).astype(np.int64)


class _Tiling:
    """Where a layer's tiles lie, in sizes and a few small arrays (no per-tile data: the estimate
    builds one for any layer a request names, and the loops find each run's corners from these).

    Tiles run row-major over (image, tile index per axis). ``place`` is the loops' description:
    (tiles per axis, flat step between neighbouring tiles per axis and per image in the padded
    input, the same in the padded output); ``x_rows`` / ``y_rows`` the offsets of a patch's / a
    tile's rows over the first N - 1 axes (the loops walk the last one)."""

    def __init__(self, geom: ConvGeometry):
        m = self.m = tile_size(geom)
        self.points = m + KERNEL - 1                # transform points per axis
        self.P = self.points ** geom.ndim             # per patch
        self.tiles = tuple(-(-o // m) for o in geom.out_spatial)
        self.x_shape = tuple(t * m + KERNEL - 1 for t in self.tiles)   # padded input, spatial
        self.y_shape = tuple(t * m for t in self.tiles)                  # outputs rounded up to whole tiles
        self.count = geom.batch * math.prod(self.tiles)
        self.geom = geom
        # backward chunks: whole slabs (image, first tile index), so that chunk k shares cells of x
        # with chunks k - 1 and k + 1 only (a patch reaches 2 cells into the next tile's), and of at
        # least a block of tiles where there are that many (the loops run whole blocks: a chunk of
        # 4 tiles cost as much as one of 64)
        self.slabs, self.per_slab = geom.batch * self.tiles[0], math.prod(self.tiles[1:])
        self.max_chunks = max(1, min(self.slabs, CHUNKS, self.count // winograd_kernel.TB))

    def chunks_within(self, budget: int, itemsize: int, filter_values: int) -> list:
        """The backward pass's chunks, (first tile, end) each: as many as ``max_chunks``, fewer when
        their weight-gradient sums (one filter's transform, ``filter_values`` x P values, each) would
        pass an eighth of ``budget`` (the same layer, budget and dtype: the same chunks)."""
        n = max(1, min(self.max_chunks, budget // 8 // max(1, filter_values * self.P * itemsize)))
        return [(self.slabs * k // n * self.per_slab, self.slabs * (k + 1) // n * self.per_slab) for k in range(n)]

    @functools.cached_property
    def place(self) -> tuple:
        def steps(shape):
            return np.array([self.m * math.prod(shape[j + 1:]) for j in range(len(shape))], np.int64)

        g = self.geom
        return (np.array(self.tiles, np.int64), steps(self.x_shape), g.in_channels * math.prod(self.x_shape),
                steps(self.y_shape), g.out_channels * math.prod(self.y_shape))

    @functools.cached_property
    def x_rows(self):
        return _offsets(self.x_shape, self.points, self.geom.ndim - 1)

    @functools.cached_property
    def y_rows(self):
        return _offsets(self.y_shape, self.m, self.geom.ndim - 1)


_tiling = functools.lru_cache(maxsize=256)(_Tiling)


def _interior(arr, geom: ConvGeometry):
    """The cells of x inside ``arr``, a padded input of ``geom`` (x at each axis's low pad)."""
    return arr[(slice(None),) * 2 + tuple(slice(lo, lo + d) for (lo, _), d in zip(geom.pads, geom.spatial))]


def _threads(madds: int, parts: int) -> int:
    return max(1, min(resources.num_threads(), parts, madds // SPLIT_MADDS + 1))


def _run(threads: int, count: int, task, make_work, pin_blas: bool = True) -> None:
    """task(i, work) for i in range(count), over ``threads`` of convcore's pool, each thread with
    its own ``make_work()`` arrays, made once (made per task, 2 threads ran a 32-channel backward
    2.5x slower than one: every chunk's fresh megabytes are page faults, and the two threads' faults
    queue on the process's memory map). BLAS single-threaded (its own threads on each small product
    cost more than they give: 2x slower with 128 channels). ``pin_blas=False`` for the first,
    compiling call: BLAS is pinned process-wide while anyone is inside, and a compile takes seconds."""
    def part(indices):
        work = make_work()
        for i in indices:
            task(i, work)

    with backend._single_threaded_blas() if pin_blas else contextlib.nullcontext():
        if threads == 1:
            part(range(count))
        else:
            backend.run_split(threads, count, lambda s: part(range(s.start, s.stop)))


def winograd_estimate(geom: ConvGeometry, itemsize: int, budget: int, rates: Rates) -> Estimate:
    """Modelled seconds of forward + both gradients (transforms and channel products per lane of a
    block, TRANSFORM_FLOPS and PRODUCT_FLOPS) and every array allocated; math.inf where the engine
    cannot run."""
    if unsupported(geom, rates.kind):
        return Estimate(math.inf, {}, {}, {})
    t = _tiling(geom)
    g, N, threads = geom.groups, geom.ndim, resources.num_threads()
    C, O = geom.in_channels // g, geom.out_channels // g
    TB = winograd_kernel.TB
    chunks = t.chunks_within(budget, itemsize, g * O * C)
    lanes = TB * sum(-(-(stop - start) // TB) for start, stop in chunks)
    points = g * lanes * t.P
    one_thread = rates.precision(itemsize) * (
        TRANSFORM_FLOPS[t.m] * points * (C + O) * (N + 1) + PRODUCT_FLOPS[t.m] * points * C * O) / rates.gemm
    parallel = 1.0
    if threads > 1 and points * C * O >= SPLIT_MADDS:
        parallel = max(1.0, min(threads, g * len(chunks) // 2) * THREAD_EFFICIENCY)   # groups run together
    seconds = one_thread / parallel + rates.overhead("winograd")
    x_bytes = itemsize * geom.batch * geom.in_channels * math.prod(t.x_shape)
    y_bytes = itemsize * geom.batch * geom.out_channels * math.prod(t.y_shape)
    filters = g * t.P * C * O   # one transformed filter set
    # winograd_kernel.work_arrays, once per thread at work (as the engine splits: _threads over every
    # group's work at once; the weight-gradient-only backward runs every chunk at once)
    madds = g * t.count * t.P * C * O
    fw_threads = _threads(madds, g * -(-t.count // TB))
    bw_threads = _threads(madds, g * len(chunks))
    fw_work = itemsize * t.P * (C + O + 3) * TB + 4 * 8 * TB
    bw_work = itemsize * (t.P * (C + O + 3) * TB + O * C) + 4 * 8 * TB
    # U and U^T in the dtype, built through float64 (the filter transform's temporaries: 3 sets)
    shared = {"padded_input": x_bytes, "transformed_filters": 2 * itemsize * filters + 3 * 8 * filters}
    forward = {"padded_output": y_bytes, "tile_buffers": fw_threads * fw_work}
    if t.y_shape != geom.out_spatial:
        forward["output_crop"] = itemsize * math.prod(geom.out_shape)
    backward = {"padded_gy": y_bytes, "padded_gx": x_bytes, "tile_buffers": bw_threads * bw_work,
                "filter_gradient_sums": itemsize * len(chunks) * filters,
                "filter_gradient_float64": 3 * 8 * filters,   # the chunks' total and its transform back
                "gx": itemsize * math.prod(geom.in_shape), "gW": itemsize * math.prod(geom.kernel_shape)}
    return Estimate(seconds, shared, forward, backward)


class WinogradConv:
    """One Winograd convolution; keeps x padded for the weight gradient."""

    devices = ("cpu",)
    estimate = staticmethod(winograd_estimate)
    unsupported = staticmethod(unsupported)
    ready = staticmethod(ready)

    def __init__(self, xp, geom: ConvGeometry, x, W, budget: int, _checked: bool = False):
        if not _checked:
            why = unsupported(geom, "cpu" if backend.is_host_module(xp) else "gpu")
            if why is None and not ready(xp):
                why = unsupported(geom, "cpu")   # the build just failed: now it says so
            if why:
                raise ValueError(why)
        self.xp, self.geom, self.x, self.W, self.budget = xp, geom, x, W, budget
        self.t = _tiling(geom)
        self._pin_blas = True
        self._xpad = None
        g, N = geom.groups, geom.ndim
        C, O = geom.in_channels // g, geom.out_channels // g
        # in float64 (G's entries 1/6, 1/24 ... are not float32 numbers), into (g, a^N, O C)
        U = transform_filters(self.t.m, N, np.asarray(W, np.float64).reshape(g, O * C, -1))
        self._U = np.ascontiguousarray(U, dtype=x.dtype).reshape(g, self.t.P, O, C)
        self._UT = np.ascontiguousarray(self._U.transpose(0, 1, 3, 2))   # (g, a^N, C, O)

    def _padded_input(self):
        if self._xpad is None:
            geom = self.geom
            self._xpad = np.zeros((geom.batch, geom.in_channels) + self.t.x_shape, self.x.dtype)
            _interior(self._xpad, geom)[...] = self.x
        return self._xpad

    def _group(self, arr, gi: int, channels: int, padded_shape: tuple):
        """(``arr``'s flat view from group ``gi``'s first channel, the channel stride of an array of
        ``padded_shape``). The stride comes from the layer, not from ``arr``: a pass that does not
        read x gets a placeholder for it, and gx (always full size) is addressed with x's stride."""
        stride = math.prod(padded_shape)
        return arr.reshape(-1)[gi * channels * stride:], stride

    def forward(self):
        """y: (n, c_O, o...) without bias."""
        geom, t = self.geom, self.t
        forward_tiles, _ = winograd_kernel.kernels()
        xpad = self._padded_input()
        g = geom.groups
        C, O = geom.in_channels // g, geom.out_channels // g
        ypad = np.empty((geom.batch, geom.out_channels) + t.y_shape, self.x.dtype)
        madds, blocks = t.count * t.P * C * O, -(-t.count // winograd_kernel.TB)
        parts = _threads(madds, blocks)   # tile ranges per group
        bounds = [t.count * i // parts for i in range(parts + 1)]
        args = [(t.m,) + self._group(xpad, gi, C, t.x_shape) + (t.x_rows, self._U[gi])
                + self._group(ypad, gi, O, t.y_shape) + (t.y_rows, t.place) for gi in range(g)]

        def task(k, work):   # every group's ranges in one dispatch: one wake-up of the pool, not g
            gi, i = divmod(k, parts)
            forward_tiles(*args[gi], work, bounds[i], bounds[i + 1])

        _run(_threads(g * madds, g * blocks), g * parts, task,
             lambda: winograd_kernel.work_arrays(False, t.P, C, O, self.x.dtype), self._pin_blas)
        if t.y_shape == geom.out_spatial:
            return ypad
        return np.ascontiguousarray(layout.crop(ypad, geom.out_spatial))

    def backward(self, gy, need_x: bool, need_W: bool):
        """(gx, gW) for gy (n, c_O, o...); an entry not asked for is None."""
        if not (need_x or need_W):
            return None, None
        geom, t, N, dt = self.geom, self.t, self.geom.ndim, self.x.dtype
        _, backward_tiles = winograd_kernel.kernels()
        g = geom.groups
        C, O = geom.in_channels // g, geom.out_channels // g
        if t.y_shape == geom.out_spatial:
            # writeable too: a read-only gy (decoded from bytes) would be another type to Numba, and
            # another compile of the loops in the middle of a job
            gypad = np.require(gy, dt, ["C_CONTIGUOUS", "WRITEABLE"])
        else:
            gypad = layout.pad_high(np, np.asarray(gy, dt), t.y_shape)
        xpad = self._padded_input() if need_W else np.zeros((1, geom.in_channels), dt)
        gxpad = np.zeros((geom.batch, geom.in_channels) + t.x_shape, dt) if need_x else np.zeros((1, geom.in_channels), dt)
        chunks = t.chunks_within(self.budget, dt.itemsize, g * O * C)
        sums = np.zeros((g, len(chunks), t.P, O, C), dt) if need_W else np.zeros((g, len(chunks), 1, 1, 1), dt)
        madds = g * t.count * t.P * C * O * (need_x + need_W)
        args = [(t.m,) + self._group(xpad, gi, C, t.x_shape) + (t.x_rows, self._U[gi], self._UT[gi])
                + self._group(gypad, gi, O, t.y_shape) + (t.y_rows, t.place, self._group(gxpad, gi, C, t.x_shape)[0])
                for gi in range(g)]
        # even chunks, then odd: chunks that run at once never add into the same cells of gx (groups
        # never share cells: every group's chunks of a phase go in one dispatch)
        phases = (range(0, len(chunks), 2), range(1, len(chunks), 2)) if need_x else (range(len(chunks)),)
        for ks in phases:
            tasks = [(gi, k) for gi in range(g) for k in ks]

            def chunk(i, work, tasks=tasks):
                gi, k = tasks[i]
                backward_tiles(*args[gi], sums[gi, k], need_x, need_W, work, chunks[k][0], chunks[k][1])

            _run(_threads(madds // len(phases), len(tasks)), len(tasks), chunk,
                 lambda: winograd_kernel.work_arrays(True, t.P, C, O, dt), self._pin_blas)
        gx = np.ascontiguousarray(_interior(gxpad, geom)) if need_x else None
        gW = None
        if need_W:
            total = sums[:, 0].astype(np.float64)
            for k in range(1, len(chunks)):   # in chunk order: the same sums whatever the thread count
                total += sums[:, k]
            gW = transform_filters(t.m, N, total.reshape(g, t.P, O * C), adjoint=True)
            gW = gW.reshape(geom.kernel_shape).astype(dt)
        return gx, gW
