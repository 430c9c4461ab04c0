"""A worker's device (worker.devices, worker.selftest, worker.runtime) and the API's routing by device
(app.jobs.submit.route): decisions from probe reports, the self-test on the CPU and the CuPy stand-in,
out-of-memory as a 507 job error. The real-process routing test is test_device_routing.py."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from support import cupy_standin

from app.api.errors import ApiError
from app.jobs.submit import route
from convcore import backend
from worker import devices, runtime, selftest
from worker.jobrun import run_job
from worker.settings import RuntimeSettings

HAS_GPU = backend.cupy_available()


def _settings(**changes) -> RuntimeSettings:
    return RuntimeSettings(queue="q", **changes)


def _report(*results, count=None) -> callable:
    """A probe answering as ``python -m worker.selftest`` would for GPUs 0..n-1 with these results."""
    def probe(ids, timeout_s):
        return {"count": len(results) if count is None else count,
                "gpus": {str(i): r for i, r in enumerate(results)}}
    return probe


PASSED = {"ok": True, "device": "Test GPU", "checks": []}
FAILED = {"ok": False, "device": "Test GPU", "checks": [
    {"name": "elementwise_kernel", "ok": False, "error": "CompileException: cannot open source file cuda_fp16.h"}]}


def test_cpu_setting_serves_the_cpu_queue_without_probing():
    def probe(ids, timeout_s):
        raise AssertionError("CONVND_DEVICE=cpu must not touch the GPU")
    plan = devices.plan(_settings(device="cpu"), probe=probe)
    assert (plan.device, plan.serves, plan.queue, plan.gpu_ids) == ("cpu", "cpu", "q", ())


def test_gpu_queue_differs_from_the_cpu_queue():
    s = _settings()
    assert s.queue_for("cpu") == "q" and s.queue_for("gpu") not in ("q", "")


def test_auto_takes_the_gpu_when_its_selftest_passes_and_binds_process_i_to_gpu_i_mod_count():
    plan = devices.plan(_settings(device="auto", gpu_ids="1,0"), concurrency=3, probe=_report(PASSED, PASSED))
    assert (plan.device, plan.serves, plan.queue) == ("gpu", "gpu", "q.gpu")
    assert [plan.gpu_for(i) for i in range(4)] == [1, 0, 1, 0]
    assert "Test GPU" in plan.reason


def test_auto_falls_back_to_the_cpu_with_the_failed_check_named():
    plan = devices.plan(_settings(device="auto"), probe=_report(FAILED))
    assert (plan.device, plan.queue) == ("cpu", "q")
    assert "elementwise_kernel" in plan.reason and "cuda_fp16.h" in plan.reason


def test_gpu_setting_refuses_to_start_with_the_reason():
    with pytest.raises(devices.DeviceUnavailable, match="CONVND_DEVICE=gpu.*cuda_fp16.h"):
        devices.plan(_settings(device="gpu"), probe=_report(FAILED))
    with pytest.raises(devices.DeviceUnavailable, match="no CUDA GPU.*driver"):
        devices.plan(_settings(device="gpu"),
                     probe=lambda ids, t: {"count": 0, "error": "CUDARuntimeError: no CUDA driver", "gpus": {}})


def test_only_the_gpus_the_processes_bind_must_pass():
    # concurrency 1 binds GPU 0 only: a broken GPU 1 does not stop the worker
    assert devices.plan(_settings(device="gpu"), 1, probe=_report(PASSED, FAILED)).device == "gpu"
    with pytest.raises(devices.DeviceUnavailable, match="GPU 1"):
        devices.plan(_settings(device="gpu"), 2, probe=_report(PASSED, FAILED))


def test_bad_device_settings_are_named():
    with pytest.raises(ValidationError, match="device"):
        RuntimeSettings(device="tpu")
    for bad in ("a,b", "0,0", "-1"):
        with pytest.raises(ValueError, match="CONVND_GPU_IDS"):
            devices.plan(_settings(device="auto", gpu_ids=bad), probe=_report(PASSED))


def test_test_only_setting_serves_the_gpu_queue_on_the_cpu():
    plan = devices.plan(_settings(test_only_cpu_serves_gpu_queue=True), probe=_report(PASSED))
    assert (plan.device, plan.serves, plan.queue) == ("cpu", "gpu", "q.gpu") and "TEST ONLY" in plan.reason


def test_the_real_probe_agrees_with_cupy():
    report = devices.probe_gpus([], timeout_s=120)
    assert (report["count"] > 0) == HAS_GPU
    if HAS_GPU:
        assert all(r["ok"] for r in report["gpus"].values()), report
    else:
        assert report["error"]


# ---- the self-test ------------------------------------------------------------------------


@pytest.mark.parametrize("xp", [np, cupy_standin], ids=["numpy", "cupy_standin"])
def test_selftest_passes_on_a_working_backend(xp):
    result = selftest.run(xp)
    assert result["ok"], result
    assert [c["name"] for c in result["checks"]] == ["rfftn", "batched_matmul", "elementwise_kernel",
                                                     "conv_forward_backward"]
    assert all(c["max_rel_err"] < 1e-5 for c in result["checks"])


class _BrokenBlas:
    """The stand-in with a broken matmul (wrong numbers, or the error cuBLAS raises when it cannot load)."""

    __name__ = "broken_blas"

    def __init__(self, fail):
        self.fail = fail

    def __getattr__(self, name):
        return getattr(cupy_standin, name)

    def matmul(self, a, b):
        if self.fail == "raise":
            raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED: libcublas.so.12 not found")
        return cupy_standin.matmul(a, b) + 1.0


@pytest.mark.parametrize("fail, expected", [("raise", "libcublas.so.12"), ("wrong", "differs from NumPy")])
def test_selftest_names_the_failed_check(fail, expected):
    broken = _BrokenBlas(fail)
    backend.register_device_module(broken, cupy_standin.ndarray, cupy_standin.scipy_fft)  # its FFTs work
    try:
        result = selftest.run(broken)
    finally:
        backend.unregister_device_module(broken)
    assert not result["ok"]
    failed = [c["name"] for c in result["checks"] if not c["ok"]]
    assert failed == ["batched_matmul"]
    assert expected in selftest.summary(result)


# ---- the worker process ----------------------------------------------------------------------


@pytest.mark.skipif(HAS_GPU, reason="checks the fallback on a machine without a GPU; this one has a GPU")
def test_runtime_without_gpu_serves_on_the_cpu_under_auto_and_refuses_under_gpu(redis_url):
    runtime.reset()
    try:
        runtime.init_process(RuntimeSettings(REDIS_URL=redis_url, device="auto"), heartbeat=False)
        info = runtime._state["info"]
        assert (info["device"], info["device_kind"], info["serves"]) == ("cpu", "cpu", "cpu")
        assert info["selftest"]["ok"] and "serving on the CPU" in info["reason"]
        runtime.reset()
        with pytest.raises(devices.DeviceUnavailable, match="CONVND_DEVICE=gpu"):
            runtime.init_process(RuntimeSettings(REDIS_URL=redis_url, device="gpu"), heartbeat=False)
    finally:
        runtime.reset()


OutOfMemoryError = type("OutOfMemoryError", (MemoryError,), {"__module__": "cupy.cuda.memory"})


def test_out_of_memory_is_recognised():
    # The classes as CuPy defines them (same names and modules), raised with the messages CUDA gives.
    cufft_error = type("CuFFTError", (RuntimeError,), {"__module__": "cupy.cuda.cufft"})
    runtime_error = type("CUDARuntimeError", (RuntimeError,), {"__module__": "cupy_backends.cuda.api.runtime"})
    assert devices.out_of_memory(OutOfMemoryError("Out of memory allocating 8,589,934,592 bytes"))
    assert devices.out_of_memory(MemoryError())
    assert devices.out_of_memory(cufft_error("CUFFT_ALLOC_FAILED"))
    assert devices.out_of_memory(runtime_error("cudaErrorMemoryAllocation: out of memory"))
    assert not devices.out_of_memory(runtime_error("cudaErrorIllegalAddress: an illegal memory access"))
    assert not devices.out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED"))  # not from CUDA


def test_an_out_of_memory_job_fails_with_507_and_the_worker_runs_the_next_job(worker_runtime):
    store = worker_runtime
    x = np.ones((1, 1, 4), np.float32)

    def too_big(xp, arrays, params):
        raise OutOfMemoryError("Out of memory allocating 8,589,934,592 bytes (allocated so far: 0 bytes)")

    job = store.create("conv.forward", "owner", {}, {"x": x})
    assert run_job(job["id"], too_big, ("x",)) == "failed"
    error = store.get(job["id"])["error"]
    assert error["status"] == 507 and error["type"] == "OutOfMemory" and "8,589,934,592" in error["message"]

    job = store.create("conv.forward", "owner", {}, {"x": x})
    assert run_job(job["id"], lambda xp, a, p: ({}, {"y": a["x"] * 2}), ("x",)) == "succeeded"


# ---- routing in the API ---------------------------------------------------------------------

CPU_WORKER = {"id": "c", "serves": "cpu", "queue": "q"}
GPU_WORKER = {"id": "g", "serves": "gpu", "queue": "q.gpu"}


def test_route_picks_the_queue_of_the_asked_device():
    both = [CPU_WORKER, GPU_WORKER]
    assert route(both, "cpu") == ("cpu", "q")
    assert route(both, "gpu") == ("gpu", "q.gpu")
    assert route(both, "auto") == ("gpu", "q.gpu")
    assert route([CPU_WORKER], "auto") == ("cpu", "q")
    assert route([{"id": "old", "device": "cpu"}], "cpu") == ("cpu", None)  # heartbeat of an older worker


@pytest.mark.parametrize("workers, asked", [([CPU_WORKER], "gpu"), ([GPU_WORKER], "cpu")])
def test_route_answers_503_naming_the_device(workers, asked):
    with pytest.raises(ApiError) as err:
        route(workers, asked)
    assert err.value.status == 503 and err.value.field == "device"
    assert f"no {asked.upper()} worker" in err.value.detail


def test_an_orphaned_training_job_goes_back_to_the_queue_of_its_device(worker_runtime, redis_url):
    """A training job that asked for the GPU and lost its worker is queued again on the GPU queue, by a
    read in the API while only a CPU worker is up (it waits there) and by a CPU worker's sweep; a job
    that asked for "auto" goes to the sweeping worker's own queue."""
    from app.api import orphans
    from app.core.config import Settings
    from worker.celery_app import make_celery
    from worker.lease import OrphanSweeper

    store = worker_runtime
    settings = Settings(REDIS_URL=redis_url, key_prefix=store.prefix, queue=f"{store.prefix}-q")
    store.heartbeat("c", {"id": "c", "serves": "cpu", "queue": settings.queue}, 60)
    gpu_job = store.create("train", "owner", {"device": "gpu"})
    auto_job = store.create("train", "owner", {"device": "auto"})
    for job in (gpu_job, auto_job):
        assert store.start(job["id"], "lost-worker")  # running, and no worker holds its lease
    sender = make_celery(settings)
    try:
        assert orphans.checked(store, sender, settings, store.get(gpu_job["id"]))["state"] == "queued"
        assert store.r.llen(settings.queue_for("gpu")) == 1 and store.r.llen(settings.queue) == 0
    finally:
        store.r.delete(settings.queue_for("gpu"), settings.queue)
        sender.close()
    sweeper = OrphanSweeper(store, settings.queue, 1.0, settings.queue_for)
    assert sweeper.queue_of(gpu_job["id"]) == settings.queue_for("gpu")
    assert sweeper.queue_of(auto_job["id"]) == settings.queue


