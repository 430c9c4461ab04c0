"""Thin Celery tasks, one per job kind (``worker.kinds``): each names a job by id; the arrays
wait in the job store. Task names come from the kinds list, so the API can send by name."""
from __future__ import annotations

from . import ops, signals  # noqa: F401 - signals wires the per-process set-up
from .celery_app import celery
from .jobrun import run_job
from .kinds import BACKWARD, FORWARD, GRADCHECK, PREDICT, TRAIN
from .predict import predict_op
from .settings import get_runtime_settings
from .training import run_training

_settings = get_runtime_settings()


@celery.task(name=FORWARD.task)
def conv_forward(job_id: str) -> str:
    return run_job(job_id, ops.forward, FORWARD.inputs)


@celery.task(name=BACKWARD.task)
def conv_backward(job_id: str) -> str:
    return run_job(job_id, ops.backward, BACKWARD.inputs)


@celery.task(name=GRADCHECK.task)
def conv_gradcheck(job_id: str) -> str:
    return run_job(job_id, ops.gradcheck, GRADCHECK.inputs)


@celery.task(name=TRAIN.task, soft_time_limit=_settings.train_soft_time_limit_s,
             time_limit=_settings.train_time_limit_s)
def train(job_id: str) -> str:
    return run_training(job_id)


@celery.task(name=PREDICT.task)
def predict(job_id: str) -> str:
    return run_job(job_id, predict_op, PREDICT.inputs)
