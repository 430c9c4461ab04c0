"""CONVCORE_FFT=fftw: the host's transforms through pyFFTW (FFTW), checked against JAX.

The FFT engine keeps spectra between forward and backward and hands FFTW strided, cropped and
zero-padded arrays; each case runs forward and all three gradients against JAX, and counts that
the transforms did go through pyFFTW (a silent fall-back to SciPy would pass the comparison)."""
from __future__ import annotations

import collections
import logging
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conv_checks import NUMPY, check_case
from conv_oracles import ConvCase, jax_reference

import convcore
from convcore import backend, resources

scipy_fft = pytest.importorskip(
    "pyfftw.interfaces.scipy_fft", reason="pyFFTW is not installed (the test extra installs it)")


@pytest.fixture
def fftw(monkeypatch):
    """CONVCORE_FFT=fftw, with a count of the calls that reach pyFFTW's functions."""
    monkeypatch.setenv("CONVCORE_FFT", "fftw")
    calls = collections.Counter()
    for name in ("rfftn", "irfftn", "rfft", "irfft", "fft", "ifft"):
        real = getattr(scipy_fft, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(scipy_fft, name, counted)
    return calls


CASES = [
    ConvCase((2, 3, 40), (4, 3, 9), seed=140),                                        # 1-D valid
    ConvCase((2, 4, 17, 15), (6, 4, 6, 5), padding=3, seed=141),                      # 2-D "same"-ish
    ConvCase((2, 3, 10, 11, 9), (4, 3, 4, 3, 5), seed=142),                           # 3-D valid
    ConvCase((1, 2, 7, 6, 8, 5), (3, 2, 3, 4, 3, 2), padding=1, seed=143),            # 4-D
    ConvCase((1, 2, 6, 5, 6, 5, 4), (2, 2, 3, 2, 3, 2, 2), seed=144),                 # 5-D
    ConvCase((2, 4, 12, 13), (4, 2, 5, 4), padding=((1, 2), (0, 3)), groups=2, seed=145),
    ConvCase((1, 2, 14, 13), (4, 2, 5, 5), stride=2, padding=2, dilation=(1, 2), seed=146),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=[f"fftw{i}" for i in range(len(CASES))])
def test_fft_engine_on_fftw_matches_jax(case, dtype, fftw):
    check_case(NUMPY, case, jax_reference(case), dtype, "fft", layer=True)
    assert fftw["rfftn"] + fftw["rfft"] >= 1 and fftw["irfftn"] + fftw["irfft"] >= 1, dict(fftw)


def test_pruned_and_cropped_transforms_match_scipy(fftw):
    """The axis-by-axis paths (a small filter in a large plan, a crop of a few outputs) on FFTW."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3, 4, 5, 3)).astype(np.float32)
    got = backend.rfftn(np, a, (16, 12), (-2, -1))
    np.testing.assert_allclose(got, np.fft.rfftn(a, s=(16, 12), axes=(-2, -1)), rtol=0, atol=2e-5)
    spec = np.fft.rfftn(rng.standard_normal((2, 16, 12)), axes=(-2, -1))
    cut = backend.irfftn(np, spec, (16, 12), (-2, -1), crop=(3, 4))
    np.testing.assert_allclose(cut, np.fft.irfftn(spec, s=(16, 12), axes=(-2, -1))[:, :3, :4], rtol=0, atol=1e-12)
    assert fftw["fft"] >= 1 and fftw["ifft"] >= 1


def test_threads_transforming_at_once_get_their_own_results(fftw):
    """Plans are cached per thread: two threads running different layers at once (a worker's job
    beside its idle lane) each get their own layer's results, the same as SciPy's."""
    rng = np.random.default_rng(6)
    layers = [(rng.standard_normal((2, 3, 33, 30)), rng.standard_normal((4, 3, 7, 6))),
              (rng.standard_normal((1, 2, 20, 21, 19)), rng.standard_normal((2, 2, 5, 4, 6)))]

    def run(i):
        x, W = layers[i % 2]
        conv = convcore.Convolution(algorithm="fft")
        y = conv.forward(x, W)
        return i % 2, y, conv.backward(np.ones_like(y))[1]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(16)))
    expected = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVCORE_FFT", "pocketfft")
        for x, W in layers:
            conv = convcore.Convolution(algorithm="fft")
            y = conv.forward(x, W)
            expected.append((y, conv.backward(np.ones_like(y))[1]))
    for which, y, gW in results:
        np.testing.assert_allclose(y, expected[which][0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(gW, expected[which][1], rtol=0, atol=1e-9)
    assert fftw["rfftn"] + fftw["rfft"] >= 16


def test_an_unknown_library_is_refused(monkeypatch):
    monkeypatch.setenv("CONVCORE_FFT", "mkl")
    with pytest.raises(ValueError, match="CONVCORE_FFT must be one of pocketfft, fftw, got 'mkl'"):
        convcore.Convolution(algorithm="fft").forward(np.ones((1, 1, 8)), np.ones((1, 1, 3)))
    monkeypatch.setenv("CONVCORE_FFT", " FFTW ")
    assert resources.fft_library() == "fftw"
    monkeypatch.delenv("CONVCORE_FFT")
    assert resources.fft_library() == "pocketfft"


def test_without_pyfftw_transforms_fall_back_to_scipy_with_a_warning(monkeypatch, caplog):
    import scipy.fft
    backend._host_fft.cache_clear()
    monkeypatch.setitem(sys.modules, "pyfftw.interfaces", None)   # import fails as if not installed
    try:
        with caplog.at_level(logging.WARNING, logger="convcore.backend"):
            module, options = backend._host_fft("fftw")
        assert module is scipy.fft and options == {}
        assert "pyFFTW does not import" in caplog.text and "convnd[fftw]" in caplog.text
    finally:
        backend._host_fft.cache_clear()


def test_release_memory_drops_the_cached_plans_and_their_arrays(fftw):
    """A plan keeps its last call's arrays: a worker's release between jobs empties the cache."""
    from pyfftw.interfaces import cache
    backend.rfftn(np, np.ones((4, 32, 32), np.float32), (32, 32), (-2, -1))
    assert cache.is_enabled() and len(cache._fftw_cache._cache_dict) >= 1
    resources.release_memory(np)
    assert cache.is_enabled() and len(cache._fftw_cache._cache_dict) == 0
    assert cache._fftw_cache._keepalive_time == resources.FFTW_KEEPALIVE_S


def test_auto_warms_the_fft_engine_up_before_timing_it_on_fftw(fftw, monkeypatch):
    """FFTW's first call of a shape measures plans: autotune runs the FFT engine once untimed first
    (else that run, seconds long on large layers, drops the FFT engine as clearly slower)."""
    from convcore import autoselect
    made = collections.Counter()
    real = autoselect.make_engine

    def counting(name, *args, **kwargs):
        made[name] += 1
        return real(name, *args, **kwargs)
    monkeypatch.setattr(autoselect, "make_engine", counting)
    x, W = np.ones((1, 2, 20, 20), np.float32), np.ones((2, 2, 5, 5), np.float32)
    geom = convcore.make_geometry(x.shape, W.shape)   # (prepare would choose, and time, already)
    rounds = autoselect._rounds(0.01, host=True)   # timed runs per candidate
    autoselect._time_engines(np, geom, x, W, 1 << 30, {"fft": 0.01, "direct": 0.01})
    assert made == {"fft": rounds + 1, "direct": rounds}
    monkeypatch.setenv("CONVCORE_FFT", "pocketfft")
    made.clear()
    autoselect._time_engines(np, geom, x, W, 1 << 30, {"fft": 0.01, "direct": 0.01})
    assert made == {"fft": rounds, "direct": rounds}


@pytest.mark.parametrize("x_shape, W_shape, params", [
    ((8, 16, 1024), (16, 16, 129), {}),
    ((1, 2, 10, 10, 10, 10, 10), (2, 2, 5, 5, 5, 5, 5), {}),   # y and gy axis by axis (backend.pruned_passes)
    ((1, 4, 16, 16, 16, 16), (4, 4, 7, 7, 7, 7), {}),          # likewise
    ((2, 8, 20, 20, 20), (8, 8, 7, 7, 7), {}),
    ((4, 8, 40, 40), (8, 8, 13, 13), dict(padding=6)),
])
def test_estimate_bounds_the_first_call_that_plans(x_shape, W_shape, params, fftw, monkeypatch):
    """estimate_memory counts FFTW's planning copies and the arrays its cached plans keep: the first
    call of a shape (plans measured then, no plan cached) stays under it, forward and backward."""
    import tracemalloc
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(np.float32)
    W = rng.standard_normal(W_shape).astype(np.float32)
    monkeypatch.setenv("CONVCORE_FFT", "pocketfft")   # compile the channel sums first: not the call's bytes
    warm = convcore.Convolution(algorithm="fft", **params)
    gy = np.ones_like(warm.forward(x, W))
    warm.backward(gy)
    monkeypatch.setenv("CONVCORE_FFT", "fftw")
    resources.release_memory(np)   # no plan cached
    held = x.nbytes + W.nbytes + gy.nbytes
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        conv = convcore.Convolution(algorithm="fft", **params)
        conv.forward(x, W)
        conv.backward(gy)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    est = convcore.estimate_memory(x_shape, W_shape, np.float32, algorithm="fft", **params)
    assert "fftw_plans" in est["allocations"]
    assert est["peak_bytes"] >= held + peak, (est["peak_bytes"], held + peak)
    assert fftw["rfftn"] + fftw["rfft"] >= 1


def test_release_beside_a_transform_in_another_thread_breaks_nothing(fftw):
    """A worker empties the cache after a job while its idle lane may be transforming: the lane's
    transforms keep working and stay right (switching the cache off and on broke them)."""
    import threading
    a = np.random.default_rng(8).standard_normal((3, 24, 20)).astype(np.float32)
    want = np.fft.rfftn(a, axes=(-2, -1))
    errors, stop = [], threading.Event()

    def transform():
        try:
            while not stop.is_set():
                np.testing.assert_allclose(backend.rfftn(np, a, (24, 20), (-2, -1)), want, rtol=0, atol=1e-4)
        except Exception as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    worker = threading.Thread(target=transform)
    worker.start()
    try:
        for _ in range(2000):
            resources.release_memory(np)
    finally:
        stop.set()
        worker.join()
    assert not errors, errors[:1]
    assert fftw["rfftn"] >= 2


def test_the_cache_outlives_the_thread_that_turned_it_on(fftw):
    """pyFFTW's culling thread stops with the thread that enabled the cache: convcore ties it to the
    main thread, so plans enabled from a pool thread are still dropped when unused."""
    import threading
    import time

    from pyfftw.interfaces import cache
    cache.disable()
    helper = threading.Thread(target=lambda: backend.rfftn(np, np.ones((2, 16), np.float32), (16,), (-1,)))
    helper.start()
    helper.join()
    time.sleep(0.4)   # the culling thread checks its parent every 0.1 s
    assert cache.is_enabled() and cache._fftw_cache._thread_object.is_alive()
    assert cache._fftw_cache.keepalive_time == resources.FFTW_KEEPALIVE_S


def test_a_cache_switched_off_elsewhere_is_switched_back_on(fftw):
    from pyfftw.interfaces import cache
    backend.rfftn(np, np.ones((2, 16), np.float32), (16,), (-1,))
    cache.disable()   # another library, or the user
    backend.rfftn(np, np.ones((2, 16), np.float32), (16,), (-1,))
    assert cache.is_enabled()


def test_the_estimate_follows_the_setting_and_never_raises(monkeypatch):
    """The API estimates with its own environment: FFTW's plans are counted from the setting even where
    pyFFTW does not import there, and a bad value is the worker's error to report, not the estimate's."""
    shape = dict(x_shape=(2, 4, 256), W_shape=(4, 4, 33))
    monkeypatch.setenv("CONVCORE_FFT", "fftw")
    monkeypatch.setitem(sys.modules, "pyfftw.interfaces", None)
    with_fftw = convcore.estimate_memory(**shape, algorithm="fft")
    assert with_fftw["allocations"]["fftw_plans"] > 0
    monkeypatch.setenv("CONVCORE_FFT", "mkl")
    assert "fftw_plans" not in convcore.estimate_memory(**shape, algorithm="fft")["allocations"]
    monkeypatch.setenv("CONVCORE_FFT", "pocketfft")
    assert convcore.estimate_memory(**shape, algorithm="fft")["peak_bytes"] < with_fftw["peak_bytes"]
