"""Argument checking and the shape arithmetic of an N-D convolution.

Shapes follow PyTorch/JAX (cross-correlation):
    x: (n, c_I, d_1, ..., d_N)    W: (c_O, c_I // groups, k_1, ..., k_N)
    b: (c_O,)                     y: (n, c_O, o_1, ..., o_N)
with, per spatial dim j,
    o_j = floor((d_j + lo_j + hi_j - dilation_j * (k_j - 1) - 1) / stride_j) + 1.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from numbers import Integral

import numpy as np

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
PADDING_WORDS = ("valid", "same", "full")
_NOT_SEQUENCES = (str, bytes, bytearray, memoryview, Mapping)   # iterables whose items are not one size per dim
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# No array has a dim this long (2**48 cells ~ 256 TiB of bytes): a larger stride, padding,
# dilation or padded extent describes nothing that can be computed, so it is refused by name.
MAX_EXTENT = 2**48
MAX_ELEMENTS = 2**62   # past this, no array (and no element count NumPy can hold) can be the output


@dataclass(frozen=True)
class ConvGeometry:
    """Every size a convolution needs, resolved and checked once.

    ``pads`` holds one ``(low, high)`` pair per spatial dim. The derived shapes are cached
    (the engines read them many times per call, and a small layer's call is ~0.1 ms).
    """

    in_shape: tuple        # (n, c_I, d_1..d_N)
    kernel_shape: tuple    # (c_O, c_I // groups, k_1..k_N)
    stride: tuple
    dilation: tuple
    pads: tuple
    groups: int
    padding_mode: str

    @property
    def ndim(self) -> int:
        return len(self.in_shape) - 2

    @property
    def batch(self) -> int:
        return self.in_shape[0]

    @property
    def in_channels(self) -> int:
        return self.in_shape[1]

    @property
    def out_channels(self) -> int:
        return self.kernel_shape[0]

    @cached_property
    def spatial(self) -> tuple:
        return tuple(self.in_shape[2:])

    @cached_property
    def kernel(self) -> tuple:
        return tuple(self.kernel_shape[2:])

    @cached_property
    def padded(self) -> tuple:
        """Spatial shape of the padded input."""
        return tuple(d + lo + hi for d, (lo, hi) in zip(self.spatial, self.pads))

    @cached_property
    def dilated_kernel(self) -> tuple:
        """Spatial extent of the kernel after dilation."""
        return tuple(dl * (k - 1) + 1 for k, dl in zip(self.kernel, self.dilation))

    @cached_property
    def out_spatial(self) -> tuple:
        return tuple((p - ke) // s + 1 for p, ke, s in zip(self.padded, self.dilated_kernel, self.stride))

    @cached_property
    def out_shape(self) -> tuple:
        return (self.batch, self.out_channels) + self.out_spatial

    def describe(self) -> str:
        return (f"x{self.in_shape} W{self.kernel_shape} stride={self.stride} pads={self.pads} "
                f"dilation={self.dilation} groups={self.groups} padding_mode={self.padding_mode!r}")


def per_dim(value, ndim: int, name: str) -> tuple:
    """An int, or a sequence of one int per spatial dim, as a tuple of ints."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        return (int(value),) * ndim
    if isinstance(value, _NOT_SEQUENCES):   # iterable, but not a list of sizes: b"ab" is (97, 98)
        raise TypeError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}")
    try:
        values = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}") from None
    if len(values) != ndim:
        raise ValueError(f"{name} needs one value per spatial dim ({ndim}), got {len(values)}: {value!r}")
    if not all(isinstance(v, Integral) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{name} must hold ints, got {value!r}")
    return tuple(int(v) for v in values)


def resolve_pads(padding, ndim: int, kernel: tuple, dilation: tuple, stride: tuple) -> tuple:
    """Turn any accepted ``padding`` form into ``((lo, hi), ...)`` per spatial dim."""
    if isinstance(padding, str):
        word = padding.lower()
        if word not in PADDING_WORDS:
            raise ValueError(f"padding must be an int, per-dim ints, (low, high) pairs or one of "
                             f"{PADDING_WORDS}, got {padding!r}")
        if word == "valid":
            return ((0, 0),) * ndim
        totals = [dl * (k - 1) for k, dl in zip(kernel, dilation)]
        if word == "full":
            return tuple((t, t) for t in totals)
        if any(s != 1 for s in stride):
            raise ValueError(f"padding='same' needs stride 1 in every dim, got stride={stride}")
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, Integral) and not isinstance(padding, bool):
        pads = ((int(padding), int(padding)),) * ndim
    else:
        try:
            if isinstance(padding, _NOT_SEQUENCES):
                raise TypeError
            items = tuple(padding)
        except TypeError:
            raise TypeError(f"padding must be an int, a sequence or a string, got {padding!r}") from None
        if len(items) != ndim:
            raise ValueError(f"padding needs one entry per spatial dim ({ndim}), got {len(items)}: {padding!r}")
        pads = []
        for item in items:
            if isinstance(item, Integral) and not isinstance(item, bool):
                pads.append((int(item), int(item)))
            else:
                try:
                    pair = () if isinstance(item, _NOT_SEQUENCES) else tuple(item)
                except TypeError:   # 1.5, None, a 0-d array: not a pair either
                    pair = ()
                if len(pair) != 2 or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in pair):
                    raise ValueError(f"padding entries must be ints or (low, high) int pairs, got {item!r} "
                                     f"in padding={padding!r}")
                pads.append((int(pair[0]), int(pair[1])))
        pads = tuple(pads)
    if any(v < 0 for pair in pads for v in pair):
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return pads


