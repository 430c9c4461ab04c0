"""The strict CuPy stand-in itself, and convcore's device-side habits checked under it.

The stand-in (tests/support/cupy_standin.py) is a CPU imitation with CuPy's rules made
strict; these tests show that it really refuses what it claims to, and then use its
counters to check what only a device run would otherwise show: no hidden host round
trips, the device's name asked once, the budget from free device memory, the pool
released, autotune synchronized with a warm-up excluded.
"""
from __future__ import annotations

import numpy as np
import pytest
from support import cupy_standin as cs

import convcore
from convcore import autoselect, backend, costs, resources
from convcore.calibrate import calibrate
from convcore.engines import engine_devices

# "auto" and the engines that run on a device (winograd is CPU only: test_winograd checks its refusal)
DEVICE_ALGORITHMS = ("auto",) + tuple(n for n in convcore.engine_names() if "gpu" in engine_devices(n))


@pytest.fixture(autouse=True)
def fresh_counters():
    cs.counters.reset()
    yield
    cs.counters.reset()


# ---- the stand-in is strict ---------------------------------------------------------------


def test_refuses_implicit_conversion_to_numpy():
    a = cs.ones((2, 3))
    for convert in (np.asarray, np.array, np.sum, lambda v: np.add(v, 1)):
        with pytest.raises(TypeError):
            convert(a)


@pytest.mark.parametrize("combine", [
    lambda d, h: d + h, lambda d, h: h + d, lambda d, h: d @ h.T, lambda d, h: cs.concatenate([d, h]),
    lambda d, h: d.__setitem__(slice(None), h), lambda d, h: d.__iadd__(h)])
def test_refuses_numpy_operands(combine):
    with pytest.raises(TypeError):
        combine(cs.ones((2, 3)), np.ones((2, 3)))


def test_scalars_mix_and_reductions_stay_on_the_device():
    a = cs.ones((2, 3)) * np.float32(2) + 1
    total = a.sum()
    assert isinstance(total, cs.ndarray) and total.shape == ()
    assert cs.counters.device_to_host == 0
    assert float(total) == 18.0 and cs.counters.device_to_host == 1


def test_transfers_and_syncs_are_counted():
    d = cs.asarray(np.arange(6.0))
    assert cs.counters.host_to_device == 1
    cs.asnumpy(d)
    d.get()
    d.tolist()
    assert cs.counters.device_to_host == 3
    cs.cuda.Device().synchronize()
    assert cs.counters.syncs == 1


def _gemm(a, b, c, *, m, n, k, lda, ldb, ldc, batch=1, strides=(0, 0, 0), mode=None):
    """cuBLAS's column-major C = A @ B through the stand-in, on the arrays' device pointers."""
    handle = cs.cuda.device.get_cublas_handle()
    cs.cublas.setPointerMode(handle, cs.cublas.CUBLAS_POINTER_MODE_HOST if mode is None else mode)
    one, zero = np.ones((), np.float64), np.zeros((), np.float64)
    try:
        cs.cublas.dgemmStridedBatched(handle, 0, 0, m, n, k, one.ctypes.data, a.data.ptr, lda, strides[0],
                                      b.data.ptr, ldb, strides[1], zero.ctypes.data, c.data.ptr, ldc, strides[2], batch)
    finally:
        cs.cublas.setPointerMode(handle, cs.cublas.CUBLAS_POINTER_MODE_HOST)


def test_cublas_reads_column_major_matrices_behind_pointers():
    # row-major a (3, 2) and b (2, 4) are column-major a^T and b^T; column-major b^T a^T (4 x 3, ld 4)
    # is row-major a @ b (3, 4)
    a, b = np.arange(6.0).reshape(3, 2), np.arange(8.0).reshape(2, 4)
    c = cs.zeros((3, 4))
    _gemm(cs.asarray(b), cs.asarray(a), c, m=4, n=3, k=2, lda=4, ldb=2, ldc=4)
    np.testing.assert_array_equal(c.get(), a @ b)


