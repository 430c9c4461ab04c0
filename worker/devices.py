"""Which device a worker computes on, which GPU each of its processes binds, and which queue it serves.

``CONVND_DEVICE`` (``worker.settings``): ``cpu``; ``gpu`` (a worker that cannot run the GPU
self-test exits at start-up with the reason); ``auto`` (the GPU when the self-test passes,
else the CPU, with the reason logged). CPU and GPU workers consume different queues
(``RuntimeSettings.queue_for``), so a job asked for one device never runs on the other.

The worker's parent decides before Celery starts (:func:`plan`): it never initialises CUDA
itself, since a CUDA context does not survive ``fork`` into the prefork children. It runs the
self-test in a fresh interpreter (``python -m worker.selftest``) on the GPUs its children
will bind; each child then binds its GPU and runs the self-test again (``worker.runtime``).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field

from . import selftest
from .settings import RuntimeSettings

log = logging.getLogger("convnd.worker")


class DeviceUnavailable(RuntimeError):
    """``CONVND_DEVICE=gpu`` and no GPU passed the self-test: the worker must not start."""


@dataclass(frozen=True)
class DevicePlan:
    """What a worker computes on: ``device`` "cpu" or "gpu", the GPUs its processes bind (process i
    -> ``gpu_ids[i % len]``), the queue it consumes and why (shown in its log and on /readyz)."""

    device: str
    queue: str
    serves: str                 # the queue's device: "gpu" for a test-only CPU worker on the GPU queue
    gpu_ids: tuple = ()
    reason: str = ""
    selftest: dict = field(default_factory=dict)

    def gpu_for(self, process_index: int) -> int | None:
        return self.gpu_ids[process_index % len(self.gpu_ids)] if self.gpu_ids else None


def gpu_module():
    """CuPy, imported only by a process that binds a GPU (tests put the CuPy stand-in here)."""
    import cupy

    return cupy


def parse_gpu_ids(text: str) -> list[int]:
    """``"0, 2"`` -> [0, 2]; ValueError naming CONVND_GPU_IDS otherwise."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"CONVND_GPU_IDS must be comma-separated GPU numbers such as 0,1; got {text!r}") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"CONVND_GPU_IDS must list distinct GPU numbers >= 0; got {text!r}")
    return ids


def cpu_plan(settings: RuntimeSettings, reason: str) -> DevicePlan:
    serves = "gpu" if settings.test_only_cpu_serves_gpu_queue else "cpu"
    if serves == "gpu":
        reason += "; TEST ONLY: serving the GPU queue on the CPU (CONVND_TEST_ONLY_CPU_SERVES_GPU_QUEUE)"
    return DevicePlan("cpu", settings.queue_for(serves), serves, reason=reason)


def plan(settings: RuntimeSettings, concurrency: int = 1, probe=None) -> DevicePlan:
    """The worker's device, decided in its parent process before any child starts.

    Raises DeviceUnavailable (``CONVND_DEVICE=gpu`` without a working GPU) or ValueError (bad
    CONVND_GPU_IDS). ``probe(ids, timeout_s) -> dict`` runs the self-test out of process (tests pass their own).
    """
    ids = parse_gpu_ids(settings.gpu_ids)
    if settings.device == "cpu" or settings.test_only_cpu_serves_gpu_queue:
        return cpu_plan(settings, f"CONVND_DEVICE={settings.device}")
    if probe is None and importlib.util.find_spec("cupy") is None:
        return _no_gpu(settings, "CuPy is not installed (pip install 'convnd[gpu]')")
    report = (probe or probe_gpus)(ids, settings.selftest_timeout_s)
    if not report.get("count"):
        return _no_gpu(settings, f"no CUDA GPU is usable: {report.get('error', 'none visible')}")
    wanted = ids or list(range(report["count"]))
    used = [wanted[i % len(wanted)] for i in range(min(concurrency, len(wanted)))]
    results = {g: report["gpus"].get(str(g), {}) for g in used}
    failed = {g: r for g, r in results.items() if not r.get("ok")}
    if failed:
        why = "; ".join(f"GPU {g}: {_why(r)}" for g, r in failed.items())
        return _no_gpu(settings, f"the GPU self-test failed ({why})")
    names = sorted({r["device"] for r in results.values()})
    return DevicePlan("gpu", settings.queue_for("gpu"), "gpu", tuple(wanted),
                      reason=f"self-test passed on GPU {', '.join(map(str, used))} ({', '.join(names)})",
                      selftest=report)


def in_process_plan(settings: RuntimeSettings) -> DevicePlan:
    """The plan of a process that runs tasks itself and was given none (tests, embedded runs):
    asks CuPy here, since this process may hold a CUDA context; its own self-test then decides."""
    from convcore import backend

    ids = parse_gpu_ids(settings.gpu_ids)
    if settings.device == "cpu" or settings.test_only_cpu_serves_gpu_queue:
        return cpu_plan(settings, f"CONVND_DEVICE={settings.device}")
    if not backend.cupy_available():
        return _no_gpu(settings, "CuPy sees no CUDA GPU" if importlib.util.find_spec("cupy") else
                       "CuPy is not installed (pip install 'convnd[gpu]')")
    import cupy

    wanted = ids or list(range(cupy.cuda.runtime.getDeviceCount()))
    return DevicePlan("gpu", settings.queue_for("gpu"), "gpu", tuple(wanted), reason="a CUDA GPU is visible")


def _why(result: dict) -> str:
    if result.get("error"):
        return result["error"]
    return selftest.summary(result) if "checks" in result else "not tested"


def _no_gpu(settings: RuntimeSettings, reason: str) -> DevicePlan:
    if settings.device == "gpu":
        raise DeviceUnavailable(f"CONVND_DEVICE=gpu but {reason}; set CONVND_DEVICE=auto or cpu to serve "
                                f"on the CPU")
    return cpu_plan(settings, f"CONVND_DEVICE=auto: serving on the CPU because {reason}")


def probe_gpus(ids: list[int], timeout_s: float) -> dict:
    """The self-test of ``ids`` (all GPUs when empty) in a fresh interpreter: the caller keeps no CUDA state."""
    argv = [sys.executable, "-m", "worker.selftest", "--gpus", ",".join(map(str, ids))]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"count": 0, "error": f"the GPU self-test did not finish within {timeout_s:g} s "
                                     f"(CONVND_SELFTEST_TIMEOUT_S)", "gpus": {}}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"count": 0, "error": f"the GPU self-test crashed (exit {done.returncode}): {' | '.join(tail)}",
                "gpus": {}}


def out_of_memory(exc: BaseException) -> bool:
    """A host MemoryError, CuPy's OutOfMemoryError (a MemoryError too), or a CUDA library's failed
    allocation (CUFFT_ALLOC_FAILED, CUBLAS_STATUS_ALLOC_FAILED, cudaErrorMemoryAllocation)."""
    if isinstance(exc, MemoryError):
        return True
    if not type(exc).__module__.startswith("cupy"):   # cupy.* and cupy_backends.*
        return False
    text = str(exc).upper()
    return "ALLOC_FAILED" in text or "MEMORYALLOCATION" in text or "OUT OF MEMORY" in text


def out_of_memory_error(exc: BaseException, device: str) -> dict:
    """The job error of an out-of-memory: 507 (Insufficient Storage), the worker carries on."""
    where = "host memory" if device == "cpu" else f"the memory of {device}"
    return {"status": 507, "type": "OutOfMemory",
            "message": f"the job ran out of {where} ({type(exc).__name__}: {str(exc)[:200]}); "
                       f"send smaller arrays or a smaller batch, or retry when the worker is less busy"}
