"""The direct engine's filter packing (filter_pack.py) against an element-by-element reference, on the
views the engine hands it: the forward's filters as they lie, the input gradient's transposed and
flipped, a phase's slice of the taps (NumPy's copy), rows short of a whole block of lanes."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from convcore import direct_kernel, filter_pack

if not direct_kernel.available(np, np.float32):   # pragma: no cover - CI installs Numba
    pytest.skip("Numba does not import here: the packing runs on NumPy only", allow_module_level=True)


def _reference(mats, width: int, nob: int) -> np.ndarray:
    """w[gi, ob, k * T + t, lane] = mats[gi, ob * width + lane, k, t...] one element at a time, 0 past rows."""
    g, rows = mats.shape[:2]
    flat = mats.reshape(g, rows, -1)   # (a copy where the view does not merge: values as they read)
    w = np.full((g, nob, flat.shape[2], width), -1.0, mats.dtype)
    for gi, ob, kt, lane in itertools.product(range(g), range(nob), range(flat.shape[2]), range(width)):
        r = ob * width + lane
        w[gi, ob, kt, lane] = flat[gi, r, kt] if r < rows else 0
    return w


def _views(W):
    """(name, view, compiled?) as the engine makes them from W (g, O, C, k...)."""
    N = W.ndim - 3
    flip = (slice(None),) * 3 + (slice(None, None, -1),) * N
    yield "as it lies", W, True
    yield "channels and taps merged", W.reshape(W.shape[0], W.shape[1], -1), True
    yield "transposed, flipped", W[flip].swapaxes(1, 2), True
    yield "transposed", W.swapaxes(1, 2), True
    first = (slice(None),) * 3 + tuple(slice(k - 2, None, -1) if k > 2 else slice(0, 1) for k in W.shape[3:])
    yield "a phase's first taps, flipped", W[first].swapaxes(1, 2), N == 1   # (one axis of taps: still one run)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 16, 8, 3, 3), (2, 20, 5, 7, 7), (1, 3, 33, 5), (1, 64, 16, 2, 2, 2),
                                   (1, 40, 4, 17), (2, 8, 3, 3)])
@pytest.mark.parametrize("width", [8, 16, 32])
def test_packing_matches_the_element_by_element_copy(shape, width, dtype, monkeypatch):
    tiles = []
    real = filter_pack._loop
    monkeypatch.setattr(filter_pack, "_loop", lambda TT, isz: tiles.append(TT) or real(TT, isz))
    W = np.random.default_rng(sum(shape)).standard_normal(shape).astype(dtype)
    for name, view, compiled in _views(W):
        if view.ndim < 3:
            continue
        tiles.clear()
        nob = -(-view.shape[1] // width)
        got = filter_pack.pack(view, width, nob)
        assert np.array_equal(got, _reference(view, width, nob)), name
        taps = int(np.prod(view.shape[2:])) if view.ndim == 3 else int(np.prod(view.shape[3:]))
        assert bool(tiles) == (compiled and taps > 1), name


def test_tiles_cover_taps_and_rows_that_are_not_whole_tiles():
    """Rows and taps a little past whole tiles: the last tile overlaps the one before it."""
    for rows, taps in ((17, 18), (33, 16), (16, 31), (5, 40), (40, 5)):
        W = np.arange(rows * 3 * taps, dtype=np.float32).reshape(1, rows, 3, taps)
        for view in (W, W[..., ::-1]):
            assert np.array_equal(filter_pack.pack(view, 48, 1), _reference(view, 48, 1))


def test_tile_size_follows_the_taps():
    lanes = direct_kernel.machine()[0] // 4
    assert filter_pack.tile_size(49, 4) == lanes
    assert filter_pack.tile_size(9, 4) == min(lanes, 8)
    assert filter_pack.tile_size(2, 4) == 4   # fewer taps than 4: the loop copies element by element
