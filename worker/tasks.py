"""Thin Celery tasks: each names a job by id; the arrays wait in the job store."""
from __future__ import annotations

from . import ops, signals  # noqa: F401 - signals wires the per-process set-up
from .celery_app import celery
from .jobrun import run_job


@celery.task
def conv_forward(job_id: str) -> str:
    return run_job(job_id, ops.forward, ("x", "W", "b"))


@celery.task
def conv_backward(job_id: str) -> str:
    return run_job(job_id, ops.backward, ("gy", "x", "W"))


@celery.task
def conv_gradcheck(job_id: str) -> str:
    return run_job(job_id, ops.gradcheck, ("x", "W", "b", "gy", "gx", "gW", "gb"))
