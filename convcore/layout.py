"""Pure reshuffles that reduce strided, dilated convolutions to stride-1 ones.

Polyphase ("space to depth"): with stride s, output i reads x[i*s + k]. Writing
k = q*s + r, x[i*s + q*s + r] = X_r[i + q] with X_r[m] = x[m*s + r], so a strided
convolution is a stride-1 valid convolution whose channels are (c, r) pairs.
All helpers act on the trailing N spatial axes of (B, C, ...) arrays.
"""
from __future__ import annotations

import itertools
import math


def space_to_depth(a, s):
    """(B, C, q_1*s_1, ..., q_N*s_N) -> (B, C*prod(s), q_1, ..., q_N), channel index c*prod(s) + r."""
    if all(v == 1 for v in s):
        return a
    n = len(s)
    B, C = a.shape[:2]
    q = tuple(a.shape[2 + j] // s[j] for j in range(n))
    split = (B, C) + sum(((q[j], s[j]) for j in range(n)), ())
    order = (0, 1) + tuple(3 + 2 * j for j in range(n)) + tuple(2 + 2 * j for j in range(n))
    return a.reshape(split).transpose(order).reshape((B, C * math.prod(s)) + q)


def depth_to_space(a, s):
    """Inverse of ``space_to_depth``: (B, C*prod(s), q...) -> (B, C, q_1*s_1, ...)."""
    if all(v == 1 for v in s):
        return a
    n = len(s)
    B = a.shape[0]
    C = a.shape[1] // math.prod(s)
    q = tuple(a.shape[2:])
    order = (0, 1) + sum(((2 + n + j, 2 + j) for j in range(n)), ())
    out = tuple(q[j] * s[j] for j in range(n))
    return a.reshape((B, C) + tuple(s) + q).transpose(order).reshape((B, C) + out)


# Phase by phase pays while the phases are few: each is a strided copy plus ~10 us of Python (and a
# kernel launch on a GPU). A 2-D 3x3 at stride 2 (4 phases): forward + backward 24 -> 17-20 ms. At
# 16 phases it was a wash (2-D 11x11 at stride 4: grid 0.94 -> 0.84 ms; 4x4 at stride 4 on 2x16x64^2:
# 2.2-2.9 against 1.5-2.5 ms); a patchifying layer (kernel = stride 16: 256 phases) ran 2.7x slower
# phase by phase than with one transposing copy, stride 50 in 3-D (125,000 phases) ~170x.
MAX_PHASE_COPIES = 8


def phase_copies_pay(s) -> bool:
    """Whether a polyphase split with strides ``s`` is moved phase by phase (``phase_windows``)
    rather than with one transposing copy (``space_to_depth`` / ``depth_to_space``)."""
    return math.prod(s) <= MAX_PHASE_COPIES


def phase_windows(s, read, start, size):
    """The polyphase split of a window, per phase: [(r, cells, places)] where phase r's cells
    ``cells`` (slices of its q-axes: m with m * s + r inside [start, start + size) and below
    ``read``) sit at ``places`` (strided slices) of the window. Phases with no cell there are left
    out. Moving each phase to or from its places is one strided copy, the whole split one pass."""
    out = []
    for r in itertools.product(*(range(v) for v in s)):
        first = tuple(max(0, -(-(lo - rj) // sj)) for lo, rj, sj in zip(start, r, s))
        stop = tuple(-(-(min(L, lo + n) - rj) // sj) for L, lo, n, rj, sj in zip(read, start, size, r, s))
        if any(m1 <= m0 for m0, m1 in zip(first, stop)):
            continue
        cells = tuple(slice(m0, m1) for m0, m1 in zip(first, stop))
        places = tuple(slice(m0 * sj + rj - lo, (m1 - 1) * sj + rj - lo + 1, sj)
                       for m0, m1, rj, sj, lo in zip(first, stop, r, s, start))
        out.append((r, cells, places))
    return out


def depth_to_space_window(xp, a, s, read, start, size):
    """``depth_to_space(a, s)`` cut to ``read`` cells, then the window of ``size`` cells from
    ``start`` (zeros past ``read``), in one pass: (B, C*prod(s), q...) -> (B, C, size...), each
    phase written straight to its strided cells. Doing the steps apart (a transposing copy, a
    crop, a pad, then a crop to the window) cost three more passes over the result: 4 and 2 ms of
    a 2-D stride-2 input gradient's 21."""
    B = a.shape[0]
    C = a.shape[1] // math.prod(s)
    out = xp.zeros((B, C) + tuple(size), a.dtype)
    phases = a.reshape((B, C) + tuple(s) + tuple(a.shape[2:]))
    both = (slice(None), slice(None))
    for r, cells, places in phase_windows(s, read, start, size):
        out[both + places] = phases[both + r + cells]
    return out


def pad_high(xp, a, shape):
    """Zero-pad the trailing spatial axes at their high end up to ``shape``: one copy into a new array
    and its high slabs zeroed (``xp.pad`` took 50-60 us on a filter bank of a few KB, most of a small
    strided layer's reduction)."""
    extra = [t - d for t, d in zip(shape, a.shape[2:])]
    if not any(extra):
        return a
    out = xp.empty(a.shape[:2] + tuple(shape), a.dtype)
    out[(slice(None),) * 2 + tuple(slice(0, d) for d in a.shape[2:])] = a
    for j, (d, e) in enumerate(zip(a.shape[2:], extra)):
        if e:
            out[(slice(None),) * (2 + j) + (slice(d, None),)] = 0
    return out


def crop(a, shape):
    """Keep the first ``shape`` entries of each trailing spatial axis."""
    return a[(slice(None), slice(None)) + tuple(slice(0, t) for t in shape)]


def round_up(shape, multiple):
    return tuple(-(-d // m) * m for d, m in zip(shape, multiple))


def dilate(xp, W, dilation):
    """(c_O, c_I', k...) -> (c_O, c_I', dl*(k-1)+1 ...) with zeros between the taps."""
    if all(v == 1 for v in dilation):
        return W
    size = tuple(dl * (k - 1) + 1 for k, dl in zip(W.shape[2:], dilation))
    out = xp.zeros(W.shape[:2] + size, dtype=W.dtype)
    out[(slice(None), slice(None)) + tuple(slice(None, None, dl) for dl in dilation)] = W
    return out


def undilate(gW, dilation):
    """Adjoint of ``dilate``: keep the taps, drop the zeros' gradients."""
    if all(v == 1 for v in dilation):
        return gW
    return gW[(slice(None), slice(None)) + tuple(slice(None, None, dl) for dl in dilation)]
