"""The training task: claim the job, resume from its checkpoint, run ``nn.fit``, report, finish.

Delivery is at-least-once (acks_late, reject_on_worker_lost, the visibility timeout), so a
delivery first takes the job's lease; a second delivery of a job that a live worker holds
waits for it to end or die. Every finished epoch is checkpointed in Redis, so a redelivered
job repeats at most the epoch it was in. Cancellation is checked after every step.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback

from celery.exceptions import SoftTimeLimitExceeded

from app.core.config import get_settings
from app.jobs import training as jobs
from app.jobs.store import FINAL
from convcore import backend, datasets, nn

from . import runtime, signals  # noqa: F401 - signals wires the per-process set-up
from .celery_app import celery
from .jobrun import run_job

log = logging.getLogger("convnd.worker")
_settings = get_settings()


@celery.task(soft_time_limit=_settings.train_soft_time_limit_s, time_limit=_settings.train_time_limit_s)
def train(job_id: str) -> str:
    return run_training(job_id)


@celery.task
def predict(job_id: str) -> str:
    return run_job(job_id, predict_op, ("x",))


def predict_op(xp, arrays: dict, params: dict):
    """Outputs (n, C), softmax probabilities (cross-entropy models) and argmax of ``x`` (n, *input_shape)."""
    store = runtime.store()
    ckpt = jobs.load_checkpoint(store, params["model_id"])
    model_job = store.get(params["model_id"])
    if ckpt is None or model_job is None:
        raise ValueError(f"model {params['model_id']} has expired")
    start = time.perf_counter()
    model = nn.io.model_from_arrays(ckpt[0], xp=xp)
    out = model.predict(xp.asarray(arrays["x"]))
    result = {"outputs": out}
    if model_job["params"]["loss"] != "mse":
        shifted = out - out.max(axis=1, keepdims=True)  # stable softmax
        e = xp.exp(shifted)
        result["probabilities"] = e / e.sum(axis=1, keepdims=True)
    host = {k: backend.to_host(v) for k, v in result.items()}
    meta = {"model_id": params["model_id"], "epochs_trained": int(ckpt[0]["epoch"]),
            "predictions": host["outputs"].argmax(axis=1).tolist(), "device": backend.device_name(xp),
            "compute_s": time.perf_counter() - start}
    return meta, host


class Stop(Exception):
    """Ends the job with ``error`` (a dict with status, type, message)."""

    def __init__(self, status: int, kind: str, message: str, **extra):
        super().__init__(message)
        self.error = {"status": status, "type": kind, "message": message, **extra}


def run_training(job_id: str) -> str:
    store, settings = runtime.store(), get_settings()
    lease = jobs.Lease(store, job_id, runtime.worker_id(), settings.train_lease_s)
    if not _claim(store, job_id, lease):
        return "skipped"  # ended (cancelled, finished by another delivery) or expired
    renewer = _Renewer(lease)
    try:
        attempt = store.count_attempt(job_id)
        if attempt is None:
            return "skipped"
        if attempt > settings.train_max_attempts:
            raise Stop(500, "WorkerLost", f"the job was started {attempt - 1} times and its worker was lost each "
                                          "time; the last checkpoint is kept at /model")
        if not store.start(job_id, runtime.worker_id()):
            return "skipped"  # cancelled or expired since the claim
        return _train(store, job_id, store.get(job_id), attempt, renewer)
    except Stop as stop:
        store.finish(job_id, "failed", error=stop.error)
        return "failed"
    except SoftTimeLimitExceeded:
        store.finish(job_id, "failed", error={"status": 504, "type": "TimeLimit", "message":
                                              "training ran past its time limit; the last checkpoint is kept"})
        return "failed"
    except Exception as exc:  # noqa: BLE001 - stored on the job instead of crashing the worker
        log.error("training job %s failed:\n%s", job_id, traceback.format_exc())
        store.finish(job_id, "failed", error={"status": 500, "type": type(exc).__name__, "message": str(exc)})
        return "failed"
    finally:
        renewer.stop()
        lease.release()


def _claim(store, job_id: str, lease: jobs.Lease) -> bool:
    """Take the job's lease, waiting while a live worker holds it; False once the job has ended."""
    while True:
        job = store.get(job_id)
        if job is None or job["state"] in FINAL:
            return False
        if lease.acquire():
            return True
        time.sleep(min(1.0, lease.ttl_ms / 4000))


