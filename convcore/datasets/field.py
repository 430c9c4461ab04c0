"""Seeded N-D field pairs (N = 2..4): u and u after a few explicit steps of diffusion with drift,

    u_t = D * laplacian(u) - v . grad(u)      on a periodic grid, central differences,
    u <- u + dt * (D * sum_j (u[+1_j] - 2u + u[-1_j]) - sum_j v_j * (u[+1_j] - u[-1_j]) / 2)

so the map x -> y is a fixed linear N-D stencil of radius ``steps`` that a network must learn.
u is a smooth random field (white noise low-passed in Fourier space), scaled to unit variance.
"""
from __future__ import annotations

import numpy as np

DEFAULT_SIZE = {2: 32, 3: 16, 4: 8}
DIFFUSION, DT, STEPS = 0.1, 1.0, 3      # dt * D * 2N <= 0.8 < 1: the explicit scheme is stable for N <= 4
DRIFT = (0.3, -0.2, 0.15, -0.25)        # v_j per axis


def diffuse(u, steps=STEPS, diffusion=DIFFUSION, dt=DT, drift=DRIFT):
    """``steps`` explicit Euler steps of the PDE on u (n, d_1..d_N), periodic."""
    ndim = u.ndim - 1
    for _ in range(steps):
        change = np.zeros_like(u)
        for j in range(ndim):
            ax = j + 1
            up, down = np.roll(u, -1, axis=ax), np.roll(u, 1, axis=ax)
            change += diffusion * (up - 2 * u + down) - drift[j] * (up - down) / 2
        u = u + dt * change
    return u


def make_field(ndim=2, n=400, size=None, seed=0):
    """x (n, 1, size...) float32 (u), y (n, 1, size...) float32 (u after the steps)."""
    if isinstance(ndim, bool) or not isinstance(ndim, (int, np.integer)) or not 2 <= ndim <= 4:
        raise ValueError(f"ndim must be an int in 2..4, got {ndim!r}")
    size = DEFAULT_SIZE[ndim] if size is None else size
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    rng = np.random.default_rng(seed)
    shape = (n,) + (size,) * ndim
    spectrum = np.fft.fftn(rng.standard_normal(shape), axes=tuple(range(1, ndim + 1)))
    k2 = sum(np.fft.fftfreq(size)[(None,) * j + (slice(None),) + (None,) * (ndim - j - 1)] ** 2 for j in range(ndim))
    u = np.fft.ifftn(spectrum * np.exp(-k2 / (2 * 0.12 ** 2)), axes=tuple(range(1, ndim + 1))).real
    u /= u.std(axis=tuple(range(1, ndim + 1)), keepdims=True)
    return u[:, None].astype(np.float32), diffuse(u)[:, None].astype(np.float32)
