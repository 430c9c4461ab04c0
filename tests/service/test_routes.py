"""Routes in this process (FastAPI's TestClient, real Redis): what the API answers when the backend
is missing or slow, and that a 202 says what the API wrote. No HTTP server needed."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from service_helpers import tensor
from support.stack import in_process_api

from app.core import processes

BODY = {"x": tensor(np.ones((1, 1, 3))), "W": tensor(np.ones((1, 1, 2)))}


def _alone(redis_url, **settings):
    """An API on a key prefix and queue of its own: no worker serves it unless a test registers one."""
    tag = uuid.uuid4().hex[:8]
    return in_process_api(redis_url, f"convnd-route-{tag}", f"convnd-route-{tag}", **settings)


def test_no_worker_is_503(redis_url):
    with _alone(redis_url) as client:
        assert client.get("/readyz").status_code == 503
        r = client.post("/v1/conv/forward", json=BODY)
        assert r.status_code == 503 and "no worker" in r.json()["detail"]
        assert client.get("/v1/jobs").json() == {"jobs": []}  # nothing was stored


def test_redis_down_is_503(redis_url):
    with in_process_api(f"redis://127.0.0.1:{processes.free_port()}/0", "p", "q") as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and "unreachable" in r.json()["redis"]
        r = client.post("/v1/conv/forward", json=BODY)
        assert r.status_code == 503 and "Redis" in r.json()["detail"]
        assert client.get("/v1/jobs/abc").status_code == 503


@pytest.mark.parametrize("wait_s", [0, 5.5])
def test_a_wait_that_runs_out_answers_202(redis_url, wait_s):
    """No wait at all, or one longer than redis-py 8's 5 s socket timeout, for a job nobody runs (a worker
    is registered, none consumes the queue): 202 + Location with the job queued, never 503."""
    with _alone(redis_url, wait_timeout_s=wait_s) as client:
        store = client.app.state.store
        store.heartbeat("registered-only", {"id": "registered-only", "device": "cpu"}, ttl_s=60)
        start = time.monotonic()
        r = client.post("/v1/conv/forward", json=BODY)
        assert r.status_code == 202, r.text
        assert time.monotonic() - start >= wait_s
        assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}" and r.json()["state"] == "queued"
        store.forget_worker("registered-only")


def test_async_202_is_the_record_written(app_client):
    """The 202 of an async POST shows the job as the API stored it (queued), however fast the worker."""
    for _ in range(5):
        r = app_client.post("/v1/conv/forward", json={**BODY, "async": True})
        assert r.status_code == 202 and r.json()["state"] == "queued" and r.json()["timings"]["started_at"] is None
