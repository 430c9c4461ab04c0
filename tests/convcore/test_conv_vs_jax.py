"""convcore against JAX (lax.conv_general_dilated + jax.vjp) on a table of configurations.

Each row runs under both dtypes, every registered engine and "auto", through conv_forward /
conv_backward and through the reusing Convolution layer. The JAX reference is
computed once per row (JAX compiles per shape, which dominates the run time).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from conv_checks import check_case, refused
from conv_oracles import ConvCase, assert_close, jax_reference

import convcore

CASES = [
    # ---- N = 1
    ConvCase((2, 3, 11), (4, 3, 3), padding=1),
    ConvCase((2, 2, 17), (3, 2, 5), stride=2, dilation=2, padding=[(2, 3)], seed=1),
    ConvCase((1, 4, 9), (6, 2, 4), groups=2, padding="same", bias=False, seed=2),
    ConvCase((2, 2, 10), (2, 2, 4), stride=3, padding="full", seed=3),
    ConvCase((3, 2, 7), (3, 2, 7), padding="valid", seed=4),                 # kernel == input
    ConvCase((2, 3, 8), (6, 1, 3), groups=3, padding=(1,), seed=5),          # depthwise
    ConvCase((1, 2, 40), (2, 2, 17), padding=8, seed=6),                    # large kernel
    # ---- N = 2
    ConvCase((2, 3, 8, 7), (4, 3, 3, 3), padding=1, seed=10),
    ConvCase((2, 2, 6, 7), (3, 2, 3, 2), stride=(2, 1), dilation=(1, 2), padding=[(1, 0), (2, 1)], seed=11),
    ConvCase((1, 2, 7, 6), (2, 2, 4, 3), dilation=(2, 1), padding="same", seed=12),
    ConvCase((2, 4, 5, 6), (4, 2, 2, 3), groups=2, padding="full", bias=False, seed=13),
    ConvCase((1, 3, 11, 9), (2, 3, 5, 5), stride=3, padding="valid", seed=14),
    ConvCase((2, 1, 6, 5), (3, 1, 3, 2), stride=(1, 2), padding=(2, 0), seed=15),
    ConvCase((1, 2, 16, 16), (2, 2, 11, 11), padding=5, seed=16),           # large kernel
    # ---- N = 3
    ConvCase((2, 2, 5, 6, 4), (3, 2, 3, 3, 3), padding=1, seed=20),
    ConvCase((1, 4, 7, 6, 5), (2, 2, 3, 2, 2), stride=2, dilation=(1, 2, 1),
             padding=[(1, 2), (0, 1), (1, 0)], groups=2, seed=21),
    ConvCase((2, 1, 5, 5, 6), (2, 1, 2, 3, 4), padding="same", seed=22),
    # ---- N = 4
    ConvCase((2, 2, 5, 4, 4, 5), (2, 2, 3, 3, 3, 3), padding=1, seed=30),
    ConvCase((1, 2, 6, 4, 5, 5), (3, 2, 2, 2, 3, 2), stride=(2, 1, 1, 2), padding="full", seed=31),
    ConvCase((2, 4, 5, 5, 4, 4), (2, 2, 2, 2, 2, 2), groups=2, dilation=2, padding="valid", seed=32),
    # ---- N = 5
    ConvCase((1, 2, 4, 4, 3, 4, 4), (2, 2, 2, 2, 2, 2, 2), padding="same", seed=40),
    ConvCase((2, 2, 5, 4, 5, 4, 4), (2, 1, 3, 2, 3, 2, 2), groups=2, stride=2,
             padding=[(1, 0), (0, 1), 1, (0, 0), (1, 1)], seed=41),
    # ---- edge: in dim 0 the dilated kernel spans the whole padded input (one output row)
    ConvCase((1, 1, 1, 4), (1, 1, 2, 1), padding="same", dilation=(2, 1), bias=False, seed=42),
]


@functools.lru_cache(maxsize=None)
def reference(index):
    return jax_reference(CASES[index])


@pytest.mark.parametrize("algorithm", convcore.algorithms())
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"N{c.ndim}-{i}" for i, c in enumerate(CASES)])
def test_functions_match_jax(backend, index, dtype, algorithm):
    check_case(backend, CASES[index], reference(index), dtype, algorithm)


@pytest.mark.parametrize("algorithm", convcore.algorithms())
@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"N{c.ndim}-{i}" for i, c in enumerate(CASES)])
def test_layer_reusing_forward_matches_jax(backend, index, algorithm):
    check_case(backend, CASES[index], reference(index), np.float64, algorithm, layer=True)


@pytest.mark.parametrize("algorithm", convcore.engine_names())
def test_non_contiguous_inputs(backend, algorithm):
    """Views (transposed, strided) are read correctly, not reinterpreted as contiguous memory."""
    case = CASES[8]
    if refused(backend, case, algorithm):
        return
    ref = reference(8)
    xp = backend.xp
    # Same values, stored transposed / with a step: only the strides differ from ref's arrays.
    x = xp.asarray(np.ascontiguousarray(ref.x.swapaxes(-1, -2))).swapaxes(-1, -2)
    W = xp.asarray(np.repeat(ref.W, 2, axis=0))[::2]
    gy = xp.asarray(np.asfortranarray(ref.gy))
    y = convcore.conv_forward(x, W, xp.asarray(ref.b), algorithm=algorithm, **case.params)
    gx, gW, gb = convcore.conv_backward(gy, x, W, algorithm=algorithm, **case.params)
    assert_close("y", backend.to_numpy(y), ref.y, np.float64)
    assert_close("gx", backend.to_numpy(gx), ref.gx, np.float64)
    assert_close("gW", backend.to_numpy(gW), ref.gW, np.float64)
    assert_close("gb", backend.to_numpy(gb), ref.gb, np.float64)


def test_padding_words_resolve_as_explicit_pairs():
    """'same' puts the odd cell at the high end (as JAX/PyTorch) and 'full' pads (k-1)*dilation."""
    x_shape, W_shape = (1, 1, 9, 8), (1, 1, 4, 3)
    same = convcore.make_geometry(x_shape, W_shape, padding="same", dilation=(1, 2))
    full = convcore.make_geometry(x_shape, W_shape, padding="full", dilation=(1, 2))
    valid = convcore.make_geometry(x_shape, W_shape, padding="valid", dilation=(1, 2))
    assert same.pads == ((1, 2), (2, 2)) and same.out_shape == (1, 1, 9, 8)
    assert full.pads == ((3, 3), (4, 4)) and full.out_shape == (1, 1, 12, 12)
    assert valid.pads == ((0, 0), (0, 0)) and valid.out_shape == (1, 1, 6, 4)
