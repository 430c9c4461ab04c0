"""The job store's one-round-trip steps (worker.store: claim, finish, workers) against a real server,
including a full store (maxmemory, noeviction): all outputs or none, and the job still ends."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis

from app.core import processes
from worker import metrics
from worker.store import JobStore


@pytest.fixture
def own_store():
    """A store on a server of its own, whose memory limit the test may lower."""
    proc, url = processes.start_redis(processes.free_port())
    client = redis.Redis.from_url(url)
    try:
        yield JobStore(client, "full", ttl_s=600)
    finally:
        client.close()
        processes.stop(proc)


def test_claim_starts_counts_and_reads_in_one_step(store):
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    job_id = store.create("conv.forward", "a", {"padding": 1}, {"x": x})["id"]
    claim = store.claim(job_id, "w1", ("x", "W", "b"))
    assert claim.attempt == 1 and claim.job["state"] == "running" and claim.job["worker"] == "w1"
    assert claim.job["params"] == {"padding": 1} and claim.job["started_at"] is not None
    inputs = claim.inputs()
    assert list(inputs) == ["x"] and inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(inputs["x"], x)
    assert store.claim(job_id, "w2", ("x",)).attempt == 2  # a redelivery counts again
    assert store.cancel(job_id)
    assert store.claim(job_id, "w3", ("x",)) is None  # ended: not started again
    store.r.delete(store.job_key(job_id))
    assert store.claim(job_id, "w3", ("x",)) is None and not store.r.exists(store.job_key(job_id))


def test_finish_in_one_step_keeps_the_guarantees(store):
    job_id = store.create("conv.forward", "a", {}, {"x": np.ones(3)})["id"]
    store.r.expire(store.job_key(job_id), 30)
    assert store.finish(job_id, "succeeded", result={"outputs": ["y"]}, arrays={"y": np.full(2, 7.0)})
    assert not store.r.exists(store.array_key(job_id, "in", "x"))  # inputs dropped
    assert 0 < store.r.ttl(store.array_key(job_id, "out", "y")) <= 30  # outputs live as long as the job
    assert store.wait(job_id, 1) and store.get(job_id)["result"] == {"outputs": ["y"]}
    # A second final state is refused and writes nothing (no outputs, no second count).
    assert not store.finish(job_id, "failed", arrays={"z": np.ones(2)})
    assert not store.r.exists(store.array_key(job_id, "out", "z"))
    assert metrics.read(store.r, store.prefix)["jobs"] == {("conv.forward", "succeeded"): 1}


def test_a_wait_reads_the_outcome_in_the_same_round_trip(store):
    ok = store.create("conv.forward", "a", {})["id"]
    waiter = threading.Thread(target=lambda: time.sleep(0.2) or store.finish(
        ok, "succeeded", result={"outputs": ["y", "z"]}, arrays={"z": np.arange(2.0), "y": np.ones(3, np.float32)}))
    waiter.start()
    job, arrays = store.wait_outcome(ok, 10)
    waiter.join()
    assert job["state"] == "succeeded" and list(arrays) == ["y", "z"]  # in the result's order
    np.testing.assert_array_equal(arrays["z"], np.arange(2.0))
    assert store.wait_outcome(ok, 1, outputs=False) == (store.get(ok), {})
    failed = store.create("conv.forward", "a", {})["id"]
    store.finish(failed, "failed", error={"status": 422, "message": "no"})
    store.r.script_flush()  # a restarted server has forgotten the script: it is loaded again
    assert store.wait_outcome(failed, 1) == (store.get(failed), {})
    queued = store.create("conv.forward", "a", {})["id"]
    start = time.monotonic()
    job, arrays = store.wait_outcome(queued, 0.3)  # runs out: the record as it is now
    assert time.monotonic() - start >= 0.3 and job["state"] == "queued" and arrays == {}
    assert store.wait_outcome("0" * 32, 0.05) == (None, {})


def test_workers_in_one_step(store):
    store.heartbeat("w1", {"id": "w1"}, ttl_s=30)
    store.heartbeat("gone", {"id": "gone"}, ttl_s=30)
    store.r.delete(f"{store.prefix}:worker:gone")  # its info expired before its index entry
    assert store.workers() == [{"id": "w1"}]


def _fill(store: JobStore, over_bytes: int) -> None:
    """Lower maxmemory to ``over_bytes`` under what the server uses now: every write that can grow
    memory is refused until something is deleted."""
    store.r.config_set("maxmemory", int(store.r.info("memory")["used_memory"]) - over_bytes)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        store.r.set("probe", "x")


def test_a_full_store_drops_the_inputs_first_then_stores_the_outputs(own_store):
    s = own_store
    job_id = s.create("conv.forward", "a", {}, {"x": np.ones(2**20, np.float32)})["id"]  # 4 MiB input
    _fill(s, 2**20)
    y = np.ones(2**18, np.float32)  # 1 MiB: fits once the input is gone
    with pytest.raises(redis.exceptions.OutOfMemoryError):  # the one-step script is refused whole...
        s._finish(keys=[s.job_key(job_id), s.prefix], args=[",queued,running,", "succeeded", 0])
    assert s.get(job_id)["state"] == "queued" and s.r.exists(s.array_key(job_id, "in", "x"))
    assert s.finish(job_id, "succeeded", result={"outputs": ["y"]}, arrays={"y": y})  # ...so it goes stepwise
    assert s.get(job_id)["state"] == "succeeded" and not s.r.exists(s.array_key(job_id, "in", "x"))
    np.testing.assert_array_equal(s.get_arrays(job_id, "out", ["y"])["y"], y)
    assert metrics.read(s.r, s.prefix)["jobs"] == {("conv.forward", "succeeded"): 1}


def test_outputs_that_do_not_fit_fail_the_job_with_507_and_write_none(own_store):
    s = own_store
    job_id = s.create("conv.forward", "a", {}, {"x": np.ones(2**20, np.float32)})["id"]
    _fill(s, 6 * 2**20)  # still full after the 4 MiB input is dropped
    assert s.finish(job_id, "succeeded", result={"outputs": ["y", "z"]},
                    arrays={"y": np.ones(2**18, np.float32), "z": np.ones(2**21, np.float32)})
    job = s.get(job_id)
    assert job["state"] == "failed" and job["error"]["status"] == 507 and job["result"] is None
    assert not s.r.keys("full:job:*:out:*") and not s.r.keys("full:job:*:in:*")
    assert s.wait(job_id, 1)  # a waiting API call is woken with the failure
    assert metrics.read(s.r, s.prefix)["jobs"] == {("conv.forward", "failed"): 1}


def test_a_job_no_worker_serves_leaves_nothing_behind(store):
    """The job is written in the round trip that reads the workers; without one for its device it is
    deleted again (503), inputs and listing included."""
    from app.api.errors import ApiError
    from app.jobs.submit import submit
    from worker.kinds import FORWARD

    x = {"x": np.ones((1, 1, 4), np.float32), "W": np.ones((1, 1, 2), np.float32)}
    with pytest.raises(ApiError) as no_worker:
        submit(store, None, FORWARD, "a", {}, x)
    store.heartbeat("cpu-1", {"id": "cpu-1", "serves": "cpu", "queue": "q"}, ttl_s=30)
    with pytest.raises(ApiError) as no_gpu:
        submit(store, None, FORWARD, "a", {"device": "gpu"}, x)
    assert (no_worker.value.status, no_gpu.value.status, no_gpu.value.field) == (503, 503, "device")
    assert not list(store.r.scan_iter(f"{store.prefix}:job:*")) and store.list_ids("a") == []
    job, workers = store.create_reading_workers("conv.forward", "a", {}, x)
    assert workers == [{"id": "cpu-1", "serves": "cpu", "queue": "q"}] and store.get(job["id"])["state"] == "queued"


def test_create_stores_the_record_arrays_and_listing_and_pushes_in_one_step(store):
    store.heartbeat("w-create", {"queue": "q1", "fast_lane": 10}, 30)
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    lane = f"{store.prefix}:test-lane"
    job, workers = store.create_reading_workers("conv.forward", "a", {"padding": 1}, {"x": x, "b": None},
                                                push=(lane, "conv.forward:"), fields={"lane": "fast"})
    assert {"queue": "q1", "fast_lane": 10} in workers
    assert store.get(job["id"]) == job and job["lane"] == "fast" and job["inputs"] == "x"
    assert store.r.lrange(lane, 0, -1) == [f"conv.forward:{job['id']}".encode()]
    np.testing.assert_array_equal(store.get_arrays(job["id"], "in", ["x", "b"])["x"], x)
    assert job["id"] in store.list_ids("a")
    assert 0 < store.r.ttl(store.job_key(job["id"])) <= store.ttl
    assert 0 < store.r.ttl(store.array_key(job["id"], "in", "x")) <= store.ttl


def test_a_full_store_refuses_a_new_job_whole(own_store):
    """At the memory limit nothing of the job is written: no record, arrays, listing or lane entry."""
    s = own_store
    _fill(s, 2**20)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        s.create_reading_workers("conv.forward", "a", {}, {"x": np.ones(2**18, np.float32)},
                                 push=("full:lane", "conv.forward:"), fields={"lane": "fast"})
    assert not s.r.keys("full:job:*") and not s.r.exists("full:lane") and not s.r.exists(s._owner_key("a"))
