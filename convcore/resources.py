"""What this process may use: CPU threads, the memory budget, and the settings that override them.

``CONVCORE_*`` settings are read when used, never at import, so a worker (or a test)
can set them after ``import convcore``:

- ``CONVCORE_NUM_THREADS``: threads for FFTs and the matmul pool (default: ``cpu_count()``).
- ``CONVCORE_MEMORY_BUDGET_MB``: the working-set budget of one convolution (default:
  2048 on the CPU; on a GPU the device's free memory less headroom).
- ``CONVCORE_AUTOTUNE``: ``0`` decides ``auto`` by the cost model alone.
- ``CONVCORE_COMPILED``: ``0`` keeps the FFT engine's channel sums in NumPy where the compiled
  loop (frequency_kernel.py, Numba) would run them, runs the direct engine's CPU passes on BLAS
  instead of its compiled kernels (direct_kernel.py), and switches the Winograd engine off.
- ``CONVCORE_MALLOC``: ``0`` (or false / no / off) leaves glibc's allocator as it is (allocator.py; read once, at the
  first convolution on the host).
- ``CONVCORE_FFT``: the host's FFT library, ``pocketfft`` (SciPy's, the default) or ``fftw`` (FFTW through
  pyFFTW, the ``fftw`` extra; backend.py).
"""
from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

import numpy as np

from . import allocator

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
HOST_DEFAULT_BUDGET_MB = 2048
# On a GPU, part of the free memory stays unbudgeted: CuPy's pool rounds blocks up, and
# cuFFT work areas and cached plans are allocated beside the arrays the engines count.
DEVICE_HEADROOM_FRACTION = 0.2
DEVICE_HEADROOM_BYTES = 256 * 2**20
MIN_BUDGET_BYTES = 16 * 2**20


# ---- CPUs ------------------------------------------------------------------------------


def cpu_count(cgroup_root=CGROUP_ROOT, proc_self_cgroup=PROC_SELF_CGROUP, affinity=None,
              whole: bool = False) -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota (>= 1).

    ``os.cpu_count()`` counts the host's CPUs; in a container limited to 2 CPUs on a
    64-core host, 64 FFT and matmul threads would fight over 2 CPUs' worth of time.
    A fractional quota counts as a started CPU (threads can use part of one), or with
    ``whole`` only its whole CPUs (room for that many busy processes).
    """
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    count = max(1, len(affinity))
    quota = cgroup_cpu_quota(Path(cgroup_root), Path(proc_self_cgroup))
    if quota is not None:
        count = min(count, max(1, math.floor(quota) if whole else math.ceil(quota)))
    return count


def cgroup_cpu_quota(root: Path, proc_self_cgroup: Path) -> float | None:
    """CPUs' worth of time the cgroup quota allows (the tightest along the path), or None if unlimited.

    cgroup v2: ``cpu.max`` = "<quota> <period>" or "max <period>"; v1:
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1 = unlimited). Inside a
    container the namespace root is the container's own cgroup, so ``root`` itself is read too.
    """
    limits = []
    for folder in _cgroup_folders(root, proc_self_cgroup):
        limits.append(_v2_quota(folder / "cpu.max"))
        limits.append(_v1_quota(folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"))
    limits = [q for q in limits if q is not None]
    return min(limits) if limits else None


def _cgroup_folders(root: Path, proc_self_cgroup: Path) -> list:
    """Folders that may hold this process's CPU limits: its cgroup and every parent, v2 and v1."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    bases = [root, root / "cpu", root / "cpu,cpuacct"]
    folders = list(bases)
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base = root                                   # v2 unified hierarchy
        elif "cpu" in controllers.split(","):
            base = root / controllers
        else:
            continue
        here = base / path.lstrip("/")
        while here != base and base in here.parents:
            folders.append(here)
            here = here.parent
    return folders