def check_dtype(name: str, a) -> None:
    if a.dtype not in SUPPORTED_DTYPES:
        if a.dtype.kind == "f" and a.dtype.newbyteorder("=") in SUPPORTED_DTYPES:   # '>f4' on a little-endian host
            raise TypeError(f"{name} has dtype {a.dtype.str} (float{8 * a.dtype.itemsize} in the other byte order); "
                            f"convcore supports native-order float32 and float64: convert with "
                            f"{name}.astype(np.float{8 * a.dtype.itemsize})")
        raise TypeError(f"{name} has dtype {a.dtype}; convcore supports float32 and float64")


def check_shapes(x_shape, W_shape, groups, W_layout: str) -> tuple:
    """The checks every convolution-like call shares: ranks, groups, no empty dims.

    ``W_layout`` names W's expected layout in messages, with ``{N}`` for the spatial rank.
    Returns (x_shape, W_shape, groups) as Python ints.
    """
    x_shape, W_shape = tuple(int(s) for s in x_shape), tuple(int(s) for s in W_shape)
    if len(x_shape) < 3:
        raise ValueError(f"x must have shape (n, c_in, d_1, ..., d_N) with N >= 1, got shape {x_shape}")
    ndim = len(x_shape) - 2
    if len(W_shape) != ndim + 2:
        raise ValueError(f"W must have shape {W_layout.format(N=ndim)} to match x's {ndim} "
                         f"spatial dims, got W shape {W_shape} for x shape {x_shape}")
    if not isinstance(groups, Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if min(x_shape) < 1 or min(W_shape) < 1:
        raise ValueError(f"x and W must have no empty dims, got x shape {x_shape}, W shape {W_shape}")
    return x_shape, W_shape, int(groups)


def make_geometry(x_shape, W_shape, *, stride=1, padding=0, dilation=1, groups=1,
                  padding_mode="zeros") -> ConvGeometry:
    """Check a convolution's shapes and parameters and resolve them to a ConvGeometry.

    Raises ValueError / TypeError whose message names the argument and the values.
    """
    x_shape, W_shape, groups = check_shapes(x_shape, W_shape, groups, "(c_out, c_in // groups, k_1..k_{N})")
    ndim = len(x_shape) - 2
    n, c_in = x_shape[:2]
    c_out, c_in_g = W_shape[:2]
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide both c_in={c_in} (x shape {x_shape}) and "
                         f"c_out={c_out} (W shape {W_shape})")
    if c_in_g * groups != c_in:
        raise ValueError(f"channels do not match: x has c_in={c_in}, so W.shape[1] must be "
                         f"c_in // groups = {c_in // groups}, got W shape {W_shape} (groups={groups})")
    if max(x_shape + W_shape) > MAX_EXTENT:
        raise ValueError(f"x and W dims must be at most 2**48, got x shape {x_shape}, W shape {W_shape}")
    stride = per_dim(stride, ndim, "stride")
    dilation = per_dim(dilation, ndim, "dilation")
    if any(s < 1 for s in stride):
        raise ValueError(f"stride must be >= 1 in every dim, got stride={stride}")
    if any(d < 1 for d in dilation):
        raise ValueError(f"dilation must be >= 1 in every dim, got dilation={dilation}")
    for name, values in (("stride", stride), ("dilation", dilation)):
        if max(values) > MAX_EXTENT:
            raise ValueError(f"{name} must be at most 2**48 in every dim, got {name}={values}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    kernel = W_shape[2:]
    pads = resolve_pads(padding, ndim, kernel, dilation, stride)
    if max(v for pair in pads for v in pair) > MAX_EXTENT:
        raise ValueError(f"padding must be at most 2**48 cells on each side, got padding={padding!r} "
                         f"(resolved to {pads})")
    geom = ConvGeometry(x_shape, W_shape, stride, dilation, pads, groups, padding_mode)
    _check_padding_fits(geom)
    if any(p < ke for p, ke in zip(geom.padded, geom.dilated_kernel)):
        raise ValueError(f"kernel larger than the padded input: dilated kernel {geom.dilated_kernel} "
                         f"vs padded input {geom.padded} (x shape {x_shape}, W shape {W_shape}, "
                         f"padding={pads}, dilation={dilation})")
    if math.prod(geom.out_shape) > MAX_ELEMENTS or math.prod(geom.padded) * n * c_in > MAX_ELEMENTS:
        raise ValueError(f"padding={padding!r} makes the padded input {(n, c_in) + geom.padded} or the output "
                         f"{geom.out_shape} larger than any array (2**62 elements)")
    return geom


def _check_padding_fits(geom: ConvGeometry) -> None:
    """Non-zero padding modes read from the input, so the pad must fit inside it (as in PyTorch)."""
    mode = geom.padding_mode
    for j, (d, (lo, hi)) in enumerate(zip(geom.spatial, geom.pads)):
        if mode == "reflect" and max(lo, hi) >= d:
            raise ValueError(f"padding_mode='reflect' needs padding < input size; dim {j} has size {d} "
                             f"and padding {(lo, hi)}")
        if mode == "circular" and max(lo, hi) > d:
            raise ValueError(f"padding_mode='circular' needs padding <= input size; dim {j} has size {d} "
                             f"and padding {(lo, hi)}")


def check_arrays(geom: ConvGeometry, x, W, b=None, gy=None) -> None:
    """Dtype and shape checks of the arrays against an already-built geometry."""
    check_dtype("x", x)
    check_dtype("W", W)
    if W.dtype != x.dtype:
        raise TypeError(f"x and W must share a dtype, got x {x.dtype} and W {W.dtype}")
    if b is not None:
        check_dtype("b", b)
        if b.dtype != x.dtype:
            raise TypeError(f"b must have x's dtype {x.dtype}, got {b.dtype}")
        if tuple(b.shape) != (geom.out_channels,):
            raise ValueError(f"b must have shape (c_out,) = ({geom.out_channels},), got {tuple(b.shape)}")
    if gy is not None:
        check_dtype("gy", gy)
        if gy.dtype != x.dtype:
            raise TypeError(f"gy must have x's dtype {x.dtype}, got {gy.dtype}")
        if tuple(gy.shape) != geom.out_shape:
            raise ValueError(f"gy must have the output's shape {geom.out_shape} for {geom.describe()}, "
                             f"got {tuple(gy.shape)}")