def test_device_memory_is_handed_back_after_every_task(worker_runtime, monkeypatch):
    from celery import signals as celery_signals

    import worker.signals  # noqa: F401 - connects the hooks, as the worker's tasks module does

    monkeypatch.setitem(runtime._state, "xp", cupy_standin)   # this process as if its device were a GPU
    cupy_standin.get_default_memory_pool().cached = 3 * 2**20
    releases, plan_cache_clears = cupy_standin.counters.pool_releases, cupy_standin._plan_cache.cleared
    celery_signals.task_postrun.send(sender=None, task_id="t", task=None)
    assert cupy_standin.counters.pool_releases > releases and cupy_standin._plan_cache.cleared > plan_cache_clears
    assert cupy_standin.get_default_memory_pool().free_bytes() == 0


@pytest.fixture
def gpu_plan_process(redis_url, monkeypatch):
    """init_process(device) in this process as a GPU worker's child would run it, on a "GPU" module
    that tests choose (the CuPy stand-in, or a broken one); yields a function starting it."""
    def start(device: str, module):
        monkeypatch.setattr(devices, "gpu_module", lambda: module)
        runtime.reset()
        runtime.set_plan(devices.DevicePlan("gpu", "q.gpu", "gpu", (1, 0), reason="test plan"))
        runtime.init_process(RuntimeSettings(REDIS_URL=redis_url, device=device), heartbeat=False)
        return runtime._state["info"]
    yield start
    runtime.set_plan(None)
    runtime.reset()
    cupy_standin.runtime.current = 0  # Device(1).use() moved the stand-in's current device


