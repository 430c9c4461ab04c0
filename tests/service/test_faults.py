"""/readyz with the real worker (503 when Redis or every worker is gone: test_routes.py)."""
from __future__ import annotations

from convcore import backend


def test_readyz_lists_workers_with_device(client):
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["redis"] == "ok"
    (worker,) = r.json()["workers"]
    # CONVND_DEVICE=auto: the GPU when this machine has one that passes the self-test, else the CPU
    kind = "gpu" if backend.cupy_available() else "cpu"
    assert worker["device_kind"] == kind and worker["serves"] == kind and worker["selftest"]["ok"]
    assert (worker["device"] == "cpu") == (kind == "cpu")
    if kind == "cpu":  # and /readyz says why
        assert "CONVND_DEVICE=auto: serving on the CPU because" in worker["reason"]
    assert r.json()["devices"] == {"cpu": int(kind == "cpu"), "gpu": int(kind == "gpu")}
