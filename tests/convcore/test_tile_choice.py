"""The FFT engine's overlap-save tiles (costs.choose_tile): in three or more dims a layer is cut
into tiles only when the model predicts at least a 60 % saving; in two dims 40 %; in one dim on
the CPU 65 % (on a GPU 40 %). On a GPU, N-D windows are also at least 4 kernel lengths.

Why (measured, docs/benchmarks.md "Fifth round"): small multi-dimensional windows ran 1.2-1.7x
slower than one transform of the whole when the 40 % rule tiled them (4-D k5, 3-D k7), while
the layers the model gives a large saving still gain from tiles. Correctness of either choice
is checked against JAX in test_spectra_reuse.py and test_conv_vs_jax.py.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from convcore import backend, costs, make_geometry, tiling
from convcore.reduction import Reduction

BUDGET = 2**31


def _valid(geom) -> tuple:
    red = Reduction(None, geom, keep_dilation=False)
    return tuple(q - k + 1 for q, k in zip(red.qx, red.qk))


def _best_over_whole(geom, rates=costs.CPU_RATES, windows=(2, 4, 8)) -> float:
    """The model's cheapest tiling (windows of ``windows`` kernel lengths) / the whole extent."""
    red = Reduction(None, geom, keep_dilation=False)
    options = []
    for v, k in zip(_valid(geom), red.qk):
        sizes = {v} | {backend.next_fast_len(c * k) - k + 1 for c in windows}
        options.append(sorted(t for t in sizes if k <= t <= v) or [v])
    best = min(costs.fft_seconds(geom, 4, t, rates) for t in itertools.product(*options))
    return best / costs.fft_seconds(geom, 4, _valid(geom), rates)


@pytest.mark.parametrize("x_shape, W_shape, padding", [
    # 4-D k5 at 8 channels: tiles measured 0.93x the whole's time (alternated, 2 cores), no clear gain.
    # (At 4 channels, where tiles ran 1.64x slower, the whole transform's frequency-last products
    # now leave tiles no modest saving to refuse: ``test_frequency_last_layers_...`` below.) Measured
    # on 12^4 with padding 2, a 16^4 plan then; since the untiled plan ends in the padding's zeros
    # (costs.fft_shape) that layer's is 15^4, and valid 16^4 has the 16^4 plan.
    ((2, 8, 16, 16, 16, 16), (8, 8, 5, 5, 5, 5), 0),
    ((2, 8, 32, 32, 32), (8, 8, 7, 7, 7), 0),          # 3-D k7: 1.19x slower
])
def test_n_d_layers_with_a_modest_predicted_saving_keep_one_transform(x_shape, W_shape, padding):
    geom = make_geometry(x_shape, W_shape, padding=padding)
    ratio = _best_over_whole(geom)
    assert costs.CPU_RATES.tile_gain_nd < ratio < costs.TILE_GAIN   # a 40-60 % predicted saving: the 2-D rule would tile
    assert costs.choose_tile(geom, 4, BUDGET) == _valid(geom)


def test_frequency_last_layers_are_modelled_without_a_call_per_frequency():
    """With few channels and rows the host sums channels over frequency-last spectra (no BLAS call
    per frequency): the model charges the whole 4-D k5 transform no calls, the tiles (more rows,
    channels last) theirs, so tiling predicts little saving and the whole is kept."""
    geom = make_geometry((2, 4, 12, 12, 12, 12), (4, 4, 5, 5, 5, 5), padding=2)
    assert costs.spectra_frequency_last(2, 4, 4) and not costs.spectra_frequency_last(2 * 8, 4, 4)
    assert _best_over_whole(geom) > costs.TILE_GAIN
    assert costs.choose_tile(geom, 4, BUDGET) == _valid(geom)
    no_calls = dataclasses.replace(costs.CPU_RATES, matrix_call_s=0.0)
    assert costs.fft_seconds(geom, 4, _valid(geom)) == pytest.approx(costs.fft_seconds(geom, 4, _valid(geom), no_calls))


def test_an_n_d_layer_with_a_large_predicted_saving_is_tiled():
    # measured 0.55x the whole's time as 48^3 with padding 2; that layer's whole plan is now shorter
    # (costs.fft_shape: 50^3, its tiles 0.9x of it) and the model keeps it. Valid 52^3: the measured plan.
    geom = make_geometry((1, 8, 52, 52, 52), (8, 8, 5, 5, 5))
    assert _best_over_whole(geom) < costs.CPU_RATES.tile_gain_nd
    assert costs.choose_tile(geom, 4, BUDGET) != _valid(geom)


def test_two_d_layers_keep_the_40_percent_rule():
    geom = make_geometry((4, 16, 64, 64), (16, 16, 7, 7), padding=3)   # tiles measured 0.76x the whole's time
    assert costs.CPU_RATES.tile_gain_nd < _best_over_whole(geom) < costs.TILE_GAIN
    assert costs.choose_tile(geom, 4, BUDGET) != _valid(geom)


@pytest.mark.parametrize("x_shape, W_shape, padding", [
    ((8, 16, 4096), (16, 16, 65), 0),     # 206-point tiles (the 40 % rule's): 15.4 ms, whole 9.0 ms
    ((4, 16, 16384), (16, 16, 129), 0),   # 412-point tiles: 28-31.7 ms, whole 23.0 ms
    ((8, 8, 8192), (8, 8, 257), 0),       # 824-point tiles: 9.9 ms, whole 7.6 ms
])
def test_one_d_layers_with_a_40_to_65_percent_predicted_saving_keep_one_transform(x_shape, W_shape, padding):
    geom = make_geometry(x_shape, W_shape, padding=padding)
    assert costs.CPU_RATES.tile_gain_1d < _best_over_whole(geom) < costs.TILE_GAIN   # the 40 % rule would tile
    assert costs.choose_tile(geom, 4, BUDGET) == _valid(geom)


