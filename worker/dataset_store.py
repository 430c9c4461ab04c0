"""Uploaded datasets in Redis, and the dataset a training job names (built-in or uploaded).

Key (``p`` = settings.key_prefix):
    p:dataset:<id>   hash: owner, info (JSON: id n input_shape target_shape task n_classes nbytes created_at),
                     data (``worker.codec.pack`` of x float32 (n, c, d_1..d_N) and y: int64 (n,) class
                     labels, int64 (n, d_1..d_N) per-voxel labels or float32 (n, c', d_1..d_N) a field)
"""
from __future__ import annotations

import json
import time
import uuid

import numpy as np

from convcore import datasets

from . import codec
from .store import JobStore


def _key(store: JobStore, dataset_id: str) -> str:
    return f"{store.prefix}:dataset:{dataset_id}"


def put_dataset(store: JobStore, owner: str, x: np.ndarray, y: np.ndarray, n_classes: int, ttl_s: int) -> dict:
    """Store validated arrays (``datasets.validate_arrays``'s output); returns the dataset's info
    (id, n, input_shape, target_shape, task, n_classes, ...)."""
    dataset_id = uuid.uuid4().hex
    data = codec.pack({"x": x, "y": y})
    described = datasets.info_of_arrays(x, y, n_classes)
    info = {"id": dataset_id, "n": int(x.shape[0]), "input_shape": list(x.shape[1:]),
            "target_shape": list(described.target_shape), "task": described.task, "n_classes": int(n_classes),
            "nbytes": len(data), "created_at": time.time()}
    key = _key(store, dataset_id)
    pipe = store.r.pipeline(transaction=True)
    pipe.hset(key, mapping={"owner": owner, "info": json.dumps(info), "data": data})
    pipe.expire(key, ttl_s)
    pipe.execute()
    return {**info, "expires_in_s": ttl_s}


def dataset_info(store: JobStore, dataset_id: str, owner: str | None = None) -> dict | None:
    """The dataset's info, or None when unknown, expired or (with ``owner``) someone else's."""
    key = _key(store, dataset_id)
    stored_owner, info = store.r.hmget(key, ["owner", "info"])
    if info is None or (owner is not None and stored_owner.decode() != owner):
        return None
    return {**json.loads(info), "expires_in_s": store.r.ttl(key)}


def keep_dataset(store: JobStore, dataset_id: str, ttl_s: int) -> None:
    """Make the dataset outlive a job that will read it."""
    key = _key(store, dataset_id)
    if store.r.ttl(key) < ttl_s:
        store.r.expire(key, ttl_s)


def load_dataset(store: JobStore, spec: dict):
    """(x, y, n_classes) of a built-in spec or an uploaded {"id": ...}; DatasetError if it is gone."""
    if "id" not in spec:
        return datasets.load(spec)
    data = store.r.hget(_key(store, spec["id"]), "data")
    if data is None:
        raise datasets.DatasetError(f"dataset {spec['id']!r} has expired or was deleted")
    arrays, _ = codec.unpack(data)
    return datasets.validate_arrays(arrays["x"], arrays["y"], max_bytes=2**62)


def job_dataset_info(store: JobStore, spec, owner: str) -> datasets.DatasetInfo:
    """The ``datasets.DatasetInfo`` (input and target shapes, n_classes, n) of a job's dataset, built-in
    or uploaded, without loading it; DatasetError naming the problem."""
    if isinstance(spec, dict) and "id" in spec:
        extra = sorted(set(spec) - {"id"})
        if extra:
            raise datasets.DatasetError(f"an uploaded dataset is named by its id alone; unexpected {extra}")
        info = dataset_info(store, str(spec["id"]), owner)
        if info is None:
            raise datasets.DatasetError(f"no dataset {spec['id']!r} (unknown, expired or not yours); "
                                        "upload one with POST /v1/datasets")
        # Datasets stored before dense targets existed have no target_shape: class labels.
        return datasets.DatasetInfo(tuple(info["input_shape"]), tuple(info.get("target_shape", ())),
                                    int(info["n_classes"]), int(info["n"]))
    return datasets.info(spec)
