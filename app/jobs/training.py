"""Training jobs in Redis: checkpoints, a worker's claim on a job, uploaded datasets, submission.

Keys (``p`` = settings.key_prefix), beside the generic job keys of ``app.jobs.store``:
    p:job:<id>:ckpt    string: the latest checkpoint, an .npz (no pickle) of ``nn.get_training_state``
                       plus "history" (JSON list of the finished epochs' metrics); TTL of the job.
                       It is the source of truth for resuming: progress may lag it, never lead it.
    p:job:<id>:lease   string: id of the worker process training the job; expires unless renewed
    p:dataset:<id>     hash: owner n input_shape n_classes nbytes created_at data
                       (data = an .npz of x float32 (n, c, d...) and y int64 (n,))
"""
from __future__ import annotations

import json
import time
import uuid

import numpy as np

from app.jobs.store import JobStore
from app.jobs.submit import require_worker
from convcore import datasets
from convcore.nn import io as nn_io

KIND = "train"
PREDICT_KIND = "predict"

# Renew / release only a lease we still hold (compare-and-set on its value).
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def ckpt_key(store: JobStore, job_id: str) -> str:
    return f"{store.job_key(job_id)}:ckpt"


def save_checkpoint(store: JobStore, job_id: str, state: dict, history: list) -> bool:
    """Store ``state`` (a dict of arrays) and the metrics of the finished epochs; False if the job expired."""
    ttl = store.r.ttl(store.job_key(job_id))
    if ttl <= 0:
        return False
    data = nn_io.arrays_to_bytes({**state, "history": np.array(json.dumps(history))})
    store.r.set(ckpt_key(store, job_id), data, ex=ttl)
    return True


def load_checkpoint(store: JobStore, job_id: str):
    """(arrays of the training state, history list), or None without a checkpoint."""
    data = store.r.get(ckpt_key(store, job_id))
    if data is None:
        return None
    arrays = nn_io.arrays_from_bytes(data)
    history = json.loads(str(arrays.pop("history")))
    return arrays, history


def model_file(store: JobStore, job_id: str, job: dict) -> tuple[bytes, int] | None:
    """(.npz of the model of the latest checkpoint with the job's spec, finished epochs), or None."""
    ckpt = load_checkpoint(store, job_id)
    if ckpt is None:
        return None
    arrays, history = ckpt
    epochs = int(arrays["epoch"])
    out = {k: v for k, v in arrays.items() if k == "spec" or k.startswith(("param/", "buffer/"))}
    out["job"] = np.array(json.dumps({"id": job_id, "state": job["state"], "epochs_trained": epochs,
                                      "params": job["params"], "history": history}))
    return nn_io.arrays_to_bytes(out), epochs


