"""Padding of the spatial axes and its adjoint, for every ``padding_mode``.

The adjoint folds the gradient of the padded input back onto the input: for
``zeros`` it is a crop; for the other modes each padded cell is a copy of some
input cell, so its gradient is added to that cell.
"""
from __future__ import annotations

# padding_mode -> the ``mode`` of numpy.pad / cupy.pad that fills the same cells.
NUMPY_PAD_MODES = {"zeros": "constant", "circular": "wrap", "reflect": "reflect", "replicate": "edge"}


def pad(xp, a, pads, mode):
    """Pad the spatial axes of ``a`` (n, c, d_1..d_N) -> (n, c, d_1+lo_1+hi_1, ...)."""
    if not any(lo or hi for lo, hi in pads):
        return a
    if mode == "zeros":   # zeros and one copy: xp.pad's Python overhead is ~0.3 ms a call, a small layer's budget
        out = xp.zeros(a.shape[:2] + tuple(d + lo + hi for d, (lo, hi) in zip(a.shape[2:], pads)), a.dtype)
        out[(slice(None), slice(None)) + tuple(slice(lo, lo + d) for d, (lo, _) in zip(a.shape[2:], pads))] = a
        return out
    return xp.pad(a, ((0, 0), (0, 0)) + tuple(pads), mode=NUMPY_PAD_MODES[mode])


def pad_adjoint(xp, g, pads, mode, spatial):
    """Adjoint of ``pad``: (n, c, padded...) -> (n, c, d_1..d_N)."""
    for j, (lo, hi) in enumerate(pads):
        if not (lo or hi):
            continue
        axis = 2 + j
        size = spatial[j]
        inner = g[_along(axis, slice(lo, lo + size))]
        if mode == "zeros":
            g = inner
            continue
        inner = inner.copy()
        for p in range(lo):  # padded cell p sits at input coordinate p - lo < 0
            inner[_along(axis, _source(p - lo, size, mode))] += g[_along(axis, p)]
        for p in range(hi):  # padded cell sits at input coordinate size + p
            inner[_along(axis, _source(size + p, size, mode))] += g[_along(axis, lo + size + p)]
        g = inner
    return xp.ascontiguousarray(g)


def _source(t: int, size: int, mode: str) -> int:
    """Input index that the padded coordinate ``t`` copies."""
    if mode == "circular":
        return t % size
    if mode == "reflect":
        return -t if t < 0 else 2 * (size - 1) - t
    return min(max(t, 0), size - 1)  # replicate


def _along(axis: int, index):
    return (slice(None),) * axis + (index,)
