"""Celery signal hooks: set the worker process up after fork, free device memory between jobs,
clean up on exit."""
from __future__ import annotations

import logging
import os
import signal

from celery import signals

from . import fastlane, runtime
from .devices import DeviceUnavailable

log = logging.getLogger("convnd.worker")


def _init_or_stop(main_pid: int) -> None:
    """Set this process up; when CONVND_DEVICE=gpu and its GPU fails the self-test, stop the worker
    (Celery logs and swallows exceptions raised in signal handlers, so this says it and exits)."""
    runtime.serve_fast_lane(fastlane.start_here)
    try:
        runtime.init_process()
    except DeviceUnavailable as exc:
        log.critical("%s: stopping the worker", exc)
        os.kill(main_pid, signal.SIGTERM)
        if main_pid != os.getpid():
            os._exit(1)


@signals.worker_process_init.connect
def _child_ready(**_):
    _init_or_stop(os.getppid())


@signals.worker_ready.connect
def _worker_ready(sender=None, **_):
    # Solo and threads pools run tasks in the worker process itself: no child to hook.
    if sender is not None and sender.app.conf.worker_pool in ("solo", "threads"):
        _init_or_stop(os.getpid())


@signals.task_prerun.connect
def _job_starting(**_):
    runtime.use_device()


@signals.task_postrun.connect
def _job_done(**_):
    # The next job (maybe another user's, maybe larger) gets the device's memory back: CuPy's pool
    # and cuFFT's plan cache would otherwise keep the peak of every job so far.
    runtime.release_memory()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _stopping(**_):
    runtime.stop_process()
