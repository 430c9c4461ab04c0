"""Training end to end through API + Redis + a real Celery worker: progress, events, model, predict,
cancellation, divergence. References: the same run in-process (CPU training is reproducible)
and PyTorch for the trained network's outputs."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from service_helpers import array, tensor
from support.stack import tiny_job, wait_job

from convcore import datasets, nn

OCTET = {"Content-Type": "application/octet-stream"}   # uploads are raw .npz bytes (or multipart)


@pytest.fixture(scope="module")
def trained(client):
    """A finished 2-epoch digits job: (job view, the events seen while it ran)."""
    r = client.post("/v1/train", json=tiny_job())
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}" and r.json()["kind"] == "train"
    assert r.json()["links"]["events"] == f"/v1/jobs/{job_id}/events"
    assert r.json()["links"]["predict"] == f"/v1/models/{job_id}/predict"
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in s.iter_lines():  # the server closes the stream when the job ends
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line[5:])))
    return client.get(f"/v1/jobs/{job_id}").json(), events


def test_job_succeeds_with_progress_and_per_epoch_metrics(trained):
    job, _ = trained
    assert job["state"] == "succeeded", job
    p = job["progress"]
    assert p["fraction"] == 1.0 and p["epoch"] == 2 and p["epochs"] == 2 and p["eta_s"] == 0
    hist = job["result"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2] and p["history"] == hist
    for h in hist:
        assert h["seconds"] > 0 and h["train_loss"] > 0 and 0 <= h["val_accuracy"] <= 1
    assert hist[1]["train_loss"] < hist[0]["train_loss"]
    assert hist[1]["val_accuracy"] > 0.8  # ten classes: chance is 0.1
    assert job["result"]["train_samples"] + job["result"]["val_samples"] == 1797


def test_job_trains_exactly_like_the_library(trained, client):
    """Same job in-process with convcore.nn: identical metrics and parameters (seeded CPU run)."""
    job, _ = trained
    spec = tiny_job()
    x, y, _ = datasets.load(spec["dataset"])
    xt, yt, xv, yv = datasets.train_val_split(x, y, spec["validation_split"], seed=spec["seed"])
    model = nn.Sequential.from_spec(spec["model"], x.shape[1:], seed=spec["seed"])
    history = nn.fit(model, xt, yt, nn.make_optimizer(spec["optimizer"]), spec["loss"], spec["epochs"],
                     spec["batch_size"], spec["seed"], xv, yv)
    assert [h["val_accuracy"] for h in history] == [h["val_accuracy"] for h in job["result"]["history"]]
    r = client.get(f"/v1/jobs/{job['id']}/model")
    assert r.status_code == 200 and r.headers["x-epochs-trained"] == "2"
    served = nn.io.load(io.BytesIO(r.content))
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(served.parameters()[k], v)
    meta = json.loads(str(np.load(io.BytesIO(r.content))["job"]))
    assert meta["params"]["model"] == spec["model"] and len(meta["history"]) == 2


def test_events_stream_progress_then_end(trained):
    job, events = trained
    kinds = [k for k, _ in events]
    assert kinds[-1] == "end" and set(kinds[:-1]) <= {"progress"} and "progress" in kinds
    assert events[-1][1]["state"] == "succeeded" and events[-1][1]["id"] == job["id"]
    fractions = [v["progress"].get("fraction", 0) for _, v in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def _torch_net(served):
    """The served network rebuilt in PyTorch from its parameters."""
    p = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in served.parameters().items()}
    conv = torch.nn.Conv2d(1, 4, 3, padding=1).double()
    dense = torch.nn.Linear(4 * 4 * 4, 10).double()
    with torch.no_grad():
        conv.weight.copy_(p["0.W"]), conv.bias.copy_(p["0.b"])
        dense.weight.copy_(p["4.W"]), dense.bias.copy_(p["4.b"])
    return torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), dense)


def test_predict_matches_pytorch(trained, client):
    job, _ = trained
    served = nn.io.load(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/model").content))
    x, y, _ = datasets.load({"name": "digits"})
    xs = x[:50]
    r = client.post(f"/v1/models/{job['id']}/predict", json={"x": tensor(xs)})
    assert r.status_code == 200, r.text
    body = r.json()
    with torch.no_grad():
        ref = _torch_net(served)(torch.from_numpy(xs.astype(np.float64))).numpy()
    np.testing.assert_allclose(array(body["outputs"]), ref, rtol=1e-4, atol=1e-4)
    probs = array(body["probabilities"])
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(ref), 1).numpy(), atol=1e-5)
    assert body["predictions"] == ref.argmax(1).tolist() and body["epochs_trained"] == 2
    assert np.mean(np.array(body["predictions"]) == y[:50]) > 0.8


@pytest.mark.parametrize("shape", [[2, 8, 8], [2, 1, 8, 9], [0, 1, 8, 8]])
def test_predict_rejects_inputs_of_another_shape(trained, client, shape):
    r = client.post(f"/v1/models/{trained[0]['id']}/predict", json={"x": tensor(np.zeros(shape, np.float32))})
    assert r.status_code == 422 and r.json()["field"] == "x" and "(n, 1, 8, 8)" in r.json()["detail"]


def test_unknown_model_is_404(client):
    r = client.post("/v1/models/0123456789abcdef/predict", json={"x": tensor(np.zeros((1, 1, 8, 8)))})
    assert r.status_code == 404 and r.json()["field"] == "model_id"
    for path in ("events", "model"):
        assert client.get(f"/v1/jobs/0123456789abcdef/{path}").status_code == 404


def test_cancel_stops_within_a_step_and_keeps_the_checkpoint(client):
    """1000 epochs would take minutes: the worker (concurrency 1) starting and finishing the next job within
    the deadline, with the cancelled job's checkpoint at most one epoch further, shows that training stopped."""
    job_id = client.post("/v1/train", json=tiny_job(epochs=1000)).json()["id"]
    wait_job(client, job_id, ("running",), until=lambda j: j["progress"].get("history"))
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    at_cancel = len(r.json()["progress"]["history"])
    nxt = client.post("/v1/train", json=tiny_job(epochs=1)).json()["id"]
    assert wait_job(client, nxt, timeout_s=60)["state"] == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and job["progress"]["fraction"] < 0.5
    r = client.get(f"/v1/jobs/{job_id}/model")
    assert r.status_code == 200 and r.headers["x-job-state"] == "cancelled"
    # The epoch running at the cancel may have ended (and been checkpointed); no later one ran.
    assert at_cancel <= int(r.headers["x-epochs-trained"]) <= at_cancel + 1


