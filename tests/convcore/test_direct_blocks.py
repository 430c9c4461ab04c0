"""The direct engine's blocked im2col against JAX when the work is cut into many blocks.

The table in test_conv_vs_jax.py uses layers so small that each pass is one block on
one thread. Here blocks are shrunk to a few positions and (on the CPU) every pass goes
to the thread pool, so block edges (inside an image, across images, the last short block),
the per-thread weight-gradient partials and their sum are all exercised.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from conv_checks import check_case
from conv_oracles import ConvCase, jax_reference

from convcore import backend as convcore_backend
from convcore import costs, direct_conv, positions

CASES = [
    ConvCase((3, 2, 13), (4, 2, 3), padding=1, seed=60),
    ConvCase((2, 3, 9, 7), (4, 3, 3, 3), padding=(1, 2), dilation=(2, 1), seed=61),
    ConvCase((2, 4, 5, 6, 4), (4, 2, 3, 2, 3), groups=2, stride=(1, 2, 1), padding=1, seed=62),
    ConvCase((1, 2, 4, 5, 4, 3), (3, 2, 2, 3, 2, 2), padding="same", padding_mode="circular", seed=63),
    ConvCase((2, 3, 11, 9), (4, 3, 3, 2), stride=(2, 3), dilation=(2, 1), padding=(2, 1), seed=64),
    ConvCase((2, 2, 7, 6, 9), (3, 2, 3, 2, 3), stride=(1, 2, 2), padding=(1, 0, 1), padding_mode="reflect", seed=65),
    # the input gradient over the cells of x only: asymmetric zero padding, and a strided axis with
    # one output, whose grid reads 3 of the 4 rows of x (the fourth gets a zero gradient)
    ConvCase((2, 3, 6, 7), (4, 3, 3, 2), padding=((2, 0), (1, 3)), seed=66),
    ConvCase((2, 3, 4, 7), (5, 3, 3, 3), stride=(2, 1), padding=((0, 0), (1, 1)), seed=67),
]


@functools.lru_cache(maxsize=None)
def reference(index):
    return jax_reference(CASES[index])


@pytest.fixture(autouse=True)
def blas_passes(monkeypatch):
    """These tests pin the BLAS passes, which run where Numba does not and for passes of fewer than
    ``direct_kernel.MIN_ROWS`` rows; the compiled passes have their own (test_direct_kernel.py)."""
    monkeypatch.setattr(direct_conv.DirectConv, "_compiled", lambda self, rows: False)


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of 5 positions, and every pass handed to 3 threads however small."""
    monkeypatch.setattr(costs, "BLOCK_BYTES", 1)
    monkeypatch.setattr(costs, "MIN_BLOCK", 5)
    monkeypatch.setattr(convcore_backend, "SPLIT_WORK", 0)
    monkeypatch.setenv("CONVCORE_NUM_THREADS", "3")


@pytest.fixture(params=["in-place", "polyphase"])
def stride_mode(request, monkeypatch):
    """Strided forward and weight-gradient passes both ways: outputs read in place on the padded
    input, and the polyphase split (costs.native_stride_pays decides between them by kernel)."""
    monkeypatch.setattr(costs, "NATIVE_STRIDE_MIN_SAVING", 0.0 if request.param == "in-place" else float("inf"))
    return request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"N{c.ndim}-{i}" for i, c in enumerate(CASES)])
def test_many_blocks_on_threads_match_jax(backend, tiny_blocks, stride_mode, index, dtype):
    # On a device a tiny budget leaves no room for gathered columns: one product per tap.
    check_case(backend, CASES[index], reference(index), dtype, "direct", layer=True, memory_budget=64)
    check_case(backend, CASES[index], reference(index), dtype, "direct")


def test_tiny_blocks_really_split_the_work(tiny_blocks):
    """The fixture does what it says: a pass of 13 positions runs as several blocks on 3 threads."""
    import convcore

    seen = []
    original = direct_conv.run_parallel

    def recording(work, parts):
        seen.append(len(parts))
        return original(work, parts)

    mp = pytest.MonkeyPatch()
    mp.setattr(direct_conv, "run_parallel", recording)
    try:
        x = np.ones((1, 1, 13))
        convcore.conv_forward(x, np.ones((1, 1, 3)), algorithm="direct", padding=1)
    finally:
        mp.undo()
    assert seen == [3]


@pytest.mark.parametrize("dims, target", [((3, 11), 5), ((2, 5, 4, 6), 7), ((2, 5, 4, 6), 24), ((4, 3, 2), 1000),
                                          ((1, 7), 3)])
def test_position_space_blocks_cover_each_position_once_at_its_grid_index(dims, target):
    """A block is the run [start, start + size) of the space's positions in row-major order, and its
    box (base, shape, strides) addresses exactly those positions' grid indices."""
    strides = tuple(int(s) for s in np.random.default_rng(len(dims)).integers(1, 50, len(dims)))
    space = positions.Space(dims, strides)
    grid_index = np.einsum("i...,i->...", np.indices(dims), np.array(strides)).ravel()   # per position
    seen = np.zeros(space.count, int)
    for block in space.blocks(target):
        assert 0 < block.size <= target
        seen[block.start:block.start + block.size] += 1
        box = block.base + np.einsum("i...,i->...", np.indices(block.shape), np.array(block.strides)).ravel()
        np.testing.assert_array_equal(box, grid_index[block.start:block.start + block.size])
        by_index = np.arange(space.count).reshape(dims)[block.index].ravel()   # the CPU path's slice
        np.testing.assert_array_equal(by_index, np.arange(block.start, block.start + block.size))
    np.testing.assert_array_equal(seen, 1)
