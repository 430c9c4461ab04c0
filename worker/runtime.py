"""Per-process worker state: settings, the array device, the job store and the heartbeat.

``init_process`` runs in the process that executes tasks (a prefork child, or the
worker itself with the solo/threads pool), never in a parent that forks later:
a CUDA context does not survive ``fork``. Tests call it with their own settings
(and no heartbeat) to run task bodies in-process against a real server.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

import convcore
from convcore import backend, resources
from convcore.nn.layers import pool_kernel

from . import devices, selftest
from .lease import OrphanSweeper
from .settings import RuntimeSettings, get_runtime_settings
from .store import JobStore

log = logging.getLogger("convnd.worker")
_state: dict = {}
_plan: dict = {}   # set in the worker's parent before the pool forks (no CUDA there)
_fast_lane: dict = {}   # "start": what serve_fast_lane was given, until the first heartbeat runs it
_fast_lane_lock = threading.Lock()   # a lane started while the process stops is stopped, not leaked


def init_process(settings: RuntimeSettings | None = None, heartbeat: bool = True) -> None:
    """Bind this process's device (``worker.devices``), self-test it, start the heartbeat.

    A GPU worker process binds GPU ``i mod count`` of the plan (i: its pool index) and runs
    ``worker.selftest`` there. On failure: with CONVND_DEVICE=auto it logs why and computes on
    the CPU; with ``gpu`` it raises DeviceUnavailable (``worker.signals`` stops the worker).
    """
    if _state:
        return
    import numpy

    settings = settings or get_runtime_settings()
    plan = _plan.get("plan") or devices.in_process_plan(settings)
    xp, reason, gpu = numpy, plan.reason, plan.gpu_for(process_index())
    if plan.device == "gpu":
        xp, result = _bind_gpu(gpu)
        if xp is None:
            why = f"GPU {gpu} failed its self-test: {selftest.summary(result)}"
            if settings.device == "gpu":
                raise devices.DeviceUnavailable(f"CONVND_DEVICE=gpu but {why}")
            log.error("%s; this process serves on the CPU (CONVND_DEVICE=auto)", why)
            xp, reason, gpu = numpy, f"{why}; serving on the CPU", None
    if xp is numpy:
        result = selftest.run(numpy)
    _state["settings"] = settings
    _state["xp"] = xp
    _state["device"] = backend.device_name(xp)
    _state["id"] = f"{socket.gethostname()}:{os.getpid()}"
    _state["info"] = {"device": _state["device"], "device_kind": "cpu" if xp is numpy else "gpu",
                      "gpu": gpu, "serves": plan.serves, "queue": plan.queue, "reason": reason,
                      "selftest": {"ok": result["ok"], "summary": selftest.summary(result),
                                   "seconds": result.get("seconds")}}
    _state["store"] = make_store(settings)
    if heartbeat:
        threading.Thread(target=_beat, name="convnd-heartbeat", daemon=True).start()
    if xp is numpy:   # convcore's compiled loops: built or loaded now, beside serving, not in a first job
        threading.Thread(target=_warm_up, name="convnd-warm-up", daemon=True).start()
    log.info("worker process %s ready on %s (queue %s; %s; self-test %s)", _state["id"], _state["device"],
             plan.queue, reason, _state["info"]["selftest"]["summary"])


def _warm_up() -> None:
    start = time.perf_counter()
    try:
        convcore.warm_up()
        pool_kernel.warm()   # training jobs' max pooling
    except Exception:  # noqa: BLE001 - a job then builds (or falls back) itself; the worker serves on
        log.exception("warming convcore's compiled loops failed")
        return
    log.info("convcore's compiled loops ready in %.1f s", time.perf_counter() - start)


def use_device() -> None:
    """Make this process's GPU current in the calling thread (CUDA's current device is per thread:
    the threads pool runs tasks in threads that would otherwise start on GPU 0)."""
    init_process()
    gpu = _state["info"]["gpu"]
    if gpu is not None and _state["xp"].cuda.runtime.getDevice() != gpu:
        _state["xp"].cuda.Device(gpu).use()


def set_plan(plan: devices.DevicePlan | None) -> None:
    """The plan the worker's parent made (``devices.plan``); forked children inherit it."""
    _plan.clear()
    if plan is not None:
        _plan["plan"] = plan


def process_index() -> int:
    """This process's index in Celery's prefork pool (0..concurrency-1); 0 in any other process."""
    try:
        from billiard.process import current_process

        return int(getattr(current_process(), "index", 0) or 0)
    except (ImportError, TypeError, ValueError):
        return 0


