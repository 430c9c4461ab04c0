"""The naive fftconvolve layer: one scipy.signal.fftconvolve per (batch, out, in) channel pair.

The anchor convcore's batched FFT method is measured against: forward + gx + gW + gb,
every channel pair transformed on its own, nothing reused. It computes only what it
returns: with a stride s it works on the s^N polyphase components (x_r[m] = x[m*s + r],
W_r[q] = W[q*s + r]), so no stride-1 output is computed and then thrown away:

    y[b, o]      = sum_i sum_r fftconvolve(x_r[b, i], flip(W_r[o, i]), "valid")
    gx_r[b, i]  += fftconvolve(gy[b, o], W_r[o, i], "full")
    gW_r[o, i]  += fftconvolve(x_r[b, i], flip(gy[b, o]), "valid")

x is zero-padded and W dilated with zeros first (the naive way). The pairs run on a
pool of ``threads`` Python threads (pocketfft releases the GIL): one task per output
slice (b, o) for y, (b, i) for gx and (o, i) for gW, so no two tasks write the same array.
"""
from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.signal


class LoopAnchor:
    name = "loop"

    def __init__(self, device: str, dtype, threads: int, max_run_s: float):
        self.device = device
        self.dtype = np.dtype(dtype)
        self.threads = threads
        self.max_run_s = max_run_s
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def skip_reason(self, cfg, geom):
        if self.device != "cpu":
            return "scipy loop is CPU only"
        if geom.padding_mode != "zeros":
            return "loop baseline covers zero padding only"
        est = self.estimate_seconds(geom)
        if est > self.max_run_s:
            return f"one run estimated at {est:.0f} s (> {self.max_run_s:.0f} s) from one timed pair"
        return None

    def estimate_seconds(self, geom) -> float:
        """Time one pair of each of the three convolutions and scale by pairs, phases and threads."""
        plan = _Plan(geom)
        rng = np.random.default_rng(0)
        a, k, g = (rng.standard_normal(s).astype(self.dtype) for s in (plan.Q, plan.Kq, geom.out_spatial))
        total = 0.0
        for u, v, mode in [(a, k, "valid"), (g, k, "full"), (a, g, "valid")]:
            scipy.signal.fftconvolve(u, v, mode=mode)    # warm scipy's plan cache
            start = time.perf_counter()
            scipy.signal.fftconvolve(u, v, mode=mode)
            total += time.perf_counter() - start
        pairs = geom.batch * geom.out_channels * (geom.in_channels // geom.groups)
        return total * pairs * len(plan.phases) / self.threads

    def prepare(self, cfg, geom, arrays):
        x, W, b, gy = (to_numpy(a) for a in arrays)
        plan = _Plan(geom)
        N, n = geom.ndim, geom.batch
        O, Cg = W.shape[:2]
        Og, C = O // geom.groups, geom.in_channels
        xr = [plan.x_phase(x, r) for r in plan.phases]            # each (n, C, Q...)
        Wr = [plan.W_phase(W, r) for r in plan.phases]            # each (O, Cg, Kq...)
        flip = (slice(None, None, -1),) * N
        out = tuple(geom.out_spatial)
        crop_out = tuple(slice(0, o) for o in out)
        crop_k = tuple(slice(0, k) for k in plan.Kq)

        def run(fetch=False):
            y = np.empty((n, O) + out, x.dtype)
            gx_r = [np.zeros((n, C) + plan.Q, x.dtype) for _ in plan.phases]
            gW_r = [np.zeros((O, Cg) + plan.Kq, x.dtype) for _ in plan.phases]

            def forward(bo):
                bi, o = bo
                c0 = (o // Og) * Cg
                acc = np.zeros(out, x.dtype)
                for i in range(Cg):
                    for p in range(len(plan.phases)):
                        acc += scipy.signal.fftconvolve(xr[p][bi, c0 + i], Wr[p][o, i][flip], mode="valid")[crop_out]
                y[bi, o] = acc

            def input_grad(bc):
                bi, c = bc
                grp, i = divmod(c, Cg)
                for p in range(len(plan.phases)):
                    for o in range(grp * Og, (grp + 1) * Og):
                        full = scipy.signal.fftconvolve(gy[bi, o], Wr[p][o, i], mode="full")
                        region = tuple(slice(0, min(f, q)) for f, q in zip(full.shape, plan.Q))
                        gx_r[p][(bi, c) + region] += full[region]

            def weight_grad(oi):
                o, i = oi
                c = (o // Og) * Cg + i
                for p in range(len(plan.phases)):
                    for bi in range(n):
                        gW_r[p][o, i] += scipy.signal.fftconvolve(xr[p][bi, c], gy[bi, o][flip],
                                                                  mode="valid")[crop_k]

            self._map(forward, itertools.product(range(n), range(O)))
            self._map(input_grad, itertools.product(range(n), range(C)))
            self._map(weight_grad, itertools.product(range(O), range(Cg)))
            y += b.reshape((1, -1) + (1,) * N)
            gx = plan.gather_x(gx_r, x.dtype)
            gW = plan.gather_W(gW_r, x.dtype)
            gb = gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))
            return (y, gx, gW, gb) if fetch else None

        return run

    def _map(self, task, items):
        if self.pool is None:
            for item in items:
                task(item)
        else:
            list(self.pool.map(task, list(items)))


class _Plan:
    """The polyphase split of a zero-padded input and a zero-dilated filter, and its adjoint."""

    def __init__(self, geom):
        self.geom = geom
        s = self.s = geom.stride
        self.P = geom.padded
        self.K = geom.dilated_kernel
        self.Q = tuple(-(-p // t) for p, t in zip(self.P, s))
        self.Kq = tuple(-(-k // t) for k, t in zip(self.K, s))
        self.phases = list(itertools.product(*(range(t) for t in s)))

    def _take(self, a, r, length):
        """a[..., r::s] zero-padded at the high end to ``length`` per spatial dim."""
        part = a[(slice(None), slice(None)) + tuple(slice(ri, None, si) for ri, si in zip(r, self.s))]
        pad = [(0, 0), (0, 0)] + [(0, L - d) for L, d in zip(length, part.shape[2:])]
        return np.pad(part, pad) if any(hi for _, hi in pad) else np.ascontiguousarray(part)

    def x_phase(self, x, r):
        xp = np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in self.geom.pads])
        return self._take(xp, r, self.Q)

    def W_phase(self, W, r):
        Wd = np.zeros(W.shape[:2] + tuple(self.K), W.dtype)
        Wd[(slice(None),) * 2 + tuple(slice(None, None, d) for d in self.geom.dilation)] = W
        return self._take(Wd, r, self.Kq)

    def gather_x(self, parts, dtype):
        geom = self.geom
        gxp = np.zeros((geom.batch, geom.in_channels) + tuple(q * s for q, s in zip(self.Q, self.s)), dtype)
        for r, part in zip(self.phases, parts):
            gxp[(slice(None),) * 2 + tuple(slice(ri, None, si) for ri, si in zip(r, self.s))] = part
        crop = tuple(slice(lo, lo + d) for (lo, _), d in zip(geom.pads, geom.spatial))
        return gxp[(slice(None),) * 2 + crop]

    def gather_W(self, parts, dtype):
        geom = self.geom
        gWd = np.zeros(geom.kernel_shape[:2] + tuple(q * s for q, s in zip(self.Kq, self.s)), dtype)
        for r, part in zip(self.phases, parts):
            gWd[(slice(None),) * 2 + tuple(slice(ri, None, si) for ri, si in zip(r, self.s))] = part
        return gWd[(slice(None),) * 2 + tuple(slice(0, k, d) for k, d in zip(self.K, geom.dilation))]


def to_numpy(a):
    """Host copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)

