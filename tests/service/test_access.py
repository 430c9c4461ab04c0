"""API keys: required on /v1 when configured, hashed, per-key job isolation; open mode is logged."""
from __future__ import annotations

import numpy as np
import pytest
from service_helpers import tensor

BODY = {"x": tensor(np.ones((1, 1, 3))), "W": tensor(np.ones((1, 1, 2))), "async": True}


@pytest.fixture(scope="module")
def keyed(api_factory, worker):
    return api_factory("keys", api_keys="alpha-key,beta-key")


def test_missing_key_401_wrong_key_403(keyed):
    r = keyed.client.post("/v1/conv/forward", json=BODY)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = keyed.client.get("/v1/jobs", headers={"X-API-Key": "alpha-keyX"})
    assert r.status_code == 403 and "not valid" in r.json()["detail"]
    assert keyed.client.get("/healthz").status_code == 200  # health checks need no key


def test_jobs_are_isolated_per_key(keyed):
    alpha, beta = {"Authorization": "Bearer alpha-key"}, {"X-API-Key": "beta-key"}
    r = keyed.client.post("/v1/conv/forward", json=BODY, headers=alpha)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    for method, path in (("GET", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/result"),
                         ("DELETE", f"/v1/jobs/{job}")):
        r = keyed.client.request(method, path, headers=beta)
        assert r.status_code == 404, (method, path, r.text)
    assert job not in [j["id"] for j in keyed.client.get("/v1/jobs", headers=beta).json()["jobs"]]
    assert keyed.client.get(f"/v1/jobs/{job}", headers={"X-API-Key": "alpha-key"}).status_code == 200


def test_keys_never_logged_and_modes_announced(keyed, api):
    assert "OPEN MODE" in api.log_text()
    log = keyed.log_text()
    assert "API keys required" in log and "alpha-key" not in log
