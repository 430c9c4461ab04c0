"""GET /v1/jobs, GET/DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/result: a caller sees only its own jobs."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response

from app.api import orphans
from app.api.deps import OwnerDep, SenderDep, SettingsDep, StoreDep
from app.api.errors import ApiError
from app.api.results import JOBS_PATH, outcome
from app.core.tensors import BINARY_CONTENT_TYPE
from app.schemas.conv import ConvResult
from app.schemas.jobs import ErrorBody, JobList, JobView, job_view
from worker.kinds import TRAIN

router = APIRouter(prefix="/jobs", tags=["jobs"])
CANCEL_SIGNAL = "SIGUSR1"  # billiard's soft time limit: raises SoftTimeLimitExceeded in the task
ERRORS = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 503)}


# Grace past a convolution task's hard limit before a job still "running" is declared lost.
# Training jobs are left alone: a redelivered one resumes from its checkpoint under a lease.
LOST_GRACE_S = 60


def _job(store, job_id: str, owner: str, settings, sender) -> dict:
    job = store.get(job_id, owner=owner)
    if job is None:  # unknown, expired and someone else's look the same
        raise ApiError(404, f"no job {job_id!r} (unknown, expired or not yours)", "id")
    if job["kind"].startswith("conv."):
        job = store.fail_if_overdue(job, settings.task_time_limit_s + LOST_GRACE_S)
    return orphans.checked(store, sender, settings, job)


@router.get("", response_model=JobList, summary="your jobs, newest first")
def list_jobs(owner: OwnerDep, store: StoreDep, sender: SenderDep, settings: SettingsDep,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
    jobs = (store.get(j, owner=owner) for j in store.list_ids(owner, limit))
    return {"jobs": [job_view(orphans.checked(store, sender, settings, j), JOBS_PATH) for j in jobs if j is not None]}


@router.get("/{job_id}", response_model=JobView, responses=ERRORS, summary="state, progress, timings, error")
def get_job(job_id: str, owner: OwnerDep, store: StoreDep, settings: SettingsDep, sender: SenderDep) -> dict:
    return job_view(_job(store, job_id, owner, settings, sender), JOBS_PATH)


@router.get("/{job_id}/result", responses={200: {"model": ConvResult}, **ERRORS},
            summary="the arrays of a finished job (binary with ?binary_data_output=true)")
def get_result(job_id: str, owner: OwnerDep, store: StoreDep, settings: SettingsDep, sender: SenderDep,
               binary_data_output: bool = False, accept: Annotated[str | None, Header()] = None) -> Response:
    binary = binary_data_output or (accept or "").startswith(BINARY_CONTENT_TYPE)
    return outcome(store, _job(store, job_id, owner, settings, sender), binary)


@router.delete("/{job_id}", response_model=JobView, responses=ERRORS, summary="cancel a queued or running job")
def cancel_job(job_id: str, owner: OwnerDep, store: StoreDep, sender: SenderDep, settings: SettingsDep) -> dict:
    job = _job(store, job_id, owner, settings, sender)
    if not store.cancel(job_id):  # it ended meanwhile: say how it ended, not the state read before
        ended = store.get(job_id) or job
        raise ApiError(409, f"job {job_id} already ended {ended['state']}", "id")
    # A queued task is dropped when a worker receives it. A running convolution is interrupted with the
    # soft-time-limit signal: the task ends between two Python steps and its worker process lives on.
    # A training job stops itself after the current step (it reads the cancel flag), checkpoint kept.
    if job["kind"] == TRAIN.name:
        sender.control.revoke(job_id)
    else:
        sender.control.revoke(job_id, terminate=True, signal=CANCEL_SIGNAL)
    return job_view(store.get(job_id), JOBS_PATH)
