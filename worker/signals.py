"""Celery signal hooks: set the worker process up after fork, free device memory between jobs,
clean up on exit."""
from __future__ import annotations

import logging
import os
import signal

from celery import signals

from . import fastlane, runtime, shutdown
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


_consumer = None   # the worker's consumer, in the main process: its pool's processes (see _cancelled)


@signals.worker_ready.connect
def _worker_ready(sender=None, **_):
    global _consumer
    _consumer = sender
    # Solo and threads pools run tasks in the worker process itself: no child to hook.
    if sender is not None and sender.app.conf.worker_pool in ("solo", "threads"):
        _init_or_stop(os.getpid())


@signals.task_revoked.connect
def _cancelled(terminated=False, signum=None, **_):
    """A cancel interrupts a running convolution with SIGUSR1 (``revoke(terminate=True)``: the task
    ends, its process lives on), but billiard marks that pool process as terminated by us for the
    rest of its life: when it later died (the OOM killer, a kill -9) under another job, that job
    counted as terminated, not lost, and its message was acked and never delivered again (found by
    a probe). SIGUSR1 ends no process, so the marks come off at once (main process, right after
    ``terminate_job``; every pool process: the revoke does not say which one ran the task)."""
    if not terminated or signum != signal.SIGUSR1:
        return
    processes = getattr(getattr(getattr(_consumer, "pool", None), "_pool", None), "_pool", None) or []
    for proc in processes:
        if getattr(proc, "_job_terminated", False):
            proc._job_terminated = False
            proc._controlled_termination = False


@signals.task_prerun.connect
def _job_starting(**_):
    shutdown.before_next_task()   # SIGTERM ends this task's process again, unless it trains
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
