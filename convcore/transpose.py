"""Transposed N-D convolution (PyTorch's ``ConvTransposeNd``), built on the convolution engines.

Shapes (PyTorch's layout; note W's first axis is the *input* channels):
    x (n, c_I, d_1..d_N), W (c_I, c_O // groups, k_1..k_N), b (c_O,), y / gy (n, c_O, o_1..o_N)
    o_j = (d_j - 1) * stride_j - 2 * padding_j + dilation_j * (k_j - 1) + output_padding_j + 1

A transposed convolution is the input gradient of the convolution z (n, c_O, o...) -> x that W
describes in convcore's own layout (W (c_O', c_I' // g, k...) with c_O' = c_I, c_I' = c_O). So
with that convolution ``C`` (same stride, dilation, groups; pads (p_j, max(0, p_j - op_j))):

    y  = C's gx for gy = x          gx = C(gy) cropped to d          gW = C's gW for (gy, x)
    gb = gy summed over n and space

``C`` reads its input with low pad p_j; output_padding adds cells at the high end of y, so C's
high pad shrinks by it (never below 0). When output_padding >= stride (allowed when it is below
dilation) C has more than d outputs: x is zero-padded to C's output length, and those zeros
contribute nothing.

When the kernel tiles the output (kernel == stride, no padding, no dilation, no output_padding,
the up-convolution of U-Nets), each input cell writes its own k_1..k_N block of y, and the
layer is one GEMM per group (``tiled.py``) in every direction: no adjoint convolution.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import backend, tiled
from .conv import GRADIENTS, ConvGrads, Convolution, check_algorithm, check_need
from .geometry import ConvGeometry, check_dtype, check_shapes, make_geometry, per_dim


@dataclass(frozen=True)
class TransposeGeometry:
    """The sizes of one transposed convolution and of the convolution it is the adjoint of."""

    in_shape: tuple          # x (n, c_I, d...)
    kernel_shape: tuple      # W (c_I, c_O // groups, k...)
    stride: tuple
    padding: tuple
    output_padding: tuple
    dilation: tuple
    groups: int
    out_shape: tuple         # y (n, c_O, o...)
    conv_pads: tuple         # ((lo, hi), ...) of the adjoint convolution, which reads y-sized inputs
    conv_out_spatial: tuple  # its output size (>= d): x is zero-padded up to it

    @property
    def ndim(self) -> int:
        return len(self.in_shape) - 2

    @property
    def out_channels(self) -> int:
        return self.out_shape[1]


def make_transpose_geometry(x_shape, W_shape, *, stride=1, padding=0, output_padding=0, dilation=1,
                            groups=1) -> TransposeGeometry:
    """Check a transposed convolution's shapes and options; errors name the argument and values."""
    x_shape, W_shape, groups = check_shapes(x_shape, W_shape, groups, "(c_in, c_out // groups, k_1..k_{N})")
    N = len(x_shape) - 2
    c_in = x_shape[1]
    if W_shape[0] != c_in:
        raise ValueError(f"W must have shape (c_in, c_out // groups, k...) with c_in = {c_in} (x shape {x_shape}), "
                         f"got W shape {W_shape}")
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} (x shape {x_shape})")
    stride, dilation = per_dim(stride, N, "stride"), per_dim(dilation, N, "dilation")
    padding, output_padding = per_dim(padding, N, "padding"), per_dim(output_padding, N, "output_padding")
    for name, values, low in (("stride", stride, 1), ("dilation", dilation, 1), ("padding", padding, 0),
                              ("output_padding", output_padding, 0)):
        if any(v < low for v in values):
            raise ValueError(f"{name} must be >= {low} in every dim, got {name}={values}")
    if any(op >= max(s, dl) for op, s, dl in zip(output_padding, stride, dilation)):
        raise ValueError(f"output_padding must be smaller than stride or dilation in every dim, got "
                         f"output_padding={output_padding}, stride={stride}, dilation={dilation}")
    kernel = W_shape[2:]
    out = tuple((d - 1) * s - 2 * p + dl * (k - 1) + op + 1
                for d, s, p, dl, k, op in zip(x_shape[2:], stride, padding, dilation, kernel, output_padding))
    if min(out) < 1:
        raise ValueError(f"the output would be empty: size {out} for x shape {x_shape}, W shape {W_shape}, "
                         f"stride={stride}, padding={padding}, output_padding={output_padding}, dilation={dilation}")
    pads = tuple((p, max(0, p - op)) for p, op in zip(padding, output_padding))
    conv_out = tuple((o + lo + hi - dl * (k - 1) - 1) // s + 1
                     for o, (lo, hi), dl, k, s in zip(out, pads, dilation, kernel, stride))
    return TransposeGeometry(x_shape, W_shape, stride, padding, output_padding, dilation, groups,
                             (x_shape[0], W_shape[1] * groups) + out, pads, conv_out)


def adjoint_geometry(geom: TransposeGeometry) -> ConvGeometry:
    """The convolution a transposed convolution runs (its adjoint): on y-sized inputs (n, c_O, o...)
    with W read as (c_I, c_O // groups, k...) filters. An engine asked for by name must run this one."""
    return make_geometry(geom.out_shape, geom.kernel_shape, stride=geom.stride, padding=geom.conv_pads,
                         dilation=geom.dilation, groups=geom.groups)


