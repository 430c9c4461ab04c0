"""Celery signal hooks: set the worker process up after fork, clean up on exit."""
from __future__ import annotations

from celery import signals

from . import runtime


@signals.worker_process_init.connect
def _child_ready(**_):
    runtime.init_process()


@signals.worker_ready.connect
def _worker_ready(sender=None, **_):
    # Solo and threads pools run tasks in the worker process itself: no child to hook.
    if sender is not None and sender.app.conf.worker_pool in ("solo", "threads"):
        runtime.init_process()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _stopping(**_):
    runtime.stop_process()
