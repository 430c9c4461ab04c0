"""The fast lane (worker/fastlane.py) on the real stack: small forward and backward jobs reach the
real worker without a Celery message, answers checked against PyTorch; large jobs, gradchecks and an
API with the lane off keep Celery's path; entries taken by a worker that died are run again by a
live one (and fail as WorkerLost once they have killed too many); a small job is answered while a
training job occupies the worker's only process; the thread itself against the real server.
"""
from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
import redis
import torch
from service_helpers import array, tensor
from support.stack import in_process_api, tiny_job, wait_job

from app.jobs import submit
from worker import fastlane
from worker.kinds import BACKWARD, FORWARD, GRADCHECK
from worker.store import JobStore

pytestmark = pytest.mark.timeout(120)


def _conv2d(x, W, padding):
    return torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(W), padding=padding)


def _forward_lane(client, x_shape, W_shape, padding: int, tolerance: float, seed: int) -> str:
    """POST a float32 forward, check y against PyTorch, return the lane its job took."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    W = rng.standard_normal(W_shape).astype(np.float32)
    r = client.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W), "padding": padding})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(array(r.json()["y"]), _conv2d(x, W, padding).numpy(), rtol=tolerance, atol=tolerance)
    return client.get(f"/v1/jobs/{r.json()['job_id']}").json()["lane"]


def test_a_small_forward_takes_the_fast_lane_and_matches_pytorch(client):
    assert _forward_lane(client, (2, 3, 12, 12), (5, 3, 3, 3), 1, 1e-5, seed=1) == "fast"


def test_a_small_backward_takes_the_fast_lane_and_matches_pytorch_autograd(client):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 9, 9))
    W = rng.standard_normal((4, 2, 3, 3))
    gy = rng.standard_normal((1, 4, 9, 9))
    r = client.post("/v1/conv/backward", json={"x": tensor(x), "W": tensor(W), "gy": tensor(gy), "padding": 1})
    assert r.status_code == 200, r.text
    tx, tW = torch.from_numpy(x).requires_grad_(), torch.from_numpy(W).requires_grad_()
    torch.nn.functional.conv2d(tx, tW, padding=1).backward(torch.from_numpy(gy))
    np.testing.assert_allclose(array(r.json()["gx"]), tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(array(r.json()["gW"]), tW.grad.numpy(), rtol=1e-10, atol=1e-10)
    assert client.get(f"/v1/jobs/{r.json()['job_id']}").json()["lane"] == "fast"


def test_an_async_small_job_says_its_lane_at_once(client):
    x, W = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)
    r = client.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W), "async": True})
    assert r.status_code == 202 and r.json()["lane"] == "fast", r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded" and job["lane"] == "fast"
    assert np.all(array(client.get(f"/v1/jobs/{job['id']}/result").json()["y"]) == 9.0)


def test_a_job_over_the_bound_and_a_gradcheck_go_through_celery(client):
    # 16 x 64 x 64 outputs x 16 x 9 x 9 taps = 85 million multiply-adds: over the default 50 million
    assert _forward_lane(client, (1, 16, 64, 64), (16, 16, 9, 9), 4, 1e-3, seed=3) == "celery"

    r = client.post("/v1/conv/gradcheck", json={"x_shape": [1, 1, 5], "W_shape": [1, 1, 3], "seed": 0})
    assert r.status_code == 200, r.text
    assert client.get(f"/v1/jobs/{r.json()['job_id']}").json()["lane"] == "celery"


def test_an_api_with_the_lane_off_sends_every_job_through_celery(redis_url, base_env, worker):
    with in_process_api(redis_url, base_env["CONVND_KEY_PREFIX"], base_env["CONVND_QUEUE"],
                        fast_lane_max_madds=0) as api:
        x, W = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)
        r = api.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W)})
        assert r.status_code == 200, r.text
        assert np.all(array(r.json()["y"]) == 9.0)
        assert api.get(f"/v1/jobs/{r.json()['job_id']}").json()["lane"] == "celery"


def _small_forward(api) -> dict:
    x, W = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)
    r = api.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W)})
    assert r.status_code == 200, r.text
    assert np.all(array(r.json()["y"]) == 9.0)
    return api.get(f"/v1/jobs/{r.json()['job_id']}").json()


def test_a_remembered_route_queues_the_job_in_the_round_trip_that_stores_it(redis_url, base_env, worker,
                                                                           monkeypatch):
    prefix, queue = base_env["CONVND_KEY_PREFIX"], base_env["CONVND_QUEUE"]
    with in_process_api(redis_url, prefix, queue) as api:
        assert _small_forward(api)["lane"] == "fast"   # the route is remembered from here on
        assert submit._recent_routes[(prefix, "auto")][0] == queue

        def no_second_trip(*args):
            raise AssertionError("pushed in a round trip of its own")
        monkeypatch.setattr(fastlane, "push", no_second_trip)
        assert _small_forward(api)["lane"] == "fast"


def test_a_remembered_route_that_no_longer_holds_is_withdrawn(redis_url, base_env, worker, rdb, monkeypatch):
    prefix, queue = base_env["CONVND_KEY_PREFIX"], base_env["CONVND_QUEUE"]
    with in_process_api(redis_url, prefix, queue) as api:
        monkeypatch.setitem(submit._recent_routes, (prefix, "auto"), ("gone", 10**9, time.monotonic()))
        job = _small_forward(api)   # queued on "gone"'s lane with the job, taken back, run where the workers say
        assert job["lane"] == "fast" and job["state"] == "succeeded"
        assert rdb.llen(fastlane.list_key(prefix, "gone")) == 0
        assert submit._recent_routes[(prefix, "auto")][0] == queue


def test_a_remembered_route_without_a_live_worker_leaves_nothing_queued(redis_url, rdb, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    prefix, queue = f"convnd-nowork-{tag}", f"convnd-nowork-{tag}"
    with in_process_api(redis_url, prefix, queue) as api:
        monkeypatch.setitem(submit._recent_routes, (prefix, "auto"), (queue, 10**9, time.monotonic()))
        x, W = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)
        r = api.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W)})
        assert r.status_code == 503, r.text
        assert rdb.llen(fastlane.list_key(prefix, queue)) == 0
        assert api.get("/v1/jobs").json()["jobs"] == []


def test_the_live_worker_offers_its_bound(client, base_env):
    workers = client.get("/v1/workers").json()["workers"]
    assert any(w.get("fast_lane") == 50_000_000 and w["queue"] == base_env["CONVND_QUEUE"] for w in workers), workers


@pytest.mark.parametrize("offered, madds, expected", [
    (100, 100, True), (100, 101, False), (0, 1, False), (None, 1, False)])
def test_a_job_goes_to_the_lane_only_within_a_live_workers_bound(offered, madds, expected):
    workers = [{"queue": "other", "fast_lane": 10**9}, {"queue": "q", "fast_lane": offered}]
    assert fastlane.served(workers, "q", madds) is expected


def _job_of_a_dead_worker(rdb, base_env, attempts: int = 0) -> str:
    """A stored small forward whose fast-lane entry a worker that no longer beats had taken."""
    prefix, queue = base_env["CONVND_KEY_PREFIX"], base_env["CONVND_QUEUE"]
    store = JobStore(rdb, prefix, ttl_s=120)
    x, W = np.full((1, 1, 5), 2.0), np.ones((1, 1, 3))
    job = store.create(FORWARD.name, "open", {"padding": 1}, {"x": x, "W": W})
    if attempts:
        rdb.hset(store.job_key(job["id"]), "attempts", attempts)
    ghost = f"ghost-{uuid.uuid4().hex[:8]}:1"   # never had a heartbeat key
    rdb.rpush(fastlane.taken_key(prefix, queue, ghost), f"{FORWARD.name}:{job['id']}")
    rdb.sadd(fastlane.takers_key(prefix, queue), ghost)
    return job["id"]


def test_an_entry_taken_by_a_dead_worker_is_run_by_a_live_one(client, rdb, base_env):
    job_id = _job_of_a_dead_worker(rdb, base_env)
    job = wait_job(client, job_id, timeout_s=30)   # the live worker sweeps every worker_liveness_s (1.5 s here)
    assert job["state"] == "succeeded", job
    assert rdb.hget(f"{base_env['CONVND_KEY_PREFIX']}:job:{job_id}", "attempts") == b"1"   # its one delivery
    assert array(client.get(f"/v1/jobs/{job_id}/result").json()["y"]).ravel().tolist() == [4.0, 6.0, 6.0, 6.0, 4.0]


def test_an_entry_that_killed_its_worker_too_often_fails_as_worker_lost(client, rdb, base_env):
    job_id = _job_of_a_dead_worker(rdb, base_env, attempts=3)   # max_attempts: 3 deliveries already
    job = wait_job(client, job_id, timeout_s=30)
    assert job["state"] == "failed" and job["error"]["type"] == "WorkerLost", job


def test_a_small_job_is_answered_while_a_training_job_holds_the_only_process(client):
    long_id = client.post("/v1/train", json=tiny_job(epochs=500)).json()["id"]
    try:
        wait_job(client, long_id, states=("running",), until=lambda j: j["progress"].get("steps"))
        x, W = np.ones((1, 1, 6), np.float32), np.ones((1, 1, 3), np.float32)
        r = client.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W)})
        assert r.status_code == 200 and array(r.json()["y"]).ravel().tolist() == [3.0] * 4, r.text
        assert client.get(f"/v1/jobs/{long_id}").json()["state"] == "running"
    finally:
        client.delete(f"/v1/jobs/{long_id}")
        wait_job(client, long_id)


# The thread alone, against the real server ------------------------------------------------------

@pytest.fixture
def lane_keys(redis_url):
    r = redis.Redis.from_url(redis_url)
    prefix = f"convnd-lane-{uuid.uuid4().hex[:8]}"
    yield r, prefix, "q"
    for key in r.scan_iter(f"{prefix}:*"):
        r.delete(key)
    r.close()


def _until(check, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_thread_runs_entries_in_order_and_empties_its_taken_list(lane_keys):
    r, prefix, queue = lane_keys
    ran = []
    lane = fastlane.FastLane(r, prefix, queue, "w1", lambda job_id, kind: ran.append((kind.name, job_id)), 60).start()
    try:
        for i in range(3):
            r.rpush(fastlane.list_key(prefix, queue), f"{BACKWARD.name if i == 1 else FORWARD.name}:j{i}")
        r.rpush(fastlane.list_key(prefix, queue), f"{GRADCHECK.name}:j9")   # not a fast-lane kind: dropped
        r.rpush(fastlane.list_key(prefix, queue), "no-separator")            # malformed: dropped
        r.rpush(fastlane.list_key(prefix, queue), f"{FORWARD.name}:j3")      # and the thread goes on
        _until(lambda: len(ran) == 4)
        assert ran == [(FORWARD.name, "j0"), (BACKWARD.name, "j1"), (FORWARD.name, "j2"), (FORWARD.name, "j3")]
    finally:
        lane.stop()
    assert r.llen(fastlane.list_key(prefix, queue)) == 0
    assert r.llen(fastlane.taken_key(prefix, queue, "w1")) == 0   # the last one leaves as the thread stops
    assert r.smembers(fastlane.takers_key(prefix, queue)) == {b"w1"}


def test_an_entry_whose_run_raises_is_dropped_and_the_thread_lives_on(lane_keys):
    r, prefix, queue = lane_keys
    ran = []

    def run(job_id, kind):
        ran.append(job_id)
        if job_id == "bad":
            raise RuntimeError("a bug in a job's run")

    lane = fastlane.FastLane(r, prefix, queue, "w1", run, 60).start()
    try:
        r.rpush(fastlane.list_key(prefix, queue), f"{FORWARD.name}:bad", f"{FORWARD.name}:good")
        _until(lambda: ran == ["bad", "good"])
    finally:
        lane.stop()
    assert r.llen(fastlane.taken_key(prefix, queue, "w1")) == 0


def test_the_lane_calls_idle_once_after_jobs_when_nothing_more_comes(lane_keys):
    """What lets a GPU lane hand its cached memory back without making the next job wait (release_here)."""
    r, prefix, queue = lane_keys
    events = []
    lane = fastlane.FastLane(r, prefix, queue, "w1", lambda job_id, kind: events.append(job_id), 60,
                             idle=lambda: events.append("idle")).start()
    try:
        time.sleep(fastlane.TAKE_TIMEOUT_S + 0.5)   # idle from the start: no jobs ran, nothing to release
        assert events == []
        r.rpush(fastlane.list_key(prefix, queue), f"{FORWARD.name}:a", f"{FORWARD.name}:b")
        _until(lambda: "idle" in events)
        time.sleep(fastlane.TAKE_TIMEOUT_S + 0.5)   # still idle: released once, not at every empty take
    finally:
        lane.stop()
    assert events == ["a", "b", "idle"]


def test_a_restarted_process_runs_what_its_taken_list_still_holds_first(lane_keys):
    r, prefix, queue = lane_keys
    r.rpush(fastlane.taken_key(prefix, queue, "w1"), f"{FORWARD.name}:left")
    r.rpush(fastlane.list_key(prefix, queue), f"{FORWARD.name}:next")
    ran = []
    lane = fastlane.FastLane(r, prefix, queue, "w1", lambda job_id, kind: ran.append(job_id), 60).start()
    try:
        _until(lambda: len(ran) == 2)
    finally:
        lane.stop()
    assert ran == ["left", "next"]


def _two_takers(r, prefix, queue):
    """'dead' (no heartbeat key) holds a and b, 'alive' holds c; k:waiting waits on the list."""
    r.rpush(fastlane.list_key(prefix, queue), "k:waiting")
    r.rpush(fastlane.taken_key(prefix, queue, "dead"), "k:a", "k:b")
    r.rpush(fastlane.taken_key(prefix, queue, "alive"), "k:c")
    r.sadd(fastlane.takers_key(prefix, queue), "dead", "alive")
    for worker_id in ("alive", "sweeper"):
        r.set(f"{prefix}:worker:{worker_id}", "{}", px=60_000)   # heartbeat keys


def test_the_sweep_moves_only_dead_workers_entries_back_to_the_head(lane_keys):
    r, prefix, queue = lane_keys
    _two_takers(r, prefix, queue)
    assert fastlane.silent(r, prefix, queue) == {"dead"}
    assert fastlane.sweep(r, prefix, queue, "sweeper", ["dead", "alive"]) == 2   # 'alive' has a heartbeat: kept
    assert r.lrange(fastlane.list_key(prefix, queue), 0, -1) == [b"k:a", b"k:b", b"k:waiting"]
    assert r.lrange(fastlane.taken_key(prefix, queue, "alive"), 0, -1) == [b"k:c"]
    assert r.smembers(fastlane.takers_key(prefix, queue)) == {b"alive"}
    assert fastlane.sweep(r, prefix, queue, "sweeper", ["dead"]) == 0


def test_a_sweeper_without_a_heartbeat_moves_nothing(lane_keys):
    """After a Redis restart every heartbeat key is gone at once, the sweeper's own included."""
    r, prefix, queue = lane_keys
    _two_takers(r, prefix, queue)
    r.delete(f"{prefix}:worker:sweeper")
    assert fastlane.sweep(r, prefix, queue, "sweeper", ["dead"]) == 0
    assert r.llen(fastlane.taken_key(prefix, queue, "dead")) == 2


