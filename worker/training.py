"""The body of the training task: claim the job, resume from its checkpoint, run ``nn.fit``, report, finish.

Delivery is at-least-once (acks_late, reject_on_worker_lost, the visibility timeout), so a
delivery first takes the job's lease; a second delivery of a job that a live worker holds
waits for it to end or die. Every finished epoch is checkpointed in Redis, so a redelivered
job repeats at most the epoch it was in. Cancellation is checked after every step.
"""
from __future__ import annotations

import logging
import time

from celery.exceptions import SoftTimeLimitExceeded

from convcore import backend, datasets, nn

from . import runtime, shutdown
from .checkpoints import load_checkpoint, save_checkpoint
from .dataset_store import load_dataset
from .jobrun import fail_unexpected
from .lease import Lease, Renewer
from .reporter import Reporter
from .store import FINAL

log = logging.getLogger("convnd.worker")


class Stop(Exception):
    """Ends the job with ``error`` (a dict with status, type, message)."""

    def __init__(self, status: int, kind: str, message: str, **extra):
        super().__init__(message)
        self.error = {"status": status, "type": kind, "message": message, **extra}


def run_training(job_id: str) -> str:
    store, settings = runtime.store(), runtime.settings()
    lease = Lease(store, job_id, runtime.worker_id(), settings.train_lease_s)
    if not _claim(store, job_id, lease):
        return "skipped"  # ended (cancelled, finished by another delivery) or expired
    renewer = Renewer(lease)
    with shutdown.sigterm_stops_training():
        return _run(store, settings, job_id, lease, renewer)


def _run(store, settings, job_id: str, lease: Lease, renewer: Renewer) -> str:
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
        return fail_unexpected(store, job_id, exc)
    finally:
        renewer.stop()
        lease.release()
        if shutdown.requested():
            shutdown.requeue_quietly(store, job_id)


def _claim(store, job_id: str, lease: Lease) -> bool:
    """Take the job's lease, waiting while a live worker holds it; False once the job has ended."""
    while True:
        job = store.get(job_id)
        if job is None or job["state"] in FINAL:
            return False
        if lease.acquire():
            return True
        time.sleep(min(1.0, lease.ttl_ms / 4000))


def _setup(store, params: dict):
    """(model, optimizer, options, x_train, y_train, x_val, y_val) for the job's parameters.

    The model is a list or a graph (``nn.build_model``); y holds class labels (n,), per-voxel
    labels (n, d...) or fields (n, c, d...)."""
    try:
        x, y, _ = load_dataset(store, params["dataset"])
        xt, yt, xv, yv = datasets.train_val_split(x, y, params["validation_split"], seed=params["seed"])
        model = nn.build_model(params["model"], x.shape[1:], seed=params["seed"], xp=runtime.xp())
        options = nn.TrainOptions.from_spec(params)  # jobs queued before the options existed: defaults
    except (ValueError, TypeError) as exc:  # checked by the API already; the dataset may have expired since
        raise Stop(422, type(exc).__name__, str(exc)) from None
    if options.tracks_best and options.monitor.startswith("val_") and len(xv) == 0:
        raise Stop(422, "ValueError", f"monitor {options.monitor!r} (early_stopping / keep_best) needs validation "
                                      f"data, but validation_split={params['validation_split']} holds out no sample")
    return model, nn.make_optimizer(params["optimizer"]), options, xt, yt, xv, yv


def _resume(store, job_id: str, model, optimizer, state) -> tuple[int, list]:
    """(first epoch to run, finished epochs' metrics) from the checkpoint, restoring ``state`` (the
    nn.FitState: best epoch, patience) with it; (0, []) without one."""
    try:
        ckpt = load_checkpoint(store, job_id)
        if ckpt is None:
            return 0, []
        arrays, history = ckpt
        return nn.set_training_state(model, optimizer, arrays, state), history
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint ends the job with the reason
        raise Stop(500, "ResumeFailed", f"cannot resume from the checkpoint: {exc}") from None


def _train(store, job_id: str, job: dict, attempt: int, renewer) -> str:
    params = job["params"]
    model, optimizer, options, xt, yt, xv, yv = _setup(store, params)
    state = nn.FitState()
    start_epoch, history = _resume(store, job_id, model, optimizer, state)
    if start_epoch:
        log.info("job %s resumes at epoch %d (attempt %d)", job_id, start_epoch + 1, attempt)

    def checkpoint(epochs_done: int, rows: list) -> None:
        # With the FitState: a resumed run keeps the best epoch, its parameters and the patience count.
        save_checkpoint(store, job_id, nn.get_training_state(model, optimizer, epochs_done, state), rows)

    reporter = Reporter(store, job_id, params["epochs"], start_epoch, history, attempt, checkpoint,
                        should_stop=lambda: renewer.lost.is_set() or shutdown.requested(),
                        monitor=options.monitor if options.tracks_best else None)
    try:
        nn.fit(model, xt, yt, optimizer, params["loss"], params["epochs"], params["batch_size"], params["seed"],
               xv, yv, callback=reporter, start_epoch=start_epoch, options=options, state=state,
               layer_health=True)  # per-layer norms in each epoch's row, for the dashboard
    except nn.TrainingDiverged as exc:
        done = len(reporter.history)   # finished epochs: the last one's checkpoint is the job's model
        kept = ("no epoch finished, so there is no model" if not done
                else "the best epoch's model (keep_best) is kept at /model" if options.keep_best
                else f"the model of epoch {done}, the last finished, is kept at /model")
        # epochs and steps counted from 1, as in the job's fields and its progress
        raise Stop(422, "TrainingDiverged", f"training diverged at epoch {exc.epoch + 1}, step {exc.step + 1}: "
                                            f"{exc.detail}; {kept}",
                   epoch=exc.epoch + 1, step=exc.step + 1, layer=exc.layer, layer_type=exc.layer_type) from None
    if reporter.stopped:
        return "stopped"  # cancelled (the API already set the state) or the lease was lost
    reporter.finish()
    store.finish(job_id, "succeeded", result=reporter.result(len(xt), len(xv), backend.device_name(runtime.xp())))
    return "succeeded"
