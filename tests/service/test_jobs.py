"""Async jobs (202 + Location), polling, cancellation of queued and running jobs, listing, expiry."""
from __future__ import annotations

import time

import numpy as np
import pytest
from service_helpers import array, tensor
from support.stack import wait_job

import convcore

# A gradcheck of tens of seconds (cancelled jobs stop within about a second): a 2-D one of 150 samples
# took 0.15 s on a warm worker and ended before the test could cancel it.
SLOW = {"x_shape": [1, 4, 24, 24, 24], "W_shape": [4, 4, 3, 3, 3], "padding": 1, "samples": 1000, "async": True}


def test_async_forward_returns_202_then_the_result(client):
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5))
    W = np.random.default_rng(1).standard_normal((3, 2, 2, 2))
    r = client.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W), "async": True})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    # The API answers from the record it wrote, however fast the worker picks the job up.
    assert r.headers["location"] == f"/v1/jobs/{job_id}" and r.json()["state"] == "queued"
    job = wait_job(client, job_id)
    assert job["state"] == "succeeded" and job["kind"] == "conv.forward"
    assert job["timings"]["run_s"] >= 0 and job["timings"]["queued_s"] >= 0
    y = array(client.get(f"/v1/jobs/{job_id}/result").json()["y"])
    np.testing.assert_allclose(y, convcore.conv_forward(x, W), rtol=1e-12)
    assert job_id in [j["id"] for j in client.get("/v1/jobs").json()["jobs"]]


def test_cancel_queued_and_running_jobs(client):
    running = client.post("/v1/conv/gradcheck", json=SLOW).json()["id"]
    queued = client.post("/v1/conv/gradcheck", json=SLOW).json()["id"]
    wait_job(client, running, states=("running",))
    for job_id in (queued, running):
        r = client.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    # The worker is still alive and moves on; neither cancelled job is overwritten or started.
    r = client.post("/v1/conv/forward", json={"x": tensor(np.ones((1, 1, 3))), "W": tensor(np.ones((1, 1, 2)))})
    assert r.status_code == 200 and array(r.json()["y"]).tolist() == [[[2.0, 2.0]]]
    assert client.get(f"/v1/jobs/{running}").json()["state"] == "cancelled"
    job = client.get(f"/v1/jobs/{queued}").json()
    assert job["state"] == "cancelled" and job["timings"]["started_at"] is None
    r = client.get(f"/v1/jobs/{queued}/result")
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]
    assert client.delete(f"/v1/jobs/{queued}").status_code == 409


@pytest.mark.parametrize("path", ["/v1/jobs/{}", "/v1/jobs/{}/result"])
def test_unknown_job_is_404(client, path):
    r = client.get(path.format("0123456789abcdef"))
    assert r.status_code == 404 and r.json()["field"] == "id"
    assert client.delete("/v1/jobs/0123456789abcdef").status_code == 404


def test_results_expire(api_factory, worker, rdb, base_env):
    api = api_factory("short_ttl", result_ttl_s=2)
    r = api.client.post("/v1/conv/forward", json={"x": tensor(np.ones((1, 1, 3))), "W": tensor(np.ones((1, 1, 2)))})
    assert r.status_code == 200
    job_id = r.json()["job_id"]
    keys = rdb.keys(f"{base_env['CONVND_KEY_PREFIX']}:job:{job_id}*")
    assert len(keys) >= 2 and all(0 < rdb.ttl(k) <= 2 for k in keys)  # job, y (+ done); inputs dropped at the end
    # TTLs are whole seconds, so the outputs may outlive the record by up to one: wait for all of it to go.
    deadline = time.monotonic() + 10
    while rdb.keys(f"{base_env['CONVND_KEY_PREFIX']}:job:{job_id}*"):
        assert time.monotonic() < deadline, f"keys of a 2 s job still there after 10 s: {rdb.keys(f'*{job_id}*')}"
        time.sleep(0.1)
    assert api.client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert api.client.get(f"/v1/jobs/{job_id}/result").status_code == 404
