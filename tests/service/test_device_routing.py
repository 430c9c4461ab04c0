"""Routing by device with real workers: one CPU worker, and one CPU worker that serves the GPU queue
(CONVND_TEST_ONLY_CPU_SERVES_GPU_QUEUE, so this runs without a GPU). A job asked for one device never
runs on the other's worker; /readyz shows both; a device with no worker is a 503 naming ``device``.
And CONVND_DEVICE=gpu on a machine without a GPU: the worker exits at once with the reason."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from support.stack import in_process_api, start_worker, wait_until

from app.core import processes
from convcore import backend
from worker.store import JobStore

X = {"shape": [1, 1, 6], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}
W = {"shape": [1, 1, 3], "datatype": "FP32", "data": [1, 0, -1]}


@pytest.fixture(scope="module")
def two_workers(redis_url, base_env, rdb, tmp_path_factory):
    """(env, {"cpu": proc, "gpu": proc}) on a queue and key prefix of their own."""
    tag = uuid.uuid4().hex[:8]
    env = {**base_env, "CONVND_KEY_PREFIX": f"convnd-route-{tag}", "CONVND_QUEUE": f"convnd-route-{tag}"}
    log = tmp_path_factory.mktemp("routing")
    procs = {"cpu": start_worker({**env, "CONVND_DEVICE": "cpu"}, log / "cpu.log"),
             "gpu": start_worker({**env, "CONVND_DEVICE": "cpu", "CONVND_TEST_ONLY_CPU_SERVES_GPU_QUEUE": "1"},
                                 log / "gpu.log")}
    key = f"{env['CONVND_KEY_PREFIX']}:workers"
    wait_until(lambda: rdb.zcard(key) == 2, "two workers", log=log / "gpu.log")
    yield env, procs
    for proc in procs.values():
        processes.stop(proc)
    for k in rdb.scan_iter(f"{env['CONVND_KEY_PREFIX']}:*"):
        rdb.delete(k)


def _ran_on(client, store: JobStore, device: str) -> str:
    """Submit a forward job asking for ``device``; the ``serves`` of the worker that ran it."""
    r = client.post("/v1/conv/forward", json={"x": X, "W": W, "device": device})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["y"]["data"], [-2, -2, -2, -2])
    job = store.get(r.json()["job_id"])
    serves = {w["id"]: w["serves"] for w in store.workers()}
    return serves[job["worker"]]


def test_jobs_run_only_on_workers_of_the_asked_device(two_workers, redis_url, rdb):
    env, procs = two_workers
    store = JobStore(rdb, env["CONVND_KEY_PREFIX"], 600)
    with in_process_api(redis_url, env["CONVND_KEY_PREFIX"], env["CONVND_QUEUE"]) as client:
        ready = client.get("/readyz").json()
        assert sorted(w["serves"] for w in ready["workers"]) == ["cpu", "gpu"]
        assert ready["devices"] == {"cpu": 1, "gpu": 1}
        gpu_worker = next(w for w in ready["workers"] if w["serves"] == "gpu")
        assert gpu_worker["device"] == "cpu" and "TEST ONLY" in gpu_worker["reason"]
        assert all(w["selftest"]["ok"] for w in ready["workers"])

        assert [_ran_on(client, store, "cpu") for _ in range(4)] == ["cpu"] * 4
        assert [_ran_on(client, store, "gpu") for _ in range(4)] == ["gpu"] * 4
        assert [_ran_on(client, store, "auto") for _ in range(2)] == ["gpu"] * 2  # a GPU worker is up

        processes.stop(procs["gpu"])  # forgets its heartbeat on the way out
        wait_until(lambda: rdb.zcard(f"{env['CONVND_KEY_PREFIX']}:workers") == 1, "GPU worker gone")
        r = client.post("/v1/conv/forward", json={"x": X, "W": W, "device": "gpu"})
        assert r.status_code == 503 and r.json()["field"] == "device" and "no GPU worker" in r.json()["detail"]
        assert _ran_on(client, store, "auto") == "cpu"
        bad = client.post("/v1/conv/forward", json={"x": X, "W": W, "device": "tpu"})
        assert bad.status_code == 422 and "device" in bad.text


@pytest.mark.skipif(backend.cupy_available(), reason="this machine has a GPU: CONVND_DEVICE=gpu would start")
def test_gpu_setting_without_a_gpu_exits_at_once_with_the_reason(base_env):
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "app.cli", "worker"], env={**base_env, "CONVND_DEVICE": "gpu"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "CONVND_DEVICE=gpu but" in done.stderr and ("CuPy" in done.stderr or "GPU" in done.stderr)
    assert time.monotonic() - start < 30
