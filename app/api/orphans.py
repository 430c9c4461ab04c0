"""Reading a training job that lost its worker queues it again (``worker.lease.recover_orphan``), so a
client that looks at it (GET, list, event stream) never watches a job that nothing runs."""
from __future__ import annotations

from celery import Celery

from app.api.errors import ApiError
from app.jobs.submit import route
from worker.kinds import TRAIN
from worker.lease import recover_orphan
from worker.settings import RuntimeSettings
from worker.store import JobStore


def requeue(store: JobStore, sender: Celery, settings: RuntimeSettings, device: str):
    """``send(job_id)``: the training task again, on the queue a new job asking for ``device`` would
    get; with no worker for it up, on that device's queue (the CPU queue for "auto"), where the job
    waits, shown queued: a job that asked for one device never runs on the other."""
    def send(job_id: str) -> None:
        try:
            queue = route(store.workers(), device)[1]
        except ApiError:
            queue = settings.queue_for("cpu" if device == "auto" else device)
        sender.send_task(TRAIN.task, args=[job_id], task_id=job_id, queue=queue)
    return send


def checked(store: JobStore, sender: Celery, settings: RuntimeSettings, job: dict) -> dict:
    """``job`` as it is once an orphaned training job has been queued again."""
    device = (job.get("params") or {}).get("device") or "auto"
    return recover_orphan(store, job, requeue(store, sender, settings, device))
