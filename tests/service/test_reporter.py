"""worker.reporter.Reporter, the nn.fit callback of a training job, against the real server."""
from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis

from convcore import nn
from worker.reporter import Reporter
from worker.store import JobStore


@pytest.fixture
def running(redis_url):
    """(store, id of a running job)."""
    client = redis.Redis.from_url(redis_url)
    store = JobStore(client, f"convnd-rep-{uuid.uuid4().hex[:8]}", ttl_s=60)
    job_id = store.create("train", "a", {})["id"]
    store.start(job_id, "w")
    yield store, job_id
    for key in client.scan_iter(f"{store.prefix}:*"):
        client.delete(key)
    client.close()


def _epoch(epoch, loss):
    return {"kind": "epoch", "epoch": epoch, "train_loss": loss, "train_accuracy": 0.5, "val_loss": float("nan"),
            "val_accuracy": None, "seconds": 0.25}


def test_progress_checkpoints_and_result(running):
    store, job_id = running
    saved = []
    reporter = Reporter(store, job_id, epochs=4, start_epoch=1, history=[_row(1)], attempt=2,
                        checkpoint=lambda done, rows: saved.append((done, list(rows))), every_s=0.0)
    p = store.get(job_id)["progress"]
    assert p["epoch"] == 2 and p["fraction"] == 0.25 and p["resumed_from_epoch"] == 1 and p["attempt"] == 2
    assert reporter({"kind": "step", "epoch": 1, "step": 5, "steps": 10, "loss": 0.7}) is False
    p = store.get(job_id)["progress"]
    assert (p["epoch"], p["step"], p["steps"], p["fraction"], p["loss"]) == (2, 5, 10, 0.375, 0.7)
    assert p["eta_s"] is not None and p["eta_s"] >= 0
    assert reporter(_epoch(1, 0.6)) is False
    assert saved == [(2, reporter.history)] and [h["epoch"] for h in reporter.history] == [1, 2]
    assert reporter.history[1]["val_loss"] is None  # NaN is not JSON: shown as null
    p = store.get(job_id)["progress"]
    assert p["fraction"] == 0.5 and p["latest"] == reporter.history[-1] and p["history"] == reporter.history
    result = reporter.result(n_train=80, n_val=20, device="cpu")
    assert result["final"] == reporter.history[-1] and result["attempts"] == 2
    assert result["train_seconds"] == 0.5 and result["best_val_accuracy"] == 0.2  # the resumed epoch 1's


def _row(epoch):
    return {"epoch": epoch, "train_loss": 1.0, "train_accuracy": 0.1, "val_loss": 1.0, "val_accuracy": 0.2,
            "seconds": 0.25}


def test_step_progress_is_throttled(running):
    store, job_id = running
    reporter = Reporter(store, job_id, epochs=1, start_epoch=0, history=[], attempt=1,
                        checkpoint=lambda *_: None, every_s=3600)
    reporter({"kind": "step", "epoch": 0, "step": 1, "steps": 10, "loss": 0.5})
    assert store.get(job_id)["progress"]["step"] == 0  # within every_s of the first report: not written


def test_every_step_loss_reaches_the_curve_even_when_epochs_are_shorter_than_the_throttle(running):
    """Published only at epoch ends (every_s longer than the run), the progress still carries each
    step's loss, at its fractional epoch: the dashboard's per-step curve of a fast job is not empty."""
    store, job_id = running
    reporter = Reporter(store, job_id, epochs=2, start_epoch=0, history=[], attempt=1,
                        checkpoint=lambda *_: None, every_s=3600)
    for epoch in range(2):
        for step in range(1, 5):
            reporter({"kind": "step", "epoch": epoch, "step": step, "steps": 4, "loss": 1.0 / (4 * epoch + step)})
        reporter(_epoch(epoch, 0.5))
    curve = store.get(job_id)["progress"]["step_losses"]
    assert curve == [[e + s / 4, 1.0 / (4 * e + s)] for e in range(2) for s in range(1, 5)]


def test_cancel_or_a_lost_lease_stops_training_before_the_next_step(running):
    store, job_id = running
    lost = []
    reporter = Reporter(store, job_id, epochs=3, start_epoch=0, history=[], attempt=1,
                        checkpoint=lambda *_: None, should_stop=lambda: bool(lost))
    step = {"kind": "step", "epoch": 0, "step": 1, "steps": 10, "loss": 0.5}
    assert reporter(step) is False
    lost.append(True)
    assert reporter(step) is True and reporter.stopped

    other = store.create("train", "a", {})["id"]
    store.start(other, "w")
    reporter = Reporter(store, other, epochs=3, start_epoch=0, history=[], attempt=1, checkpoint=lambda *_: None)
    store.cancel(other)
    assert reporter(step) is True


def test_with_nn_fit_one_checkpoint_per_epoch_and_a_cancel_ends_fit(running):
    store, job_id = running
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 3)).astype(np.float32), rng.integers(0, 2, 40)
    model = nn.Sequential.from_spec([{"type": "dense", "out_features": 2}], (3,), seed=0)
    saved = []

    def checkpoint(done, rows):
        saved.append(done)
        if done == 2:
            store.cancel(job_id)  # the user cancels during epoch 3

    reporter = Reporter(store, job_id, epochs=5, start_epoch=0, history=[], attempt=1, checkpoint=checkpoint)
    history = nn.fit(model, x, y, nn.make_optimizer({"type": "sgd", "lr": 0.1}), "cross_entropy", 5, 8, 0,
                     callback=reporter)
    assert saved == [1, 2] and reporter.stopped and len(history) == 2