def test_a_taker_is_lost_only_when_silent_at_two_sweeps_in_a_row(lane_keys):
    r, prefix, queue = lane_keys
    _two_takers(r, prefix, queue)
    lane = fastlane.FastLane(r, prefix, queue, "sweeper", lambda *a: None, 60)   # not started: sweeps by hand
    assert lane.sweep_lost() == 0                       # first sight of the silence
    assert r.llen(fastlane.taken_key(prefix, queue, "dead")) == 2
    r.set(f"{prefix}:worker:dead", "{}", px=60_000)     # it was only late (e.g. Redis came back): it beats again
    assert lane.sweep_lost() == 0
    r.delete(f"{prefix}:worker:dead")
    assert lane.sweep_lost() == 0                       # silent again: counted from here
    assert lane.sweep_lost() == 2                       # silent at two sweeps in a row
    assert r.lrange(fastlane.list_key(prefix, queue), 0, 1) == [b"k:a", b"k:b"]


def test_stop_returns_while_the_thread_waits_for_entries(lane_keys):
    r, prefix, queue = lane_keys
    lane = fastlane.FastLane(r, prefix, queue, "w1", lambda *a: None, 60).start()
    time.sleep(0.2)
    started = time.monotonic()
    lane.stop()
    assert time.monotonic() - started < fastlane.TAKE_TIMEOUT_S + 1.0
    assert not any(t.name == "convnd-fast-lane" for t in threading.enumerate())


@pytest.mark.parametrize("kind, madds, peak, max_madds, expected", [
    (FORWARD.name, 10, 1000, 100, True),
    (BACKWARD.name, 100, 1000, 100, True),
    (FORWARD.name, 101, 1000, 100, False),                        # over the bound
    (FORWARD.name, 10, fastlane.MAX_PEAK_BYTES + 1, 100, False),  # too much memory beside a Celery job
    (FORWARD.name, 10, 1000, 0, False),                           # the lane is off
    (GRADCHECK.name, 10, 1000, 100, False),                       # not a fast-lane kind
])
def test_eligible(kind, madds, peak, max_madds, expected):
    assert fastlane.eligible(kind, fastlane.Work(madds, peak), max_madds) is expected
    assert fastlane.eligible(kind, None, max_madds) is False