def test_a_gpu_process_binds_its_gpu_and_reports_its_selftest(gpu_plan_process):
    info = gpu_plan_process("gpu", cupy_standin)
    assert runtime.xp() is cupy_standin and cupy_standin.runtime.getDevice() == 1  # process 0 -> GPU ids[0]
    assert (info["device_kind"], info["gpu"], info["serves"]) == ("gpu", 1, "gpu")
    assert info["device"] == backend.device_name(cupy_standin) and info["selftest"]["ok"]


def test_a_gpu_process_whose_selftest_fails_serves_on_the_cpu_under_auto_and_stops_under_gpu(gpu_plan_process):
    broken = _BrokenBlas("raise")
    backend.register_device_module(broken, cupy_standin.ndarray, cupy_standin.scipy_fft)
    try:
        info = gpu_plan_process("auto", broken)
        assert runtime.xp() is np and (info["device"], info["device_kind"]) == ("cpu", "cpu")
        assert "GPU 1 failed its self-test" in info["reason"] and "libcublas.so.12" in info["reason"]
        assert info["selftest"]["ok"]  # the CPU's, which it now serves on
        with pytest.raises(devices.DeviceUnavailable, match="CONVND_DEVICE=gpu but GPU 1 failed.*libcublas"):
            gpu_plan_process("gpu", broken)
    finally:
        backend.unregister_device_module(broken)


