"""Pointwise layers (every kernel size 1, no padding) through the direct engine's own path
(convcore/pointwise.py) against JAX, on every backend: strides, groups, dilation, "same" padding
(none for a 1-wide kernel), padding modes that pad nothing, N = 1..4, and the gradients asked one
at a time. Each test also checks that the pointwise path ran (no grid was built)."""
from __future__ import annotations

import numpy as np
import pytest
from conv_checks import check_case
from conv_oracles import ConvCase, assert_close, cast, jax_reference

import convcore
from convcore import costs, direct_conv, pointwise

CASES = [
    ConvCase((2, 6, 13), (4, 6, 1), seed=90),
    ConvCase((2, 4, 7, 9), (6, 2, 1, 1), groups=2, seed=91),
    ConvCase((3, 4, 7, 6), (4, 1, 1, 1), groups=4, stride=2, seed=92),                 # depthwise, strided
    ConvCase((1, 3, 5, 6, 7), (5, 3, 1, 1, 1), stride=(1, 2, 3), dilation=2, seed=93),
    ConvCase((2, 2, 3, 4, 3, 5), (3, 2, 1, 1, 1, 1), padding="same", bias=False, seed=94),  # 4-D
    ConvCase((1, 5, 9, 4), (5, 5, 1, 1), padding_mode="circular", stride=(3, 1), seed=95),
    # many channels on few cells: the weight gradient as one product of transposed copies
    ConvCase((3, 12, 2, 2), (16, 12, 1, 1), seed=96),
    ConvCase((2, 8, 3, 4), (16, 4, 1, 1), groups=2, stride=(2, 3), seed=97),
]


@pytest.fixture
def built(monkeypatch):
    """Each DirectConv built, to look at after the call."""
    engines = []
    real = direct_conv.DirectConv.__init__

    def observed(self, *args, **kwargs):
        real(self, *args, **kwargs)
        engines.append(self)

    monkeypatch.setattr(direct_conv.DirectConv, "__init__", observed)
    return engines


def _ran_pointwise(engines) -> bool:
    return bool(engines) and all(e.pointwise and e._A is None for e in engines)


@pytest.mark.parametrize("layer", [False, True], ids=["functions", "layer"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[f"N{c.ndim}-{c.seed}" for c in CASES])
def test_pointwise_layers_match_jax(backend, built, case, dtype, layer):
    check_case(backend, case, jax_reference(case), dtype, "direct", layer=layer)
    assert _ran_pointwise(built)


@pytest.mark.parametrize("need", [("x",), ("W",), ("b",)])
@pytest.mark.parametrize("case", CASES[1:4], ids=[f"N{c.ndim}-{c.seed}" for c in CASES[1:4]])
def test_each_gradient_alone(backend, built, case, need):
    ref = jax_reference(case)
    x, W, _, gy = (backend.asarray(a) if a is not None else None for a in cast(ref, np.float64))
    grads = convcore.conv_backward(gy, x, W, algorithm="direct", need=need, **case.params)
    for name in ("x", "W", "b"):
        got = getattr(grads, "g" + name)
        if name not in need:
            assert got is None
            continue
        want = ref.gy.sum(axis=(0,) + tuple(range(2, ref.gy.ndim))) if name == "b" else getattr(ref, "g" + name)
        assert_close("g" + name, backend.to_numpy(got), want, np.float64, str(case))
    assert _ran_pointwise(built)


def test_both_forms_of_the_weight_gradient_are_covered():
    """The cases above take both: per-image products summed, and one product over every image."""
    forms = {pointwise._gW_form(convcore.make_geometry(c.x_shape, c.W_shape, **c.params))
             for c in CASES if c.x_shape[0] > 1}
    assert forms == {"per image", "transposed"}


def test_padding_or_a_wider_kernel_keeps_the_grid_path():
    geom = convcore.make_geometry((1, 2, 5, 5), (2, 2, 1, 1), padding=1)
    assert not pointwise.applies(geom)
    assert not pointwise.applies(convcore.make_geometry((1, 2, 5, 5), (2, 2, 1, 2)))
    assert pointwise.applies(convcore.make_geometry((1, 2, 5, 5), (2, 2, 1, 1), stride=2, dilation=3))


@pytest.mark.parametrize("need", [("y",), ("x", "W", "b")], ids=["forward", "backward"])
@pytest.mark.parametrize("stride", [1, 2])
def test_memory_estimate_counts_the_pointwise_path(need, stride):
    """The direct estimate is the pointwise path's own (no grid or column buffers) and bounds it."""
    est = convcore.estimate_memory((4, 16, 24, 24), (32, 16, 1, 1), np.float32, algorithm="direct",
                                   stride=stride, need=need)
    assert "grid_input" not in est["allocations"]
    out_cells = 4 * 32 * (24 // stride) ** 2 * 4
    if "y" in need:
        assert est["allocations"]["y"] == out_cells
    else:
        assert est["allocations"]["gx"] == 4 * 16 * 24 * 24 * 4
    geom = convcore.make_geometry((4, 16, 24, 24), (32, 16, 1, 1), stride=stride)
    assert costs.direct_estimate(geom, 4, 2**30, costs.CPU_RATES).seconds < costs.fft_estimate(
        geom, 4, 2**30, costs.CPU_RATES).seconds
