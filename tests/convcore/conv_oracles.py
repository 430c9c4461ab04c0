"""Independent references for the convcore tests: JAX (any N) and PyTorch (N <= 3).

Nothing here imports convcore: padding forms are resolved with the JAX/PyTorch
conventions written out by hand, so a shared mistake cannot hide. Every
reference works in float64 on inputs that are exactly representable in float32,
so one reference serves both dtypes of convcore.

Shapes: x (n, c_I, d_1..d_N), W (c_O, c_I // groups, k_1..k_N), b (c_O,),
y / gy (n, c_O, o_1..o_N).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import NamedTuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# LLVM optimisation of XLA's CPU code costs more than the tiny references it runs
# (compilation per shape dominates this suite's time); the results are unchanged.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Max error relative to max|reference|. float32: the measured errors of both algorithms over the
# tables of test_conv_vs_jax, test_padding_modes and test_spectra_reuse (functions and layer) are
# <= 5.6e-7 (fft 4.4e-7, direct 5.6e-7), so 2e-5 leaves a 35x margin and fails a float32-only
# error of 5e-5. One value serves both algorithms.
TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-9}
# Plus this fraction of the magnitude (the result computed from |x|, |W|, |b|, |gy|): when random
# terms cancel to a result 1000x smaller than themselves, rounding follows the terms, not the
# result. Measured float32 error / magnitude: <= 4.6e-7 over 26,800 checks of 3,400 generated cases.
ROUNDING = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-14}
_NUMPY_MODES = {"circular": "wrap", "reflect": "reflect", "replicate": "edge"}


@dataclass(frozen=True)
class ConvCase:
    """One convolution configuration, in convcore's argument forms."""

    x_shape: tuple
    W_shape: tuple
    bias: bool = True
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    padding_mode: str = "zeros"
    seed: int = field(default=0, compare=False)

    @property
    def ndim(self) -> int:
        return len(self.x_shape) - 2

    @property
    def params(self) -> dict:
        """Keyword arguments for convcore.conv_forward / conv_backward / Convolution."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups, padding_mode=self.padding_mode)

    def per_dim(self, value) -> tuple:
        return (value,) * self.ndim if isinstance(value, int) else tuple(value)

    def explicit_pads(self) -> list:
        """((lo, hi), ...) per dim, by the JAX/PyTorch rules ("same": the extra cell goes high)."""
        kernel, dilation = self.W_shape[2:], self.per_dim(self.dilation)
        totals = [dl * (k - 1) for k, dl in zip(kernel, dilation)]
        if self.padding == "valid":
            return [(0, 0)] * self.ndim
        if self.padding == "full":
            return [(t, t) for t in totals]
        if self.padding == "same":
            return [(t // 2, t - t // 2) for t in totals]
        return [(p, p) if isinstance(p, int) else tuple(p) for p in self.per_dim(self.padding)]

    def jax_padding(self):
        """The padding argument for lax.conv_general_dilated: JAX's own words where it has them."""
        if self.padding in ("valid", "same"):
            return self.padding.upper()
        return self.explicit_pads()

    def inputs(self):
        """(x, W, b, gy_rng): float64 arrays holding float32-exact values; b is None without bias."""
        rng = np.random.default_rng(self.seed)
        draw = lambda shape: rng.standard_normal(shape).astype(np.float32).astype(np.float64)  # noqa: E731
        x, W = draw(self.x_shape), draw(self.W_shape)
        b = draw((self.W_shape[0],)) if self.bias else None
        return x, W, b, rng

    def __str__(self) -> str:
        return (f"x{self.x_shape} W{self.W_shape} bias={self.bias} stride={self.stride} "
                f"padding={self.padding} dilation={self.dilation} groups={self.groups} "
                f"mode={self.padding_mode}")


