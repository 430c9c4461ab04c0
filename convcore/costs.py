"""The cost model of every built-in engine: device rates, seconds and bytes, tile choice.

``auto`` (autoselect.py) asks each registered engine for an ``Estimate`` and runs the
cheapest; engines size their chunks and tiles with the same byte counts, and
``estimate_memory`` (memory.py) adds them up before anything is allocated. Keeping
rates, seconds and bytes in one module is what lets a new engine be compared with
the others: its ``estimate`` uses the same ``Rates``.

All sizes are Python ints, so absurd shapes give absurd numbers, never an overflow.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

from . import backend, direct_kernel, pointwise, tiling
from .geometry import ConvGeometry
from .reduction import Reduction
from .resources import fftw_requested


@dataclass(frozen=True)
class Rates:
    """Sustained float32 rates of one device kind (float64 runs ``float64_slowdown`` times slower).

    They only need to be right within a small factor: close calls are timed.
    """

    kind: str
    gemm: float            # FLOP/s of a GEMM with inner size ~100
    fft: float             # FLOP/s counted as 2.5 * L * log2(L) per real transform of size L
    cmatmul: float         # FLOP/s of the batched complex matmul over frequencies
    copy: float            # bytes/s streamed through memory by the direct GEMMs
    matrix_call_s: float   # fixed cost of each small per-frequency product (one BLAS call each on the CPU)
    direct_kernel: float = 250e9   # FLOP/s of the direct engine's compiled passes (CPU; full-width vectors)
    layout_copy: float = 15e9      # bytes/s of the compiled direct passes' layout copies (fresh arrays, strided)
    # Fixed seconds of one forward + backward beyond the arithmetic (Python, transform set-up,
    # transposes, kernel launches): what decides tiny layers, such as 8x8 images.
    call_overhead: dict = field(default_factory=dict, hash=False)
    float64_slowdown: float = 2.0
    # Overlap-save tiles in three or more dims: taken only when the model predicts the tiled time
    # under ``tile_gain_nd`` of one whole transform's, from windows of ``tile_windows_nd`` kernel
    # lengths (see the comment above TILE_GAIN for why they are a device's).
    tile_gain_nd: float = 0.6
    tile_windows_nd: tuple = (2, 4, 8)
    # In one dim: tiles only under ``tile_gain_1d`` of the whole's modelled time (see TILE_GAIN).
    tile_gain_1d: float = 0.6

    def __post_init__(self):
        # hashable (the tile choice is cached per rates), whatever sequence was given
        object.__setattr__(self, "tile_windows_nd", tuple(self.tile_windows_nd))

    def overhead(self, engine: str) -> float:
        return self.call_overhead.get(engine, DEFAULT_OVERHEAD_S)

    def precision(self, itemsize: int) -> float:
        return 1.0 if itemsize <= 4 else self.float64_slowdown


DEFAULT_OVERHEAD_S = 1e-3
# A 2-core CPU (the figures the model was fitted on; see docs/benchmarks.md).
# gemm and copy: the direct engine's blocked GEMMs and column copies, fitted on 28 layers (H5).
# direct_kernel and layout_copy: its compiled passes, fitted on the table's 19 direct rows (median
# error 1.06x). fft, cmatmul and matrix_call_s: 3x the old table's (3e9, 8e9, 1.5e-6), which
# overestimated this machine's FFT engine 3-9x (median 4x; more for large kernels, whose pruned
# filter transforms it does not count); 3x rather than 4x keeps 3^N layers off the FFT engine where
# it is slower (model-only choices on 30 random 3^N layers: 2 misses at 4x, none at 3x).
CPU_RATES = Rates("cpu", gemm=80e9, fft=9e9, cmatmul=24e9, copy=70e9, matrix_call_s=0.5e-6,
                  direct_kernel=300e9, layout_copy=7.5e9,
                  call_overhead={"direct": 4e-4, "fft": 1.5e-3, "winograd": 4e-4}, tile_gain_nd=0.4,
                  tile_gain_1d=0.35)
# A data-centre GPU (A100/H100 class) through CuPy: batched products are one cuBLAS call,
# so no per-frequency cost; Python and kernel launches make the fixed cost. ``calibrate``
# measures the real figures of the device at hand.
GPU_RATES = Rates("gpu", gemm=25e12, fft=1e12, cmatmul=5e12, copy=2e12, matrix_call_s=0.0,
                  call_overhead={"direct": 1e-3, "fft": 2e-3}, tile_gain_nd=0.4, tile_windows_nd=(4, 8))

_calibrated: dict = {}   # device name -> Rates measured by calibrate()


def rates_for(xp) -> Rates:
    """The rates of ``xp``'s device: calibrated when ``calibrate`` ran for it, else its kind's table."""
    name = backend.device_name(xp)
    if name in _calibrated:
        return _calibrated[name]
    return CPU_RATES if backend.is_host_module(xp) else GPU_RATES


def set_rates(xp, rates: Rates | None) -> None:
    """Use ``rates`` for ``xp``'s device from now on (None: back to the kind's table)."""
    name = backend.device_name(xp)
    if rates is None:
        _calibrated.pop(name, None)
    else:
        _calibrated[name] = rates


class Estimate(NamedTuple):
    """What one engine will cost for a forward pass and all gradients.

    ``seconds`` is modelled (math.inf: cannot run under the budget). The byte dicts
    name every array the engine allocates: ``shared`` is made by whichever pass runs
    first (reduced input, spectra), ``forward`` only by the forward pass (y and its
    buffers), ``backward`` only by backward (gx, gW and theirs). The caller's x, W and
    gy are not counted. Each dict's sum bounds what that part can hold at once.
    """

    seconds: float
    shared: dict
    forward: dict
    backward: dict

    def bytes(self, forward: bool = True, backward: bool = True) -> int:
        parts = [self.shared] + [self.forward] * forward + [self.backward] * backward
        return sum(sum(p.values()) for p in parts)


# ---- the reduction both built-in engines run (reduction.py) -----------------------


def reduction_bytes(geom: ConvGeometry, itemsize: int, keep_dilation: bool, batch: int | None = None) -> dict:
    """Copies the reduction makes of x (``batch`` images, default all), of W and of gx."""
    red = Reduction(None, geom, keep_dilation)
    b = geom.batch if batch is None else batch
    image = b * geom.in_channels * itemsize
    rounded = layout_round_up(red.read, red.stride)
    strided = any(s != 1 for s in red.stride)
    out = {}
    if any(lo or hi for lo, hi in geom.pads):
        out["padded_input"] = image * math.prod(geom.padded)
    out["polyphase_input"] = image * math.prod(rounded) * ((rounded != red.read) + strided)
    # filters: dilated (FFT or strided), padded to a multiple of the stride, split by phase
    dilated = not red.native_dilation and any(d != 1 for d in geom.dilation)
    extent = geom.kernel if red.native_dilation else geom.dilated_kernel
    filt = geom.out_channels * (geom.in_channels // geom.groups) * itemsize
    copies = dilated + (layout_round_up(extent, red.stride) != extent) + strided
    out["dilated_filters"] = filt * math.prod(layout_round_up(extent, red.stride)) * copies
    return {k: v for k, v in out.items() if v}


def input_grad_bytes(geom: ConvGeometry, itemsize: int, keep_dilation: bool) -> dict:
    """gx (n, c_I, d...) and the copies ``Reduction.input_grad`` makes on the way."""
    red = Reduction(None, geom, keep_dilation)
    image = geom.batch * geom.in_channels * itemsize
    out = {"gx": image * math.prod(geom.spatial)}
    if any(s != 1 for s in red.stride):
        out["gx_polyphase"] = image * math.prod(q * s for q, s in zip(red.qx, red.stride))
    if red.read != geom.padded:
        out["gx_unread_cells"] = image * math.prod(geom.padded)
    if geom.padding_mode != "zeros" and any(lo or hi for lo, hi in geom.pads):
        out["gx_padding_fold"] = image * math.prod(geom.padded)
    return out


def weight_grad_bytes(geom: ConvGeometry, itemsize: int, keep_dilation: bool) -> dict:
    """gW (c_O, c_I/g, k...) and its polyphase/dilated form."""
    red = Reduction(None, geom, keep_dilation)
    filt = geom.out_channels * (geom.in_channels // geom.groups) * itemsize
    return {"gW": filt * math.prod(geom.kernel),
            "gW_reduced": 2 * filt * math.prod(q * s for q, s in zip(red.qk, red.stride))}


def layout_round_up(shape, multiple) -> tuple:
    return tuple(-(-d // m) * m for d, m in zip(shape, multiple))


def output_bytes(geom: ConvGeometry, itemsize: int) -> int:
    """y (n, c_O, o...)."""
    return geom.batch * geom.out_channels * math.prod(geom.out_spatial) * itemsize


# ---- direct (direct_conv.py) ------------------------------------------------------

BLOCK_BYTES = 1 << 20   # CPU: a column block this size stays in cache between its copy and its GEMM
MIN_BLOCK = 256         # positions per block at least: fewer make the per-call cost dominate
SPILL_SLOWDOWN = 10          # CPU: column blocks too large for the cache move at main-memory speed
DIRECT_BLOCK_CALL_S = 3e-5   # CPU: Python, the strided view and the BLAS call of one column block (fitted)


def pass_threads(madds: int) -> int:
    """CPU threads for a pass of ``madds`` multiply-adds. They only pay for themselves on large
    passes: a small one would wait for the slowest thread, which on a busy machine can be
    descheduled for milliseconds."""
    return backend.num_threads() if madds >= backend.SPLIT_WORK else 1


# Two independent passes (a layer's weight and input gradients) run side by side, each on its share of
# the threads, while each has at least this many multiply-adds (below, a thread's hand-off costs more
# than the pass) and the shares' longest pass takes at most SIDE_BY_SIDE_SLACK x an even split's time;
# SIDE_BY_SIDE_SLACK_LARGE once a pass has SIDE_BY_SIDE_LARGE multiply-adds. Side by side there is one
# hand-off instead of two, which on small passes outweighs the shares' imbalance (3-D 3^3 32 channels on
# 4 x 8^3, the weight pass 1.5x the input gradient's work: 0.87x the time of one pass after the
# other); on large passes the longer one decides (4-D 3^4 layers of 8-32 channels on 8^4-12^4, the
# weight pass 1.4-1.6x the work: 1.08-1.37x the time; docs/benchmarks.md, "Twenty-fifth round").
SIDE_BY_SIDE_MIN = 1 << 23
SIDE_BY_SIDE_SLACK = 1.25
SIDE_BY_SIDE_LARGE = 1 << 27
SIDE_BY_SIDE_SLACK_LARGE = 1.1


# What writing one cell of gx cell by cell (a stride along the last axis: its phases interleave in x's
# rows) costs in multiply-adds, for ``pass_split``: 1.2 ns a cell in the scatters of a 2-D stride-2
# layer's input gradient (direct_kernel), some 60 multiply-adds of a thread. Uncounted, a 3x3 stride-2
# layer of 32 channels on 8 x 64^2 ran its passes side by side on "balanced" work, 1.09x slower.
CELL_BY_CELL_MADDS = 60


def pass_split(madds_a: int, madds_b: int, threads: int) -> tuple | None:
    """(threads of pass a, of pass b) to run two independent passes side by side, or None to run
    them one after the other on all the threads. Side by side there is one hand-off to the threads
    instead of two and each pass is cut in fewer parts; on a 2-core VM that made the backward of a
    4-group 3x3 layer (two 38 M multiply-add passes) about a quarter faster. ``madds_*``: the
    multiply-adds each pass computes (skipped taps not counted)."""
    if threads < 2 or min(madds_a, madds_b) < SIDE_BY_SIDE_MIN:
        return None
    ta = min(threads - 1, max(1, round(threads * madds_a / (madds_a + madds_b))))
    tb = threads - ta
    slack = SIDE_BY_SIDE_SLACK_LARGE if max(madds_a, madds_b) >= SIDE_BY_SIDE_LARGE else SIDE_BY_SIDE_SLACK
    if max(madds_a / ta, madds_b / tb) > slack * (madds_a + madds_b) / threads:
        return None
    return ta, tb


# CPU: fold kernel taps into the GEMM rows while its rows (channels) are at most this. At 64 rows it
# was a wash (0.96-1.27x over five layers) and a stride-2 3x3's input gradient (64 polyphase rows)
# 1.1x slower; at 8-32 rows it measured 1.06-1.7x faster (docs/benchmarks.md, "Ninth round").
FOLD_ROWS = 32
FOLD_KEEP_TAPS = 27   # and leave at least this many taps (or one axis) in the column matrix
FOLD_MIN_INNER = 16   # and at least this many column rows (K * taps left): the GEMM's inner size


def folded_tap_axes(qk: tuple, K: int, rows: int, last_stride: int) -> int:
    """How many trailing kernel axes a CPU direct pass folds into its GEMM rows
    (direct_conv._run_folded), 0 for none. Only where its GEMM has few rows; then one axis, and
    where the pass's positions run at unit grid stride along the last axis (``last_stride``; a
    stride read in place folds one axis, tap by tap phase, when that axis has two taps per phase:
    3d-k7-s2 1.27x faster, 3x3 at stride 2 0.89-0.95x) more while the axes before them keep
    FOLD_KEEP_TAPS taps in the column matrix (3x3x3: one axis; 3^5: two). The GEMM's
    inner size K * (taps left) must stay at least FOLD_MIN_INNER: folding every tap of a 1-D 3-tap
    layer with 32 channels (inner size 32, taps left 1) was 1.3-1.5x slower, and a first 3x3 layer
    of one channel (inner size 3) 1.2-1.3x."""
    N = len(qk)
    if rows > FOLD_ROWS or N < 2 or qk[-1] < 2 * last_stride:   # (unstrided: a last axis of one tap)
        return 0
    m = 1
    while (last_stride == 1 and m + 1 < N and qk[N - m - 1] > 1
           and math.prod(qk[:N - m - 1]) >= FOLD_KEEP_TAPS):
        m += 1
    return m if math.prod(qk[:N - m]) > 1 and K * math.prod(qk[:N - m]) >= FOLD_MIN_INNER else 0


def direct_pass_layout(qk: tuple, K: int, rows: int, last_stride: int, steps: tuple) -> tuple:
    """A CPU direct pass's (column rows, folded taps F, widening ext) per position: K * prod(qk)
    column rows and no folding, or with ``folded_tap_axes`` the columns of the other axes' taps
    (once per phase of a strided last axis), F = the folded axes' taps (the GEMM's F * rows rows)
    and the positions ``ext`` a block's run is widened by (``steps``: each kernel axis's step on
    the flat grid)."""
    m = folded_tap_axes(qk, K, rows, last_stride)
    if not m:
        return K * math.prod(qk), 1, 0
    N = len(qk)
    reach = sum((k - 1) * st for k, st in zip(qk[N - m:], steps[N - m:]))
    phases = min(last_stride, qk[-1]) if m == 1 else 1
    return K * math.prod(qk[:N - m]) * phases, math.prod(qk[N - m:]), reach // last_stride


def block_positions(per_position: int, count: int) -> int:
    """Positions per CPU column block: about BLOCK_BYTES (at least MIN_BLOCK), and a block for
    every thread."""
    B = max(MIN_BLOCK, BLOCK_BYTES // per_position)
    return max(1, min(B, -(-count // backend.num_threads())))


# A device's direct passes (direct_conv._run_taps) gather the taps of the trailing kernel axes into a
# column matrix while its inner size K * taps stays within DEVICE_GROUP_INNER; each other tap is one
# cuBLAS product reading its window of that matrix in place. Measured on an H100 (forward + all
# gradients, docs/benchmarks.md "Fourth GPU session"), against gathering nothing: the last axis of
# 2-D 3x3 layers at 16-128 channels (inner 48-384) 1.3-1.4x faster, two axes of 3-D 3^3-7^3 layers at
# 8-32 channels (inner 72-400) 2.3-6.4x. Near and past 400 the runs disagreed (3^3 at 64 channels with
# two axes, inner 576: 0.7-1.4x the speed of one axis over three runs; a stride-2 3x3's 256 polyphase
# channels with one axis, inner 512: 0.65-1.07x of none): there the copies cost about what they save.
DEVICE_GROUP_INNER = 400
DEVICE_CALL_S = 1e-5     # a device's fixed cost of one copy or product call (launch and Python)


def device_grouped_axes(qk: tuple, K: int, tap_bytes: int, budget: int) -> int:
    """How many trailing kernel axes a device's direct pass gathers: the most, up to all but the
    first, whose taps times K stay within DEVICE_GROUP_INNER and whose column matrix (``tap_bytes``
    per gathered tap) fits a quarter of ``budget``."""
    N, m = len(qk), 0
    for a in range(1, N):
        gathered = math.prod(qk[N - a:])
        if K * gathered > DEVICE_GROUP_INNER or gathered * tap_bytes > budget // 4:
            break
        m = a
    return m


def grid_max_offset(red: Reduction) -> int:
    """The farthest tap's offset in a reduction's flat grid (direct_conv._Grid.max_off)."""
    strides = [math.prod(red.qx[j + 1:]) for j in range(len(red.qx))]
    return sum((k - 1) * d * s for k, d, s in zip(red.qk, red.core_dilation, strides))


def device_pass_seconds(qk: tuple, K: int, rows: int, positions: int, groups: int, itemsize: int,
                        budget: int, rates: Rates, reach: int = 0) -> float:
    """Modelled seconds of one device direct pass over ``positions`` (its source ``reach`` cells
    longer): the gathered columns written and read, each product reading its window and reading
    and writing its output, the GEMM arithmetic, and a fixed cost per call."""
    tap_bytes = groups * K * (positions + reach) * itemsize
    m = device_grouped_axes(qk, K, tap_bytes, budget)
    gathered = math.prod(qk[len(qk) - m:])
    products = math.prod(qk) // gathered
    copies = gathered if gathered > 1 else 0
    product_bytes = products * groups * positions * itemsize * (K * gathered + 2 * rows)
    flops = 2.0 * groups * rows * K * math.prod(qk) * positions
    calls = products + copies
    copy_bytes = 2 * copies * tap_bytes
    return flops / rates.gemm + (copy_bytes + product_bytes) / rates.copy + calls * DEVICE_CALL_S


NATIVE_STRIDE_MIN_SAVING = 1.0   # polyphase taps / real taps from which reading in place pays (strided only)


def native_stride_pays(geom: ConvGeometry) -> bool:
    """Whether the CPU's forward and weight-gradient passes read strided outputs in place.

    Unstrided, it is the same grid either way. Strided, the polyphase split runs
    prod(stride) * prod(ceil(k / stride)) taps per output where prod(k) are real, after a copy that
    splits x into its phases; in place the passes step over the stride. With BLAS passes in place
    paid only from 1.2x the taps (11x11 at stride 4, 1.19x: 1.1x slower in place). With the compiled
    passes (twenty-third round, forward + both gradients, 2 threads, polyphase / in place): 11x11 at
    stride 4 1.22, 8x8 at stride 4 (1.0x the taps) 1.18, 16x16 at stride 16 1.17, 6x6 at stride 3 1.19,
    4^3 at stride 2 1.15, 1-D k 65 and k 9 at stride 2 1.06 and 1.04, 4x4 at stride 4 0.99: in place
    whenever strided (polyphase taps are never fewer than the real ones, so at 1.0 the rule is
    "strided"; tests set it to inf to force the split). Where the BLAS passes run (no Numba, fewer
    than 4 rows) in place measured 0.96-1.05 of the split's time: no reason to tell the two apart.
    """
    taps = math.prod(geom.kernel)
    polyphase = 1
    strided = False
    for s, o, k in zip(geom.stride, geom.out_spatial, geom.dilated_kernel):
        s = 1 if o == 1 else s
        strided = strided or s != 1
        polyphase *= s * -(-k // s)
    return strided and polyphase >= NATIVE_STRIDE_MIN_SAVING * taps


# NumPy and CuPy arrays have at most 64 axes. Per spatial dim N, the engines' largest arrays carry:
# the direct engine's column views on the host 2N + 4 (the block's positions and the taps), on a
# device N + 3; the FFT engine's spectra N + 3; a polyphase split (a stride, on a device or in the FFT
# engine) 2N + 2. Layers past one engine run on another (31-61 dims unstrided: FFT) or nowhere (62).
# Found by probing the service: a 31-D layer was queued and failed in the worker with NumPy's own
# message (and strided 32-D ones, a review found, after the first fix).
MAX_ARRAY_AXES = 64


def _too_many_axes(name: str, geom: ConvGeometry, per_dim: int, extra: int) -> str | None:
    """The refusal when the engine's arrays need more than MAX_ARRAY_AXES axes: ``per_dim`` N +
    ``extra`` unstrided, at least 2N + 2 with a stride (the polyphase split)."""
    rules = [(per_dim, extra)] + ([(2, 2)] if any(s > 1 for s in geom.stride) else [])
    limit = min((MAX_ARRAY_AXES - e) // d for d, e in rules)
    if geom.ndim <= limit:
        return None
    return (f"algorithm='{name}' runs layers like this one up to {limit} spatial dims (its arrays carry more "
            f"axes than dims, arrays at most {MAX_ARRAY_AXES}); got {geom.ndim}")


def direct_unsupported(geom: ConvGeometry, device_kind: str = "cpu") -> str | None:
    """Why the direct engine cannot run ``geom`` there (too many dims for its arrays), or None."""
    if pointwise.applies(geom):   # x as it lies: any dims
        return None
    why = _too_many_axes("direct", geom, 2, 4) if device_kind == "cpu" else _too_many_axes("direct", geom, 1, 3)
    return why and why + ": use 'fft' or 'auto'"


def fft_unsupported(geom: ConvGeometry, device_kind: str = "cpu") -> str | None:
    """Why the FFT engine cannot run ``geom`` (too many dims for its spectra), or None."""
    return _too_many_axes("fft", geom, 1, 3)


def direct_estimate(geom: ConvGeometry, itemsize: int, budget: int, rates: Rates) -> Estimate:
    """On the CPU, blocked im2col: each position of a pass costs C * taps * c_O/g multiply-adds, and
    each pass copies its column blocks. The input gradient runs over every position of the polyphase
    grid (b * prod(q)); the forward and weight-gradient passes run over the outputs in place on the
    padded input (stride native: prod(k) taps of c_I/g channels; direct_conv's output space, with
    the last axis's ring when that axis is unstrided). On a device every pass runs the whole
    polyphase grid as gathered columns and tap products (``device_pass_seconds``)."""
    if direct_unsupported(geom, rates.kind):
        return Estimate(math.inf, {}, {}, {})
    if pointwise.applies(geom):   # 1x1 kernels: products of x as it lies (pointwise.py), on any device
        return Estimate(pointwise.seconds(geom, itemsize, rates), *pointwise.estimate_bytes(geom, itemsize))
    if rates.kind != "cpu":
        return _device_direct_estimate(geom, itemsize, budget, rates)
    red = Reduction(None, geom, keep_dilation=True)
    fw = Reduction(None, geom, keep_dilation=True, native_stride=True) if native_stride_pays(geom) else red
    g, C, O = geom.groups, red.channels, red.out_channels
    taps, fw_taps, fw_C = math.prod(red.qk), math.prod(fw.qk), fw.channels
    positions = geom.batch * math.prod(red.qx)
    fw_positions = geom.batch * math.prod(fw.qx)
    last = fw.qx[-1] if fw.out_stride[-1] == 1 else geom.out_spatial[-1]
    outputs = geom.batch * math.prod(geom.out_spatial[:-1]) * last
    passes = ((fw_C, outputs, fw_taps), (fw_C, outputs, fw_taps), (O, positions, taps))   # y, gW, gx
    # The compiled passes (direct_kernel.py) where they run: no column copies, their own rate, rows
    # padded to whole vectors and runs to whole micro-blocks; gW also copies gy channels-last.
    # An unstrided pass's runs are rows of the grid, merged over the axis before the last.
    compiled = [direct_kernel.compiled_for(itemsize) and rows >= direct_kernel.MIN_ROWS for rows in (O, O, C)]
    merged = geom.out_spatial[-2] if len(geom.out_spatial) > 1 else 1
    fw_run = last * (merged if fw.out_stride[-1] == 1 else 1)
    gx_run = red.qx[-1] * (red.qx[-2] if len(red.qx) > 1 else 1)
    kernel_flops = 0.0
    if compiled[0]:
        per_term, computed = direct_kernel.output_pass(O, outputs, fw_run, itemsize)
        kernel_flops += 2.0 * g * computed * fw_C * fw_taps * per_term
    if compiled[1]:
        per_position, _ = direct_kernel.weight_pass(O, fw_C * fw_taps, itemsize)
        kernel_flops += 2.0 * g * outputs * per_position
    if compiled[2]:
        per_term, computed = direct_kernel.output_pass(C, positions, gx_run, itemsize)
        kernel_flops += 2.0 * g * computed * O * taps * per_term
    flops = sum(2.0 * g * count * K * k * rows for (K, count, k), rows, done in zip(passes, (O, O, C), compiled)
                if not done)
    # columns written and read by each pass, at the cache rate while a block of MIN_BLOCK positions
    # fits in BLOCK_BYTES, else from memory (a 7^4 kernel's columns: 7x slower than estimated
    # with the cache rate); plus the grid copies of x, y, gy and gx and their crops/transposes
    copy_seconds = 4 * itemsize * g * positions * (C + O) / rates.copy
    fw_steps = tuple(d * math.prod(fw.qx[j + 1:]) for j, d in enumerate(fw.core_dilation))
    steps = tuple(d * math.prod(red.qx[j + 1:]) for j, d in enumerate(red.core_dilation))
    # the shortest run of positions a folded pass widens: a row of its position space's last axis
    # (whole grid rows unstrided; only the outputs along a stride read in place)
    runs = (last, last, red.qx[-1])
    layouts = (direct_pass_layout(fw.qk, fw_C, O, fw.out_stride[-1], fw_steps),) * 2 + (
        direct_pass_layout(red.qk, O, C, 1, steps),)
    if any(compiled):
        # x onto its grid, y back, gy onto its grid (zeros first), gx back, and gy channels-last for
        # gW: each a pass over fresh memory, slower than the column copies' cache-resident rate
        layout = itemsize * g * (3 * positions * C + 2 * outputs * O + 3 * positions * O + 3 * positions * C)
        if compiled[1]:   # (done by the pass's threads, segment by segment, in cache)
            layout += itemsize * g * outputs * direct_kernel.padded_rows(O, itemsize)
        copy_seconds = layout / rates.layout_copy
    blocks = 0
    for (K, count, k), (col_rows, F, ext), rows, run, done in zip(passes, layouts, (O, O, C), runs, compiled):
        if done:
            continue
        # a folded pass copies fewer columns, widened by ext per run of at least a grid row, and
        # writes and reads F * rows partial outputs per position
        widen = 1 + ext / run
        per_position = g * (col_rows * widen + (2 * F * rows if F > 1 else 0)) * itemsize
        rate = rates.copy if per_position * MIN_BLOCK <= BLOCK_BYTES else rates.copy / SPILL_SLOWDOWN
        copy_seconds += 2 * per_position * count / rate
        blocks += -(-count // max(MIN_BLOCK, BLOCK_BYTES // max(1, int(per_position))))
    calls = blocks * DIRECT_BLOCK_CALL_S
    seconds = (rates.precision(itemsize) * (flops / rates.gemm + kernel_flops / rates.direct_kernel + copy_seconds)
               + calls + rates.overhead("direct"))

    grid = itemsize * g * positions      # one value per polyphase grid position
    shared = reduction_bytes(geom, itemsize, True)
    shared["grid_input"] = itemsize * g * fw_positions * fw_C

    def columns(K, k, count, rows, layout, run, gathered_rows=0):
        """Each thread's column buffer for a pass, and the rows of gy it gathers per block (the
        weight gradient reading gy on the grid: a block's rows are copied out when they are not one
        run, and the next block's copy is made before the last one is dropped). A folded pass
        holds its columns and F * rows partial outputs (or shifted rows of gy) per position, over a
        block widened by ext per run (runs of at least one grid row)."""
        threads = pass_threads(g * count * K * k * rows)
        col_rows, F, ext = layout
        if F == 1:
            per_position = g * K * k * itemsize
            block = block_positions(per_position, count)
            return threads * block * (per_position + 2 * g * gathered_rows * itemsize)
        per_position = g * (col_rows + F * rows) * itemsize
        block = block_positions(per_position, count)
        widened = block + ext * (1 + -(-block // run))    # each run in the block widened by ext
        return threads * widened * per_position

    strided = fw is not red and any(s != 1 for s in fw.out_stride)
    filters = itemsize * g * O * fw_C * fw_taps    # a folded pass's filters, tap by tap as rows: one copy of W
    y_grid = itemsize * g * outputs * O
    fw_columns = gW_columns = gx_columns = 0
    packed = [0, 0, 0]   # the compiled passes' filters padded and packed, gw's per-thread rows
    if compiled[0]:
        rows_pad = direct_kernel.padded_rows(O, itemsize)
        y_grid = itemsize * g * direct_kernel.output_pass(O, outputs, fw_run, itemsize)[1] * rows_pad
        packed[0] = itemsize * g * rows_pad * fw_C * fw_taps
    else:
        fw_columns = columns(fw_C, fw_taps, outputs, O, layouts[0], last)
    if compiled[1]:   # each thread's segment of gy channels-last and its sums, then their total
        rows_pad = direct_kernel.padded_rows(O, itemsize)
        inner = direct_kernel.weight_pass(O, fw_C * fw_taps, itemsize)[1]
        threads = pass_threads(g * outputs * fw_C * fw_taps * O)
        gW_columns = itemsize * rows_pad * (threads * (direct_kernel.SEGMENT + g * inner) + g * inner)
    else:
        gW_columns = columns(fw_C, fw_taps, outputs, O, layouts[1], last, gathered_rows=0 if strided else O)
    gx_grid = 2 * grid * C
    if compiled[2]:   # its channels-last result, then the caller's layout
        rows_pad = direct_kernel.padded_rows(C, itemsize)
        gx_grid = grid * C + itemsize * g * direct_kernel.output_pass(C, positions, gx_run, itemsize)[1] * rows_pad
        packed[2] = itemsize * g * rows_pad * O * taps
    else:
        gx_columns = columns(O, taps, positions, C, layouts[2], red.qx[-1])
    forward = {"y_grid": y_grid, "y": output_bytes(geom, itemsize), "columns": fw_columns,
               "folded_filters": filters if layouts[0][1] > 1 and not compiled[0] else packed[0]}
    backward = {"gy_grid": grid * O, "gy_outputs": itemsize * g * outputs * O if strided else 0,
                "gx_grid": gx_grid, "columns": max(gW_columns, gx_columns),
                "gW_partials": 2 * itemsize * g * O * fw_C * fw_taps,
                "folded_filters": itemsize * g * O * C * taps if layouts[2][1] > 1 and not compiled[2] else packed[2],
                **input_grad_bytes(geom, itemsize, True), **weight_grad_bytes(geom, itemsize, True)}
    return Estimate(seconds, shared, forward, backward)


def _device_direct_estimate(geom: ConvGeometry, itemsize: int, budget: int, rates: Rates) -> Estimate:
    """``direct_estimate`` on a device: three passes over the polyphase grid (y and gW gather the
    grid input's columns, gx gy's), each as ``device_pass_seconds``; memory is the grids, each
    pass's gathered columns and the filters laid out per tap (two copies of W in a pass)."""
    red = Reduction(None, geom, keep_dilation=True)
    g, C, O, qk = geom.groups, red.channels, red.out_channels, red.qk
    positions = geom.batch * math.prod(red.qx)
    cells = positions + grid_max_offset(red)     # a grid array's length: its positions and the taps' reach
    passes = ((C, O), (C, O), (O, C))            # (inner channels K, rows): y, gW, gx
    seconds = sum(device_pass_seconds(qk, K, rows, positions, g, itemsize, budget, rates, reach=cells - positions)
                  for K, rows in passes)
    seconds += 4 * itemsize * g * positions * (C + O) / rates.copy   # x, y, gy and gx to and from their grids
    seconds = rates.precision(itemsize) * seconds + rates.overhead("direct")

    grid = itemsize * g * cells

    def columns(K):
        tap_bytes = g * K * cells * itemsize
        gathered = math.prod(qk[len(qk) - device_grouped_axes(qk, K, tap_bytes, budget):])
        return gathered * tap_bytes if gathered > 1 else 0

    filters = itemsize * g * O * C * math.prod(qk)
    shared = reduction_bytes(geom, itemsize, True)
    shared["grid_input"] = grid * C
    forward = {"y_grid": grid * O, "y": output_bytes(geom, itemsize), "columns": columns(C),
               "filters_per_tap": 2 * filters}
    backward = {"gy_grid": grid * O, "gx_grid": 2 * grid * C, "columns": max(columns(C), columns(O)),
                "filters_per_tap": 2 * filters,
                "gW_partials": 2 * filters,
                **input_grad_bytes(geom, itemsize, True), **weight_grad_bytes(geom, itemsize, True)}
    return Estimate(seconds, shared, forward, backward)


# ---- FFT (fft_conv.py) ---------------------------------------------------------------


def fft_shape(red: Reduction, tile) -> tuple:
    """The transforms' size per axis for output tiles ``tile``: next_fast_len of the window (t + k - 1)
    where tiled. Untiled, a window ends in zero padding, and a circular correlation of length L
    wraps the reads past L onto the start of the window, which is zeros too: L >= q - min(lo, hi)
    zeros is exact (y and gW; gx on x's own cells, the rest is discarded), no shorter than the
    outputs or the kernel. A "same" 13x13 layer on 64^2: 72^2 points, not 80^2."""
    valid = tuple(q - k + 1 for q, k in zip(red.qx, red.qk))
    if any(t < v for t, v in zip(tile, valid)):
        return tuple(backend.next_fast_len(t + k - 1) for t, k in zip(tile, red.qk))
    return tuple(backend.next_fast_len(max(q - min(margins), v, k))
                 for q, k, v, margins in zip(red.qx, red.qk, valid, red.zero_margins()))


def fft_bytes(geom: ConvGeometry, itemsize: int, tile, rows: int) -> int:
    """Spectra (x, W, y or gy) and real buffers of ``rows`` tile rows: the working set the budget bounds."""
    red = Reduction(None, geom, keep_dilation=False)
    L = fft_shape(red, tile)
    freqs = math.prod(L[:-1]) * (L[-1] // 2 + 1)
    C, O, g = red.channels, red.out_channels, geom.groups
    spectra = 2 * itemsize * freqs * g * (rows * C + O * C + rows * O)
    real = itemsize * math.prod(L) * rows * g * (C + O)
    return spectra + real


# Frequency-last spectra (fft_conv.py) on the host up to this many multiply-adds per frequency and
# group (rows x C x c_O/g, the same for all three products). Measured per product on one core:
# (F, rows, C) @ (F, C, O) complex64 matmul 110-160 ns per frequency whatever the size up to 8x8;
# the broadcast multiply-adds ~1 ns per multiply-add. 2x4x4: 5.5x faster, 1x2x2: 12x, 2x8x8: 0.85x.
FREQUENCY_LAST_MAX_MADDS = 64
# With the compiled sums (frequency_kernel.py: 16-18 GFLOP/s a core one output at a time, 22-37 two
# by two) up to this many: whole forward + backward, alternated with channels-last on the 2-core
# host, frequency-last was 1.1-2.3x faster up to 16384 (2x8x8 3-D: 2.3x; 4x64x64 2-D: 1.26x;
# 16x32x32 1-D: 1.12x) and 0.7-0.8x at 32768-73728 (rows of 32-72 overlap-save tiles, where BLAS
# runs near its peak). With the loop computing 2 x 2 outputs at a time (fifteenth round), 131072
# against 16384 on every row, FFT engine forced: the four rows it changed took 1.02-1.37x as long
# (2d-3x3-c32 1.37x), the others no change beyond noise.
#
# The model below (fft_seconds, the tile choice, the FFT estimate) keeps the NumPy sums' figures
# whether or not the compiled loop runs: the loop makes the plan it chose faster than modelled.
# Charging the loop its own rate against BLAS's one fitted rate chose whole transforms over tiles
# that ran 1.4-2x faster (2-D 3x3 at 32-64 channels): BLAS's per-frequency products run 5-90
# GFLOP/s by their size, which one rate cannot say (docs/benchmarks.md, "Twelfth round").
FREQUENCY_LAST_MAX_MADDS_COMPILED = 16384


def spectra_frequency_last(rows: int, C: int, O: int, compiled: bool = False) -> bool:
    """Whether the host FFT engine sums channels with frequency-last spectra (rows: one chunk's),
    with the compiled sums (``compiled``) or NumPy's broadcast ones."""
    limit = FREQUENCY_LAST_MAX_MADDS_COMPILED if compiled else FREQUENCY_LAST_MAX_MADDS
    return rows * C * O <= limit


def fft_row_chunk(geom: ConvGeometry, itemsize: int, tile, rows: int, budget: int) -> int:
    """Tile rows per chunk so that one chunk's spectra fit ``budget`` (at least 1)."""
    fixed = fft_bytes(geom, itemsize, tile, 0)
    per_row = fft_bytes(geom, itemsize, tile, 1) - fixed
    return int(min(rows, max(1, (budget - fixed) // max(per_row, 1))))


def transform_flops(extents, L) -> float:
    """Modelled flops of one real transform of an ``L`` plan whose input (or kept output) is ``extents``:
    2.5 n log2 n whole, or, where ``backend.worth_pruning`` runs it so, axis by axis from the last,
    each pass over the lines that hold data so far (k^N filters in an L^N plan: about k / L of the
    first pass, and so on)."""
    size = math.prod(L)
    if not backend.worth_pruning(extents, L):
        return 2.5 * size * math.log2(max(size, 2))
    lines = [min(e, n) for e, n in zip(extents, L)]
    flops = 0.0
    for j in range(len(L) - 1, -1, -1):
        flops += 2.5 * math.prod(lines) / lines[j] * L[j] * math.log2(max(L[j], 2))
        lines[j] = L[j]
    return flops


def fft_seconds(geom: ConvGeometry, itemsize: int, tile, rates: Rates = CPU_RATES, budget: int | None = None,
                compiled_sums: bool = False) -> float:
    """Modelled seconds of forward + all three gradients with output tiles ``tile`` (rows in chunks
    that fit ``budget``, as the engine runs them: its layout is decided per chunk, and channels-last
    products make their per-frequency calls once per chunk). ``compiled_sums``: the engine's estimate
    against the other engines: frequency-last sums up to the compiled loop's limit and pruned
    transforms (``transform_flops``), as the engine runs them. The tile choice keeps the NumPy sums'
    figures and whole transforms, which its thresholds were measured with (see above)."""
    red = Reduction(None, geom, keep_dilation=False)
    L = fft_shape(red, tile)
    size = math.prod(L)
    freqs = math.prod(L[:-1]) * (L[-1] // 2 + 1)
    valid = tuple(q - k + 1 for q, k in zip(red.qx, red.qk))
    rows = geom.batch * math.prod(tiling.tile_counts(valid, tile))
    C, O, g = red.channels, red.out_channels, geom.groups
    if compiled_sums:   # the engine's estimate: pruned transforms priced as backend.rfftn / irfftn run them
        window = tuple(min(t + k - 1, n) for t, k, n in zip(tile, red.qk, L))
        fft_flops = 2 * g * (rows * C * transform_flops(window, L) + O * C * transform_flops(red.qk, L)
                             + rows * O * transform_flops(tile, L))   # x and gx, W and gW, gy and y
    else:
        transforms = 2 * g * (rows * C + O * C + rows * O)   # each once forward, once backward
        fft_flops = transforms * 2.5 * size * math.log2(max(size, 2))
    mm_flops = 3 * 8.0 * freqs * g * rows * C * O
    chunk = rows if budget is None else fft_row_chunk(geom, itemsize, tile, rows, budget)
    # Tiny inner sizes, and frequency-last spectra on the host, are broadcast, not BLAS calls.
    broadcast = min(C, O) <= 2 or (rates.kind == "cpu" and spectra_frequency_last(chunk, C, O, compiled_sums))
    calls = 0 if broadcast else 3 * freqs * g * -(-rows // chunk)
    return (rates.precision(itemsize) * (fft_flops / rates.fft + mm_flops / rates.cmatmul)
            + calls * rates.matrix_call_s)


def fft_estimate(geom: ConvGeometry, itemsize: int, budget: int, rates: Rates) -> Estimate:
    if fft_unsupported(geom, rates.kind):
        return Estimate(math.inf, {}, {}, {})
    tile = choose_tile(geom, itemsize, budget, rates)
    # against the other engines, the sums as they run: a BLAS call per frequency where the compiled
    # sums do not (3-D 9^3 on 32^3, 8 channels: 26 ms of calls modelled, the whole layer ran in 12,
    # and the model chose the direct engine at 3.4x the FFT engine's time on 3-D 7^3)
    # (whether Numba's compiled loops run here: direct_kernel's check, which compiles nothing, where
    # frequency_kernel.available would build the sums' loop in an API process that never runs one)
    compiled = rates.kind == "cpu" and direct_kernel.compiled_for(itemsize)
    seconds = fft_seconds(geom, itemsize, tile, rates, budget, compiled) + rates.overhead("fft")
    if fft_bytes(geom, itemsize, tile, 1) > budget:
        seconds = math.inf      # tiles as small as the kernel still overflow: FFT cannot fit
    red = Reduction(None, geom, keep_dilation=False)
    L = fft_shape(red, tile)
    valid = tuple(q - k + 1 for q, k in zip(red.qx, red.qk))
    counts = tiling.tile_counts(valid, tile)
    rows = geom.batch * math.prod(counts)
    chunk = fft_row_chunk(geom, itemsize, tile, rows, budget)
    C, O, g = red.channels, red.out_channels, geom.groups
    spec = 2 * itemsize * math.prod(L[:-1]) * (L[-1] // 2 + 1) * g     # one complex spectrum per (g) row
    real = itemsize * math.prod(L) * g
    window = itemsize * g * math.prod(t + k - 1 for t, k in zip(tile, red.qk))
    tiled = any(c > 1 for c in counts)
    shared = reduction_bytes(geom, itemsize, False)
    if tiled:   # the windows, their transposed copy and the padded tail of each split
        shared["input_tiles"] = 3 * rows * C * window
    # built, then transposed contiguous; x's kept when all rows are one chunk
    shared["x_spectrum"] = 2 * (rows if chunk == rows else chunk) * C * spec
    shared["W_spectrum"] = 2 * O * C * spec + 2 * O * C * real
    # forward: W's conjugate, each chunk's product and its transposed copy, the inverse
    # transforms of all chunks (parts kept until concatenated), then y's tiles and crop
    forward = {"W_spectrum_conj": O * C * spec, "y_spectrum": 2 * chunk * O * spec,
               "y_tiles": 2 * rows * O * real, "y": 2 * output_bytes(geom, itemsize) * (1 + tiled)}
    backward = {"gy_tiles": 2 * rows * O * g * itemsize * math.prod(tile) if tiled else 0,
                "gy_spectrum": 3 * chunk * O * spec,
                "gx_spectrum": 2 * chunk * C * spec, "gx_tiles": 2 * rows * C * real,
                "gW_spectrum": 3 * O * C * spec, "gW_inverse": O * C * real,
                **input_grad_bytes(geom, itemsize, False), **weight_grad_bytes(geom, itemsize, False)}
    if tiled:
        backward["gx_overlap_add"] = 3 * geom.batch * geom.in_channels * itemsize * math.prod(
            (m + 1) * t for m, t in zip(counts, tile))
    if rates.kind == "cpu" and fftw_requested():
        # FFTW (CONVCORE_FFT=fftw; counted from the setting, as the API process need not have pyFFTW):
        # planning copies a transform's input and allocates its own input and output, and each cached
        # plan keeps its last call's arrays. Measured over a first and a later call, at most 2x the
        # largest transform's input and output beyond the rest (a 1-D 16 x 16 k 129 layer on 4096
        # points, 16.6 MB on 8.4): four times that, a bound rather than a guess.
        shared["fftw_plans"] = 4 * max(chunk * C, chunk * O, O * C) * (spec + real)
        # A transform that goes axis by axis only by its passes (backend.pruned_passes: a valid N-D
        # layer's y and gy) hands FFTW an array pair per axis, each kept by its cached plan: on top
        # (5-D 6^5 outputs of a 10^5 plan: 3.5 MB for y, as much for gy, where the bound above fell
        # 1 MB short of a first call's peak).
        cells = tuple(min(t + k - 1, n) for t, k, n in zip(tile, red.qk, L))   # x's and gx's, per row
        shared["fftw_plans"] += sum(
            _axis_stage_bytes(extents, L, lines, itemsize) for extents, lines in (
                (cells, chunk * C), (red.qk, O * C), (tile, chunk * O), (tile, chunk * O), (cells, chunk * C),
                (red.qk, O * C))
            if backend.worth_pruning(extents, L) and not any(2 * e <= n for e, n in zip(extents, L)))
    return Estimate(seconds, shared, forward, {k: v for k, v in backward.items() if v})


def _axis_stage_bytes(extents, L, lines: int, itemsize: int) -> int:
    """Bytes of the arrays an axis-by-axis transform of ``lines`` arrays hands its FFT, each stage's input
    and output: the real data, the last axis's half spectrum, then each axis from the last but one
    grown to its plan length (an inverse's stages are the same arrays in reverse)."""
    shape = [min(e, n) for e, n in zip(extents, L)]
    total = lines * itemsize * math.prod(shape)
    shape[-1] = L[-1] // 2 + 1
    out = lines * 2 * itemsize * math.prod(shape)
    total += out
    for j in range(len(L) - 2, -1, -1):
        shape[j] = L[j]
        grown = lines * 2 * itemsize * math.prod(shape)
        total, out = total + out + grown, grown   # this stage's input (the last one's output) and output
    return total


# Tile for speed only when the model predicts at least a 40% saving: tiles cost copies the model
# leaves out. In N >= 3 dims each device kind has its own rule (``Rates.tile_gain_nd``,
# ``tile_windows_nd``), both measured with benchmarks/tile_rule_ab.py on layers where rules differ.
# CPU: a 60% saving. The window overhead compounds per dim ((t + k - 1) / t each), and small
# multi-dimensional transforms run at half the model's rate per point or less (pocketfft, one
# thread: 1.7 ns per point and axis pass whatever the length, so a 10^4 transform costs 8.8 ns a
# point against 4.2 for 64x64). Measured tiled / whole on 2 cores (forward + backward): 4-D k5
# 1.64, 3-D k7 1.19 with tiles the 40% rule took, 3-D k5 (model 0.38) 0.88, 3-D 48^3 k5 (0.17)
# 0.55, 4-D k3 (0.33) 0.74 (docs/benchmarks.md, "Fifth round"); over 14 random layers the rule was
# 1.04x the fastest rule's time at the median, 1.21x at worst, and windows of at least 4 kernel
# lengths lost up to 3.3x. GPU (H100, cuFFT): a 60% saving and windows of at least 4 kernel
# lengths. Windows of 2 kernel lengths (6 to 18 points for k 3 to 9) make many tiny batched
# transforms, which ran 1.1-3.4x slower than one whole transform; over 66 random layers this rule
# was the fastest of five in 58, the CPU's in 43, and the 40% rule with any window in 11
# (docs/benchmarks.md, "Tiles on a GPU").
# One dim (CPU): a 65 % saving (``Rates.tile_gain_1d``). A 1-D transform's time per point hardly
# grows with its length (pocketfft, 2 threads: 0.6 ns at 128 points, 0.78 at 4096, 0.94 at 32768,
# against the model's log2 L), so windows save less than the model says, and their rows move the
# products from frequency-last spectra onto BLAS. Over 26 layers (16 drawn by
# ``tile_rule_ab.py --ndim 1``, 10 picked), the 40 % rule missed the fastest tiling in 7 (worst
# 1.7x: 8 x 16 x 4096 with 65 taps, 206-point tiles 15.4 ms against 9.0 whole), the 65 % rule in 4
# (worst 1.25x); very long signals are still tiled (2 x 8 x 65536, 129 taps: whole 1.7x slower).
TILE_GAIN = 0.6


def choose_tile(geom: ConvGeometry, itemsize: int, budget: int, rates: Rates = CPU_RATES) -> tuple:
    """Output tile per dim for overlap-save: the cheapest by the cost model that fits ``budget``."""
    return _choose_tile(geom, itemsize, int(budget), rates)


@functools.lru_cache(maxsize=1024)
def _choose_tile(geom: ConvGeometry, itemsize: int, budget: int, rates: Rates) -> tuple:
    """Candidates per dim are the whole valid output and windows of about 2, 4 and 8 kernel
    lengths (in N >= 3 dims, ``rates.tile_windows_nd``). If even the smallest tiles overflow half
    the budget, halves the dim with the most room until it fits or tiles reach the kernel size.
    """
    red = Reduction(None, geom, keep_dilation=False)
    valid = [q - k + 1 for q, k in zip(red.qx, red.qk)]
    options = []
    windows = (2, 4, 8) if geom.ndim < 3 else rates.tile_windows_nd
    for v, k in zip(valid, red.qk):
        sizes = {v} | {backend.next_fast_len(c * k) - k + 1 for c in windows}
        options.append(sorted(t for t in sizes if max(k, 1) <= t <= v) or [v])
    if math.prod(len(o) for o in options) <= 4096:   # N <= 5 dims of <= 4 options each
        fitting = [t for t in itertools.product(*options) if fft_bytes(geom, itemsize, t, 1) <= budget // 2]
    else:
        fitting = []
    whole = tuple(valid)
    if fitting:
        best = min(fitting, key=lambda t: (fft_seconds(geom, itemsize, t, rates, budget), -math.prod(t)))
        # Tiles cost copies the model leaves out: only take them for a clear saving.
        gain = rates.tile_gain_1d if geom.ndim == 1 else TILE_GAIN if geom.ndim == 2 else rates.tile_gain_nd
        if whole in fitting and fft_seconds(geom, itemsize, best, rates, budget) > gain * fft_seconds(
                geom, itemsize, whole, rates, budget):
            return whole
        return best
    tile = [min(o) for o in options]
    while fft_bytes(geom, itemsize, tile, 1) > budget // 2:
        j = max(range(len(tile)), key=lambda d: tile[d] / red.qk[d])
        if tile[j] <= red.qk[j]:
            break
        tile[j] = max(red.qk[j], -(-tile[j] // 2))
    return tuple(tile)
