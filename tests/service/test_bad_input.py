"""Every bad input is a JSON error naming the field: 400 malformed, 413 too big, 422 convcore's message.

Run against the API in this process (FastAPI's TestClient: validation and error mapping need no
HTTP server); the session's real worker runs the jobs that pass."""
from __future__ import annotations

import numpy as np
import pytest
from service_helpers import tensor

X = {"shape": [1, 2, 5], "datatype": "FP32", "data": list(range(10))}
W = {"shape": [3, 2, 2], "datatype": "FP32", "data": [0.5] * 12}


@pytest.fixture
def client(app_client):
    return app_client


def post(client, **body):
    return client.post("/v1/conv/forward", json={"x": X, "W": W, **body})


@pytest.mark.parametrize("x,field,words", [
    ({**X, "data": list(range(9))}, "x", "9 elements"),
    ({**X, "datatype": "INT8"}, "x", "datatype"),
    ({**X, "shape": [1, -2, 5]}, "x", "non-negative"),
    ({**X, "data": ["a"] * 10}, "x", "numbers"),
    ({**X, "data": [[1, 2], [3]]}, "x", "ragged"),
    ({**X, "data": [[1] * 5, [2] * 5]}, "x", "nested data has shape [2, 5]"),
    ({"shape": [1, 2, 5]}, "x", "tensor object"),
    ({**X, "parameters": [1]}, "x", "parameters must be an object"),
])
def test_malformed_tensor_is_400(client, x, field, words):
    r = client.post("/v1/conv/forward", json={"x": x, "W": W})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and words in r.json()["detail"]