class Reference(NamedTuple):
    """Inputs and reference results of one case (float64 NumPy arrays)."""
    x: np.ndarray
    W: np.ndarray
    b: object
    gy: np.ndarray
    y: np.ndarray
    gx: np.ndarray
    gW: np.ndarray
    gb: object
    magnitudes: object = None   # dict: name -> max of that result computed from |x|, |W|, |b|, |gy|


def _draw_gy(rng, shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32).astype(np.float64)


def jax_reference(case: ConvCase) -> Reference:
    """y by lax.conv_general_dilated and (gx, gW) by jax.vjp, for any N; gb = sum of gy.

    For padding_mode other than "zeros" (JAX has none), y is the convolution of
    the input padded by numpy.pad, while the gradients come from jax.vjp through
    jnp.pad + conv, so the padding adjoint is checked independently of the forward.
    The same compiled function, run on |x|, |W|, |gy|, gives the magnitudes.
    """
    x, W, b, rng = case.inputs()
    N = case.ndim
    stride = case.per_dim(case.stride)

    def conv(xx, WW, padding, strides):
        return jax.lax.conv_general_dilated(
            xx, WW, window_strides=strides, padding=padding,
            rhs_dilation=case.per_dim(case.dilation), feature_group_count=case.groups,
            precision=jax.lax.Precision.HIGHEST)

    # The gradients differentiate a stride-1 convolution followed by a strided slice
    # (the same function): jax 0.10's transpose of some strided 5-D convolutions emits
    # HLO that XLA rejects with a fatal abort, killing the test process.
    every = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)
    spatial_pads = [(0, 0), (0, 0)] + case.explicit_pads()
    if case.padding_mode == "zeros":
        def numpy_padded(xx):
            return xx

        def forward(xx, WW):
            return conv(xx, WW, case.jax_padding(), stride)

        def f(xx, WW):
            return conv(xx, WW, case.jax_padding(), (1,) * N)[every]
    else:
        mode = _NUMPY_MODES[case.padding_mode]

        def numpy_padded(xx):
            return np.pad(xx, spatial_pads, mode=mode)

        def forward(xx_padded, WW):
            return conv(xx_padded, WW, [(0, 0)] * N, stride)

        def f(xx, WW):
            return conv(jnp.pad(xx, spatial_pads, mode=mode), WW, [(0, 0)] * N, (1,) * N)[every]

    def everything(xx, xx_forward, WW, gy):
        y_sliced, vjp = jax.vjp(f, xx, WW)
        return (forward(xx_forward, WW), y_sliced) + vjp(gy)

    # One jit per case: a single XLA compilation instead of one per primitive.
    run = jax.jit(everything)
    gy = _draw_gy(rng, jax.eval_shape(forward, numpy_padded(x), W).shape)
    y, y_sliced, gx, gW = (np.asarray(a) for a in run(x, numpy_padded(x), W, gy))
    np.testing.assert_allclose(y_sliced, y, rtol=0, atol=1e-12 * np.abs(y).max(),
                               err_msg="oracle self-check: strided conv != stride-1 conv sliced")
    ax, aW, agy = np.abs(x), np.abs(W), np.abs(gy)
    y_abs, _, gx_abs, gW_abs = (np.asarray(a) for a in run(ax, numpy_padded(ax), aW, agy))
    gb = None
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * N)
        y_abs = y_abs + np.abs(b).reshape((1, -1) + (1,) * N)
        gb = gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))
    return Reference(x, W, b, gy, y, gx, gW, gb, _magnitudes(y_abs, gx_abs, gW_abs, agy))


