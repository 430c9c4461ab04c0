"""Layers with many spatial dims: every engine runs as far as the 64 axes of a NumPy (or CuPy) array
allow it (direct on the host: 30 dims, its column views carry two axes per dim; FFT: 61, its spectra
three more; with a stride, 31: the polyphase split carries two per dim), ``auto`` picks one that
can, and a layer no engine can run is refused by name before anything runs.

Found by probing the service: a 31-D layer was accepted, then failed in the worker with NumPy's
"maximum supported dimension" message, although the FFT engine could have run it. The layers here
have size 1 on every axis but the last, so JAX's 1-D convolution of the same numbers is their
reference (an independent oracle: JAX at 31 dims would only test XLA's rank limits)."""
from __future__ import annotations

import numpy as np
import pytest
from conv_oracles import ConvCase, assert_close, cast, jax_reference

import convcore

CASE = ConvCase((2, 2, 7), (3, 2, 3), padding=1, seed=5)


def _lifted(a, N):
    """(n, c, d) -> (n, c, 1, ..., 1, d) with N spatial axes."""
    return a.reshape(a.shape[:2] + (1,) * (N - 1) + a.shape[2:])


@pytest.mark.parametrize("N", [31, 61])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_past_the_direct_engines_axes_auto_runs_fft(N, dtype):
    ref = jax_reference(CASE)
    x, W, b, gy = cast(ref, dtype)
    op = convcore.Convolution(padding=[(0, 0)] * (N - 1) + [(1, 1)], algorithm="auto")
    y = op.forward(_lifted(x, N), _lifted(W, N), b)
    gx, gW, gb = op.backward(_lifted(gy, N))
    assert op.algorithm_used == "fft"
    for name, got, want in (("y", y, ref.y), ("gx", gx, ref.gx), ("gW", gW, ref.gW), ("gb", gb, ref.gb)):
        assert_close(name, got.reshape(want.shape), want, dtype, f"N={N}")
    with pytest.raises(ValueError, match="algorithm='direct' runs layers like this one up to 30 spatial dims"):
        convcore.Convolution(algorithm="direct").forward(_lifted(x, N), _lifted(W, N))


def test_a_layer_no_engine_can_run_is_refused_naming_each_engine():
    N = 62   # 64 axes with the batch and channels: the most an array holds
    x, W = np.ones((1, 1) + (1,) * (N - 1) + (4,)), np.ones((1, 1) + (1,) * (N - 1) + (2,))
    for call in (lambda: convcore.estimate_memory(x.shape, W.shape),
                 lambda: convcore.Convolution().forward(x, W)):
        with pytest.raises(ValueError, match="no engine runs this layer") as err:
            call()
        assert "up to 61 spatial dims" in str(err.value) and "up to 30 spatial dims" in str(err.value)
    with pytest.raises(ValueError, match="algorithm='fft' runs layers like this one up to 61 spatial dims"):
        convcore.Convolution(algorithm="fft").forward(x, W)


def test_a_pointwise_layer_runs_at_any_dims():
    """1x1 kernels use x as it lies (no column views): the direct engine runs them at 62 dims."""
    N = 62
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3) + (1,) * (N - 1) + (5,))
    W = rng.standard_normal((4, 3) + (1,) * N)
    op = convcore.Convolution()
    y = op.forward(x, W)
    want = np.einsum("ncl,oc->nol", x.reshape(2, 3, 5), W.reshape(4, 3))
    np.testing.assert_allclose(y.reshape(2, 4, 5), want, rtol=1e-12, atol=1e-12)
    assert op.algorithm_used == "direct"


def test_a_strided_layer_runs_to_31_dims_and_is_refused_past_them():
    """A stride splits every axis in two (the polyphase split): 2N + 2 axes, so 31 dims at most."""
    case = ConvCase((2, 2, 9), (3, 2, 3), stride=2, padding=1, seed=6)
    ref = jax_reference(case)
    x, W, b, gy = cast(ref, np.float64)
    op = convcore.Convolution(stride=2, padding=[(0, 0)] * 30 + [(1, 1)])
    y = op.forward(_lifted(x, 31), _lifted(W, 31), b)
    gx, gW, gb = op.backward(_lifted(gy, 31))
    assert op.algorithm_used == "fft"
    for name, got, want in (("y", y, ref.y), ("gx", gx, ref.gx), ("gW", gW, ref.gW)):
        assert_close(name, got.reshape(want.shape), want, np.float64, "N=31, stride 2")
    with pytest.raises(ValueError, match="no engine runs this layer") as err:
        convcore.estimate_memory(_lifted(x, 32).shape, _lifted(W, 32).shape, stride=2)
    assert "fft: algorithm='fft' runs layers like this one up to 31 spatial dims" in str(err.value)


def test_on_a_device_the_direct_engine_runs_past_30_dims(gpu_backend):
    """A device's direct passes keep N + 3 axes (no column views per dim): 31 dims run there (checked
    under the strict CuPy stand-in, and CuPy on a GPU when there is one), refused on the host."""
    ref = jax_reference(CASE)
    x, W, b, gy = (gpu_backend.asarray(_lifted(a, 31) if a.ndim == 3 else a) for a in cast(ref, np.float64))
    op = convcore.Convolution(padding=[(0, 0)] * 30 + [(1, 1)], algorithm="direct")
    y = op.forward(x, W, b)
    gx, gW, _ = op.backward(gy)
    for name, got, want in (("y", y, ref.y), ("gx", gx, ref.gx), ("gW", gW, ref.gW)):
        assert_close(name, gpu_backend.to_numpy(got).reshape(want.shape), want, np.float64, "device, N=31")