def test_null_parameters_mean_none_given(client):
    r = client.post("/v1/conv/forward", json={"x": {**X, "parameters": None}, "W": W})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_are_400(client, bad):
    body = '{"x": {"shape": [1, 1, 2], "datatype": "FP64", "data": [1.0, %s]}, "W": %s}' % (
        bad, '{"shape": [1, 1, 1], "datatype": "FP64", "data": [1]}')
    r = client.post("/v1/conv/forward", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "NaN or Inf" in r.json()["detail"] and r.json()["field"] == "x"


def test_missing_tensor_and_bad_json(client):
    r = client.post("/v1/conv/forward", json={"x": X})
    assert r.status_code == 400 and r.json()["field"] == "W"
    r = client.post("/v1/conv/forward", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"


@pytest.mark.parametrize("body,words", [
    ({"W": {**W, "shape": [3, 1, 4], "data": [0.5] * 12}}, "channels do not match"),
    ({"stride": 0}, "stride must be >= 1"),
    ({"padding": "same", "stride": 2}, "padding='same' needs stride 1"),
    ({"groups": 4}, "groups=4 must divide"),
    ({"W": {**W, "shape": [3, 2, 9], "data": [1.0] * 54}}, "kernel larger than the padded input"),
    ({"W": {**W, "datatype": "FP64"}}, "must share a dtype"),
    ({"algorithm": "winograd"}, "algorithm='winograd' runs kernels of size 3"),   # W is 2 wide
    ({"algorithm": "winograd", "device": "gpu"}, 'algorithm "winograd" runs on CPU workers only'),
    ({"b": {"shape": [2], "datatype": "FP32", "data": [1, 2]}}, "b must have shape (c_out,) = (3,)"),
])
def test_convcore_errors_are_422_with_its_message(client, body, words):
    r = post(client, **body)
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]


@pytest.mark.parametrize("body,field", [({"padding_mode": "mirror"}, "padding_mode"),
                                        ({"algorithm": "im2col"}, "algorithm"), ({"strides": 2}, "strides"),
                                        ({"algorithm": "winograd", "device": "gpu"}, "algorithm")])
def test_bad_parameters_are_422_naming_the_field(client, body, field):
    r = post(client, **body)
    assert r.status_code == 422 and r.json()["field"] == field and field in r.json()["detail"]


def test_array_over_the_limit_is_413(client):
    r = client.post("/v1/conv/forward", json={"x": {"shape": [1, 1, 300_000], "datatype": "FP64"}, "W": W})
    assert r.status_code == 413 and r.json()["field"] == "x" and "limit of 1048576" in r.json()["detail"]


def test_body_over_the_limit_is_413_with_and_without_content_length(client):
    big = b'{"x": ' + b" " * (3 * 2**20) + b"}"
    r = client.post("/v1/conv/forward", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"

    def chunks():  # chunked transfer: no Content-Length to trust, the limit is counted while reading
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = client.post("/v1/conv/forward", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "exceeds the limit of 2097152 bytes" in r.json()["detail"]


def test_many_dims_run_where_an_engine_can_and_are_422_where_none_can(client):
    """Found by probing from outside: a 31-D layer was queued and failed in the worker (the direct
    engine's arrays pass NumPy's 64 axes); it now runs on the FFT engine, and 62-D is refused first."""
    def body(N):
        return {"x": {"shape": [1, 1] + [1] * (N - 1) + [4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                "W": {"shape": [1, 1] + [1] * (N - 1) + [2], "datatype": "FP32", "data": [1, -1]}}

    r = client.post("/v1/conv/forward", json=body(31))
    assert r.status_code == 200 and r.json()["algorithm"] == "fft", r.text
    np.testing.assert_allclose(r.json()["y"]["data"], [-1, -1, -1], atol=1e-6)
    before = len(client.get("/v1/jobs").json()["jobs"])
    r = client.post("/v1/conv/forward", json=body(62))
    assert r.status_code == 422 and "no engine runs this layer" in r.json()["detail"], r.text
    assert len(client.get("/v1/jobs").json()["jobs"]) == before   # nothing was queued


@pytest.mark.parametrize("seed", [2**64, -1])
def test_gradcheck_seed_outside_numpys_range_is_422(client, seed):
    """Found by probing from outside: 2**64 ran, then its answer could not be written (a 500 on every
    read of the result); -1 failed in the worker."""
    r = client.post("/v1/conv/gradcheck", json={"x_shape": [1, 1, 4], "W_shape": [1, 1, 2], "seed": seed})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "seed", r.json()


def test_gradcheck_needs_arrays_or_shapes(client):
    r = client.post("/v1/conv/gradcheck", json={"seed": 1})
    assert r.status_code == 422 and "x_shape and W_shape" in r.json()["detail"]
    r = client.post("/v1/conv/gradcheck", json={"x_shape": [1, 2, 4], "W_shape": [1, 3, 2]})
    assert r.status_code == 422 and "channels do not match" in r.json()["detail"]


def test_wrong_shaped_user_gradient_is_diagnosed(client):
    """convcore.gradcheck names a user gradient of the wrong shape instead of failing."""
    x, W = np.ones((1, 1, 4)), np.ones((1, 1, 2))
    r = client.post("/v1/conv/gradcheck", json={"x": tensor(x), "W": tensor(W), "gx": tensor(np.ones((1, 1, 3)))})
    assert r.status_code == 200, r.text
    user = r.json()["report"]["user"]["gx"]
    assert user["passed"] is False and user["expected_shape"] == [1, 1, 4] and user["got_shape"] == [1, 1, 3]
    assert [c["code"] for c in user["causes"]] == ["wrong_shape"]


def test_task_error_is_stored_and_worker_survives(client, rdb, redis_url, base_env, worker):
    """A job whose arrays convcore rejects (queued behind the API's back) fails with 422; the worker lives on."""
    from worker.store import JobStore

    store = JobStore(rdb, prefix=base_env["CONVND_KEY_PREFIX"])
    bad = {"x": np.ones((1, 3, 4)), "W": np.ones((1, 2, 2))}  # channels do not match
    job_id = _queue_behind_the_api(store, redis_url, base_env, bad)
    assert store.wait(job_id, 30), "the worker never finished the job"
    job = store.get(job_id)
    assert job["state"] == "failed" and job["error"]["status"] == 422
    assert "channels do not match" in job["error"]["message"]
    assert worker.poll() is None
    r = client.post("/v1/conv/forward", json={"x": tensor(np.ones((1, 1, 4))), "W": tensor(np.ones((1, 1, 2)))})
    assert r.status_code == 200

def test_padding_that_would_exhaust_the_worker_is_413(client):
    """Shapes pass convcore's checks but the padded input would be gigabytes: refused before queueing."""
    r = client.post("/v1/conv/forward", json={"x": tensor(np.ones((1, 1, 3))), "W": tensor(np.ones((1, 1, 2))),
                                              "padding": [[0, 2_000_000_000]]})
    assert r.status_code == 413, r.text
    assert r.json()["field"] == "padding" and "padded input" in r.json()["detail"]


def _queue_behind_the_api(store, redis_url, base_env, arrays, **fields):
    """A job created in the store and sent to the real worker without the API's checks."""
    from celery import Celery

    from worker import tasks

    job_id = store.create("conv.forward", "test", {}, arrays)["id"]
    if fields:
        store.r.hset(store.job_key(job_id), mapping=fields)
    sender = Celery(broker=redis_url)
    sender.conf.task_serializer = "json"
    queue = store.workers()[0]["queue"]  # the session worker's: CONVND_QUEUE, or its .gpu queue on a GPU machine
    sender.send_task(tasks.conv_forward.name, args=[job_id], queue=queue, task_id=job_id)
    return job_id


def test_a_job_whose_worker_keeps_dying_fails_instead_of_looping(rdb, redis_url, base_env, worker):
    """Deliveries are counted: past max_attempts (3) the job fails as WorkerLost and is not run again."""
    from worker.store import JobStore

    store = JobStore(rdb, prefix=base_env["CONVND_KEY_PREFIX"])
    job_id = _queue_behind_the_api(store, redis_url, base_env, {"x": np.ones((1, 1, 4)), "W": np.ones((1, 1, 2))},
                                   attempts="3")   # as if three workers had died running it
    assert store.wait(job_id, 30)
    job = store.get(job_id)
    assert job["state"] == "failed" and job["error"]["type"] == "WorkerLost", job
    assert not store.get_arrays(job_id, "out", ["y"])   # it was not computed
    assert worker.poll() is None


def test_a_conv_job_running_past_its_hard_limit_is_reported_lost(client, rdb, base_env):
    """A job left "running" (its task killed at the hard limit) is failed when read, not shown running forever."""
    import time

    from worker.store import JobStore

    store = JobStore(rdb, prefix=base_env["CONVND_KEY_PREFIX"])
    job_id = store.create("conv.forward", "open", {})["id"]
    store.start(job_id, "gone-worker")
    store.r.hset(store.job_key(job_id), "started_at", repr(time.time() - 3600))  # the default hard limit is 660 s
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["state"] == "failed", r.text
    assert "hard time limit" in r.json()["error"]["message"]
