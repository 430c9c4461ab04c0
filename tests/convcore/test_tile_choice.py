"""The FFT engine's overlap-save tiles (costs.choose_tile): in three or more dims a layer is cut
into tiles only when the model predicts at least a 60 % saving; in one and two dims 40 %.

Why (measured, docs/benchmarks.md "Fifth round"): small multi-dimensional windows ran 1.2-1.7x
slower than one transform of the whole when the 40 % rule tiled them (4-D k5, 3-D k7), while
the layers the model gives a large saving still gain from tiles. Correctness of either choice
is checked against JAX in test_spectra_reuse.py and test_conv_vs_jax.py.
"""
from __future__ import annotations

import itertools

import pytest

from convcore import backend, costs, make_geometry
from convcore.reduction import Reduction

BUDGET = 2**31


def _valid(geom) -> tuple:
    red = Reduction(None, geom, keep_dilation=False)
    return tuple(q - k + 1 for q, k in zip(red.qx, red.qk))


def _best_over_whole(geom) -> float:
    """The model's cheapest tiling (over the candidates choose_tile considers) / the whole extent."""
    red = Reduction(None, geom, keep_dilation=False)
    options = []
    for v, k in zip(_valid(geom), red.qk):
        sizes = {v} | {backend.next_fast_len(c * k) - k + 1 for c in (2, 4, 8)}
        options.append(sorted(t for t in sizes if k <= t <= v) or [v])
    best = min(costs.fft_seconds(geom, 4, t) for t in itertools.product(*options))
    return best / costs.fft_seconds(geom, 4, _valid(geom))


@pytest.mark.parametrize("x_shape, W_shape, padding", [
    ((2, 4, 12, 12, 12, 12), (4, 4, 5, 5, 5, 5), 2),   # 4-D k5: tiles measured 1.64x slower
    ((2, 8, 32, 32, 32), (8, 8, 7, 7, 7), 0),          # 3-D k7: 1.19x slower
])
def test_n_d_layers_with_a_modest_predicted_saving_keep_one_transform(x_shape, W_shape, padding):
    geom = make_geometry(x_shape, W_shape, padding=padding)
    ratio = _best_over_whole(geom)
    assert costs.TILE_GAIN_3D < ratio < costs.TILE_GAIN   # a 40-60 % predicted saving: the 2-D rule would tile
    assert costs.choose_tile(geom, 4, BUDGET) == _valid(geom)


def test_an_n_d_layer_with_a_large_predicted_saving_is_tiled():
    geom = make_geometry((1, 8, 48, 48, 48), (8, 8, 5, 5, 5), padding=2)   # measured 0.55x the whole's time
    assert _best_over_whole(geom) < costs.TILE_GAIN_3D
    assert costs.choose_tile(geom, 4, BUDGET) != _valid(geom)


def test_two_d_layers_keep_the_40_percent_rule():
    geom = make_geometry((4, 16, 64, 64), (16, 16, 7, 7), padding=3)   # tiles measured 0.76x the whole's time
    assert costs.TILE_GAIN_3D < _best_over_whole(geom) < costs.TILE_GAIN
    assert costs.choose_tile(geom, 4, BUDGET) != _valid(geom)
