"""The Winograd engine (convcore/winograd.py, winograd_kernel.py) against JAX, and what it refuses.

Its compiled loops walk tiles in blocks of TB lanes split into runs along rows of tiles, fold the
last axis's transform into gathers and scatters, and split work over threads in fixed chunks; the
cases below cross each of those boundaries (rows shorter and longer than a block, partial blocks
and partial tiles, one and several chunks and threads, groups, N = 1..5, both dtypes)."""
from __future__ import annotations

import numpy as np
import pytest
from conv_checks import NUMPY, check_case
from conv_oracles import ConvCase, cached_reference
from conv_strategies import note_seed, reproducible
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convcore
from convcore import autoselect, make_geometry, winograd, winograd_kernel

HYPOTHESIS = settings(max_examples=25, deadline=None, print_blob=True,
                      suppress_health_check=[HealthCheck.too_slow])

needs_loops = pytest.mark.skipif(not winograd.ready(np),
                                 reason="the Winograd loops need Numba, which does not import or compile here")


@st.composite
def winograd_cases(draw):
    """A layer the engine runs: 3 on every kernel axis, stride and dilation 1, zero padding in any form."""
    N = draw(st.integers(1, 4))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    form = draw(st.sampled_from(["int", "pairs", "valid", "same", "full"]))
    pairs = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(N))
    padding = {"int": pairs[0][0], "pairs": pairs}.get(form, form)
    case = ConvCase((1, c_in) + (1,) * N, (c_out, c_in // groups) + (3,) * N, padding=padding, groups=groups)
    top = {1: 40, 2: 11, 3: 7, 4: 5}[N]
    spatial = tuple(draw(st.integers(max(1, 3 - lo - hi), top)) for lo, hi in case.explicit_pads())
    return ConvCase((draw(st.integers(1, 3)), c_in) + spatial, case.W_shape, bias=draw(st.booleans()),
                    padding=padding, groups=groups, seed=draw(st.integers(0, 2**16)))


@needs_loops
@reproducible
@HYPOTHESIS
@given(case=winograd_cases(), layer=st.booleans())
def test_random_layers_match_jax(case, layer):
    note_seed()
    ref = cached_reference(case, jax_only=True)
    for dtype in (np.float64, np.float32):
        check_case(NUMPY, case, ref, dtype, "winograd", layer=layer)


# (x shape, W shape, padding, groups): what each one reaches
TABLE = [
    ((2, 3, 200), (4, 3, 3), 1, 1),                      # 1-D: one long row, several blocks and runs
    ((3, 4, 9, 130), (5, 4, 3, 3), 1, 1),                # rows of 65 tiles: longer than a block
    ((2, 5, 13, 7), (6, 5, 3, 3), ((2, 0), (1, 2)), 1),  # rows of 4 tiles, partial tiles, uneven pads
    ((4, 16, 40, 40), (16, 16, 3, 3), 1, 1),             # work enough for every thread and all chunks
    ((2, 6, 9, 8, 7), (6, 2, 3, 3, 3), 1, 3),            # 3-D, groups
    ((1, 2, 5, 6, 4, 5), (3, 2, 3, 3, 3, 3), 1, 1),      # 4-D
    ((1, 2, 4, 5, 4, 3, 4), (2, 2, 3, 3, 3, 3, 3), 1, 1),  # 5-D
    ((2, 3, 3, 3), (2, 3, 3, 3), 0, 1),                  # a single output per image
    ((2, 8, 9, 9, 9), (8, 8, 3, 3, 3), 1, 1),            # 3-D in F(3, 3) tiles (9 = 3 x 3)
    ((2, 8, 12, 11, 12), (8, 4, 3, 3, 3), 1, 2),         # F(3, 3), a partial tile along one axis, groups
]


def test_each_tile_size_is_in_the_table():
    """The table reaches F(4, 3) (up to 2-D), F(2, 3) and F(3, 3) (3-D, as the model picks)."""
    sizes = {winograd.tile_size(make_geometry(x, W, padding=p, groups=g)) for x, W, p, g in TABLE}
    assert sizes == {2, 3, 4}


@needs_loops
@pytest.mark.parametrize("x_shape, W_shape, padding, groups", TABLE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_table_matches_jax(x_shape, W_shape, padding, groups, dtype):
    case = ConvCase(x_shape, W_shape, bias=True, padding=padding, groups=groups)
    check_case(NUMPY, case, cached_reference(case, jax_only=True), dtype, "winograd", layer=True)


@needs_loops
@pytest.mark.parametrize("x_shape, W_shape, padding, groups", [TABLE[1], TABLE[4], TABLE[5], TABLE[9]])
def test_filters_transformed_one_axis_at_a_time_match_jax(monkeypatch, x_shape, W_shape, padding, groups):
    """Above KRON_MAX_VALUES (6-D and up: G's Kronecker power would be 24 MiB there) the filters'
    transform and its adjoint go one axis at a time; forced here on small layers of 2-D to 4-D,
    they give what JAX gives."""
    monkeypatch.setattr(winograd, "KRON_MAX_VALUES", 0)
    case = ConvCase(x_shape, W_shape, bias=True, padding=padding, groups=groups)
    check_case(NUMPY, case, cached_reference(case, jax_only=True), np.float64, "winograd", layer=True)


@needs_loops
def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    """Outputs split by tile ranges, gW summed per fixed chunk in chunk order, gx added in two fixed
    phases: one thread and two give the same bits (convcore.nn's reproducibility promise)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 16, 40, 40)).astype(np.float32)
    W = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((4, 16, 40, 40)).astype(np.float32)
    runs = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("CONVCORE_NUM_THREADS", threads)
        op = convcore.Convolution(padding=1, algorithm="winograd")
        y = op.forward(x, W)
        grads = op.backward(gy)
        runs.append((y, grads.gx, grads.gW))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("kwargs, W_shape, words", [
    ({}, (2, 2, 5, 5), "kernels of size 3"),
    ({"stride": 2}, (2, 2, 3, 3), "stride 1"),
    ({"dilation": 2}, (2, 2, 3, 3), "dilation 1"),
    ({"padding": 1, "padding_mode": "reflect"}, (2, 2, 3, 3), "padding_mode 'zeros'"),
    ({}, (2, 2, 3, 1), "kernels of size 3"),
])
def test_layers_it_cannot_run_are_refused_by_name(kwargs, W_shape, words):
    """Asked for by name: a ValueError naming the algorithm and the reason, from the layer and from
    estimate_memory (which the service calls before queueing: a 422, not a failed job). auto never
    considers it there."""
    x = np.ones((1, 2, 9, 9), np.float32)
    with pytest.raises(ValueError, match=f"algorithm='winograd'.*{words}"):
        convcore.Convolution(algorithm="winograd", **kwargs).forward(x, np.ones(W_shape, np.float32))
    with pytest.raises(ValueError, match=f"algorithm='winograd'.*{words}"):
        convcore.estimate_memory(x.shape, W_shape, np.float32, algorithm="winograd", **kwargs)
    geom = make_geometry(x.shape, W_shape, **kwargs)
    assert autoselect.estimate_seconds(geom, 4)["winograd"] == float("inf")


def test_a_device_is_refused(backend):
    """CPU only: on a device backend the engine is refused by name, and auto passes it over."""
    x, W = backend.asarray(np.ones((1, 2, 8, 8), np.float32)), backend.asarray(np.ones((2, 2, 3, 3), np.float32))
    if backend.xp is np:
        assert convcore.Convolution(padding=1, algorithm="winograd").forward(x, W).shape == (1, 2, 8, 8)
        return
    with pytest.raises(ValueError, match="CPU only"):
        convcore.Convolution(padding=1, algorithm="winograd").forward(x, W)
    op = convcore.Convolution(padding=1)
    op.forward(x, W)
    assert op.algorithm_used != "winograd"


def test_switched_off_or_without_numba_it_is_refused(monkeypatch):
    """CONVCORE_COMPILED=0: refused by name with the reason, auto's estimate infinite. Loops that do
    not build: the cheap check (estimates, the API's pre-queue check) cannot know before a build,
    so the first use builds, fails and says why; from then on the estimate is infinite too, and
    auto, whose ``ready`` call made the build, runs the layer on another engine."""
    geom = make_geometry((1, 2, 9, 9), (2, 2, 3, 3), padding=1)
    x, W = np.ones((1, 2, 9, 9), np.float32), np.ones((2, 2, 3, 3), np.float32)
    monkeypatch.setenv("CONVCORE_COMPILED", "0")
    assert "CONVCORE_COMPILED=0" in winograd.unsupported(geom)
    assert autoselect.estimate_seconds(geom, 4)["winograd"] == float("inf")
    monkeypatch.delenv("CONVCORE_COMPILED")
    monkeypatch.setattr(winograd_kernel, "kernels", lambda: None)
    monkeypatch.setattr(autoselect, "estimate_seconds", lambda *a: {"fft": 2.0, "direct": 1.0, "winograd": 1e-9})
    winograd._working.cache_clear()
    autoselect.clear_cache()
    try:
        assert winograd.unsupported(geom) is None   # not built yet: nothing known against it
        op = convcore.Convolution(padding=1, autotune=False)
        op.forward(x, W)
        assert op.algorithm_used == "direct", "auto's ready() call found the loops broken: the next best"
        assert "Numba" in winograd.unsupported(geom)
        with pytest.raises(ValueError, match="algorithm='winograd' is not available: Numba"):
            convcore.Convolution(padding=1, algorithm="winograd").forward(x, W)
    finally:
        winograd._working.cache_clear()
        autoselect.clear_cache()


@needs_loops
def test_estimate_counts_what_it_allocates():
    """Every array the engine makes is in its estimate: the padded input and output, the tile buffers
    of each thread and the per-chunk filter-gradient sums, so the service's pre-queue check bounds it
    (test_memory_estimate measures the real peak of its 3x3 cases against the same estimate)."""
    geom = make_geometry((2, 8, 20, 20), (8, 8, 3, 3), padding=1)
    est = winograd.winograd_estimate(geom, 4, 2**30, convcore.costs.CPU_RATES)
    assert np.isfinite(est.seconds) and est.seconds > 0
    padded = 2 * 8 * 22 * 22 * 4
    assert est.shared["padded_input"] == padded and est.backward["padded_gx"] == padded
    assert est.forward["padded_output"] == est.backward["padded_gy"] == 2 * 8 * 20 * 20 * 4
    t = winograd._tiling(geom)   # one sum of gU (points x 8 x 8) per chunk
    assert est.backward["filter_gradient_sums"] == len(t.chunks_within(2**30, 4, 64)) * t.P * 8 * 8 * 4


def test_a_model_naming_it_for_a_layer_it_cannot_run_is_refused_when_built():
    """A training job's layers are built (and checked) before the job is queued: naming winograd for
    a 5x5 layer fails there, with the layer and the reason, not at the first training step."""
    from convcore import nn

    with pytest.raises(ValueError, match=r"layer 0 \(conv\).*algorithm='winograd' runs kernels of size 3"):
        nn.build_model([{"type": "conv", "out_channels": 4, "kernel_size": 5, "algorithm": "winograd"}], (2, 16, 16))
    model = nn.build_model([{"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": 1,
                             "algorithm": "winograd"}], (2, 16, 16))
    assert model is not None


@needs_loops
@pytest.mark.parametrize("x_shape, W_shape, padding, groups", [
    ((2, 3, 8, 8), (4, 3, 3, 3), 1, 1), ((2, 4, 30), (6, 2, 3), 0, 2), ((1, 4, 5, 6, 4), (4, 2, 3, 3, 3), 1, 2)])
@pytest.mark.parametrize("need", [("x",), ("W",), ("b",)])
def test_each_gradient_alone_matches_jax(x_shape, W_shape, padding, groups, need):
    """One gradient asked for: the other pass is skipped (x is not even padded for gx alone), and
    what is computed still matches JAX (gx alone once addressed channels with a placeholder's
    stride)."""
    case = ConvCase(x_shape, W_shape, padding=padding, groups=groups)
    ref = cached_reference(case, jax_only=True)
    for dtype in (np.float64, np.float32):
        x, W, gy = (a.astype(dtype) for a in (ref.x, ref.W, ref.gy))
        grads = convcore.conv_backward(gy, x, W, algorithm="winograd", need=need, padding=padding, groups=groups)
        tol = dict(rtol=1e-4, atol=1e-4 * float(np.abs(ref.gx).max() + np.abs(ref.gW).max())) if dtype == np.float32 \
            else dict(rtol=1e-10, atol=1e-10)
        if "x" in need:
            np.testing.assert_allclose(grads.gx, ref.gx, **tol)
        if "W" in need:
            np.testing.assert_allclose(grads.gW, ref.gW, **tol)
        assert (grads.gx is None) == ("x" not in need) and (grads.gW is None) == ("W" not in need)


@needs_loops
def test_read_only_arrays_and_a_small_budget():
    """gy as the service decodes it (read-only, from bytes) runs without a new compile of the loops
    and gives the same bits; a budget too small for 16 chunks' weight-gradient sums gets fewer
    chunks and the same gradients within float32 rounding (chunk edges add in another order)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 64, 48, 48)).astype(np.float32)
    W = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((4, 64, 48, 48)).astype(np.float32)
    frozen = np.frombuffer(gy.tobytes(), np.float32).reshape(gy.shape)
    assert not frozen.flags.writeable
    op = convcore.Convolution(padding=1, algorithm="winograd")
    op.forward(x, W)
    a, b = op.backward(gy), op.backward(frozen)
    assert np.array_equal(a.gx, b.gx) and np.array_equal(a.gW, b.gW)
    geom = make_geometry(x.shape, W.shape, padding=1)
    t = winograd._tiling(geom)
    small = 8 * 3 * t.P * 64 * 64 * 4   # an eighth of it holds 3 chunks' sums
    assert len(t.chunks_within(small, 4, 64 * 64)) == 3 < len(t.chunks_within(2**31, 4, 64 * 64))
    little = convcore.Convolution(padding=1, algorithm="winograd", memory_budget=small)
    little.forward(x, W)
    c = little.backward(gy)
    np.testing.assert_allclose(c.gW, a.gW, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(c.gx, a.gx, rtol=1e-5, atol=1e-4)   # chunk edges add in another order