def test_every_task_thread_computes_on_the_process_gpu(gpu_plan_process):
    import threading

    from celery import signals as celery_signals

    import worker.signals  # noqa: F401

    gpu_plan_process("gpu", cupy_standin)            # bound to GPU 1
    cupy_standin.runtime.current = 0                 # a fresh thread starts on GPU 0 (CUDA's default)
    seen = []
    thread = threading.Thread(target=lambda: (celery_signals.task_prerun.send(sender=None, task_id="t", task=None),
                                              seen.append(cupy_standin.runtime.getDevice())))
    thread.start()
    thread.join()
    assert seen == [1]


def test_a_fast_lane_job_runs_on_a_stream_of_its_thread_on_the_process_gpu(gpu_plan_process, monkeypatch):
    import threading

    from worker import fastlane
    from worker.kinds import FORWARD

    gpu_plan_process("gpu", cupy_standin)            # bound to GPU 1
    cupy_standin.runtime.current = 0                 # the lane's thread starts on GPU 0 (CUDA's default)
    seen = []
    monkeypatch.setattr(fastlane, "run_job", lambda job_id, op, inputs: seen.append(
        (cupy_standin.runtime.getDevice(), cupy_standin.cuda.get_current_stream())) or "succeeded")

    pool = cupy_standin.get_default_memory_pool()

    def lane():
        for _ in range(2):
            assert fastlane.run_here("job-id", FORWARD) == "succeeded"
        seen.append(cupy_standin.cuda.get_current_stream())
        seen.append(list(pool.released_streams))   # nothing handed back after each job ...
        fastlane.release_here()                      # ... but once the lane is idle: its own arena only

    thread = threading.Thread(target=lane)
    thread.start()
    thread.join()
    (device, stream), (_, again), after, released_before_idle = seen
    # Its own non-blocking stream (not the default one a Celery task's training runs on), kept for the thread.
    assert device == 1 and stream.ptr != 0 and stream.non_blocking and again is stream
    assert after.ptr == 0
    assert stream not in released_before_idle and pool.released_streams[-1] is stream