def _v2_quota(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(quota_path: Path, period_path: Path) -> float | None:
    try:
        quota, period = int(quota_path.read_text()), int(period_path.read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


@functools.lru_cache(maxsize=1)
def _detected_cpus() -> int:
    return cpu_count()   # affinity and quotas are set when a process starts: read them once


def num_threads() -> int:
    """Threads convcore uses for FFTs and the matmul pool: ``CONVCORE_NUM_THREADS`` or ``cpu_count()``."""
    value = os.environ.get("CONVCORE_NUM_THREADS", "").strip()
    if not value:
        return _detected_cpus()
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"CONVCORE_NUM_THREADS must be a positive integer, got {value!r}")
    return threads


# ---- settings -----------------------------------------------------------------------------


FFT_LIBRARIES = ("pocketfft", "fftw")
# How long pyFFTW's interfaces keep an unused plan (one per thread and call signature, each holding
# its last call's arrays until its next call): ``release_memory`` drops them all between jobs.
FFTW_KEEPALIVE_S = 60.0


def _fft_setting() -> str:
    return os.environ.get("CONVCORE_FFT", "").strip().lower() or FFT_LIBRARIES[0]


def fftw_requested() -> bool:
    """Whether ``CONVCORE_FFT`` asks for FFTW; never raises (a memory estimate in the API process
    must not turn a worker's misconfiguration into an error about the client's request)."""
    return _fft_setting() == "fftw"


def fft_library() -> str:
    """``CONVCORE_FFT``: which library transforms host arrays, one of ``FFT_LIBRARIES`` (default
    ``pocketfft``, SciPy's)."""
    value = _fft_setting()
    if value not in FFT_LIBRARIES:
        raise ValueError(f"CONVCORE_FFT must be one of {', '.join(FFT_LIBRARIES)}, got {value!r}")
    return value


def _switch(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def autotune_enabled() -> bool:
    """``CONVCORE_AUTOTUNE`` (default on): time close calls of ``auto``."""
    return _switch("CONVCORE_AUTOTUNE")


def compiled_enabled() -> bool:
    """``CONVCORE_COMPILED`` (default on): the compiled loops (FFT channel sums, direct passes,
    Winograd tiles) where Numba imports."""
    return _switch("CONVCORE_COMPILED")


def memory_budget(xp=None) -> int:
    """Bytes one convolution's working set may use on ``xp``'s device (None or NumPy: the host).

    ``CONVCORE_MEMORY_BUDGET_MB`` when set; else 2048 MiB on the host, and on a GPU the
    device's free memory (plus what CuPy's pool holds unused) less headroom.
    """
    value = os.environ.get("CONVCORE_MEMORY_BUDGET_MB", "").strip()
    if value:
        try:
            mb = float(value)
        except ValueError:
            mb = 0.0
        if not mb > 0 or math.isinf(mb):
            raise ValueError(f"CONVCORE_MEMORY_BUDGET_MB must be a positive number, got {value!r}")
        return max(1, int(mb * 2**20))
    if xp is None or xp is np:
        return HOST_DEFAULT_BUDGET_MB * 2**20
    free = device_free_bytes(xp)
    return max(MIN_BUDGET_BYTES, int(free * (1 - DEVICE_HEADROOM_FRACTION)) - DEVICE_HEADROOM_BYTES)


def device_total_bytes(xp=None) -> int | None:
    """Bytes of memory on ``xp``'s device (None or NumPy: the host's RAM); None where unknown."""
    if xp is None or xp is np:
        try:
            pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):   # no sysconf (Windows) or no such name
            return None
        return pages * size if pages > 0 and size > 0 else None   # -1: the system does not say
    return int(xp.cuda.runtime.memGetInfo()[1])


def device_free_bytes(xp) -> int:
    """Free bytes on the current device, counting blocks CuPy's pool holds but does not use."""
    free, _total = xp.cuda.runtime.memGetInfo()
    return int(free) + int(xp.get_default_memory_pool().free_bytes())


def _release_fftw_plans() -> None:
    """Empty pyFFTW's plan cache where CONVCORE_FFT=fftw turned it on (backend._host_fft): its plans
    hold their last call's input and output arrays, which would outlive the job. The cache stays on,
    emptied the way its own culling thread drops plans (a new dict, under its lock): switching it off
    and on again broke a transform running in another thread (a worker's idle lane beside a job)."""
    cache = sys.modules.get("pyfftw.interfaces.cache")
    store = getattr(cache, "_fftw_cache", None)
    lock = getattr(store, "_cull_lock", None)
    if lock is None:
        return
    with lock:
        store._cache_dict = {}


def release_memory(xp, stream=None) -> int:
    """Give the device back what CuPy caches between jobs (pooled blocks, pinned buffers, FFT plans).

    With ``stream``, only what the calling thread cached: the pooled blocks of that stream's arena
    and this thread's FFT plans (CuPy keeps a plan cache per thread), not the pinned buffers other
    threads may be using. Returns the pool bytes released. On the host (where there are no streams)
    it drops FFTW's cached plans and the arrays they hold (CONVCORE_FFT=fftw; safe beside a running
    transform) and hands the C heap's freed memory back to the system (``allocator.release``, every
    thread's arena: a worker calls it between jobs, not beside a running one; the bytes are not
    counted: 0).
    """
    if xp is None or xp is np:
        _release_fftw_plans()
        allocator.release()
        return 0
    pool = xp.get_default_memory_pool()
    before = int(pool.free_bytes())
    if stream is None:
        pool.free_all_blocks()
        pinned = getattr(xp, "get_default_pinned_memory_pool", None)
        if pinned is not None:
            pinned().free_all_blocks()
    else:
        pool.free_all_blocks(stream=stream)
    config = getattr(getattr(xp, "fft", None), "config", None)
    if config is not None and hasattr(config, "get_plan_cache"):
        config.get_plan_cache().clear()
    return before - int(pool.free_bytes())
