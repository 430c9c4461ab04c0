"""POST /v1/train checks the whole job before queueing: 422 naming the layer and the shapes.
(The API in this process, FastAPI's TestClient: nothing here needs an HTTP server or a worker.)"""
from __future__ import annotations

import json

import pytest
from support.stack import tiny_job

CONV = {"type": "conv", "out_channels": 4, "kernel_size": 3}
DENSE10 = {"type": "dense", "out_features": 10}


@pytest.fixture
def client(app_client):
    return app_client


@pytest.mark.parametrize("changes, field, words", [
    # 8x8 digits: a 9x9 kernel without padding does not fit
    ({"model": [{**CONV, "kernel_size": 9}, {"type": "flatten"}, DENSE10]}, "model",
     ["layer 0 (conv)", "(1, 8, 8)"]),
    # three 2x2 pools take 8 -> 4 -> 2 -> 1, a fourth has nothing left
    ({"model": [CONV | {"padding": "same"}] + [{"type": "maxpool", "kernel_size": 2}] * 4
      + [{"type": "flatten"}, DENSE10]}, "model", ["layer 4 (maxpool)", "(4, 1, 1)"]),
    ({"model": [{"type": "convolution", "out_channels": 4}]}, "model", ["layer 0", "unknown layer type", "'conv'"]),
    ({"model": [{**CONV, "out_channels": -4}, {"type": "flatten"}, DENSE10]}, "model", ["layer 0 (conv)", "-4"]),
    ({"model": [{**CONV, "colour": 1}, {"type": "flatten"}, DENSE10]}, "model", ["layer 0 (conv)", "colour"]),
    ({"model": [CONV, {"type": "dense", "out_features": 10}]}, "model", ["layer 1 (dense)", "flatten"]),
    ({"model": [CONV, {"type": "flatten"}, {"type": "dense", "out_features": 7}]}, "model",
     ["layer 2 (dense)", "(7,)", "10 classes"]),
    ({"dataset": {"name": "mnist"}}, "dataset", ["'mnist'", "digits"]),
    ({"dataset": {"name": "synthetic", "ndim": 5}}, "dataset", ["ndim", "5"]),
    ({"dataset": {"id": "0123456789abcdef"}}, "dataset", ["0123456789abcdef", "POST /v1/datasets"]),
    ({"optimizer": {"type": "rmsprop", "lr": 0.1}}, "optimizer", ["rmsprop", "adam"]),
    ({"optimizer": {"type": "sgd", "lr": -1}}, "optimizer", ["lr", "-1"]),
    ({"epochs": 0}, "epochs", ["epochs", "greater than or equal to 1"]),
    ({"validation_split": 1.0}, "validation_split", ["validation_split"]),
    ({"loss": "hinge"}, "loss", ["loss", "hinge"]),
    ({"batchsize": 8}, "batchsize", ["batchsize", "not permitted"]),
    ({"dataset": {"name": "shapes3d", "n": 20000, "size": 64}}, "dataset", ["20000 samples", "over the limit"]),
    ({"dataset": {"name": "synthetic", "n": "many"}}, "dataset", ["n must be an int", "'many'"]),
    # found by probing from outside: queued, then failed in the worker (NumPy takes no negative seed)
    ({"dataset": {"name": "synthetic", "seed": -1}}, "dataset", ["seed must be in [0, 2**63 - 1]", "-1"]),
    # an engine named for a layer it cannot run: said when the model is built, not at the first step
    ({"model": [{**CONV, "kernel_size": 5, "algorithm": "winograd"}, {"type": "flatten"}, DENSE10]}, "model",
     ["layer 0 (conv)", "algorithm='winograd' runs kernels of size 3"]),
    # found by probing from outside: 500s (a layer type used as a dict key, a graph that is not a list) ...
    ({"model": [{"type": ["conv"]}]}, "model", ["layer 0", "unknown layer type ['conv']"]),
    ({"model": {"graph": [{"name": "a", "type": {"a": 1}, "input": "x"}], "output": "a"}}, "model",
     ["unknown layer type {'a': 1}"]),
    ({"model": {"graph": None, "output": "a"}}, "model", ["model.graph must be a non-empty list"]),
    ({"model": {"graph": 5, "output": "a"}}, "model", ["model.graph must be a non-empty list"]),
    ({"dataset": {"name": ["digits"]}}, "dataset", ["'name' among", "['digits']"]),
    ({"epochs": True}, "epochs", ["valid integer"]),      # not one epoch
    ({"batch_size": "32"}, "batch_size", ["valid integer"]),
    ({"seed": True}, "seed", ["valid integer"]),
    ({"clip_norm": "1.0"}, "clip_norm", ["valid number"]),
    ({"validation_split": True}, "validation_split", ["valid number"]),
    ({"optimizer": {"type": "adam", "lr": 0.01, "eps": 0}}, "optimizer", ["eps must be in (0, 1], got 0"]),
    # ... and jobs queued that then failed in the worker: conv_transpose naming an engine that cannot
    # run its adjoint convolution, a split that holds out no sample with keep_best
    ({"model": [{"type": "conv_transpose", "out_channels": 4, "kernel_size": 3, "stride": 2, "algorithm": "winograd"},
                {"type": "flatten"}, DENSE10]}, "model",
     ["layer 0 (conv_transpose)", "algorithm='winograd' runs kernels of size 3", "stride=(2, 2)",
      "the convolution conv_transpose runs"]),
    ({"validation_split": 0.0002, "keep_best": True}, "monitor",
     ["needs validation data", "validation_split=0.0002 holds out round(0.0002 * 1797) = 0 of the 1797 samples"]),
    # fits the shapes, not the memory: ~100 GB of activations for one batch
    ({"model": [{**CONV, "out_channels": 200000, "padding": "same"}, {"type": "flatten"}, DENSE10],
      "batch_size": 1000}, "model", ["over the limit", "layer 0 (conv)", "batch_size=1000"]),
])
def test_impossible_jobs_are_422_before_queueing(client, changes, field, words):
    before = len(client.get("/v1/jobs").json()["jobs"])
    r = client.post("/v1/train", json=tiny_job(**changes))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field, body
    for word in words:
        assert word in body["detail"], (word, body["detail"])
    assert len(client.get("/v1/jobs").json()["jobs"]) == before  # nothing was queued


