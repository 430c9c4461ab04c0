"""503 when Redis or every worker is gone; /healthz and /readyz."""
from __future__ import annotations

import numpy as np
from service_helpers import tensor

from app.core import processes

BODY = {"x": tensor(np.ones((1, 1, 3))), "W": tensor(np.ones((1, 1, 2)))}


def test_readyz_lists_workers_with_device(client):
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["redis"] == "ok"
    assert [w["device"] for w in r.json()["workers"]] == ["cpu"]


def test_no_worker_is_503(api_factory, worker):
    api = api_factory("no_worker", key_prefix="convnd-test-lonely")  # no worker heartbeats under this prefix
    assert api.client.get("/readyz").status_code == 503
    r = api.client.post("/v1/conv/forward", json=BODY)
    assert r.status_code == 503 and "no worker" in r.json()["detail"]


def test_redis_down_is_503(api_factory):
    api = api_factory("redis_down", REDIS_URL=f"redis://127.0.0.1:{processes.free_port()}/0")
    assert api.client.get("/healthz").status_code == 200
    r = api.client.get("/readyz")
    assert r.status_code == 503 and "unreachable" in r.json()["redis"]
    r = api.client.post("/v1/conv/forward", json=BODY)
    assert r.status_code == 503 and "Redis" in r.json()["detail"]
    assert api.client.get("/v1/jobs/abc").status_code == 503
