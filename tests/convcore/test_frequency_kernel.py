"""The compiled channel sums (convcore/frequency_kernel.py and its vector micro-kernel,
frequency_vector.py) against NumPy's einsum: every layout the engine's three products use,
conjugation of either operand, frequencies in whole and partial blocks and vectors, narrower
machines' vectors, the split over threads, both dtypes, NaN and inf, and arguments it must refuse.
The engine end to end, with these sums, is checked against JAX in test_frequency_last.py."""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcore import direct_kernel, frequency_kernel, frequency_last, frequency_vector


def _spectrum(rng, shape, dtype=np.complex128):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def _einsum_sums(a, a_axes, b, b_axes, out_shape, out_axes, conj_a, conj_b):
    """The same sums by np.einsum: operands' axes named p, i, k / p, k, j and out's p, i, j."""
    def letters(axes, names):
        spec = ["?"] * 4
        for ax, name in zip(axes, names):
            spec[ax] = name
        spec[3] = "f"
        return "".join(spec)
    a = a.conj() if conj_a else a
    b = b.conj() if conj_b else b
    return np.einsum(f"{letters(a_axes, 'pik')},{letters(b_axes, 'pkj')}->{letters(out_axes, 'pij')}", a, b)


def _shape(axes, sizes, F):
    shape = [0, 0, 0, F]
    for ax, size in zip(axes, sizes):
        shape[ax] = size
    return tuple(shape)


# (a_axes, b_axes, out_axes) of the engine's products: correlate, input_grad, weight_grad
ENGINE_LAYOUTS = [((1, 0, 2), (1, 2, 0), (1, 0, 2)), ((1, 0, 2), (1, 0, 2), (1, 0, 2)),
                  ((1, 2, 0), (1, 0, 2), (0, 1, 2))]


@settings(max_examples=60, deadline=None)
@given(P=st.integers(1, 3), I=st.integers(1, 5), J=st.integers(1, 5), K=st.integers(1, 6),
       F=st.sampled_from([1, 7, 127, 128, 129, 300]), layout=st.sampled_from(ENGINE_LAYOUTS),
       conj_a=st.booleans(), conj_b=st.booleans(), double=st.booleans(), seed=st.integers(0, 2**16))
def test_sums_match_einsum(P, I, J, K, F, layout, conj_a, conj_b, double, seed):
    assert frequency_kernel.available(np), "Numba is a dependency: the compiled sums must run here"
    rng = np.random.default_rng(seed)
    dtype = np.complex128 if double else np.complex64
    a_axes, b_axes, out_axes = layout
    a = _spectrum(rng, _shape(a_axes, (P, I, K), F), dtype)
    b = _spectrum(rng, _shape(b_axes, (P, K, J), F), dtype)
    out = np.empty(_shape(out_axes, (P, I, J), F), dtype)
    got = frequency_kernel.sum_products(a, a_axes, b, b_axes, out, out_axes, (P, I, J, K), conj_a, conj_b)
    want = _einsum_sums(a.astype(np.complex128), a_axes, b.astype(np.complex128), b_axes, out.shape,
                        out_axes, conj_a, conj_b)
    assert got is out
    np.testing.assert_allclose(got, want, rtol=1e-12 if double else 2e-5, atol=1e-12 if double else 2e-5 * K)