def _bind_gpu(gpu: int):
    """(cupy, self-test result) when GPU ``gpu`` passes, else (None, result)."""
    try:
        cupy = devices.gpu_module()
        cupy.cuda.Device(gpu).use()
        result = selftest.run(cupy)
    except Exception as exc:  # noqa: BLE001 - no CuPy, or the device cannot be used at all
        return None, {"ok": False, "device": "unknown", "checks": [{"name": "bind", "ok": False,
                                                                    "error": f"{type(exc).__name__}: {exc}"}]}
    release_memory(cupy)
    return (cupy if result["ok"] else None), result


def release_memory(xp=None, stream=None) -> int:
    """Hand the device's cached memory back between jobs (on the CPU, the C heap's freed memory that
    convcore's allocator settings keep: ``convcore.allocator``); bytes released. With
    ``stream``: only what the calling thread cached on it (``convcore.resources.release_memory``)."""
    xp = xp if xp is not None else _state.get("xp")
    try:
        return resources.release_memory(xp, stream=stream)
    except Exception as exc:  # noqa: BLE001 - a failed release must not fail the next job
        log.warning("releasing device memory failed: %s", exc)
        return 0


def device() -> str:
    init_process()
    return _state["device"]


def serve_fast_lane(start) -> None:
    """Run ``start()`` (-> an object with ``stop()``: ``worker.fastlane.FastLane``) once this process's
    first heartbeat is written, so other workers never take it for dead; from then on its heartbeat
    says what the lane offers (``fast_lane_max_madds``). Call it before ``init_process`` (which starts
    the heartbeat)."""
    _fast_lane["start"] = start


def queue() -> str:
    """The queue this process's device serves (the CPU or the GPU queue)."""
    init_process()
    return _state["info"]["queue"]


def stop_process() -> None:
    if _state:
        with _fast_lane_lock:
            _fast_lane.clear()
            lane = _state.pop("fast_lane", None)
        if lane is not None:   # while the heartbeat still beats: its job finishes here, not in another worker
            lane.stop()
        _state["stopping"] = True
        try:
            _state["store"].forget_worker(_state["id"])
        except redis.RedisError:
            pass


def reset() -> None:
    """Forget this process's state (tests: the next ``init_process`` starts afresh)."""
    stop_process()
    _state.clear()
    _fast_lane.clear()


def make_store(settings: RuntimeSettings) -> JobStore:
    return JobStore(redis.Redis.from_url(settings.redis_url), settings.key_prefix, settings.result_ttl_s)


def settings() -> RuntimeSettings:
    init_process()
    return _state["settings"]


def store() -> JobStore:
    init_process()
    return _state["store"]


def xp():
    init_process()
    return _state["xp"]


def worker_id() -> str:
    init_process()
    return _state["id"]


def _beat() -> None:
    s = _state["settings"]
    info = {"id": _state["id"], "hostname": socket.gethostname(), "pid": os.getpid(),
            **_state["info"], "started_at": time.time()}
    # Training jobs left running by a lost worker are queued again (worker.lease.recover_orphan).
    sweeper = OrphanSweeper(_state["store"], _state["info"].get("queue"), s.train_lease_s, s.queue_for)
    while not _state.get("stopping"):
        try:
            info["fast_lane"] = s.fast_lane_max_madds if "fast_lane" in _state else 0
            _state["store"].heartbeat(_state["id"], info, ttl_s=s.worker_liveness_s)
            if "start" in _fast_lane:
                _start_fast_lane(info, s)
        except redis.RedisError as exc:  # Redis restarting: keep trying, the API shows 503 meanwhile
            log.warning("heartbeat failed: %s", exc)
        sweeper.maybe_run()
        time.sleep(s.worker_heartbeat_s)


def _start_fast_lane(info: dict, s: RuntimeSettings) -> None:
    """Start the lane ``serve_fast_lane`` was given; say in the heartbeat what it offers the API."""
    with _fast_lane_lock:
        start = _fast_lane.pop("start", None)
        if start is None or _state.get("stopping"):
            return
        try:
            _state["fast_lane"] = start()
        except Exception:  # noqa: BLE001 - the heartbeat must go on; this process then takes Celery's jobs only
            log.exception("the fast lane did not start in %s", _state["id"])
            return
    info["fast_lane"] = s.fast_lane_max_madds   # said now, not a heartbeat later (0: offered to no job)
    _state["store"].heartbeat(_state["id"], info, ttl_s=s.worker_liveness_s)
