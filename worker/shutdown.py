"""Warm shutdown of a training task: SIGTERM (``convnd up`` stopping, ``docker stop``, a deploy) asks
the running job to stop after its current step; it is then queued again on the queue it came
from and resumes from its last checkpoint on the next start, instead of the process dying
mid-step (``WorkerLostError ... signal 15``).

The handler is installed only while a training task runs, in the thread that runs it (the
main thread of a prefork child, or of a solo worker): a convolution task keeps the default.
"""
from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager

from billiard.process import current_process

from .lease import recover_orphan

log = logging.getLogger("convnd.worker")
_requested = threading.Event()


def requested() -> bool:
    """SIGTERM arrived while a training task ran (or, in a prefork child, since the last one started)."""
    return _requested.is_set()


@contextmanager
def sigterm_stops_training():
    """While the block runs, SIGTERM only sets ``requested()``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        log.warning("SIGTERM: a running training job stops after its current step and is queued again")
        _requested.set()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # A prefork child's own handler (billiard's) exits at once: ours stays, so a SIGTERM that
        # arrives while the result goes back to the parent cannot lose the task; the pool ends the
        # child when it shuts down. A solo worker's (Celery's warm shutdown) is put back, and told.
        if current_process().name == "MainProcess":
            signal.signal(signal.SIGTERM, previous)
            if _requested.is_set() and callable(previous):
                previous(signal.SIGTERM, None)


def requeue(store, job_id: str) -> bool:
    """Queue the job again (it must be running with no lease: released by this worker) on the queue of
    the task running now; True when it was."""
    from celery import current_task

    from .celery_app import celery
    from .kinds import TRAIN

    info = getattr(getattr(current_task, "request", None), "delivery_info", None) or {}
    queue = info.get("routing_key") or None

    def send(jid: str) -> None:
        celery.send_task(TRAIN.task, args=[jid], task_id=jid, queue=queue)

    job = store.get(job_id)
    return job is not None and recover_orphan(store, job, send) is not job


def requeue_quietly(store, job_id: str) -> None:
    """``requeue``, logged; when Redis is away too, the workers' orphan sweep queues it later."""
    try:
        if requeue(store, job_id):
            log.info("training job %s queued again after SIGTERM; it resumes from its checkpoint", job_id)
    except Exception as exc:  # noqa: BLE001 - shutting down: never fail the task over this
        log.warning("training job %s not queued again now (%s); a worker's sweep will", job_id, exc)