def test_an_infinite_class_weight_is_422(client):
    """1e999 parses as inf: it passed the class-weight check, then the job record could not be
    written as JSON (a 500). Now a 422 naming the loss, and nothing queued."""
    before = len(client.get("/v1/jobs").json()["jobs"])
    body = json.dumps(tiny_job(loss={"type": "cross_entropy", "class_weights": [1] * 10})).replace(
        '"class_weights": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]', '"class_weights": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1e999]')
    assert "1e999" in body
    r = client.post("/v1/train", content=body.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "loss" and "class_weights must be a list of finite numbers >= 0" in r.json()["detail"]
    assert len(client.get("/v1/jobs").json()["jobs"]) == before


def test_a_cpu_only_engine_on_a_gpu_is_422(client):
    """A layer naming winograd (CPU workers only) with "device": "gpu" is refused before queueing."""
    model = [{**CONV, "padding": 1, "algorithm": "winograd"}, {"type": "flatten"}, DENSE10]
    r = client.post("/v1/train", json=tiny_job(model=model, device="gpu"))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "device" and 'algorithm "winograd" run on CPU workers only' in r.json()["detail"]


def test_malformed_body_is_400(client):
    r = client.post("/v1/train", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"


def test_an_oversized_job_spec_is_413_with_the_spec_limit(client):
    """A job spec over CONVND_MAX_TRAIN_SPEC_BYTES (1 MiB) is 413 naming that limit; the hint about
    the binary form for arrays, which a job spec cannot use, was misleading there."""
    body = json.dumps(tiny_job(name="x" * (2 * 2**20))).encode()
    r = client.post("/v1/train", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "CONVND_MAX_TRAIN_SPEC_BYTES" in detail and "POST /v1/datasets" in detail and "binary form" not in detail
