"""worker.store.JobStore against the real Redis-protocol server: records, state changes, arrays,
waiting, workers."""
from __future__ import annotations

import threading
import time

import numpy as np
import redis

from worker.store import JobStore


def test_create_returns_the_record_get_reads(store):
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    job = store.create("conv.forward", "alice", {"padding": 1}, {"x": x, "b": None})
    assert job == store.get(job["id"])
    assert job["state"] == "queued" and job["params"] == {"padding": 1} and job["progress"] == {}
    assert job["started_at"] is None and job["cancel_requested"] is False
    assert store.get(job["id"], owner="bob") is None and store.get("0" * 32) is None
    got = store.get_arrays(job["id"], "in", ["x", "b", "W"])
    assert list(got) == ["x"] and got["x"].dtype == np.float32
    np.testing.assert_array_equal(got["x"], x)
    assert 0 < store.r.ttl(store.array_key(job["id"], "in", "x")) <= 60


def test_state_changes_are_compare_and_set(store):
    job_id = store.create("conv.forward", "a", {})["id"]
    assert store.start(job_id, "w1") and store.get(job_id)["worker"] == "w1"
    assert store.set_progress(job_id, fraction=0.5) and store.get(job_id)["progress"] == {"fraction": 0.5}
    assert store.cancel(job_id)
    # A worker finishing after the cancel cannot overwrite it, nor store outputs that anyone could read as a result.
    assert not store.finish(job_id, "succeeded", result={"outputs": []})
    assert not store.set_progress(job_id, fraction=1.0)
    job = store.get(job_id)
    assert job["state"] == "cancelled" and job["cancel_requested"] and store.cancel_requested(job_id)
    assert not store.cancel(job_id)


def test_finish_stores_outputs_with_the_jobs_ttl_and_wakes_a_waiter(store):
    job_id = store.create("conv.forward", "a", {})["id"]
    store.r.expire(store.job_key(job_id), 30)
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(store.wait(job_id, 20)))
    waiter.start()
    assert store.finish(job_id, "succeeded", result={"outputs": ["y"]}, arrays={"y": np.ones(3)})
    waiter.join(20)
    assert woke == [True]
    assert 0 < store.r.ttl(store.array_key(job_id, "out", "y")) <= 30
    np.testing.assert_array_equal(store.get_arrays(job_id, "out", ["y"])["y"], np.ones(3))


def test_a_wait_runs_out_as_false_even_past_the_clients_socket_timeout(store, redis_url):
    """Waits block in slices shorter than the socket timeout: a client that times reads out at 0.5 s
    still waits 1.5 s and answers False (one long BLPOP would raise TimeoutError)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=0.5)
    short = JobStore(client, store.prefix)
    job_id = short.create("conv.forward", "a", {})["id"]
    start = time.monotonic()
    assert short.wait(job_id, 1.5) is False
    assert time.monotonic() - start >= 1.5
    assert short.wait(job_id, 0) is False
    client.close()


def test_count_attempt_and_expired_jobs(store):
    job_id = store.create("conv.forward", "a", {})["id"]
    assert [store.count_attempt(job_id) for _ in range(2)] == [1, 2]
    store.r.delete(store.job_key(job_id))
    assert store.count_attempt(job_id) is None and not store.r.exists(store.job_key(job_id))


def test_list_newest_first_and_overdue_jobs_fail(store):
    ids = [store.create("conv.forward", "a", {})["id"] for _ in range(3)]
    assert store.list_ids("a") == ids[::-1] and store.list_ids("a", limit=1) == [ids[-1]]
    store.start(ids[0], "w")
    job = store.get(ids[0])
    assert store.fail_if_overdue(job, 3600)["state"] == "running"
    store.r.hset(store.job_key(ids[0]), "started_at", repr(time.time() - 7200))
    lost = store.fail_if_overdue(store.get(ids[0]), 3600)
    assert lost["state"] == "failed" and lost["error"]["type"] == "Lost"


def test_workers_are_listed_until_their_heartbeat_expires(store):
    store.heartbeat("w1", {"id": "w1", "device": "cpu"}, ttl_s=0.3)
    store.heartbeat("w2", {"id": "w2", "device": "cpu"}, ttl_s=30)
    assert sorted(w["id"] for w in store.workers()) == ["w1", "w2"]
    deadline = time.monotonic() + 10
    while len(store.workers()) > 1:
        assert time.monotonic() < deadline, "w1's heartbeat never expired"
        time.sleep(0.1)
    assert [w["id"] for w in store.workers()] == ["w2"]
    store.forget_worker("w2")
    assert store.workers() == []