def _setup(store, params: dict):
    """(model, optimizer, x_train, y_train, x_val, y_val) for the job's parameters."""
    try:
        x, y, _ = jobs.load_dataset(store, params["dataset"])
        xt, yt, xv, yv = datasets.train_val_split(x, y, params["validation_split"], seed=params["seed"])
        model = nn.Sequential.from_spec(params["model"], x.shape[1:], seed=params["seed"], xp=runtime.xp())
        return model, nn.make_optimizer(params["optimizer"]), xt, yt, xv, yv
    except (ValueError, TypeError) as exc:  # checked by the API already; the dataset may have expired since
        raise Stop(422, type(exc).__name__, str(exc)) from None


def _resume(store, job_id: str, model, optimizer) -> tuple[int, list]:
    """(first epoch to run, finished epochs' metrics) from the checkpoint; (0, []) without one."""
    try:
        ckpt = jobs.load_checkpoint(store, job_id)
        if ckpt is None:
            return 0, []
        arrays, history = ckpt
        return nn.set_training_state(model, optimizer, arrays), history
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint ends the job with the reason
        raise Stop(500, "ResumeFailed", f"cannot resume from the checkpoint: {exc}") from None


def _train(store, job_id: str, job: dict, attempt: int, renewer) -> str:
    params = job["params"]
    model, optimizer, xt, yt, xv, yv = _setup(store, params)
    start_epoch, history = _resume(store, job_id, model, optimizer)
    if start_epoch:
        log.info("job %s resumes at epoch %d (attempt %d)", job_id, start_epoch + 1, attempt)

    def checkpoint(epochs_done: int, rows: list) -> None:
        jobs.save_checkpoint(store, job_id, nn.get_training_state(model, optimizer, epochs_done), rows)

    reporter = jobs.Reporter(store, job_id, params["epochs"], start_epoch, history, attempt, checkpoint,
                        should_stop=renewer.lost.is_set)
    try:
        nn.fit(model, xt, yt, optimizer, params["loss"], params["epochs"], params["batch_size"], params["seed"],
               xv, yv, callback=reporter, start_epoch=start_epoch)
    except nn.TrainingDiverged as exc:
        raise Stop(422, "TrainingDiverged", f"{exc}; the checkpoint of epoch {len(reporter.history)} is kept",
                   epoch=exc.epoch + 1, step=exc.step + 1, layer=exc.layer, layer_type=exc.layer_type) from None
    if reporter.stopped:
        return "stopped"  # cancelled (the API already set the state) or the lease was lost
    store.finish(job_id, "succeeded", result=reporter.result(len(xt), len(xv), backend.device_name(runtime.xp())))
    return "succeeded"


class _Renewer:
    """Renews the lease from a thread (a long step or evaluation must not let it expire)."""

    def __init__(self, lease: jobs.Lease):
        self.lease, self.lost, self._done = lease, threading.Event(), threading.Event()
        threading.Thread(target=self._run, name="convnd-lease", daemon=True).start()

    def _run(self) -> None:
        while not self._done.wait(self.lease.ttl_ms / 3000):
            try:
                if not self.lease.renew():
                    self.lost.set()  # presumed dead and taken over: stop without touching the job
                    return
            except Exception as exc:  # noqa: BLE001 - Redis restarting: try again next period
                log.warning("lease renewal failed: %s", exc)

    def stop(self) -> None:
        self._done.set()
