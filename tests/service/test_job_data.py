"""What a training job keeps in Redis besides its record: checkpoints, the lease, uploaded datasets
(worker.checkpoints, worker.lease, worker.dataset_store), against the real server."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from convcore import datasets, nn
from worker import checkpoints, codec, dataset_store
from worker.lease import Lease, Renewer


def _state():
    model = nn.Sequential.from_spec([{"type": "conv", "out_channels": 2, "kernel_size": 3}, {"type": "flatten"},
                                     {"type": "dense", "out_features": 3}], (1, 5, 5), seed=1)
    optimizer = nn.make_optimizer({"type": "adam", "lr": 0.1})
    return model, optimizer, nn.get_training_state(model, optimizer, 4)


def test_checkpoint_round_trip_and_model_file(store):
    job = store.create("train", "a", {"loss": "mse"})
    model, _, state = _state()
    history = [{"epoch": 4, "val_accuracy": 0.5}]
    assert checkpoints.save_checkpoint(store, job["id"], state, history)
    assert 0 < store.r.ttl(checkpoints.ckpt_key(store, job["id"])) <= 60
    arrays, got_history = checkpoints.load_checkpoint(store, job["id"])
    assert got_history == history and set(arrays) == set(state)
    for k, v in state.items():
        assert arrays[k].shape == np.shape(v), k
        np.testing.assert_array_equal(arrays[k], v, err_msg=k)
    # The download is an .npz that convcore.nn.io loads (and numpy reads without pickle).
    data, epochs = checkpoints.model_file(store, job["id"], job)
    assert epochs == 4
    served = nn.io.load(io.BytesIO(data))
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(served.parameters()[k], v)
    meta = json.loads(str(np.load(io.BytesIO(data), allow_pickle=False)["job"]))
    assert meta["epochs_trained"] == 4 and meta["history"] == history


def test_no_checkpoint_for_an_expired_job_and_damage_is_reported(store):
    assert not checkpoints.save_checkpoint(store, "0" * 32, _state()[2], [])
    assert checkpoints.load_checkpoint(store, "0" * 32) is None
    assert checkpoints.model_file(store, "0" * 32, {}) is None
    job_id = store.create("train", "a", {})["id"]
    store.r.set(checkpoints.ckpt_key(store, job_id), b"PK\x03\x04 an old .npz")
    with pytest.raises(codec.CodecError):
        checkpoints.load_checkpoint(store, job_id)


def test_lease_is_exclusive_and_only_its_holder_renews_or_releases(store):
    job_id = store.create("train", "a", {})["id"]
    first, second = Lease(store, job_id, "w1", 0.3), Lease(store, job_id, "w2", 5)
    assert first.acquire() and not second.acquire()
    assert first.renew() and not second.renew()
    second.release()  # not its lease: a no-op
    assert not second.acquire()
    deadline = time.monotonic() + 10
    while not second.acquire():  # w1 stops renewing: its claim expires and w2 takes the job
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.05)
    assert not first.renew()
    second.release()
    assert first.acquire()


def test_renewer_keeps_the_lease_and_sees_it_lost(store):
    job_id = store.create("train", "a", {})["id"]
    lease = Lease(store, job_id, "w1", 0.3)
    assert lease.acquire()
    renewer = Renewer(lease)
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # three lease lifetimes: held throughout
            assert store.r.get(lease.key) == b"w1"
            time.sleep(0.05)
        store.r.set(lease.key, "w2", px=5000)  # taken over (as if w1 had been presumed dead)
        assert renewer.lost.wait(5), "the renewer did not notice the lost lease"
    finally:
        renewer.stop()


def test_datasets_round_trip_with_owner_and_ttl(store):
    x = np.random.default_rng(0).standard_normal((6, 1, 4, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    info = dataset_store.put_dataset(store, "alice", x, y, 3, ttl_s=30)
    assert info["n"] == 6 and info["input_shape"] == [1, 4, 4] and info["n_classes"] == 3
    assert dataset_store.dataset_info(store, info["id"], "bob") is None
    assert dataset_store.dataset_info(store, info["id"], "alice")["expires_in_s"] <= 30
    gx, gy, n_classes = dataset_store.load_dataset(store, {"id": info["id"]})
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)
    assert n_classes == 3
    dataset_store.keep_dataset(store, info["id"], 600)
    assert dataset_store.dataset_info(store, info["id"])["expires_in_s"] > 30
    assert dataset_store.job_dataset_info(store, {"id": info["id"]}, "alice") == ((1, 4, 4), (), 3, 6)
    with pytest.raises(datasets.DatasetError, match="not yours"):
        dataset_store.job_dataset_info(store, {"id": info["id"]}, "bob")
    with pytest.raises(datasets.DatasetError, match="by its id alone"):
        dataset_store.job_dataset_info(store, {"id": info["id"], "n": 3}, "alice")
    with pytest.raises(datasets.DatasetError, match="expired"):
        dataset_store.load_dataset(store, {"id": "0" * 32})
