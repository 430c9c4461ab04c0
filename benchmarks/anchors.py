"""What convcore is timed against: PyTorch, JAX and the per-pair fftconvolve loop.

Each anchor's ``prepare(cfg, geom, arrays)`` returns a zero-argument callable that
runs forward + all three gradients and returns host-side NumPy arrays
(y, gx, gW, gb) only when asked (``fetch=True``), so the timed call does the same
work convcore's does: y (n, c_O, o...), gx (n, c_I, d...), gW (c_O, c_I/g, k...),
gb (c_O,). ``skip_reason`` says (before anything runs) why an anchor cannot or
should not run a config; ``None`` means go.
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.signal

MAX_SINGLE_RUN_S = 60.0   # an anchor predicted slower than this for one run is skipped


def direct_flops(geom) -> float:
    """Multiply-adds x2 of forward + gx + gW done the direct way (what torch/JAX do on CPU)."""
    taps = math.prod(geom.kernel)
    per_pass = 2.0 * geom.batch * math.prod(geom.out_spatial) * geom.out_channels * taps
    return 3 * per_pass * (geom.in_channels // geom.groups)


class TorchAnchor:
    """torch.nn.functional.conv1d/2d/3d + autograd, on the CPU (2 threads) or the GPU."""

    name = "torch"
    CPU_GFLOPS = 2.0   # conservative sustained rate, for the skip decision only

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = device
        if device == "cpu":
            torch.set_num_threads(2)

    def skip_reason(self, cfg, geom):
        if cfg.ndim > 3:
            return f"PyTorch has no conv{cfg.ndim}d"
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
        import jax

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


class LoopAnchor:
    """The naive fftconvolve layer: one scipy.signal.fftconvolve per (batch, out, in) pair.

    Forward: y[b, o] = sum_i fftconvolve(xp[b, i], flip(W[o, i]), "valid"), then strided.
    gx:      gxp[b, i] += fftconvolve(gy_up[b, o], W[o, i], "full"), cropped to x.
    gW:      gW[o, i] += fftconvolve(xp[b, i], flip(gy_up[b, o]), "valid").
    xp is x zero-padded, W dilated with zeros, gy_up gy spread back onto the stride-1 grid.
    """

    name = "loop"

    def __init__(self, device: str, dtype):
        self.device = device
        self.dtype = np.dtype(dtype)

    def skip_reason(self, cfg, geom):
        if self.device != "cpu":
            return "scipy loop is CPU only"
        if geom.padding_mode != "zeros":
            return "loop baseline covers zero padding only"
        est = self.estimate_seconds(geom)
        if est > MAX_SINGLE_RUN_S:
            return f"one run estimated at {est:.0f} s (> {MAX_SINGLE_RUN_S:.0f} s) from one timed pair"
        return None

    def estimate_seconds(self, geom) -> float:
        """Time one pair of each of the three loops and multiply by the number of pairs."""
        rng = np.random.default_rng(0)
        dt = self.dtype
        pad = tuple(geom.padded)
        kd = tuple(geom.dilated_kernel)
        full = tuple(p - k + 1 for p, k in zip(pad, kd))
        a, k, g = (rng.standard_normal(s).astype(dt) for s in (pad, kd, full))
        calls = [(a, k, "valid"), (g, k, "full"), (a, g, "valid")]
        total = 0.0
        for u, v, mode in calls:
            scipy.signal.fftconvolve(u, v, mode=mode)    # warm scipy's plan cache
            start = time.perf_counter()
            scipy.signal.fftconvolve(u, v, mode=mode)
            total += time.perf_counter() - start
        pairs = geom.batch * geom.out_channels * (geom.in_channels // geom.groups)
        return total * pairs

    def prepare(self, cfg, geom, arrays):
        x, W, b, gy = (to_numpy(a) for a in arrays)
        N = geom.ndim
        space = (slice(None),) * 2
        xp = np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in geom.pads])
        Wd = np.zeros(W.shape[:2] + tuple(geom.dilated_kernel), W.dtype)
        Wd[space + tuple(slice(None, None, d) for d in geom.dilation)] = W
        full = tuple(p - k + 1 for p, k in zip(geom.padded, geom.dilated_kernel))
        on_grid = space + tuple(slice(None, o * s, s) for o, s in zip(geom.out_spatial, geom.stride))
        flip = (slice(None, None, -1),) * N
        crop = space + tuple(slice(lo, lo + d) for (lo, _), d in zip(geom.pads, geom.spatial))
        O, Cg = W.shape[:2]
        Og = O // geom.groups

        def run(fetch=False):
            n = x.shape[0]
            y_full = np.zeros((n, O) + full, x.dtype)
            gy_up = np.zeros_like(y_full)
            gy_up[on_grid] = gy
            gxp = np.zeros_like(xp)
            gWd = np.zeros_like(Wd)
            for bi in range(n):
                for o in range(O):
                    c0 = (o // Og) * Cg
                    for i in range(Cg):
                        y_full[bi, o] += scipy.signal.fftconvolve(xp[bi, c0 + i], Wd[o, i][flip], mode="valid")
                        gxp[bi, c0 + i] += scipy.signal.fftconvolve(gy_up[bi, o], Wd[o, i], mode="full")
                        gWd[o, i] += scipy.signal.fftconvolve(xp[bi, c0 + i], gy_up[bi, o][flip], mode="valid")
            y = y_full[on_grid] + b.reshape((1, -1) + (1,) * N)
            gx = gxp[crop]
            gW = gWd[space + tuple(slice(None, None, d) for d in geom.dilation)]
            gb = gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))
            return (y, gx, gW, gb) if fetch else None

        return run


def to_numpy(a):
    """Host copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)