def test_divergence_fails_the_job_with_epoch_and_layer(client):
    """Inputs of 3e38 overflow float32 in the first convolution (seed 3 draws channels whose 3x3 weights
    sum to 3.1 and -2.1): its output is +-inf at the first step."""
    buf = io.BytesIO()
    np.savez(buf, x=np.full((40, 1, 6, 6), 3e38, np.float32), y=np.arange(40) % 2)
    ds = client.post("/v1/datasets", content=buf.getvalue(), headers=OCTET).json()["id"]
    model = [{"type": "conv", "out_channels": 8, "kernel_size": 3, "algorithm": "direct"}, {"type": "flatten"},
             {"type": "dense", "out_features": 2}]
    job_id = client.post("/v1/train", json=tiny_job(model=model, dataset={"id": ds}, epochs=1)).json()["id"]
    job = wait_job(client, job_id)
    assert job["state"] == "failed", job
    err = job["error"]
    assert err["type"] == "TrainingDiverged" and err["epoch"] == 1 and err["layer"] == 0
    assert err["layer_type"] == "conv" and "layer 0 (conv)" in err["message"]
    # counted from 1 like the fields (the message said epoch 0, and kept a checkpoint that did not exist)
    assert err["message"].startswith("training diverged at epoch 1, step 1: non-finite output in layer 0 (conv)"), err
    assert err["message"].endswith("no epoch finished, so there is no model"), err


def test_a_split_the_api_accepts_is_the_split_the_worker_makes(client):
    """0.998 of the 1797 digits leaves round(0.002 * 1797) = 4 to train on: the API accepted it, and the
    worker's per-class rounding then held out every sample ("leaves no training samples"). Now both
    count round(f * n): the job trains on 4 samples and validates on 1793."""
    r = client.post("/v1/train", json=tiny_job(validation_split=0.998, epochs=1))
    assert r.status_code == 202, r.text
    done = wait_job(client, r.json()["id"])
    assert done["state"] == "succeeded", done
    assert (done["result"]["train_samples"], done["result"]["val_samples"]) == (4, 1793), done["result"]
