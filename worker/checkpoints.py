"""A training job's checkpoint in Redis, and the model file made from it.

Key (``p`` = settings.key_prefix):
    p:job:<id>:ckpt   string: ``worker.codec.pack`` of ``nn.get_training_state`` with meta
                      {"history": the finished epochs' metrics}; TTL of the job. It is the source
                      of truth for resuming: progress may lag it, never lead it.
"""
from __future__ import annotations

import json

import numpy as np

from convcore import nn

from . import codec
from .store import JobStore


def ckpt_key(store: JobStore, job_id: str) -> str:
    return f"{store.job_key(job_id)}:ckpt"


def save_checkpoint(store: JobStore, job_id: str, state: dict, history: list) -> bool:
    """Store ``state`` (a dict of arrays) and the metrics of the finished epochs; False if the job expired."""
    ttl = store.r.ttl(store.job_key(job_id))
    if ttl <= 0:
        return False
    store.r.set(ckpt_key(store, job_id), codec.pack(state, {"history": history}), ex=ttl)
    return True


def load_checkpoint(store: JobStore, job_id: str):
    """(arrays of the training state, history list), or None without a checkpoint; CodecError if damaged."""
    data = store.r.get(ckpt_key(store, job_id))
    if data is None:
        return None
    arrays, meta = codec.unpack(data)
    return arrays, meta["history"]


def has_checkpoint(store: JobStore, job_id: str) -> bool:
    return bool(store.r.exists(ckpt_key(store, job_id)))


def best_epoch(arrays: dict) -> int | None:
    """The best monitored epoch (counted from 1) of a checkpoint that tracks one, else None."""
    found = int(arrays["fit/best_epoch"]) if "fit/best_epoch" in arrays else -1
    return found + 1 if found >= 0 else None


def model_file(store: JobStore, job_id: str, job: dict) -> tuple[bytes, int] | None:
    """(.npz of the job's model with its spec, finished epochs), or None before the first epoch.

    The model is the latest checkpoint's, or its best epoch's when the job keeps the best
    (``keep_best``: ``nn.final_model_arrays``). The download is an .npz (``convcore.nn.io.load``
    reads it); only Redis holds the codec's form."""
    ckpt = load_checkpoint(store, job_id)
    if ckpt is None:
        return None
    arrays, history = ckpt
    epochs = int(arrays["epoch"])
    out = nn.final_model_arrays(arrays)
    out["job"] = np.array(json.dumps({"id": job_id, "state": job["state"], "epochs_trained": epochs,
                                      "best_epoch": best_epoch(arrays), "params": job["params"],
                                      "history": history}))
    return nn.io.arrays_to_bytes(out), epochs
