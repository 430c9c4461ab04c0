"""The Triton binary-data extension: raw little-endian blobs after a JSON header, both ways."""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from service_helpers import tensor
from support.stack import wait_job


def binary_request(header: dict, *blobs: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                    "Inference-Header-Content-Length": str(len(head))}


def split_response(r) -> tuple[dict, bytes]:
    n = int(r.headers["Inference-Header-Content-Length"])
    return json.loads(r.content[:n]), r.content[n:]


def test_binary_in_and_out_matches_torch(client):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    body, headers = binary_request({
        "x": {"shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}},
        "W": tensor(W),  # JSON and binary tensors mix
        "padding": "same", "binary_data_output": True}, x.astype("<f4").tobytes())
    r = client.post("/v1/conv/forward", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    header, blobs = split_response(r)
    assert header["y"]["parameters"]["binary_data_size"] == len(blobs) == 2 * 4 * 8 * 8 * 4
    y = np.frombuffer(blobs, dtype="<f4").reshape(header["y"]["shape"])
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(W), padding="same").numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_result_fetched_as_binary_later(client):
    x = np.arange(6, dtype=np.float64).reshape(1, 1, 6)
    W = np.array([[[1.0, 0.0, -1.0]]])
    r = client.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W), "async": True})
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    assert wait_job(client, job)["state"] == "succeeded"
    r = client.get(f"/v1/jobs/{job}/result", headers={"Accept": "application/octet-stream"})
    header, blobs = split_response(r)
    assert header["y"]["datatype"] == "FP64"
    np.testing.assert_array_equal(np.frombuffer(blobs, "<f8"), [-2.0, -2.0, -2.0, -2.0])


def test_binary_size_mismatch_is_400(client):
    body, headers = binary_request({
        "x": {"shape": [1, 1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
        "W": {"shape": [1, 1, 2], "datatype": "FP32", "data": [1, 1]}}, b"\0" * 12)
    r = client.post("/v1/conv/forward", content=body, headers=headers)
    assert r.status_code == 400 and r.json()["field"] == "x" and "12 bytes" in r.json()["detail"]


def test_unclaimed_binary_bytes_and_bad_header_are_400(client):
    body, headers = binary_request({"x": tensor(np.ones((1, 1, 4))), "W": tensor(np.ones((1, 1, 2)))}, b"\0" * 8)
    r = client.post("/v1/conv/forward", content=body, headers=headers)
    assert r.status_code == 400 and "no tensor claims" in r.json()["detail"]
    headers["Inference-Header-Content-Length"] = "abc"
    r = client.post("/v1/conv/forward", content=body, headers=headers)
    assert r.status_code == 400 and r.json()["field"] == "Inference-Header-Content-Length"


def test_an_overflowing_float32_result_is_a_422_in_json_and_arrives_in_binary(client):
    """3e38 * 3e38 overflows float32 to Inf: JSON has no Inf, so the JSON answer is a 422 naming y
    and the binary form (the job keeps the result: fetched again in binary, the Inf is there)."""
    x = np.full((1, 1, 4), 3e38, dtype=np.float32)
    W = np.full((1, 1, 2), 3e38, dtype=np.float32)
    r = client.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W)})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "y" and "binary" in r.json()["detail"]
    body, headers = binary_request({"x": tensor(x), "W": tensor(W), "binary_data_output": True})
    r = client.post("/v1/conv/forward", content=body, headers=headers)
    assert r.status_code == 200, r.text
    header, blobs = split_response(r)
    assert np.isposinf(np.frombuffer(blobs, "<f4")).all() and header["y"]["shape"] == [1, 1, 3]
    job = header["job_id"]
    assert client.get(f"/v1/jobs/{job}/result").status_code == 422
