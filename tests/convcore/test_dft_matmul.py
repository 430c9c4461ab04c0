"""Transforms along axes with little data as DFT-matrix products (convcore/dft_matmul.py): the
pruned transforms of backend.rfftn / irfftn against NumPy's FFT, and the FFT engine taking them
against JAX."""
from __future__ import annotations

import numpy as np
import pytest
from conv_checks import NUMPY, check_case
from conv_oracles import ConvCase, jax_reference

from convcore import backend, dft_matmul


@pytest.fixture
def every_axis(monkeypatch):
    """Every axis the rule would weigh goes through the matrix however little work it has; the
    products are counted (an observation: the real functions run)."""
    monkeypatch.setattr(dft_matmul, "DFT_MIN_MADDS", 0)
    seen = {"forward_real": 0, "forward": 0, "inverse": 0, "inverse_real": 0}
    for name in seen:
        real = getattr(dft_matmul, name)

        def counted(*args, _real=real, _name=name):
            seen[_name] += 1
            return _real(*args)
        monkeypatch.setattr(dft_matmul, name, counted)
    return seen


TRANSFORMS = [
    # (data shape, transform shape, axes)
    ((4, 3, 9, 9, 9), (32, 32, 32), (-3, -2, -1)),      # filters in a 3-D plan, axes last
    ((5, 13, 13), (80, 80), (-2, -1)),
    ((3, 7), (33,), (-1,)),                               # odd length
    ((2, 5, 6), (16, 15), (-2, -1)),                      # odd length on the real axis
    ((6, 4, 2, 3), (16, 12), (0, 1)),                     # axes first (channels-last spectra)
    ((3, 5, 4, 2), (12, 16), (1, 2)),                     # axes in the middle
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape_a,shape,axes", TRANSFORMS)
def test_pruned_transforms_match_numpy(shape_a, shape, axes, dtype, every_axis):
    a = np.random.default_rng(3).standard_normal(shape_a).astype(dtype)
    ref = np.fft.rfftn(a.astype(np.float64), s=shape, axes=axes)
    got = backend.rfftn(np, a, shape, axes)
    assert got.dtype == np.result_type(dtype, np.complex64) and got.shape == ref.shape
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
    crop = tuple(min(a.shape[ax], n) for ax, n in zip(axes, shape))
    kept = {ax % a.ndim: c for ax, c in zip(axes, crop)}
    ref_back = np.fft.irfftn(ref, s=shape, axes=axes)[tuple(slice(0, kept.get(d)) for d in range(a.ndim))]
    back = backend.irfftn(np, got, shape, axes, crop)
    assert back.dtype == dtype and back.shape == ref_back.shape
    assert np.abs(back - ref_back).max() <= tol * np.abs(ref_back).max()
    np.testing.assert_allclose(back, a[tuple(slice(0, c) for c in back.shape)], atol=tol * 10)
    assert every_axis["forward_real"] + every_axis["forward"] >= 1 and every_axis["inverse"] + every_axis["inverse_real"] >= 1


def test_the_rule():
    """The matrix where the data fill little of a long enough line and there is work enough."""
    big = dft_matmul.DFT_MIN_MADDS
    assert dft_matmul.pays(9, 32, big // (9 * 32) + 1)
    assert not dft_matmul.pays(9, 32, 10)                 # too little work: the FFT's lines
    assert not dft_matmul.pays(32, 32, big)               # the whole line is data
    assert not dft_matmul.pays(129, 4224, big)            # 129 > 2.5 log2(4224): the FFT
    assert dft_matmul.pays(30, 4224, big)


FFT_CASES = [
    ConvCase((2, 3, 10, 11, 9), (4, 3, 4, 3, 5), seed=120),                           # valid 3-D
    ConvCase((2, 4, 17, 15), (6, 4, 6, 5), padding=3, seed=121),                      # "same"-ish 2-D
    ConvCase((2, 4, 12, 13), (4, 2, 5, 4), padding=((1, 2), (0, 3)), groups=2, seed=122),
    ConvCase((3, 2, 40), (3, 2, 7), padding=3, dilation=2, seed=123),                  # 1-D, dilated
    ConvCase((1, 2, 14, 13), (4, 2, 5, 5), stride=2, padding=2, seed=124),            # strided
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", FFT_CASES, ids=[f"fft{i}" for i in range(len(FFT_CASES))])
def test_fft_engine_with_matrix_transforms_matches_jax(case, dtype, every_axis):
    check_case(NUMPY, case, jax_reference(case), dtype, "fft", layer=True)
    # the filters' spectrum and the filter gradient's inverse both went through the matrix
    assert every_axis["forward_real"] + every_axis["forward"] >= 1
    assert every_axis["inverse"] + every_axis["inverse_real"] >= 1


def test_a_strided_spectrum_is_inverted_by_the_fft(every_axis):
    """The inverse takes the matrix only on a contiguous spectrum: a transposed one (channels-last
    spectra) would be copied whole first, which cost more than the FFT saved; the result is the same."""
    a = np.random.default_rng(4).standard_normal((3, 4, 64))
    spec = np.fft.rfft(a, axis=-1)
    strided = np.ascontiguousarray(spec.transpose(2, 0, 1)).transpose(1, 2, 0)   # same values, axis last, not contiguous
    assert not strided.flags.c_contiguous
    got = backend.irfftn(np, strided, (64,), (-1,), (5,))
    np.testing.assert_allclose(got, a[..., :5], atol=1e-12)
    assert every_axis["inverse_real"] == 0
    backend.irfftn(np, np.ascontiguousarray(strided), (64,), (-1,), (5,))
    assert every_axis["inverse_real"] == 1


def test_an_empty_axis_transforms_to_zeros():
    a = np.zeros((2, 0))
    np.testing.assert_array_equal(backend.rfftn(np, a, (8,), (-1,)), np.fft.rfft(a, n=8))


def test_the_pruning_rule():
    """Axis by axis where some axis is at most half data, or where the passes come to little of a
    whole transform's (N-D valid layers' outputs: a little more than half of every axis)."""
    assert backend.worth_pruning((9, 9, 9), (32, 32, 32))
    # 6^5 of 10^5: passes (1 + 0.6 + 0.6^2 + 0.6^3 + 0.6^4) / 5
    assert backend.pruned_passes((6,) * 5, (10,) * 5) == pytest.approx(2.3056 / 5)
    assert backend.worth_pruning((6,) * 5, (10,) * 5)
    assert backend.worth_pruning((10,) * 4, (16,) * 4)          # 0.56
    assert not backend.worth_pruning((26,) * 3, (32,) * 3)      # 0.82: one whole transform
    assert not backend.worth_pruning((64, 64), (72, 72))
    assert backend.pruned_passes((32, 32), (32, 32)) == 1.0


@pytest.fixture
def whole_transforms(monkeypatch):
    """The shapes of the arrays transformed whole (rfftn / irfftn of the FFT library), not axis by axis."""
    shapes = []
    real = backend._fft_module

    class Counting:
        def __init__(self, module):
            self.module = module

        def __getattr__(self, name):
            fn = getattr(self.module, name)
            if name not in ("rfftn", "irfftn"):
                return fn

            def whole(a, *args, **kw):
                shapes.append(a.shape)
                return fn(a, *args, **kw)
            return whole

    def counting(xp):
        module, kw = real(xp)
        return Counting(module), kw

    monkeypatch.setattr(backend, "_fft_module", counting)
    return shapes


@pytest.mark.parametrize("shape_a,shape", [((2, 6, 6, 6, 6, 6), (10,) * 5), ((3, 10, 10, 10, 10), (16,) * 4)])
def test_transforms_mostly_full_go_axis_by_axis(shape_a, shape, whole_transforms):
    a = np.random.default_rng(4).standard_normal(shape_a).astype(np.float32)
    axes = tuple(range(1, a.ndim))
    ref = np.fft.rfftn(a.astype(np.float64), s=shape, axes=axes)
    got = backend.rfftn(np, a, shape, axes)
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()
    back = backend.irfftn(np, got, shape, axes, shape_a[1:])
    np.testing.assert_allclose(back, a, atol=1e-5)
    assert whole_transforms == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fft_engine_prunes_a_valid_4d_layers_outputs(dtype, whole_transforms):
    """y and gy (6^4 of a 10^4 plan) axis by axis, against JAX; only x and gx are whole transforms."""
    case = ConvCase((1, 2, 10, 10, 10, 10), (3, 2, 5, 5, 5, 5), seed=125)
    check_case(NUMPY, case, jax_reference(case), dtype, "fft", layer=True)
    # x forward, gx's spectrum inverse (y's and gy's would be 4 more: forward and backward check)
    assert sorted(s[-4:] for s in whole_transforms) == [(10, 10, 10, 6), (10, 10, 10, 10)]