class ConvTranspose:
    """A transposed convolution with fixed options that keeps what its backward pass needs.

    ``forward(x, W, b)`` remembers x and W; ``backward(gy)`` runs the adjoint convolution on gy
    once for gx, and reuses its transforms of gy and W for gW.
    """

    def __init__(self, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, algorithm="auto",
                 memory_budget=None, autotune=None):
        check_algorithm(algorithm)
        self.params = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
                           groups=groups)
        self.conv_options = dict(algorithm=algorithm, memory_budget=memory_budget, autotune=autotune)
        self.geometry = None
        self.algorithm_used = None
        self._x = self._W = None

    @property
    def _tiled(self) -> bool:
        """Whether the kernel tiles the output (and the algorithm allows a direct method)."""
        g = self.geometry
        return (self.conv_options["algorithm"] in ("auto", "direct") and g.kernel_shape[2:] == g.stride
                and not any(g.padding) and not any(g.output_padding) and all(d == 1 for d in g.dilation))

    def _convolution(self) -> Convolution:
        g = self.geometry
        return Convolution(stride=g.stride, padding=g.conv_pads, dilation=g.dilation, groups=g.groups,
                           **self.conv_options)

    def prepare(self, x, W, b=None, gy=None):
        """Check the arrays against the options and resolve the geometry."""
        backend.get_array_module(("x", x), ("W", W), ("b", b), ("gy", gy))
        geom = make_transpose_geometry(x.shape, W.shape, **self.params)
        for name, a in (("x", x), ("W", W), ("b", b), ("gy", gy)):
            if a is None:
                continue
            check_dtype(name, a)
            if a.dtype != x.dtype:
                raise TypeError(f"{name} must have x's dtype {x.dtype}, got {a.dtype}")
        if b is not None and tuple(b.shape) != (geom.out_channels,):
            raise ValueError(f"b must have shape (c_out,) = ({geom.out_channels},), got {tuple(b.shape)}")
        if gy is not None and tuple(gy.shape) != geom.out_shape:
            raise ValueError(f"gy must have the output's shape {geom.out_shape}, got {tuple(gy.shape)}")
        self.geometry = geom
        return geom

    def _x_on_conv_output(self, x):
        """x (n, c_I, d...) zero-padded at the high end to the adjoint convolution's output size."""
        extra = [m - d for m, d in zip(self.geometry.conv_out_spatial, x.shape[2:])]
        if not any(extra):
            return x
        xp = backend.get_array_module(x)
        return xp.pad(x, ((0, 0), (0, 0)) + tuple((0, e) for e in extra))

    def forward(self, x, W, b=None):
        """y (n, c_O, o...) from x (n, c_I, d...), W (c_I, c_O // groups, k...), b (c_O,)."""
        geom = self.prepare(x, W, b)
        xp = backend.get_array_module(x)
        if self._tiled:
            y, self.algorithm_used = tiled.forward(x, W, geom.groups), "direct"
        else:
            # The adjoint convolution's input is only a shape here: its gx needs gy (= x) and W alone.
            z = xp.broadcast_to(xp.zeros((), dtype=x.dtype), geom.out_shape)
            op = self._convolution()
            y = op.backward(self._x_on_conv_output(x), z, W, need=("x",)).gx
            self.algorithm_used = op.algorithm_used
        self._x, self._W = x, W
        if b is not None:
            y += b.reshape((1, -1) + (1,) * geom.ndim)
        return y

    def backward(self, gy, x=None, W=None, need=GRADIENTS) -> ConvGrads:
        """(gx (n, c_I, d...), gW like W, gb (c_O,)) for gy = dL/dy; entries not in ``need`` are None.

        With x and W omitted, uses those of the last ``forward``.
        """
        need = check_need(need)
        if x is None and W is None:
            if self._x is None:
                raise ValueError("backward without x and W needs a forward call first")
            x, W = self._x, self._W
        elif x is None or W is None:
            raise ValueError("backward needs both x and W, or neither (to reuse forward's)")
        self.prepare(x, W, gy=gy)
        gx = gW = gb = None
        if ("x" in need or "W" in need) and self._tiled:
            gx, gW = tiled.backward(gy, x, W, self.geometry.groups, "x" in need, "W" in need)
            self.algorithm_used = "direct"
        elif "x" in need or "W" in need:
            op = self._convolution()
            if "x" in need:
                full = op.forward(gy, W)                                   # (n, c_I, m...), m >= d
                gx = full[(slice(None), slice(None)) + tuple(slice(0, d) for d in x.shape[2:])]
                gx = backend.get_array_module(gx).ascontiguousarray(gx)
            if "W" in need:  # after forward, the op reuses its transforms of gy and W
                gW = op.backward(self._x_on_conv_output(x), None if "x" in need else gy,
                                 None if "x" in need else W, need=("W",)).gW
            self.algorithm_used = op.algorithm_used
        if "b" in need:
            gb = gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))
        return ConvGrads(gx, gW, gb)


def conv_transpose_forward(x, W, b=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                           algorithm="auto"):
    """N-D transposed convolution, as PyTorch's ``conv_transposeNd``.

    x: (n, c_I, d_1..d_N), W: (c_I, c_O // groups, k_1..k_N), b: (c_O,) or None
    -> y: (n, c_O, o_1..o_N), on x's device and in x's dtype.
    """
    op = ConvTranspose(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
                       groups=groups, algorithm=algorithm)
    return op.forward(x, W, b)


def conv_transpose_backward(gy, x, W, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                            algorithm="auto", need=GRADIENTS) -> ConvGrads:
    """Gradients of ``conv_transpose_forward`` for gy = dL/dy (n, c_O, o_1..o_N).

    Returns ConvGrads(gx (n, c_I, d...), gW (c_I, c_O // groups, k...), gb (c_O,)), each None
    unless named in ``need``.
    """
    op = ConvTranspose(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
                       groups=groups, algorithm=algorithm)
    return op.backward(gy, x, W, need=need)
