"""Running one stored job: claim it, compute, store the outcome; never let an error kill the worker."""
from __future__ import annotations

import logging
import traceback

from celery.exceptions import SoftTimeLimitExceeded

from app.core.config import get_settings

from . import runtime

log = logging.getLogger("convnd.worker")


def run_job(job_id: str, op, inputs: tuple) -> str:
    """Run ``op(xp, arrays, params)`` for a queued job; returns the final state."""
    store = runtime.store()
    if not store.start(job_id, runtime.worker_id()):
        return "skipped"  # cancelled before it started, or expired
    # A message comes back when its worker process died (acks_late + reject_on_worker_lost):
    # after max_attempts such deliveries the job fails instead of killing the next worker.
    attempt = store.count_attempt(job_id)
    if attempt is None:
        return "skipped"
    if attempt > get_settings().max_attempts:
        store.finish(job_id, "failed", error={
            "status": 500, "type": "WorkerLost", "message": f"the job was started {attempt - 1} times and its "
            "worker process died each time (out of memory?); it is not retried"})
        return "failed"
    try:
        job = store.get(job_id)
        arrays = store.get_arrays(job_id, "in", inputs)
        meta, outputs = op(runtime.xp(), arrays, job["params"])
    except (ValueError, TypeError) as exc:  # the user's arguments: convcore names them
        store.finish(job_id, "failed", error={"status": 422, "type": type(exc).__name__, "message": str(exc)})
        return "failed"
    except SoftTimeLimitExceeded:
        store.finish(job_id, "failed", error={"status": 504, "type": "TimeLimit",
                                              "message": "the task ran past its time limit"})
        return "failed"
    except Exception as exc:  # noqa: BLE001 - stored and shown on the job instead of crashing
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        store.finish(job_id, "failed", error={"status": 500, "type": type(exc).__name__, "message": str(exc)})
        return "failed"
    meta["outputs"] = sorted(outputs)
    store.finish(job_id, "succeeded", result=meta, arrays=outputs)
    return "succeeded"