@pytest.mark.parametrize("bad, match", [
    ({"lda": 3}, "ldA = 3 < max"),                              # a leading dimension below the rows
    ({"k": 3, "ldb": 3}, "reads"),                              # past the end of the allocation
    ({"mode": 1}, "pointer mode is DEVICE"),
    ({"batch": 2, "strides": (0, 0, 4)}, "batch's C matrices overlap"),
])
def test_cublas_refuses_what_a_gpu_would_not_survive(bad, match):
    a, b, c = cs.ones((2, 4)), cs.ones((3, 2)), cs.zeros((4, 4))   # A 4x2, B 2x3, C 4x3 (ld 4)
    args = dict(m=4, n=3, k=2, lda=4, ldb=2, ldc=4) | bad
    with pytest.raises(cs.StandinError, match=match):
        _gemm(a, b, c, **args)


def test_cublas_refuses_an_output_overlapping_an_input():
    a = cs.ones((8, 8))
    with pytest.raises(cs.StandinError, match="overlaps"):
        _gemm(a, a, a[1:], m=4, n=4, k=4, lda=8, ldb=8, ldc=8)


def test_convcore_recognises_standin_arrays():
    x = cs.ones((1, 1, 5))
    assert backend.get_array_module(x) is cs and backend.is_device_array(x)
    assert not backend.is_host_module(cs)
    with pytest.raises(TypeError, match=r"inputs mix NumPy and CuPy arrays \(x=cupy, W=numpy\)"):
        backend.get_array_module(("x", x), ("W", np.ones((1, 1, 2))))
    assert isinstance(backend.to_host(x), np.ndarray) and cs.counters.device_to_host == 1


# ---- convcore on the device -------------------------------------------------------------


@pytest.mark.parametrize("algorithm", DEVICE_ALGORITHMS)
def test_a_layer_never_copies_to_or_from_the_host(algorithm):
    rng = np.random.default_rng(0)
    x, W, b = (cs.asarray(rng.standard_normal(s)) for s in ((2, 3, 9, 8), (4, 3, 3, 3), (4,)))
    gy = cs.asarray(rng.standard_normal((2, 4, 5, 4)))
    cs.counters.reset()
    op = convcore.Convolution(algorithm=algorithm, stride=2, padding=1, padding_mode="reflect")
    y = op.forward(x, W, b)
    grads = op.backward(gy)
    assert all(isinstance(a, cs.ndarray) for a in (y, *grads))
    assert (cs.counters.host_to_device, cs.counters.device_to_host) == (0, 0)


def test_device_name_is_asked_once_per_device():
    backend._device_names.clear()
    x, W = cs.ones((1, 2, 8)), cs.ones((3, 2, 3))
    for _ in range(5):
        op = convcore.Convolution(algorithm="direct")
        op.forward(x, W)
        op.backward(cs.ones((1, 3, 6)))
    assert op.device == "cupy_standin (CPU; not a GPU)"
    assert cs.counters.device_property_calls == 1


def test_memory_budget_follows_free_device_memory(monkeypatch):
    monkeypatch.delenv("CONVCORE_MEMORY_BUDGET_MB", raising=False)
    monkeypatch.setattr(cs.runtime, "free_bytes", 10 * 2**30)
    monkeypatch.setattr(cs.get_default_memory_pool(), "cached", 2 * 2**30)
    expected = int(12 * 2**30 * (1 - resources.DEVICE_HEADROOM_FRACTION)) - resources.DEVICE_HEADROOM_BYTES
    assert resources.memory_budget(cs) == expected
    op = convcore.Convolution()
    op.forward(cs.ones((1, 1, 8)), cs.ones((1, 1, 3)))
    assert op.budget_used == expected
    monkeypatch.setattr(cs.runtime, "free_bytes", 2**20)          # a full device: the floor, not a negative budget
    monkeypatch.setattr(cs.get_default_memory_pool(), "cached", 0)
    assert resources.memory_budget(cs) == resources.MIN_BUDGET_BYTES
    monkeypatch.setenv("CONVCORE_MEMORY_BUDGET_MB", "64")          # the setting wins
    assert resources.memory_budget(cs) == 64 * 2**20
    assert resources.memory_budget(np) == 64 * 2**20


def test_release_memory_empties_the_pool_and_plan_cache(monkeypatch):
    monkeypatch.setattr(cs.get_default_memory_pool(), "cached", 5 * 2**20)
    cleared = cs._plan_cache.cleared
    assert convcore.release_memory(cs) == 5 * 2**20
    assert cs.get_default_memory_pool().free_bytes() == 0 and cs.counters.pool_releases == 2   # + pinned
    assert cs._plan_cache.cleared == cleared + 1
    assert convcore.release_memory(np) == 0


