"""Model names (worker.model_names) in the real Valkey: unique per owner while they name a model."""
from __future__ import annotations

import numpy as np

from worker import model_names
from worker.checkpoints import save_checkpoint


def _named_job(store, owner: str, name: str) -> str:
    token, holder = model_names.reserve(store, owner, name)
    assert token is not None and holder is None
    job = store.create("train", owner, {"name": name})
    assert model_names.bind(store, owner, name, token, job["id"])
    return job["id"]


def test_a_name_is_taken_per_owner_until_its_job_ends_without_a_model(worker_runtime):
    store = worker_runtime
    first = _named_job(store, "alice", "net")
    assert model_names.holder(store, "alice", "net") == first
    assert model_names.reserve(store, "alice", "net") == (None, f"job {first}")
    assert model_names.holder(store, "bob", "net") is None  # another key's names are its own
    _named_job(store, "bob", "net")
    store.finish(first, "failed", error={"status": 500, "type": "X", "message": "lost"})
    second = _named_job(store, "alice", "net")  # failed before its first epoch: the name is free again
    assert model_names.holder(store, "alice", "net") == second
    save_checkpoint(store, second, {"epoch": np.array(1)}, [])
    store.cancel(second)
    assert model_names.reserve(store, "alice", "net") == (None, f"job {second}")  # it has a model: kept


def test_a_reservation_is_pending_until_bound_and_can_be_released(worker_runtime):
    store = worker_runtime
    token, _ = model_names.reserve(store, "carol", "net")
    assert model_names.holder(store, "carol", "net") is None  # nothing to serve yet
    assert model_names.reserve(store, "carol", "net") == (None, "a job being queued now")
    model_names.release(store, "carol", "net", token)
    assert model_names.reserve(store, "carol", "net")[0] is not None