class Lease:
    """A worker's exclusive, expiring claim on a training job (renewed while it trains)."""

    def __init__(self, store: JobStore, job_id: str, holder: str, ttl_s: float):
        self.r, self.key, self.holder = store.r, f"{store.job_key(job_id)}:lease", holder
        self.ttl_ms = max(int(ttl_s * 1000), 100)
        self._renew, self._release = self.r.register_script(_RENEW), self.r.register_script(_RELEASE)

    def acquire(self) -> bool:
        return bool(self.r.set(self.key, self.holder, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        """False when the claim was lost (it expired and another worker took the job)."""
        return bool(self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.holder])


# Uploaded datasets
def _dataset_key(store: JobStore, dataset_id: str) -> str:
    return f"{store.prefix}:dataset:{dataset_id}"


def put_dataset(store: JobStore, owner: str, x: np.ndarray, y: np.ndarray, n_classes: int, ttl_s: int) -> dict:
    """Store validated arrays; returns the dataset's info (id, n, input_shape, n_classes, ...)."""
    dataset_id = uuid.uuid4().hex
    data = nn_io.arrays_to_bytes({"x": x, "y": y})
    info = {"id": dataset_id, "n": int(x.shape[0]), "input_shape": list(x.shape[1:]), "n_classes": int(n_classes),
            "nbytes": len(data), "created_at": time.time()}
    key = _dataset_key(store, dataset_id)
    pipe = store.r.pipeline(transaction=True)
    pipe.hset(key, mapping={"owner": owner, "info": json.dumps(info), "data": data})
    pipe.expire(key, ttl_s)
    pipe.execute()
    return {**info, "expires_in_s": ttl_s}


def dataset_info(store: JobStore, dataset_id: str, owner: str | None = None) -> dict | None:
    """The dataset's info, or None when unknown, expired or (with ``owner``) someone else's."""
    key = _dataset_key(store, dataset_id)
    stored_owner, info = store.r.hmget(key, ["owner", "info"])
    if info is None or (owner is not None and stored_owner.decode() != owner):
        return None
    return {**json.loads(info), "expires_in_s": store.r.ttl(key)}


def keep_dataset(store: JobStore, dataset_id: str, ttl_s: int) -> None:
    """Make the dataset outlive a job that will read it."""
    key = _dataset_key(store, dataset_id)
    if store.r.ttl(key) < ttl_s:
        store.r.expire(key, ttl_s)


def load_dataset(store: JobStore, spec: dict):
    """(x, y, n_classes) of a built-in spec or an uploaded {"id": ...}; DatasetError if it is gone."""
    if "id" not in spec:
        return datasets.load(spec)
    data = store.r.hget(_dataset_key(store, spec["id"]), "data")
    if data is None:
        raise datasets.DatasetError(f"dataset {spec['id']!r} has expired or was deleted")
    arrays = nn_io.arrays_from_bytes(data)
    return datasets.validate_arrays(arrays["x"], arrays["y"], max_bytes=2**62)


def describe_dataset(store: JobStore, spec, owner: str) -> tuple[tuple, int, int | None]:
    """(per-sample input shape, n_classes, n or None) of a job's dataset; DatasetError naming the problem."""
    if isinstance(spec, dict) and "id" in spec:
        extra = sorted(set(spec) - {"id"})
        if extra:
            raise datasets.DatasetError(f"an uploaded dataset is named by its id alone; unexpected {extra}")
        info = dataset_info(store, str(spec["id"]), owner)
        if info is None:
            raise datasets.DatasetError(f"no dataset {spec['id']!r} (unknown, expired or not yours); "
                                        "upload one with POST /v1/datasets")
        return tuple(info["input_shape"]), info["n_classes"], info["n"]
    shape, n_classes = datasets.describe(spec)
    return tuple(shape), n_classes, datasets.sample_count(spec)


def submit_training(store: JobStore, owner: str, params: dict) -> str:
    """Store the job and queue the training task; returns the job id."""
    from worker.training import train  # noqa: PLC0415 - Celery is imported by the API only to send

    require_worker(store)
    job_id = store.create(KIND, owner, params)
    train.apply_async(args=[job_id], task_id=job_id)
    return job_id


def submit_predict(store: JobStore, owner: str, params: dict, arrays: dict) -> str:
    """Queue a prediction job (inputs ``x`` in the store) for the model of training job ``params['model_id']``."""
    from worker.training import predict  # noqa: PLC0415

    require_worker(store)
    job_id = store.create(PREDICT_KIND, owner, params, arrays)
    predict.apply_async(args=[job_id], task_id=job_id)
    return job_id


def _finite(v):
    return v if v is None or (isinstance(v, float) and np.isfinite(v)) or isinstance(v, int) else None


class Reporter:
    """The ``nn.fit`` callback of a training job: progress and per-epoch metrics into the job
    record, a checkpoint after every finished epoch, a stop as soon as the job is cancelled.

    Epochs are counted from 1 here (what users read); ``nn.fit`` counts from 0.
    ``checkpoint(epochs_done, history)`` stores the training state.
    """

    def __init__(self, store: JobStore, job_id: str, epochs: int, start_epoch: int, history: list, attempt: int,
                 checkpoint, should_stop=lambda: False, every_s: float = 0.2):
        self.store, self.job_id, self.epochs, self.attempt = store, job_id, epochs, attempt
        self.start_epoch, self.history = start_epoch, list(history)
        self.checkpoint, self.should_stop, self.every_s = checkpoint, should_stop, every_s
        self.t0, self.last, self.steps, self.stopped = time.monotonic(), 0.0, None, False
        self._publish(start_epoch, 0, None)

    def __call__(self, event: dict) -> bool:
        if event["kind"] == "epoch":
            self.history.append({"epoch": event["epoch"] + 1, **{k: _finite(event[k]) for k in (
                "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")}})
            self.checkpoint(event["epoch"] + 1, self.history)
            self._publish(event["epoch"] + 1, 0, None)
        else:
            self.steps = event["steps"]
            if time.monotonic() - self.last >= self.every_s:
                self._publish(event["epoch"], event["step"], event["loss"])
        # One HGET per step: a cancel takes effect before the next optimisation step.
        if self.store.cancel_requested(self.job_id) or self.should_stop():
            self.stopped = True
        return self.stopped

    def _publish(self, done: int, step: int, loss) -> None:
        """Progress of a job that has finished ``done`` epochs and ``step`` steps of the next."""
        steps = self.steps or 1
        fraction = min((done + step / steps) / self.epochs, 1.0)
        elapsed = time.monotonic() - self.t0
        gained = fraction - self.start_epoch / self.epochs  # rate measured on this attempt only
        eta = elapsed / gained * (1.0 - fraction) if gained > 0 else None
        self.store.set_progress(
            self.job_id, epoch=min(done + 1, self.epochs), epochs=self.epochs, step=step, steps=self.steps,
            fraction=round(fraction, 4), elapsed_s=round(elapsed, 3), eta_s=None if eta is None else round(eta, 2),
            loss=_finite(loss), latest=self.history[-1] if self.history else None, history=self.history,
            attempt=self.attempt, resumed_from_epoch=self.start_epoch)
        self.last = time.monotonic()

    def result(self, n_train: int, n_val: int, device: str) -> dict:
        val = [h["val_accuracy"] for h in self.history if h["val_accuracy"] is not None]
        return {"epochs": self.epochs, "history": self.history, "final": self.history[-1] if self.history else None,
                "best_val_accuracy": max(val) if val else None, "train_samples": n_train, "val_samples": n_val,
                "device": device, "train_seconds": round(sum(h["seconds"] or 0 for h in self.history), 3),
                "attempts": self.attempt}
