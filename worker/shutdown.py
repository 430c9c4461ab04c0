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
_left_behind = None   # (our handler, the one it replaced) while a prefork child keeps ours after training


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

    global _left_behind
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # A prefork child's own handler (billiard's) exits at once: ours stays, so a SIGTERM that
        # arrives while the result goes back to the parent cannot lose the task; the next task puts
        # billiard's back (``before_next_task``). A solo worker's (Celery's warm shutdown) is put back
        # now, and told.
        if current_process().name == "MainProcess":
            signal.signal(signal.SIGTERM, previous)
            if _requested.is_set() and callable(previous):
                previous(signal.SIGTERM, None)
        else:
            _left_behind = (handler, previous)


def before_next_task() -> None:
    """At the start of every task: the handler a finished training task left in this prefork child
    goes back to the one it replaced. Left in place, it made SIGTERM (``convnd up`` stopping) only
    set a flag under a later convolution: the child was killed 15 s later and the job was lost,
    its message unacknowledged for the broker's visibility timeout (found by a probe)."""
    global _left_behind
    if _left_behind is None or threading.current_thread() is not threading.main_thread():
        return
    ours, previous = _left_behind
    _left_behind = None
    if signal.getsignal(signal.SIGTERM) is ours:
        signal.signal(signal.SIGTERM, previous)


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
