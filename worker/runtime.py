"""Per-process worker state: the array device, the job store and the heartbeat.

``init_process`` runs in the process that executes tasks (a prefork child, or the
worker itself with the solo/threads pool), never in a parent that forks later:
a CUDA context does not survive ``fork``.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

from app.core.config import get_settings
from app.jobs.store import JobStore
from convcore import backend

log = logging.getLogger("convnd.worker")
_state: dict = {}


def init_process() -> None:
    """Pick the device (first CUDA GPU when CuPy sees one, else the CPU) and start the heartbeat."""
    if _state:
        return
    xp = None
    if backend.cupy_available():
        import cupy

        cupy.cuda.Device(0).use()
        xp = cupy
    import numpy

    _state["xp"] = xp or numpy
    _state["device"] = backend.device_name(_state["xp"])
    _state["id"] = f"{socket.gethostname()}:{os.getpid()}"
    _state["store"] = make_store()
    threading.Thread(target=_beat, name="convnd-heartbeat", daemon=True).start()
    log.info("worker process %s ready on %s", _state["id"], _state["device"])


def stop_process() -> None:
    if _state:
        _state["stopping"] = True
        try:
            _state["store"].forget_worker(_state["id"])
        except redis.RedisError:
            pass


def make_store() -> JobStore:
    s = get_settings()
    return JobStore(redis.Redis.from_url(s.redis_url), s.key_prefix, s.result_ttl_s)


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
    s = get_settings()
    info = {"id": _state["id"], "hostname": socket.gethostname(), "pid": os.getpid(),
            "device": _state["device"], "started_at": time.time()}
    while not _state.get("stopping"):
        try:
            _state["store"].heartbeat(_state["id"], info, ttl_s=s.worker_liveness_s)
        except redis.RedisError as exc:  # Redis restarting: keep trying, the API shows 503 meanwhile
            log.warning("heartbeat failed: %s", exc)
        time.sleep(s.worker_heartbeat_s)
