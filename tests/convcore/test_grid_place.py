"""x and gy put on their zero grids in one compiled pass (grid_place.py): the grid against one built
with NumPy's ``pad``, and whole layers through it against JAX (every grid placed, whatever its size).
"""
from __future__ import annotations

import numpy as np
import pytest
from conv_checks import NUMPY, check_case
from conv_oracles import ConvCase, jax_reference

from convcore import direct_kernel, grid_place

if grid_place._loop() is None or not direct_kernel.available(np, np.float32):   # pragma: no cover - CI installs Numba
    pytest.skip("Numba does not import here: grids are built by NumPy", allow_module_level=True)


def _padded_grid(src, front, q, lo, rows, cells):
    """The grid as np.pad builds it: src cropped to ``rows``, padded to q, images one after another per
    channel, ``front`` zeros before them and zeros after them up to ``cells``."""
    ch = src.shape[1]
    crop = src[(slice(None),) * 2 + tuple(slice(0, r) for r in rows)]
    padded = np.pad(crop, ((0, 0), (0, 0)) + tuple((lo_d, q_d - lo_d - r) for lo_d, q_d, r in zip(lo, q, rows)))
    images = np.moveaxis(padded, 1, 0).reshape(ch, -1)
    return np.concatenate([np.zeros((ch, front), src.dtype), images,
                           np.zeros((ch, cells - front - images.shape[1]), src.dtype)], axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,front,q,lo,rows,tail", [
    ((3, 5, 40), 0, (44,), (2,), (40,), 7),                    # 1-D, padded both ends
    ((2, 4, 9, 11), 13, (12, 11), (0, 0), (9, 11), 0),        # gy on its grid: a front, no low padding
    ((2, 3, 6, 7, 5), 0, (8, 10, 9), (1, 2, 3), (6, 7, 5), 30),  # 3-D, uneven padding
    ((1, 2, 9, 9), 4, (7, 7), (1, 1), (5, 6), 3),             # x cropped to the rows the outputs read
    ((2, 3, 3, 4, 5, 6), 0, (5, 6, 7, 8), (1, 1, 1, 1), (3, 4, 5, 6), 11),   # 4-D
])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_grid_is_the_padded_array(shape, front, q, lo, rows, tail, dtype, threads, monkeypatch):
    monkeypatch.setattr(grid_place, "MIN_BYTES", 0)
    monkeypatch.setattr(grid_place, "SPLIT_BYTES", 0 if threads == 2 else 1 << 62)
    src = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    cells = front + shape[0] * int(np.prod(q)) + tail
    dst = np.full((shape[1], cells), np.nan, dtype)   # every cell must be written
    assert grid_place.place(dst, src, front, q, lo, rows)
    np.testing.assert_array_equal(dst, _padded_grid(src, front, q, lo, rows, cells))


@pytest.mark.parametrize("compiled", [True, False], ids=["loop", "numpy"])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided-source"])
def test_put_on_grid_gives_the_padded_array_either_way(compiled, strided, monkeypatch):
    """``put_on_grid``: the loop's grid, or NumPy's for what the loop leaves (small grids, strided sources)."""
    monkeypatch.setattr(grid_place, "MIN_BYTES", 0 if compiled else 1 << 62)
    shape, front, q, lo, rows, tail = (2, 3, 6, 7, 5), 5, (8, 10, 9), (1, 2, 3), (6, 7, 5), 30
    src = np.random.default_rng(1).standard_normal((2, 3, 6, 7, 10 if strided else 5)).astype(np.float32)
    if strided:
        src = src[..., ::2]
    cells = front + shape[0] * int(np.prod(q)) + tail
    dst = np.full((shape[1], cells), np.nan, np.float32)
    grid_place.put_on_grid(dst, src, front, q, lo, rows)
    np.testing.assert_array_equal(dst, _padded_grid(src, front, q, lo, rows, cells))


def test_what_it_cannot_place_is_left_to_numpy(monkeypatch):
    """A strided (non-contiguous) source, another dtype, a box past the grid or a grid past dst: False,
    dst untouched."""
    monkeypatch.setattr(grid_place, "MIN_BYTES", 0)
    src = np.ones((2, 3, 8), np.float32)
    dst = np.full((3, 30), 7.0, np.float32)
    assert not grid_place.place(dst, src[:, :, ::2], 0, (6,), (1,), (4,))
    assert not grid_place.place(dst, src.astype(np.float64), 0, (10,), (1,), (8,))
    half = np.full((3, 30), 7.0, np.float16)
    assert not grid_place.place(half, src.astype(np.float16), 0, (10,), (1,), (8,))   # no loop for float16
    assert (half == 7).all()
    assert not grid_place.place(dst, src, 0, (8,), (1,), (8,))       # lo + rows > q
    assert not grid_place.place(dst, src, 0, (10,), (0,), (9,))      # rows > x's cells
    assert not grid_place.place(dst, src, 12, (10,), (1,), (8,))     # front + images > cells
    assert (dst == 7).all()
    monkeypatch.setattr(grid_place, "MIN_BYTES", 1 << 62)
    assert not grid_place.place(dst, src, 0, (10,), (1,), (8,))      # small grids: NumPy's


PLACED_CASES = [
    ConvCase((2, 8, 30), (8, 8, 3), padding=1, seed=140),                                   # 1-D
    ConvCase((2, 6, 9, 12), (4, 6, 5, 3), padding=((2, 1), (0, 3)), seed=141),             # uneven padding
    ConvCase((1, 8, 6, 7, 8), (8, 8, 3, 3, 3), padding=1, seed=142),                        # 3-D
    ConvCase((2, 8, 11, 10), (16, 4, 3, 3), padding=1, groups=2, dilation=2, seed=143),     # groups, dilation
    ConvCase((2, 4, 12, 13), (4, 4, 4, 4), padding=1, stride=3, seed=144),                 # x cropped to what is read
    ConvCase((1, 4, 5, 5, 6, 7), (4, 4, 3, 3, 3, 3), padding=1, seed=145),                  # 4-D
    ConvCase((2, 8, 13, 14), (8, 8, 3, 5), stride=2, padding=2, seed=146),                  # strided: gy's grid
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", PLACED_CASES, ids=[f"placed{i}" for i in range(len(PLACED_CASES))])
def test_layers_on_placed_grids_match_jax(case, dtype, monkeypatch):
    """Every grid of every pass placed by the loop (on two threads), counted; y, gx, gW, gb against JAX."""
    monkeypatch.setattr(grid_place, "MIN_BYTES", 0)
    monkeypatch.setattr(grid_place, "SPLIT_BYTES", 0)
    placed = []
    real = grid_place.place
    monkeypatch.setattr(grid_place, "place", lambda *a: placed.append(ok := real(*a)) or ok)
    check_case(NUMPY, case, jax_reference(case), dtype, "direct", layer=True)
    assert placed and all(placed)
