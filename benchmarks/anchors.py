"""What convcore is timed against: PyTorch, PyTorch's Conv4d-from-Conv3d recipe and JAX
(the per-pair fftconvolve loop is in anchor_loop.py).

Each anchor's ``prepare(cfg, geom, arrays)`` returns a zero-argument callable that
runs forward + all three gradients and returns host-side NumPy arrays
(y, gx, gW, gb) only when asked (``fetch=True``), so the timed call does the same
work convcore's does: y (n, c_O, o...), gx (n, c_I, d...), gW (c_O, c_I/g, k...),
gb (c_O,). ``skip_reason`` says (before anything runs) why an anchor cannot or
should not run a config; ``None`` means go.
"""
from __future__ import annotations

import math

import numpy as np

MAX_SINGLE_RUN_S = 60.0   # an anchor predicted slower than this for one run is skipped


def direct_flops(geom) -> float:
    """Multiply-adds x2 of forward + gx + gW done the direct way (what torch/JAX do on CPU)."""
    taps = math.prod(geom.kernel)
    per_pass = 2.0 * geom.batch * math.prod(geom.out_spatial) * geom.out_channels * taps
    return 3 * per_pass * (geom.in_channels // geom.groups)


class TorchAnchor:
    """torch.nn.functional.conv1d/2d/3d + autograd, on the CPU (``threads`` intra-op threads) or the GPU."""

    name = "torch"
    CPU_GFLOPS = 2.0   # conservative sustained rate, for the skip decision only

    def __init__(self, device: str, threads: int):
        import torch

        self.torch = torch
        self.device = device
        if device == "cpu":
            torch.set_num_threads(threads)

    def skip_reason(self, cfg, geom):
        if cfg.ndim > 3:
            return f"n/a: PyTorch has no conv{cfg.ndim}d"
        if self.device == "cpu":
            est = direct_flops(geom) / (self.CPU_GFLOPS * 1e9)
            if est > MAX_SINGLE_RUN_S:
                return f"one run estimated at {est:.0f} s (> {MAX_SINGLE_RUN_S:.0f} s)"
        return None

    def prepare(self, cfg, geom, arrays):
        torch, F = self.torch, self.torch.nn.functional
        conv = getattr(F, f"conv{cfg.ndim}d")
        dev = "cuda" if self.device == "cuda" else "cpu"
        x, W, b, gy = (torch.as_tensor(to_numpy(a), device=dev) for a in arrays)
        pads = geom.pads
        symmetric = all(lo == hi for lo, hi in pads)
        # torch's padding= is symmetric only; asymmetric pairs go through F.pad (last dim first).
        flat = [p for lo_hi in reversed(pads) for p in lo_hi]
        kw = dict(stride=geom.stride, dilation=geom.dilation, groups=geom.groups,
                  padding=tuple(lo for lo, _ in pads) if symmetric else 0)
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

        def run(fetch=False):
            xs, Ws, bs = (t.detach().requires_grad_(True) for t in (x, W, b))
            y = conv(xs if symmetric else F.pad(xs, flat), Ws, bs, **kw)
            y.backward(gy)
            sync()
            if fetch:
                return tuple(t.detach().cpu().numpy() for t in (y, xs.grad, Ws.grad, bs.grad))
            return None

        return run


class JaxAnchor:
    """jax.jit(jax.vjp(lax.conv_general_dilated)) on the CPU; compile time excluded."""

    name = "jax"
    CPU_GFLOPS = {1: 2.0, 2: 2.0, 3: 1.0}   # N >= 4 lowers to a slow generic loop nest
    ND_GFLOPS = 0.3

    def __init__(self, device: str, dtype):
        import jax   # its CPU threads are set by XLA_FLAGS before this import (conv_bench.set_threads)

        if np.dtype(dtype) == np.float64:
            jax.config.update("jax_enable_x64", True)
        self.jax = jax
        self.device = device

    def skip_reason(self, cfg, geom):
        if self.device != "cpu":
            return "JAX anchor runs on the CPU only"
        est = direct_flops(geom) / (self.CPU_GFLOPS.get(cfg.ndim, self.ND_GFLOPS) * 1e9)
        if est > MAX_SINGLE_RUN_S:
            return f"one run estimated at {est:.0f} s (> {MAX_SINGLE_RUN_S:.0f} s)"
        return None

    def prepare(self, cfg, geom, arrays):
        jax = self.jax
        lax = jax.lax
        x, W, b, gy = (jax.device_put(to_numpy(a)) for a in arrays)
        bshape = (1, -1) + (1,) * cfg.ndim

        def layer(x, W, b):
            y = lax.conv_general_dilated(x, W, window_strides=geom.stride, padding=list(geom.pads),
                                         rhs_dilation=geom.dilation, feature_group_count=geom.groups)
            return y + b.reshape(bshape)

        def fwd_bwd(x, W, b, gy):
            y, vjp = jax.vjp(layer, x, W, b)
            return (y,) + vjp(gy)

        # Ahead-of-time compile so the first timed call is not a compilation.
        compiled = jax.jit(fwd_bwd).lower(x, W, b, gy).compile()

        def run(fetch=False):
            out = jax.block_until_ready(compiled(x, W, b, gy))
            return tuple(np.asarray(a) for a in out) if fetch else None

        return run


class TorchConv4dAnchor(TorchAnchor):
    """PyTorch users' 4-D layer: a sum of Conv3d over the first kernel axis, + autograd.

    The public Conv4d modules compute output frame t as sum_j conv3d(x[:, :, t*s + j*dl],
    W[:, :, j]); here each kernel frame j is ONE conv3d over all output frames at once
    (frames folded into the batch), the faster form of the same recipe, so every
    product runs in oneDNN's 3-D kernels:

        y = sum_j  unfold(conv3d(fold(x[:, :, j*dl : j*dl + (o-1)*s + 1 : s]), W[:, :, j]))
    """

    name = "torch4d"

    def skip_reason(self, cfg, geom):
        if cfg.ndim != 4:
            return "n/a: the Conv3d recipe anchors N = 4 only"
        return TorchAnchor.skip_reason(self, _as_3d(cfg), geom)

    def prepare(self, cfg, geom, arrays):
        torch, F = self.torch, self.torch.nn.functional
        dev = "cuda" if self.device == "cuda" else "cpu"
        x, W, b, gy = (torch.as_tensor(to_numpy(a), device=dev) for a in arrays)
        (lo, hi), rest = geom.pads[0], geom.pads[1:]
        symmetric = all(a == c for a, c in rest)
        # F.pad lists the last dim first: the inner three only when they are asymmetric
        flat = ([p for pair in reversed(rest) for p in pair] if not symmetric else [0] * 6) + [lo, hi]
        kw = dict(stride=geom.stride[1:], dilation=geom.dilation[1:], groups=geom.groups,
                  padding=tuple(a for a, _ in rest) if symmetric else 0)
        s, dl, k, o = geom.stride[0], geom.dilation[0], geom.kernel[0], geom.out_spatial[0]
        n = geom.batch
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

        def conv4d(xs, Ws, bs):
            xp = F.pad(xs, flat)
            y = None
            for j in range(k):
                frames = xp[:, :, j * dl: j * dl + (o - 1) * s + 1: s]          # (n, c, o, d2, d3, d4)
                folded = frames.transpose(1, 2).reshape((n * o,) + frames.shape[1:2] + frames.shape[3:])
                part = F.conv3d(folded, Ws[:, :, j], None, **kw)                 # (n*o, O, o2, o3, o4)
                y = part if y is None else y + part
            y = y.reshape((n, o) + y.shape[1:]).transpose(1, 2)
            return y + bs.reshape(1, -1, 1, 1, 1, 1)

        def run(fetch=False):
            xs, Ws, bs = (t.detach().requires_grad_(True) for t in (x, W, b))
            y = conv4d(xs, Ws, bs)
            y.backward(gy)
            sync()
            if fetch:
                return tuple(t.detach().cpu().numpy() for t in (y, xs.grad, Ws.grad, bs.grad))
            return None

        return run


def _as_3d(cfg):
    """The config seen by the 3-D rate check (same work, one more kernel axis folded in)."""
    from dataclasses import replace

    return replace(cfg, spatial=cfg.spatial[1:], kernel=cfg.kernel[1:])


def to_numpy(a):
    """Host copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)
