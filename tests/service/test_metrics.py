"""GET /metrics against the real stack: jobs that succeed, fail and are cancelled through TWO worker
processes (and the API, which counts cancels), each value read with Prometheus's own text parser
and checked against what the jobs' records say.

A key prefix and queue of this module's own, so the counters hold exactly this module's jobs.
"""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import tensor
from support.stack import start_worker, tiny_job, wait_job

from app.core import processes

pytestmark = pytest.mark.timeout(240)
KEY, TOKEN = "metrics-user-key", "metrics-scrape-token"
AUTH = {"X-API-Key": KEY}
LONG = tiny_job(epochs=500)  # runs until cancelled
# Diverges in its first epoch: SGD with a huge step on a network without a nonlinearity.
DIVERGING = tiny_job(model=[{"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same"},
                            {"type": "flatten"}, {"type": "dense", "out_features": 10}],
                     optimizer={"type": "sgd", "lr": 1000.0, "momentum": 0.99})


@pytest.fixture(scope="module")
def stack(api_factory, base_env, rdb, tmp_path_factory):
    """(API with a key and a metrics token, key prefix); two workers on a queue of their own."""
    tag = uuid.uuid4().hex[:8]
    prefix, queue = f"convnd-metrics-{tag}", f"convnd-metrics-{tag}"
    # The fast lane off in these workers: a small forward must wait in the Celery queue while both are busy
    # (with it on, it would run at once beside the training jobs: tests/service/test_fastlane.py).
    env = {**base_env, "CONVND_KEY_PREFIX": prefix, "CONVND_QUEUE": queue, "CONVND_FAST_LANE_MAX_MADDS": "0"}
    log = tmp_path_factory.mktemp("metrics-workers") / "workers.log"
    workers = [start_worker(env, log) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while rdb.zcard(f"{prefix}:workers") < 2:
            assert time.monotonic() < deadline, f"two workers not up: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        api = api_factory(f"metrics-{tag}", key_prefix=prefix, queue=queue, api_keys=KEY, metrics_token=TOKEN)
        yield api, prefix
    finally:
        for proc in workers:
            processes.stop(proc)


def scrape(client, **headers) -> dict:
    """{(sample name, frozenset of labels): value} of GET /metrics, parsed by prometheus_client."""
    r = client.get("/metrics", headers=headers or {"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def forward(client, **extra):
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 8)
    return client.post("/v1/conv/forward", headers=AUTH, json={
        "x": tensor(x), "W": tensor(np.ones((1, 1, 3), np.float32)), **extra})


def test_metrics_need_a_key_or_the_token(stack):
    client = stack[0].client
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer not-the-token"}).status_code == 403
    assert client.get("/metrics", headers=AUTH).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_counters_across_two_workers_and_the_api(stack, rdb):
    api, prefix = stack
    client = api.client
    ids = {"conv.forward": [], "train": []}
    for _ in range(3):  # succeeded, each in one of the two workers
        r = forward(client)
        assert r.status_code == 200, r.text
        ids["conv.forward"].append(r.json()["job_id"])
    assert forward(client, stride=0).status_code == 422  # refused by the API: no job

    ok = client.post("/v1/train", headers=AUTH, json=tiny_job(epochs=2)).json()["id"]
    bad = client.post("/v1/train", headers=AUTH, json=DIVERGING).json()["id"]
    ids["train"] += [ok, bad]
    assert wait_job(client, ok, headers=AUTH)["state"] == "succeeded"
    failed = wait_job(client, bad, headers=AUTH)
    assert failed["state"] == "failed" and failed["error"]["type"] == "TrainingDiverged"

    # Both workers busy with a long job each; a third job waits in the queue and is cancelled there.
    long_ids = [client.post("/v1/train", headers=AUTH, json=LONG).json()["id"] for _ in range(2)]
    ids["train"] += long_ids
    for job_id in long_ids:
        wait_job(client, job_id, states=("running",), until=lambda j: j["progress"].get("steps"), headers=AUTH)
    holders = {rdb.hget(f"{prefix}:job:{j}", "worker") for j in long_ids}
    assert len(holders) == 2, "the two long jobs run in two different worker processes"
    queued_view = forward(client, **{"async": True}).json()  # 202: the job view
    queued = queued_view["id"]
    assert queued_view["lane"] == "celery"   # the workers offer no fast lane: the API must not use one
    ids["conv.forward"].append(queued)
    assert value(scrape(client), "convnd_queue_length", queue=prefix) == 1
    for job_id in [queued, *long_ids]:
        assert client.delete(f"/v1/jobs/{job_id}", headers=AUTH).json()["state"] == "cancelled"
    deadline = time.monotonic() + 30  # the workers notice within a step and let go of the jobs
    while any(rdb.exists(f"{prefix}:job:{j}:lease") for j in long_ids):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    samples = scrape(client)
    views = {kind: [client.get(f"/v1/jobs/{j}", headers=AUTH).json() for j in js] for kind, js in ids.items()}
    for kind, jobs in views.items():
        for state in ("succeeded", "failed", "cancelled"):
            expected = sum(j["state"] == state for j in jobs)
            assert value(samples, "convnd_jobs_total", kind=kind, state=state) == expected, (kind, state)
    assert value(samples, "convnd_jobs_total", kind="conv.forward", state="succeeded") == 3
    assert value(samples, "convnd_jobs_total", kind="conv.forward", state="cancelled") == 1
    assert value(samples, "convnd_jobs_total", kind="train", state="cancelled") == 2
    assert value(samples, "convnd_jobs_total", kind="train", state="failed") == 1

    # Durations: submission to final state, from each job's own timestamps.
    for kind, jobs in views.items():
        seconds = [j["timings"]["finished_at"] - j["timings"]["created_at"] for j in jobs]
        assert value(samples, "convnd_job_duration_seconds_count", kind=kind) == len(jobs)
        assert value(samples, "convnd_job_duration_seconds_sum", kind=kind) == pytest.approx(sum(seconds), abs=1e-3)
        for (name, labels), count in samples.items():
            labels = dict(labels)
            if name == "convnd_job_duration_seconds_bucket" and labels["kind"] == kind:
                assert count == sum(s <= float(labels["le"]) for s in seconds), labels

    # Epochs: every finished epoch of every training job, whichever worker ran it.
    epochs = 0
    for job_id in ids["train"]:
        model = client.get(f"/v1/jobs/{job_id}/model", headers=AUTH)
        epochs += int(model.headers["X-Epochs-Trained"]) if model.status_code == 200 else 0
    assert epochs >= 2 and value(samples, "convnd_training_epochs_total") == epochs

    devices = [w["device"] for w in client.get("/v1/workers", headers=AUTH).json()["workers"]]
    assert len(devices) == 2
    for device in set(devices):
        assert value(samples, "convnd_workers", device=device) == devices.count(device)
    # The cancelled job's message leaves the queue when a freed worker takes it and skips it: soon,
    # but not necessarily before the leases above are gone.
    deadline = time.monotonic() + 30
    while value(scrape(client), "convnd_queue_length", queue=prefix) != 0:
        assert time.monotonic() < deadline, "the cancelled job's message stayed in the queue"
        time.sleep(0.05)
    assert value(samples, "convnd_fast_lane_length", queue=prefix) == 0
    assert value(samples, "convnd_store_up") == 1

    # HTTP metrics of this API process, by route template and status.
    assert value(samples, "convnd_http_requests_total", method="POST", route="/v1/conv/forward", status="200") == 3
    assert value(samples, "convnd_http_requests_total", method="POST", route="/v1/conv/forward", status="422") == 1
    assert value(samples, "convnd_http_requests_total", method="DELETE", route="/v1/jobs/{job_id}",
                 status="200") == 3
    assert value(samples, "convnd_http_request_duration_seconds_count", method="POST", route="/v1/conv/forward") == 5
