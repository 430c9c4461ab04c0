"""A worker killed with SIGKILL mid-training: the job is redelivered (visibility timeout, here 2 s)
and resumes from its last checkpoint, ending exactly where an uninterrupted run ends; a job whose
checkpoint cannot be read ends failed with the reason. Dedicated workers on their own Redis DB,
so the short visibility timeout touches no other test's messages."""
from __future__ import annotations

import io
import os
import signal

import numpy as np
import pytest
import redis
from support.stack import start_worker, tiny_job, wait_for_worker, wait_job

from app.core import processes
from convcore import datasets, nn

JOB = tiny_job(epochs=8, model=[{"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same",
                                 "algorithm": "direct"}, {"type": "relu"}, {"type": "maxpool", "kernel_size": 2},
                                {"type": "flatten"}, {"type": "dense", "out_features": 10}])


@pytest.fixture(scope="module")
def crash_env(base_env, redis_url, api_factory, tmp_path_factory):
    """(env, its Redis client, an API on it, worker log): Redis DB 3, 2 s visibility timeout, 3 s lease.

    The lease is renewed every third of its life from a thread; on a loaded machine a 1 s lease can
    lapse while the worker is alive, and the API then queues the job again as an orphan."""
    url = redis_url.rsplit("/", 1)[0] + "/3"
    env = {**base_env, "REDIS_URL": url, "CONVND_VISIBILITY_TIMEOUT_S": "2", "CONVND_RESTORE_INTERVAL_S": "1",
           "CONVND_TRAIN_LEASE_S": "3"}
    r = redis.Redis.from_url(url)
    log = tmp_path_factory.mktemp("crash") / "workers.log"
    first = start_worker(env, log)
    wait_for_worker(r, env["CONVND_KEY_PREFIX"], first, log)
    api = api_factory("crash", REDIS_URL=url)
    yield env, r, api, log, first
    for key in r.scan_iter(f"{env['CONVND_KEY_PREFIX']}:*"):
        r.delete(key)
    r.close()


def _kill_group(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the worker and its prefork child, without any clean-up
    proc.wait(10)


def _run_until_epochs(client, job: dict, epochs: int) -> str:
    job_id = client.post("/v1/train", json=job).json()["id"]
    wait_job(client, job_id, ("running",), until=lambda j: len(j["progress"].get("history") or []) >= epochs)
    return job_id


def test_killed_worker_job_resumes_from_its_checkpoint(crash_env):
    env, r, api, log, first = crash_env
    job_id = _run_until_epochs(api.client, JOB, 2)
    _kill_group(first)
    kept = len(api.client.get(f"/v1/jobs/{job_id}").json()["progress"]["history"])
    # running until its 1 s lease runs out; then a read queues it again (worker.lease.recover_orphan)
    assert api.client.get(f"/v1/jobs/{job_id}").json()["state"] in ("running", "queued")
    second = start_worker(env, log)
    try:
        job = wait_job(api.client, job_id, timeout_s=60)
        assert job["state"] == "succeeded", job
        assert job["result"]["attempts"] == 2 and job["progress"]["resumed_from_epoch"] >= kept
        assert [h["epoch"] for h in job["result"]["history"]] == list(range(1, 9))  # no epoch lost or repeated
        served = nn.io.load(io.BytesIO(api.client.get(f"/v1/jobs/{job_id}/model").content))
        # The uninterrupted run, in-process: a resumed CPU run repeats it.
        x, y, _ = datasets.load(JOB["dataset"])
        xt, yt, xv, yv = datasets.train_val_split(x, y, JOB["validation_split"], seed=JOB["seed"])
        model = nn.Sequential.from_spec(JOB["model"], x.shape[1:], seed=JOB["seed"])
        nn.fit(model, xt, yt, nn.make_optimizer(JOB["optimizer"]), JOB["loss"], JOB["epochs"], JOB["batch_size"],
               JOB["seed"], xv, yv)
        for k, v in model.parameters().items():
            np.testing.assert_array_equal(served.parameters()[k], v, err_msg=k)

        # A checkpoint that cannot be read: the redelivered job fails with the reason, it does not hang.
        job_id = _run_until_epochs(api.client, tiny_job(epochs=30), 1)
        _kill_group(second)
        r.set(f"{env['CONVND_KEY_PREFIX']}:job:{job_id}:ckpt", b"not an npz", keepttl=True)
        second = start_worker(env, log)
        job = wait_job(api.client, job_id, timeout_s=60)
        assert job["state"] == "failed" and job["error"]["type"] == "ResumeFailed", job
        assert "cannot resume from the checkpoint" in job["error"]["message"]
    finally:
        processes.stop(second)