def test_release_memory_of_one_stream_frees_its_arena_and_this_threads_plans_only(monkeypatch):
    """What a GPU fast lane hands back when idle (worker/fastlane.py release_here): not the pinned
    buffers or other streams' blocks a training job in the same process may be using."""
    monkeypatch.setattr(cs.get_default_memory_pool(), "cached", 3 * 2**20)
    cleared, releases = cs._plan_cache.cleared, cs.counters.pool_releases
    with backend.thread_stream(cs) as stream:
        assert convcore.release_memory(cs, stream=stream) == 3 * 2**20
    assert cs.get_default_memory_pool().released_streams[-1] is stream
    assert cs.counters.pool_releases == releases + 1   # the device pool's one arena; the pinned pool untouched
    assert cs._plan_cache.cleared == cleared + 1


def test_autotune_on_a_device_syncs_and_excludes_a_warm_up_run(monkeypatch):
    """Each candidate runs once untimed, then its timed runs; every run ends with a device sync."""
    built = []
    real = autoselect.make_engine
    monkeypatch.setattr(autoselect, "make_engine", lambda name, *a: built.append(name) or real(name, *a))
    monkeypatch.setattr(autoselect, "AMBIGUOUS", float("inf"))   # every engine is a close call
    autoselect.clear_cache()
    op = convcore.Convolution(algorithm="auto", autotune=True)
    op.forward(cs.ones((1, 2, 9, 9)), cs.ones((2, 2, 3, 3)))
    autoselect.clear_cache()
    for name in DEVICE_ALGORITHMS[1:]:
        assert built.count(name) == 1 + 3, f"{name}: one warm-up then three timed runs (estimate < 20 ms)"
    assert set(built) == set(DEVICE_ALGORITHMS[1:]), "a CPU-only engine is never built for a device"
    assert cs.counters.syncs == len(built)


def test_device_rates_are_the_gpu_table_until_calibrated():
    assert costs.rates_for(cs) is costs.GPU_RATES and costs.rates_for(np).kind == "cpu"
    try:
        rates = calibrate(cs, repeats=1, small=True)
        assert costs.rates_for(cs) is rates and rates.kind == "gpu"
        assert set(rates.call_overhead) == set(DEVICE_ALGORITHMS[1:])
        assert all(v > 0 for v in (rates.gemm, rates.fft, rates.cmatmul, rates.copy))
    finally:
        costs.set_rates(cs, None)
    assert costs.rates_for(cs) is costs.GPU_RATES


@pytest.mark.parametrize("algorithm", ["auto", "fft", "direct"])
def test_an_output_larger_than_the_device_is_refused_before_any_work(monkeypatch, algorithm):
    """On a device the bound is its total memory (memGetInfo): an output of 4 MiB on a 1 MiB device."""
    monkeypatch.setattr(cs.runtime, "total_bytes", 2**20)
    with pytest.raises(MemoryError, match=r"the output \(1, 1, 1048576\) needs 0.00391 GiB, more than this "
                                          r"device's 0.000977 GiB of memory"):
        convcore.conv_forward(cs.ones((1, 1, 1048578), dtype=cs.float32), cs.ones((1, 1, 3), dtype=cs.float32),
                              algorithm=algorithm)
    monkeypatch.setattr(cs.runtime, "total_bytes", 2**30)
    y = convcore.conv_forward(cs.ones((1, 1, 1048578), dtype=cs.float32), cs.ones((1, 1, 3), dtype=cs.float32),
                              algorithm=algorithm)
    assert y.shape == (1, 1, 1048576)


def test_host_memory_unknown_to_the_system_refuses_nothing(monkeypatch):
    """sysconf answers -1 where the system does not say: no bound then (every call was refused)."""
    import os

    monkeypatch.setattr(os, "sysconf", lambda name: -1 if name == "SC_PHYS_PAGES" else 4096)
    assert resources.device_total_bytes(np) is None
    assert convcore.conv_forward(np.ones((1, 1, 8)), np.ones((1, 1, 3))).shape == (1, 1, 6)