@pytest.mark.parametrize("F", [384, 400, 300], ids=["whole_blocks", "partial_last_block", "fewer_blocks_than_threads"])
def test_the_split_over_threads_matches_einsum(monkeypatch, F):
    """Forced over 3 threads: each takes whole blocks of frequencies, the last the rest; with fewer
    blocks than threads, one call takes them all. Each part runs its whole vectors of frequencies
    through the vector loop and the rest (none here but a partial last block's) through the plain one."""
    monkeypatch.setattr(frequency_kernel, "SPLIT_MADDS", 0)
    monkeypatch.setenv("CONVCORE_NUM_THREADS", "3")
    calls, tails = [], []
    real_kernel = frequency_kernel._kernel()
    monkeypatch.setattr(frequency_kernel, "_kernel", lambda: lambda *args: tails.append(args[-2:]) or real_kernel(*args))
    real_vector = frequency_vector.loop(8, 1)   # complex128: float64 lanes, b conjugated
    assert real_vector is not None, "Numba is a dependency: the vector loop must compile here"
    monkeypatch.setattr(frequency_vector, "loop", lambda *key: lambda *args: calls.append(args[-2:]) or real_vector(*args))
    rng = np.random.default_rng(F)
    X, W = _spectrum(rng, (4, 2, 3, F)), _spectrum(rng, (5, 2, 3, F))
    got = frequency_last.correlate(np, X, W)
    np.testing.assert_allclose(got, np.einsum("rgcf,ogcf->rgof", X, W.conj()), rtol=1e-12, atol=1e-12)
    lanes = frequency_vector.blocking(8)[2] // 2   # frequencies a vector
    assert sorted(tails) == [(F // lanes * lanes, F)] * (F % lanes > 0), (tails, calls)
    bounds = sorted(calls)
    assert bounds[0][0] == 0 and bounds[-1][1] == F
    assert all(hi == lo for (_, hi), (lo, _) in itertools.pairwise(bounds)), bounds
    assert all(lo % frequency_kernel.BLOCK == 0 for lo, _ in bounds), bounds
    assert len(bounds) == (3 if F >= 3 * frequency_kernel.BLOCK else 1), bounds


@pytest.mark.parametrize("vectors", [None, (32, 16), (16, 16)], ids=["this_cpu", "avx2", "sse"])
@pytest.mark.parametrize("double", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("layout", ENGINE_LAYOUTS, ids=["correlate", "input_grad", "weight_grad"])
@pytest.mark.parametrize("conj", [(False, False), (True, False), (False, True)], ids=["plain", "conj_a", "conj_b"])
def test_the_vector_loop_matches_einsum(monkeypatch, vectors, double, layout, conj):
    """frequency_vector's micro-kernel on this CPU's vectors and recompiled for AVX2's and SSE's
    (narrower vectors, 16 registers: 2 x 2 blocks), every block shape at the edges (I = 5, J = 7
    against blocks of 2 x 4 or 2 x 2), passes of a few frequencies (several passes, a partial last
    one) and of all of them. With F a whole number of vectors the plain loop never runs."""
    if vectors is not None:
        monkeypatch.setattr(direct_kernel, "machine", lambda: vectors)
    dtype = np.complex128 if double else np.complex64
    itemsize = 8 if double else 4
    lanes = frequency_vector.blocking(itemsize)[2] // 2
    plain = []
    real_kernel = frequency_kernel._kernel()
    monkeypatch.setattr(frequency_kernel, "_kernel", lambda: lambda *args: plain.append(args[-2:]) or real_kernel(*args))
    rng = np.random.default_rng(11)
    (P, I, J, K), a_axes, b_axes, out_axes = (2, 5, 7, 3), *layout
    for chunk_bytes in (1, frequency_vector.CHUNK_BYTES):   # one vector a pass; as many as fit
        monkeypatch.setattr(frequency_vector, "CHUNK_BYTES", chunk_bytes)
        for F in (5 * lanes, 5 * lanes + 1):
            plain.clear()
            a = _spectrum(rng, _shape(a_axes, (P, I, K), F), dtype)
            b = _spectrum(rng, _shape(b_axes, (P, K, J), F), dtype)
            out = np.full(_shape(out_axes, (P, I, J), F), np.nan, dtype)
            frequency_kernel.sum_products(a, a_axes, b, b_axes, out, out_axes, (P, I, J, K), *conj)
            want = _einsum_sums(a.astype(np.complex128), a_axes, b.astype(np.complex128), b_axes, out.shape,
                                out_axes, *conj)
            np.testing.assert_allclose(out, want, rtol=1e-12 if double else 2e-5, atol=1e-12 if double else 1e-4)
            assert plain == ([(5 * lanes, F)] if F % lanes else []), plain


def test_the_vector_loop_is_keyed_on_the_helpers_it_is_built_from():
    """Numba's disk cache only watches frequency_vector.py, but the loop's IR comes partly from
    direct_kernel.py's helpers: their stamp is a literal argument of the compiled loop, so a change
    to them compiles another loop instead of loading a stale one."""
    import numba

    helpers = (direct_kernel._vector_ops, direct_kernel._counted_loop, direct_kernel._literals)
    stamp = frequency_vector._helpers_stamp()
    assert frequency_vector.code_stamp(helpers) == stamp

    def changed(builder, ir, itemsize, lanes):
        return None
    assert frequency_vector.code_stamp((changed,) + helpers[1:]) != stamp
    assert frequency_vector.loop(4, 0) is not None
    assert any(numba.types.literal(stamp) in sig for sig in frequency_vector._build().overloads)


def test_passes_hold_whole_vectors_within_their_bytes():
    lanes = frequency_vector.blocking(4)[2] // 2
    for counts in [(1, 8, 16, 16), (1, 8, 8, 2), (32, 8, 1, 1), (1, 64, 64, 64), (1, 1, 1, 1)]:
        chunk = frequency_vector.chunk_of(counts, 4)
        _, I, J, K = counts
        assert chunk % lanes == 0 and lanes <= chunk <= frequency_vector.MAX_CHUNK
        assert chunk == lanes or chunk * 8 * (I * K + K * J + I * J) <= frequency_vector.CHUNK_BYTES
    with pytest.raises(ValueError):
        frequency_vector.loop(16, 0)   # complex128's itemsize, not its lanes'


def test_concurrent_callers_each_get_their_own_sums(monkeypatch):
    """Several threads (a threaded worker pool) splitting their sums over convcore's one pool at once."""
    monkeypatch.setattr(frequency_kernel, "SPLIT_MADDS", 0)
    monkeypatch.setenv("CONVCORE_NUM_THREADS", "3")   # 300 frequencies: fewer blocks than threads
    rng = np.random.default_rng(8)
    cases = [(_spectrum(rng, (3, 1, 4, F)), _spectrum(rng, (2, 1, 4, F))) for F in (300, 1000, 2000, 400)]

    def run(case):
        X, W = case
        return [frequency_last.correlate(np, X, W) for _ in range(20)]

    with ThreadPoolExecutor(len(cases)) as callers:
        results = list(callers.map(run, cases))
    for (X, W), outs in zip(cases, results):
        want = np.einsum("rgcf,ogcf->rgof", X, W.conj())
        for got in outs:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_nan_and_inf_propagate_as_in_numpy():
    """Only FMA contraction of the fast-math flags: non-finite values are not assumed away."""
    rng = np.random.default_rng(5)
    X, W = _spectrum(rng, (2, 1, 3, 200)), _spectrum(rng, (4, 1, 3, 200))
    X[0, 0, 1, 17] = np.nan
    X[1, 0, 2, 150] = complex(np.inf, 0)
    got = frequency_last.correlate(np, X, W)
    with np.errstate(invalid="ignore"):
        want = np.einsum("rgcf,ogcf->rgof", X, W.conj())
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    assert np.isnan(got[0, 0, :, 17]).all() and not np.isfinite(got[1, 0, :, 150]).any()


def test_operands_that_are_views_are_copied_first():
    rng = np.random.default_rng(6)
    X = _spectrum(rng, (3, 1, 2, 300))[:, :, :, 50:250]            # not contiguous
    W = _spectrum(rng, (2, 4, 1, 200)).transpose(1, 2, 0, 3)         # (4, 1, 2, 200), axes permuted
    got = frequency_last.correlate(np, X, W)
    np.testing.assert_allclose(got, np.einsum("rgcf,ogcf->rgof", X, W.conj()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fault", ["counts", "frequencies", "dtype", "real", "out_view", "axes"])
def test_arguments_that_do_not_fit_are_refused(fault):
    """The loop reads without bounds checks: shapes that disagree with the counts never reach it."""
    rng = np.random.default_rng(7)
    a, b = _spectrum(rng, (1, 2, 3, 16)), _spectrum(rng, (1, 3, 4, 16))
    out = np.empty((1, 2, 4, 16), np.complex128)
    counts = (1, 2, 4, 3)
    if fault == "counts":
        counts = (1, 2, 4, 5)
    elif fault == "frequencies":
        b = b[..., :15]
    elif fault == "dtype":
        b = b.astype(np.complex64)
    elif fault == "real":
        a, b, out = a.real.copy(), b.real.copy(), out.real.copy()
    elif fault == "out_view":
        out = np.empty((1, 2, 4, 32), np.complex128)[..., ::2]
    a_axes = (0, 1, 1) if fault == "axes" else (0, 1, 2)   # shapes that happen to agree: (1, 2, 2)
    if fault == "axes":
        a = _spectrum(rng, (1, 2, 2, 16))
        counts = (1, 2, 4, 2)
        b = _spectrum(rng, (1, 2, 4, 16))
    with pytest.raises(ValueError):
        frequency_kernel.sum_products(a, a_axes, b, (0, 1, 2), out, (0, 1, 2), counts)


def test_switched_off_and_on_other_modules(monkeypatch):
    assert frequency_kernel.available(np)
    monkeypatch.setenv("CONVCORE_COMPILED", "0")
    assert not frequency_kernel.available(np)
    monkeypatch.setenv("CONVCORE_COMPILED", "1")

    class OtherModule:   # a device module: the compiled loop reads host memory only
        pass
    assert not frequency_kernel.available(OtherModule())



def test_numba_failures_fall_back_to_no_cache_then_to_numpy(monkeypatch, caplog):
    """Numba failing to cache (a read-only install and home) compiles without the cache; failing to
    compile leaves the NumPy sums, with a warning. Either way the sums are right."""
    import numba

    real_njit = numba.njit
    rng = np.random.default_rng(9)
    X, W = _spectrum(rng, (2, 1, 3, 300)), _spectrum(rng, (4, 1, 3, 300))
    want = np.einsum("rgcf,ogcf->rgof", X, W.conj())

    def no_cache(*args, **kwargs):
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function '_sum_products': no locator available")
        return real_njit(*args, **kwargs)

    def broken(*args, **kwargs):
        raise RuntimeError("LLVM ERROR: no target for this CPU")

    try:
        frequency_kernel._kernel.cache_clear()
        monkeypatch.setattr(numba, "njit", no_cache)
        assert frequency_kernel.available(np)
        np.testing.assert_allclose(frequency_last.correlate(np, X, W), want, rtol=1e-12, atol=1e-12)
        frequency_kernel._kernel.cache_clear()
        monkeypatch.setattr(numba, "njit", broken)
        with caplog.at_level("WARNING", logger="convcore.frequency_kernel"):
            assert not frequency_kernel.available(np)
        assert "cannot compile" in caplog.text
        np.testing.assert_allclose(frequency_last.correlate(np, X, W), want, rtol=1e-12, atol=1e-12)
    finally:
        monkeypatch.setattr(numba, "njit", real_njit)
        frequency_kernel._kernel.cache_clear()
    assert frequency_kernel.available(np)


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    """convcore.nn promises bit-for-bit repeatable training in any process: each frequency is one
    thread's, summed in the same order however the frequencies are split."""
    monkeypatch.setattr(frequency_kernel, "SPLIT_MADDS", 0)
    rng = np.random.default_rng(10)
    X, W = _spectrum(rng, (2, 1, 8, 1000), np.complex64), _spectrum(rng, (8, 1, 8, 1000), np.complex64)
    outs = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("CONVCORE_NUM_THREADS", threads)
        outs.append(frequency_last.correlate(np, X, W))
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
