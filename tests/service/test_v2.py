"""The Open Inference Protocol (/v2) spoken by NVIDIA's own client, tritonclient.http, against the real
stack (uvicorn API, Valkey, a Celery worker). References: PyTorch for the convolutions and their
gradients, /v1/models/{id}/predict for trained models (itself checked against PyTorch elsewhere).

KServe's InferenceRESTClient is not tested here: `pip install kserve` takes minutes and pulls in the
Kubernetes client, pandas, gRPC and another pydantic (see the README's v2 section).
"""
from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from service_helpers import array, tensor
from support.stack import tiny_job, wait_job
from tritonclient.utils import InferenceServerException

from convcore import datasets

F = torch.nn.functional


@pytest.fixture(scope="module")
def tc(api) -> triton.InferenceServerClient:
    client = triton.InferenceServerClient(api.url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


def _inputs(binary: bool, **arrays) -> list:
    out = []
    for name, a in arrays.items():
        t = triton.InferInput(name, list(a.shape), {np.float32: "FP32", np.float64: "FP64"}[a.dtype.type])
        t.set_data_from_numpy(a, binary_data=binary)
        out.append(t)
    return out


def _job(client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def test_health_and_server_metadata(tc):
    assert tc.is_server_live() and tc.is_server_ready()
    meta = tc.get_server_metadata()
    assert meta["name"] == "convnd" and {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    assert tc.is_model_ready("conv_forward") and tc.is_model_ready("conv_backward")


@pytest.mark.parametrize("model, inputs, outputs", [
    ("conv_forward", ["x", "W", "b"], ["y"]), ("conv_backward", ["gy", "x", "W"], ["gx", "gW", "gb"])])
def test_conv_model_metadata(tc, model, inputs, outputs):
    meta = tc.get_model_metadata(model)
    assert meta["name"] == model and meta["versions"] == ["1"]
    assert [t["name"] for t in meta["inputs"]] == inputs and [t["name"] for t in meta["outputs"]] == outputs
    assert all(-1 in t["shape"] for t in meta["inputs"] + meta["outputs"])  # variable dimensions


def _torch_conv2d(x, W, b, stride, pad_hw, dilation, groups):
    """pad_hw = ((top, bottom), (left, right)); torch pads the last dimension first."""
    xt = F.pad(torch.from_numpy(x), (*pad_hw[1], *pad_hw[0]))
    return F.conv2d(xt, torch.from_numpy(W), torch.from_numpy(b), stride=stride, dilation=dilation,
                    groups=groups).numpy()


@pytest.mark.parametrize("binary, as_text", [(True, True), (False, False)], ids=["binary+json-text", "json+lists"])
def test_conv_forward_against_torch(tc, client, binary, as_text):
    """2-D, grouped, strided, dilated, asymmetric padding; parameters as JSON text or lists."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 11, 9)).astype(np.float32)
    W = rng.standard_normal((6, 2, 3, 2)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    pad = [[1, 0], [2, 1]]
    params = {"stride": [2, 1], "padding": pad, "dilation": [1, 2], "groups": 2}
    if as_text:
        params = {k: str(v) if isinstance(v, int) else str(v).replace(" ", "") for k, v in params.items()}
    r = tc.infer("conv_forward", _inputs(binary, x=x, W=W, b=b), request_id=f"req-{binary}", parameters=params,
                 outputs=[triton.InferRequestedOutput("y", binary_data=binary)])
    body = r.get_response()
    assert body["id"] == f"req-{binary}" and body["model_name"] == "conv_forward"
    assert [o["name"] for o in body["outputs"]] == ["y"]
    assert ("binary_data_size" in (body["outputs"][0].get("parameters") or {})) == binary
    y = r.as_numpy("y")
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, _torch_conv2d(x, W, b, (2, 1), pad, (1, 2), 2), rtol=1e-4, atol=1e-4)
    job = _job(client, body["parameters"]["job_id"])  # a /v1 job like any other
    assert job["kind"] == "conv.forward" and job["state"] == "succeeded"


def test_conv_forward_3d_fp64_same_padding(tc):
    rng = np.random.default_rng(2)
    x, W = rng.standard_normal((1, 2, 5, 6, 4)), rng.standard_normal((3, 2, 3, 3, 3))
    r = tc.infer("conv_forward", _inputs(False, x=x, W=W), parameters={"padding": "same"})
    y = r.as_numpy("y")
    ref = F.conv3d(torch.from_numpy(x), torch.from_numpy(W), padding="same").numpy()
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


def test_conv_backward_computes_only_gW(tc, client):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 4, 4, 6)).astype(np.float32)  # stride 2 and padding 1 on the first axis
    r = tc.infer("conv_backward", _inputs(True, gy=gy, x=x, W=W), parameters={"stride": "[2, 1]", "padding": 1},
                 outputs=[triton.InferRequestedOutput("gW")])
    body = r.get_response()
    assert [o["name"] for o in body["outputs"]] == ["gW"]
    Wt = torch.from_numpy(W).requires_grad_()
    F.conv2d(torch.from_numpy(x), Wt, stride=(2, 1), padding=1).backward(torch.from_numpy(gy))
    np.testing.assert_allclose(r.as_numpy("gW"), Wt.grad.numpy(), rtol=1e-4, atol=1e-4)
    job = _job(client, body["parameters"]["job_id"])
    assert job["kind"] == "conv.backward" and job["result"]["outputs"] == ["gW"]  # the worker made gW alone


@pytest.fixture(scope="module")
def named_model(client):
    """A finished 2-epoch digits job with a model name: (job view, name)."""
    name = f"digits-{uuid.uuid4().hex[:8]}"
    r = client.post("/v1/train", json=tiny_job(name=name))
    assert r.status_code == 202, r.text
    return wait_job(client, r.json()["id"], timeout_s=180), name


def test_trained_model_metadata_by_id_and_name(tc, named_model):
    job, name = named_model
    assert job["state"] == "succeeded", job
    for model in (job["id"], name):
        meta = tc.get_model_metadata(model)
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
            ("logits", "FP32", [-1, 10]), ("probabilities", "FP32", [-1, 10]), ("predictions", "INT64", [-1])]
        p = meta["parameters"]
        assert (p["job_id"], p["model_name"], p["n_classes"], p["epochs_trained"]) == (job["id"], name, 10, 2)
        assert tc.is_model_ready(model)
    index = tc.get_model_repository_index()
    entry = next(e for e in index if e["name"] == job["id"])
    assert entry["state"] == "READY" and entry["alias"] == name
    assert {"conv_forward", "conv_backward"} <= {e["name"] for e in index}


def test_trained_model_predictions_equal_v1(tc, client, named_model):
    job, name = named_model
    x = datasets.load({"name": "digits"})[0][:40]
    v1 = client.post(f"/v1/models/{job['id']}/predict", json={"x": tensor(x)})
    assert v1.status_code == 200, v1.text
    v1 = v1.json()
    r = tc.infer(name, _inputs(True, x=x))  # no outputs named: all of them, binary
    predictions = r.as_numpy("predictions")
    assert predictions.dtype == np.int64 and predictions.tolist() == v1["predictions"]
    assert np.array_equal(r.as_numpy("logits"), array(v1["outputs"]))
    assert np.array_equal(r.as_numpy("probabilities"), array(v1["probabilities"]))
    # by id, JSON in and out, one output only
    r = tc.infer(job["id"], _inputs(False, x=x), outputs=[triton.InferRequestedOutput("predictions", binary_data=False)])
    assert [o["name"] for o in r.get_response()["outputs"]] == ["predictions"]
    assert r.as_numpy("predictions").tolist() == v1["predictions"]
    predict_job = _job(client, r.get_response()["parameters"]["job_id"])
    assert predict_job["kind"] == "predict" and predict_job["result"]["epochs_trained"] == 2


def test_trained_model_input_of_the_wrong_shape_is_a_400_naming_x_as_in_v1(client, named_model):
    job, name = named_model
    x = {"shape": [1, 1, 4, 4], "datatype": "FP32", "data": [0.0] * 16}
    v2 = client.post(f"/v2/models/{name}/infer", json={"inputs": [{**x, "name": "x"}]})
    v1 = client.post(f"/v1/models/{job['id']}/predict", json={"x": x})
    assert v2.status_code == 400 and "x must have shape (n, 1, 8, 8)" in v2.json()["error"], v2.text
    assert v1.status_code == 422 and v1.json()["field"] == "x" and "(n, 1, 8, 8)" in v1.json()["detail"], v1.text


def test_model_name_is_unique_per_key(client, named_model):
    _, name = named_model
    r = client.post("/v1/train", json=tiny_job(name=name))
    assert r.status_code == 409 and name in r.json()["detail"] and r.json()["field"] == "name"
    r = client.post("/v1/train", json=tiny_job(name="conv_forward"))
    assert r.status_code == 422 and "built-in" in r.json()["detail"]


def test_a_model_another_key_cannot_see_is_404(api_factory, worker):
    keyed = api_factory("keys", api_keys="alpha-key,beta-key")
    alpha = {"Authorization": "Bearer alpha-key"}
    name = f"alpha-{uuid.uuid4().hex[:8]}"
    r = keyed.client.post("/v1/train", json=tiny_job(name=name, epochs=50), headers=alpha)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    tc = triton.InferenceServerClient(keyed.url.removeprefix("http://"))
    try:
        assert tc.get_model_metadata(name, headers=alpha)["parameters"]["job_id"] == job_id
        for model in (name, job_id):
            with pytest.raises(InferenceServerException) as err:
                tc.get_model_metadata(model, headers={"X-API-Key": "beta-key"})
            assert err.value.status() == "404" and repr(model) in err.value.message()
        with pytest.raises(InferenceServerException) as err:  # no key at all
            tc.get_model_metadata("conv_forward")
        assert err.value.status() == "401"
    finally:
        tc.close()
        keyed.client.delete(f"/v1/jobs/{job_id}", headers=alpha)


X = {"name": "x", "shape": [1, 3, 5], "datatype": "FP32", "data": list(range(15))}
W = {"name": "W", "shape": [2, 3, 2], "datatype": "FP32", "data": [1.0] * 12}


@pytest.mark.parametrize("body, named", [
    ({"inputs": [X, {**W, "name": "z"}]}, "'z'"),
    ({"inputs": [X, {**W, "datatype": "INT8"}]}, "INT8"),
    ({"inputs": [X, {**W, "shape": [2, 2, 2], "data": [1.0] * 8}]}, "W"),
    ({"inputs": [X, {**W, "data": [1.0] * 5}]}, "W"),
    ({"inputs": [X]}, "W"),
    ({"inputs": [X, W], "parameters": {"strides": 2}}, "strides"),
    ({"inputs": [X, W], "parameters": {"stride": "two"}}, "parameters.stride"),
    ({"inputs": [X, W], "parameters": {"padding": "[[1, 2]"}}, "parameters.padding"),
    ({"inputs": [X, W], "parameters": {"stride": "[" * 1100 + "]" * 1100}}, "parameters.stride"),
    ({"inputs": [X, W], "outputs": [{"name": "gx"}]}, "'gx'"),
    ({"inputs": [{**X, "shape": "3"}, W]}, "x"),
    ({"inputs": "x"}, "inputs"),
], ids=["unknown-input", "datatype", "channels", "data-size", "missing-W", "unknown-parameter", "bad-stride",
        "bad-padding-text", "nested-parameter-text", "unknown-output", "bad-shape", "inputs-not-a-list"])
def test_bad_input_is_400_in_the_protocol_form(client, body, named):
    r = client.post("/v2/models/conv_forward/infer", json=body)
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["error"] and named in r.json()["error"], r.json()


def test_bad_input_through_tritonclient(tc):
    x, W = np.zeros((1, 3, 5), np.float32), np.zeros((2, 2, 2), np.float32)
    with pytest.raises(InferenceServerException) as err:
        tc.infer("conv_forward", _inputs(True, x=x, W=W))
    assert err.value.status() == "400" and "W" in err.value.message()


def test_errors_and_unknown_paths_use_the_protocol_form(client):
    for method, path in (("GET", "/v2/models/nope"), ("GET", "/v2/models/nope/ready"),
                         ("POST", "/v2/models/nope/infer"), ("GET", "/v2/models/conv_forward/versions/2"),
                         ("GET", "/v2/nothing/here")):
        r = client.request(method, path, json={} if method == "POST" else None)
        assert r.status_code == 404 and list(r.json()) == ["error"], (path, r.text)


def test_a_body_without_content_type_is_json_unless_a_browser_sent_it(client):
    """tritonclient sends JSON requests without Content-Type; a cross-site browser POST carries Origin."""
    raw = b'{"inputs": [{"name": "x", "shape": [1, 1, 2], "datatype": "FP32", "data": [1, 2]}]}'
    r = client.post("/v2/models/conv_forward/infer", content=raw)
    assert r.status_code == 400 and "W" in r.json()["error"], r.text  # read as JSON: W is missing
    r = client.post("/v2/models/conv_forward/infer", content=raw, headers={"Origin": "http://elsewhere.example"})
    assert r.status_code == 415 and "Content-Type" in r.json()["error"], r.text


def test_a_slow_job_is_answered_202_with_its_job(app_client, monkeypatch):
    """The protocol has no asynchronous form: past the wait, 202 names the job; /v1 has its result."""
    monkeypatch.setattr(app_client.app.state.settings, "wait_timeout_s", 0)  # give up waiting at once
    r = app_client.post("/v2/models/conv_forward/infer", json={"id": "slow", "inputs": [X, W]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["id"] == "slow" and r.headers["location"] == f"/v1/jobs/{body['job_id']}"
    assert body["job_id"] in body["error"]  # what tritonclient shows
    wait_job(app_client, body["job_id"])
    y = array(app_client.get(f"/v1/jobs/{body['job_id']}/result").json()["y"])
    x = np.arange(15.0).reshape(3, 5)
    windows = x[:, :-1] + x[:, 1:]  # W is all ones, (2, 3, 2): each output sums two taps of every channel
    np.testing.assert_allclose(y, np.broadcast_to(windows.sum(0), (1, 2, 4)), rtol=1e-6)


def test_an_overflowing_output_is_a_400_in_json_and_arrives_in_binary(tc):
    """float32 overflow gives Inf, which JSON cannot carry: a protocol error naming the output (not
    an input) and the binary form; asked for in binary, tritonclient reads the Inf."""
    x, W = np.full((1, 1, 4), 3e38, np.float32), np.full((1, 1, 2), 3e38, np.float32)
    with pytest.raises(InferenceServerException) as err:
        tc.infer("conv_forward", _inputs(True, x=x, W=W),
                 outputs=[triton.InferRequestedOutput("y", binary_data=False)])
    assert err.value.status() == "400" and "y" in err.value.message() and "input" not in err.value.message()
    r = tc.infer("conv_forward", _inputs(True, x=x, W=W), outputs=[triton.InferRequestedOutput("y", binary_data=True)])
    assert np.isposinf(r.as_numpy("y")).all()
