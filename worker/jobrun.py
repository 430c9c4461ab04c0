"""Running one stored job: claim it, compute, store the outcome; never let an error kill the worker."""
from __future__ import annotations

import logging
import traceback
import uuid

from celery.exceptions import SoftTimeLimitExceeded

from . import devices, runtime

log = logging.getLogger("convnd.worker")


def run_job(job_id: str, op, inputs: tuple) -> str:
    """Run ``op(xp, arrays, params)`` for a queued job; returns the final state."""
    store = runtime.store()
    # One round trip: running, the delivery counted, the record and its inputs read.
    claim = store.claim(job_id, runtime.worker_id(), inputs)
    if claim is None:
        return "skipped"  # cancelled before it started, or expired
    # A message comes back when its worker process died (acks_late + reject_on_worker_lost):
    # after max_attempts such deliveries the job fails instead of killing the next worker.
    attempt = claim.attempt
    if attempt > runtime.settings().max_attempts:
        store.finish(job_id, "failed", error={
            "status": 500, "type": "WorkerLost", "message": f"the job was started {attempt - 1} times and its "
            "worker process died each time (out of memory?); it is not retried"})
        return "failed"
    try:
        meta, outputs = op(runtime.xp(), claim.inputs(), claim.job["params"])
    except (ValueError, TypeError) as exc:  # the user's arguments: convcore names them
        store.finish(job_id, "failed", error={"status": 422, "type": type(exc).__name__, "message": str(exc)})
        return "failed"
    except SoftTimeLimitExceeded:
        # Also how a cancel interrupts a running job: the API revokes the task with the soft-limit signal.
        if store.cancel_requested(job_id):
            log.info("job %s stopped: cancelled", job_id)
            return "cancelled"
        store.finish(job_id, "failed", error={"status": 504, "type": "TimeLimit",
                                              "message": "the task ran past its time limit"})
        return "failed"
    except Exception as exc:  # noqa: BLE001 - stored and shown on the job instead of crashing
        return fail_unexpected(store, job_id, exc)
    meta["outputs"] = sorted(outputs)
    store.finish(job_id, "succeeded", result=meta, arrays=outputs)
    return "succeeded"


def fail_unexpected(store, job_id: str, exc: Exception) -> str:
    """End a job that raised something unexpected: a 507 when the device ran out of memory (the
    memory handed back first), else a 500 whose message points to the traceback in the log (the
    exception's text may show paths, addresses or data, so the client never sees it). Returns "failed"."""
    if devices.out_of_memory(exc):
        runtime.release_memory()
        store.finish(job_id, "failed", error=devices.out_of_memory_error(exc, runtime.device()))
        return "failed"
    ref = uuid.uuid4().hex[:12]
    log.error("job %s failed (reference %s):\n%s", job_id, ref, traceback.format_exc())
    store.finish(job_id, "failed", error={"status": 500, "type": "InternalError", "message":
                                          f"internal error in the worker (reference {ref} in its log)"})
    return "failed"