def torch_reference(case: ConvCase) -> Reference:
    """PyTorch's F.pad(mode) + conv1d/2d/3d with autograd: what ConvNd's padding_mode means."""
    import torch
    import torch.nn.functional as F

    x, W, b, rng = case.inputs()
    N = case.ndim
    assert N <= 3, "PyTorch has conv1d/2d/3d only"
    # F.pad lists (lo, hi) from the last spatial dim backwards.
    flat = [v for pair in reversed(case.explicit_pads()) for v in pair]
    mode = "constant" if case.padding_mode == "zeros" else case.padding_mode
    conv = (F.conv1d, F.conv2d, F.conv3d)[N - 1]

    def run(x, W, b, gy):
        """(y, gx, gW, gb); gy None: drawn from rng once y's shape is known."""
        xt = torch.tensor(x, requires_grad=True)
        Wt = torch.tensor(W, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True) if b is not None else None
        yt = conv(F.pad(xt, flat, mode=mode), Wt, bt, stride=case.per_dim(case.stride),
                  dilation=case.per_dim(case.dilation), groups=case.groups)
        gy = _draw_gy(rng, tuple(yt.shape)) if gy is None else gy
        yt.backward(torch.tensor(gy))
        gb = bt.grad.numpy() if bt is not None else None
        return gy, yt.detach().numpy(), xt.grad.numpy(), Wt.grad.numpy(), gb

    gy, y, gx, gW, gb = run(x, W, b, None)
    _, y_abs, gx_abs, gW_abs, _ = run(np.abs(x), np.abs(W), None if b is None else np.abs(b), np.abs(gy))
    return Reference(x, W, b, gy, y, gx, gW, gb, _magnitudes(y_abs, gx_abs, gW_abs, np.abs(gy)))


def _magnitudes(y_abs, gx_abs, gW_abs, gy_abs) -> dict:
    """max of each result computed from |x|, |W|, |b|, |gy|: the size of the terms it sums."""
    gb_abs = gy_abs.sum(axis=(0,) + tuple(range(2, gy_abs.ndim)))
    return {name: float(np.max(a)) for name, a in
            (("y", y_abs), ("gx", gx_abs), ("gW", gW_abs), ("gb", gb_abs))}


@functools.lru_cache(maxsize=256)
def _cached(case: ConvCase, seed: int, jax_only: bool) -> Reference:
    return torch_reference(case) if case.ndim <= 3 and not jax_only else jax_reference(case)


def cached_reference(case: ConvCase, *, jax_only=False) -> Reference:
    """PyTorch's reference for N <= 3 (no compilation), else JAX's; cached, so the runs of
    every backend over the same generated cases share one reference per case.

    (ConvCase compares without its seed, so the seed is part of the key.)
    """
    return _cached(case, case.seed, jax_only)


def assert_close(name: str, got, want, dtype, context="", magnitude=None) -> None:
    """got (NumPy, convcore's result) matches want in ``dtype``'s tolerance.

    max|got - want| <= TOLERANCE * max|want| + ROUNDING * magnitude, with
    ``magnitude`` from Reference.magnitudes (0 when not given).
    """
    dtype = np.dtype(dtype)
    assert got is not None, f"{name} is None {context}"
    assert got.dtype == dtype, f"{name} has dtype {got.dtype}, expected the input dtype {dtype} {context}"
    assert got.shape == want.shape, f"{name} has shape {got.shape}, expected {want.shape} {context}"
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    allowed = TOLERANCE[dtype] * scale + ROUNDING[dtype] * (magnitude or 0.0)
    if allowed == 0.0:
        allowed = TOLERANCE[dtype]   # an all-zero result: absolute
    assert err <= allowed, (f"{name}: max error {err:.3g} = {err / (scale or 1.0):.3g} x max|reference| "
                            f"({scale:.3g}) exceeds {TOLERANCE[dtype]:g} x max|reference| + "
                            f"{ROUNDING[dtype]:g} x magnitude ({magnitude or 0.0:.3g}) ({dtype}) {context}")


def cast(ref: Reference, dtype) -> tuple:
    """(x, W, b, gy) of a reference in ``dtype`` (exact: the values are float32-representable)."""
    return tuple(None if a is None else a.astype(dtype) for a in (ref.x, ref.W, ref.b, ref.gy))
