"""Queueing a job: arrays into the store, the job id into Celery, and waiting for the outcome."""
from __future__ import annotations

from app.api.errors import ApiError
from app.jobs.store import JobStore
from worker import tasks

# Job kind -> the Celery task that runs it (task names come from the task objects).
TASKS = {
    "conv.forward": tasks.conv_forward,
    "conv.backward": tasks.conv_backward,
    "conv.gradcheck": tasks.conv_gradcheck,
}


def require_worker(store: JobStore) -> list[dict]:
    workers = store.workers()
    if not workers:
        raise ApiError(503, "no worker is answering: start one with `convnd worker` (same REDIS_URL)")
    return workers


def submit(store: JobStore, kind: str, owner: str, params: dict, arrays: dict) -> str:
    """Store the job and queue its task; returns the job id."""
    require_worker(store)
    job_id = store.create(kind, owner, params, arrays)
    TASKS[kind].apply_async(args=[job_id], task_id=job_id)
    return job_id
