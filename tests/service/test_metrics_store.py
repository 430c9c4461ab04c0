"""worker.metrics against the real Redis-protocol server: a job is counted once, when its state
first becomes final, in its kind's duration bucket; queue lengths count every priority list."""
from __future__ import annotations


import pytest

from worker import metrics


def test_each_job_is_counted_once_at_its_final_state(store):
    a = store.create("conv.forward", "o", {})["id"]
    b = store.create("train", "o", {})["id"]
    c = store.create("train", "o", {})["id"]
    assert store.finish(a, "succeeded") and store.cancel(b)
    assert not store.finish(b, "failed")  # already ended: not counted again
    assert store.start(c, "w") and store.finish(c, "failed")
    counts = metrics.read(store.r, store.prefix)
    assert counts["jobs"] == {("conv.forward", "succeeded"): 1, ("train", "cancelled"): 1, ("train", "failed"): 1}
    assert {k: d["count"] for k, d in counts["durations"].items()} == {"conv.forward": 1, "train": 2}


def test_durations_fall_in_le_buckets(store):
    bounds = metrics.DURATION_BUCKETS
    seconds = [bounds[0], bounds[0] * 1.5, bounds[-1] * 2]  # on a bound, between two, past the last
    for s in seconds:
        job_id = store.create("conv.forward", "o", {})["id"]
        store.r.hset(store.job_key(job_id), "created_at", repr(1000.0))
        store.transition(job_id, "succeeded", ("queued",), finished_at=repr(1000.0 + s))
        metrics.count_final(store.r, store.prefix, store.job_key(job_id), "succeeded")
    d = metrics.read(store.r, store.prefix)["durations"]["conv.forward"]
    expected = [sum(s <= b for s in seconds) for b in bounds] + [len(seconds)]
    assert d["buckets"] == expected and d["count"] == 3
    assert d["sum"] == pytest.approx(sum(seconds))


def test_epochs_and_queue_lengths(store):
    for _ in range(3):
        metrics.count_epoch(store.r, store.prefix)
    assert metrics.read(store.r, store.prefix)["epochs"] == 3
    queue = f"{store.prefix}:q"
    store.r.rpush(queue, "m1", "m2")
    store.r.rpush(queue + "\x06\x169", "m3")  # kombu's list for priority 9
    assert metrics.queue_lengths(store.r, [queue, f"{store.prefix}:empty"]) == {queue: 3, f"{store.prefix}:empty": 0}