@pytest.mark.parametrize("x_shape, W_shape, padding", [
    ((2, 8, 65536), (32, 8, 129), 0),     # whole 1.70x the 952-point tiles' time
    ((2, 32, 16384), (32, 32, 257), 0),   # whole 86.6 ms, 824-point tiles 35.9 ms
])
def test_one_d_layers_with_a_large_predicted_saving_are_tiled(x_shape, W_shape, padding):
    geom = make_geometry(x_shape, W_shape, padding=padding)
    assert _best_over_whole(geom) < costs.CPU_RATES.tile_gain_1d
    assert costs.choose_tile(geom, 4, BUDGET) != _valid(geom)


# GPU (H100, benchmarks/tile_rule_ab.py --device gpu): windows of 2 kernel lengths are many tiny
# batched transforms; the figures are each tiling's time over the fastest tiling's. Measured with
# padding 1 on 24^3 and 12^4; here valid on 26^3 and 14^4: the same plans (a padded layer's whole
# plan is now shorter, costs.fft_shape).
@pytest.mark.parametrize("x_shape, W_shape, padding", [
    ((1, 4, 26, 26, 26), (4, 4, 3, 3, 3), 0),                # 4x4x24 tiles 2.42, whole 1.00
    ((1, 8, 14, 14, 14, 14), (16, 8, 3, 3, 3, 3), 0),        # 4x4x4x12 tiles 1.67, whole 1.00
])
def test_gpu_keeps_small_n_d_layers_whole_that_two_kernel_windows_would_tile(x_shape, W_shape, padding):
    geom = make_geometry(x_shape, W_shape, padding=padding)
    assert costs.GPU_RATES.tile_windows_nd == (4, 8)
    assert _best_over_whole(geom, costs.GPU_RATES, windows=(2, 4, 8)) < costs.TILE_GAIN   # 40 % rule would tile
    assert costs.choose_tile(geom, 4, BUDGET, costs.GPU_RATES) == _valid(geom)


def test_gpu_tiles_a_large_n_d_layer_with_wide_windows():
    # measured as 48^3 with padding 4 (28^3 tiles 1.00, 10x10x48 1.06); valid 56^3 has that plan
    geom = make_geometry((1, 32, 56, 56, 56), (16, 32, 9, 9, 9))
    tile = costs.choose_tile(geom, 4, BUDGET, costs.GPU_RATES)
    assert tile != _valid(geom)
    assert all(t + 9 - 1 >= 4 * 9 - 1 for t in tile)   # windows of about 4 kernel lengths or more


def test_memory_bound_tiles_on_a_gpu_still_fit_the_budget():
    geom = make_geometry((8, 64, 64, 64, 64), (64, 64, 7, 7, 7), padding=3)
    budget = 256 * 2**20
    tile = costs.choose_tile(geom, 4, budget, costs.GPU_RATES)
    assert tile != _valid(geom)
    assert costs.fft_bytes(geom, 4, tile, 1) <= budget // 2


def test_the_model_decides_the_layout_per_chunk_of_rows_as_the_engine_does():
    """Under a budget that splits the rows into chunks, the engine picks its layout per chunk
    (fft_conv.FFTConv.frequency_last); the model charges what the engine does with NumPy's sums
    (whose figures it keeps, see costs.py): no per-frequency calls for frequency-last chunks, and
    one set per chunk for channels-last ones."""
    geom = make_geometry((2, 3, 200, 200), (3, 3, 5, 5), padding=2)
    budget = 250_000
    tile = costs.choose_tile(geom, 4, budget)
    red = Reduction(None, geom, keep_dilation=False)
    rows = geom.batch * math.prod(tiling.tile_counts(_valid(geom), tile))
    chunk = costs.fft_row_chunk(geom, 4, tile, rows, budget)
    assert chunk < rows and costs.spectra_frequency_last(chunk, red.channels, red.out_channels)
    assert not costs.spectra_frequency_last(rows, red.channels, red.out_channels)
    no_calls = dataclasses.replace(costs.CPU_RATES, matrix_call_s=0.0)
    assert costs.fft_seconds(geom, 4, tile, budget=budget) == pytest.approx(
        costs.fft_seconds(geom, 4, tile, no_calls, budget))
    assert costs.fft_seconds(geom, 4, tile) > costs.fft_seconds(geom, 4, tile, no_calls)   # all rows: channels last
    # channels last in chunks: the calls are made once per chunk
    wide = make_geometry((2, 16, 200, 200), (16, 16, 5, 5), padding=2)
    tile = costs.choose_tile(wide, 4, budget)
    rows = wide.batch * math.prod(tiling.tile_counts(_valid(wide), tile))
    chunks = -(-rows // costs.fft_row_chunk(wide, 4, tile, rows, budget))
    assert chunks > 1
    per_set = costs.fft_seconds(wide, 4, tile) - costs.fft_seconds(wide, 4, tile, no_calls)
    charged = costs.fft_seconds(wide, 4, tile, budget=budget) - costs.fft_seconds(wide, 4, tile, no_calls, budget)
    assert charged == pytest.approx(chunks * per_set)
