"""Issue 7 (service side), in this process (TestClient, real Valkey): every allocation bounded before
queueing, JSON bounded, odd bodies and anything unexpected as JSON errors, cross-site and DNS-rebinding
requests refused, no internals in answers, a full store refused cleanly, inputs dropped once a job ends."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from service_helpers import tensor
from support.stack import in_process_api

from app.core import processes

X = {"shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
W = {"shape": [1, 1, 2], "datatype": "FP32", "data": [1, -1]}
JSON = {"Content-Type": "application/json"}


def _alone(redis_url, **settings):
    """An API on its own prefix/queue with a registered (idle) worker: jobs that pass stay queued."""
    tag = uuid.uuid4().hex[:8]
    return in_process_api(redis_url, f"convnd-h7-{tag}", f"convnd-h7-{tag}", **settings)


@pytest.fixture
def alone(redis_url):
    with _alone(redis_url) as client:
        _register(client)
        yield client


def _register(client):
    client.app.state.store.heartbeat("idle", {"id": "idle", "device": "cpu", "serves": "cpu", "queue": None}, 600)


@pytest.mark.parametrize("stride", [10**9, 10**12])
def test_a_stride_past_the_input_is_422_naming_it(alone, stride):
    r = alone.post("/v1/conv/forward", json={"x": X, "W": W, "stride": stride})
    assert r.status_code == 422 and r.json()["field"] == "stride", r.text
    assert alone.get("/v1/jobs").json()["jobs"] == []  # nothing queued


def test_fp32_arrays_are_counted_at_4_bytes(alone):
    """1 MiB per array: 200k FP32 values (800 kB) pass, as FP64 (1.6 MB) they are refused naming x."""
    x = np.ones((1, 1, 200_000), np.float32)
    body = {"x": tensor(x), "W": tensor(np.ones((1, 1, 2), np.float32)), "async": True}
    assert alone.post("/v1/conv/forward", json=body).status_code == 202
    r = alone.post("/v1/conv/forward", json={**body, "x": tensor(x.astype(np.float64)),
                                              "W": tensor(np.ones((1, 1, 2)))})
    assert r.status_code == 413 and r.json()["field"] == "x"


def test_the_job_memory_estimate_is_413_naming_the_parameter(redis_url):
    """Each array under the per-array limit, the whole call over max_job_bytes: refused naming padding."""
    with _alone(redis_url, max_array_bytes=64 * 2**20, max_job_bytes=8 * 2**20) as client:
        _register(client)
        r = client.post("/v1/conv/forward", json={"x": X, "W": W, "padding": [[0, 3_000_000]]})
        assert r.status_code == 413 and r.json()["field"] == "padding", r.text
        assert "worker memory" in r.json()["detail"]


def test_json_is_bounded_below_the_binary_form(redis_url):
    """A JSON body over max_json_bytes is 413 pointing at the binary form, which carries the same array."""
    from test_binary import binary_request

    with _alone(redis_url, max_json_bytes=100_000) as client:
        _register(client)
        x = np.ones((1, 1, 40_000), np.float32)
        r = client.post("/v1/conv/forward", json={"x": tensor(x), "W": W})
        assert r.status_code == 413 and "binary form" in r.json()["detail"], r.text
        w = np.ones((1, 1, 2), np.float32)
        body, headers = binary_request({"async": True, **{name: {
            "shape": list(a.shape), "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}}
            for name, a in (("x", x), ("W", w))}}, x.tobytes(), w.tobytes())
        r = client.post("/v1/conv/forward", content=body, headers=headers)
        assert r.status_code == 202, r.text


def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize("path,body", [
    ("/v1/conv/forward", '{"x": {"shape": [1], "datatype": "FP32", "data": %s}, "W": 1}' % _nested(1500)),
    ("/v1/train", '{"model": [%s], "dataset": {"name": "digits"}}' % ('{"a":' * 5000 + "1" + "}" * 5000)),
])
def test_deeply_nested_json_is_400(alone, path, body):
    r = alone.post(path, content=body, headers=JSON)
    assert r.status_code == 400 and r.json() == {"detail": "body: is nested too deeply (JSON arrays/objects "
                                                           "within each other)", "field": "body"}


def test_more_than_64_dims_is_400(alone):
    r = alone.post("/v1/conv/forward", json={"x": {"shape": [1] * 65, "datatype": "FP32", "data": [1]}, "W": W})
    assert r.status_code == 400 and r.json()["field"] == "x" and "65 dimensions" in r.json()["detail"]
    r = alone.post("/v1/conv/gradcheck", json={"x_shape": [1] * 65, "W_shape": [1] * 65})
    assert r.status_code == 422 and r.json()["field"] == "x_shape"


def test_anything_unexpected_is_a_json_500_without_internals(redis_url, caplog):
    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.main import create_app

    app = create_app(Settings(REDIS_URL=redis_url))

    def boom():
        raise RuntimeError("secret detail /etc/passwd")

    app.add_api_route("/boom", boom)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        r = client.get("/boom")
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json()["field"] is None and "secret" not in r.text and "reference" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200
    assert "secret detail" in caplog.text  # the traceback is logged


def test_only_json_or_binary_bodies(alone):
    """A cross-site form or text/plain POST (sent by browsers without a preflight) is refused."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Origin": "http://evil.example", **({"Content-Type": content_type} if content_type else {})}
        r = alone.post("/v1/conv/forward", content=json.dumps({"x": X, "W": W}), headers=headers)
        assert r.status_code == 415 and r.json()["field"] == "Content-Type", r.text
        assert "access-control-allow-origin" not in r.headers


def test_host_checked_on_loopback_and_cors_explicit(redis_url):
    with _alone(redis_url) as client:  # bound to 127.0.0.1 (the default)
        assert client.get("/healthz", headers={"Host": "rebound.evil.example"}).status_code == 400
        assert client.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "[::1]:8000"}).status_code == 200
        preflight = client.options("/v1/conv/forward", headers={"Origin": "http://app.example",
                                                                "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
    with _alone(redis_url, host="0.0.0.0", cors_origins="http://app.example") as client:
        assert client.get("/healthz", headers={"Host": "service.example"}).status_code == 200
        preflight = client.options("/v1/conv/forward", headers={"Origin": "http://app.example",
                                                                "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"


def test_no_redis_address_in_answers(redis_url):
    port = processes.free_port()
    with in_process_api(f"redis://127.0.0.1:{port}/0", "p", "q") as client:
        for r in (client.get("/readyz"), client.get("/v1/jobs/abc"),
                  client.post("/v1/conv/forward", json={"x": X, "W": W})):
            assert r.status_code == 503 and str(port) not in r.text and "127.0.0.1" not in r.text, r.text
        # /v2 answers in its own form ({"error"}), from the same message
        v2 = client.post("/v2/models/conv_forward/infer", json={"inputs": [{**X, "name": "x"}, {**W, "name": "W"}]})
        assert v2.status_code == 503 and "unavailable" in v2.json()["error"], v2.text
        assert str(port) not in v2.text and "127.0.0.1" not in v2.text and v2.headers["Retry-After"] == "5"


def test_readyz_shows_no_worker_id(alone):
    text = alone.get("/readyz").text
    assert '"idle"' not in text and "cpu" in text


def test_worker_exception_text_stays_in_the_log(worker_runtime, caplog):
    from worker.jobrun import run_job

    def broken(xp, arrays, params):
        raise RuntimeError("secret detail redis://10.0.0.1:6379")

    job = worker_runtime.create("conv.forward", "test", {})
    assert run_job(job["id"], broken, ()) == "failed"
    error = worker_runtime.get(job["id"])["error"]
    assert error["status"] == 500 and "secret" not in json.dumps(error) and "reference" in error["message"]
    assert "secret detail" in caplog.text


def test_train_spec_is_bounded(alone):
    r = alone.post("/v1/train", json={"model": [{"type": "relu"}] * 600, "dataset": {"name": "digits"}})
    assert r.status_code == 422 and r.json()["field"] == "model" and "600 layers" in r.json()["detail"]
    r = alone.post("/v1/train", json={"model": [{"type": "relu"}], "dataset": {"name": "digits"}, "epochs": 10**6})
    assert r.status_code == 422 and r.json()["field"] == "epochs"
    r = alone.post("/v1/train", json={"model": [{"type": "relu"}] * 100_000, "dataset": {"name": "digits"}})
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_a_full_store_is_507_and_writes_nothing():
    """At maxmemory (noeviction) a job that does not fit is refused whole: no record, no array."""
    import redis

    proc, url = processes.start_redis(processes.free_port())
    try:
        r = redis.Redis.from_url(url)
        r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 4 * 2**20)
        with in_process_api(url, "full", "full", max_array_bytes=8 * 2**20, max_body_bytes=64 * 2**20) as client:
            _register(client)
            big = tensor(np.ones((1, 1, 2**20), np.float32))  # 4 MiB
            r1 = client.post("/v1/conv/forward", json={"x": big, "W": W, "async": True})
            r2 = client.post("/v1/conv/forward", json={"x": big, "W": W, "async": True})
            assert {r1.status_code, r2.status_code} <= {202, 507} and 507 in (r1.status_code, r2.status_code)
            refused = r1 if r1.status_code == 507 else r2
            assert "full" in refused.json()["detail"]
            kept = [k for k in r.keys("full:job:*") if b":in:" not in k and b":done" not in k]
            assert len(kept) == [r1.status_code, r2.status_code].count(202)
            assert len(r.keys("full:job:*:in:*")) == len(kept)  # no array without its record
    finally:
        processes.stop(proc)


def test_inputs_are_dropped_once_a_job_ends(app_client):
    """Only what a client can still ask for is kept: the result, not the posted arrays."""
    store = app_client.app.state.store
    r = app_client.post("/v1/conv/forward", json={"x": X, "W": W})
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    assert not store.r.keys(f"{store.prefix}:job:{job_id}:in:*")
    assert store.r.exists(store.array_key(job_id, "out", "y"))
    assert app_client.get(f"/v1/jobs/{job_id}/result").json()["y"]["data"] == [-1.0, -1.0, -1.0]


def test_docs_work_offline(alone):
    """Swagger UI from the installed package: the page loads nothing from another host."""
    page = alone.get("/docs")
    assert page.status_code == 200 and "https://" not in page.text and "http://" not in page.text
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert alone.get(asset).status_code == 200


def test_openapi_says_what_the_service_answers(alone):
    spec = alone.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(spec)
    forward = spec["paths"]["/v1/conv/forward"]["post"]["responses"]
    for status in ("400", "413", "415", "422", "500", "503", "507"):
        assert forward[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "413" in spec["paths"]["/v1/train"]["post"]["responses"]
    assert "application/octet-stream" in spec["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]
    tensor_schema = spec["components"]["schemas"]["Tensor"]
    assert [branch["required"] for branch in tensor_schema["anyOf"]] == [["data"], ["parameters"]]
    # What the 422 answers look like is what the schema says
    r = alone.post("/v1/conv/forward", json={"x": X, "W": W, "padding_mode": "mirror"})
    assert r.status_code == 422 and set(r.json()) == set(spec["components"]["schemas"]["ErrorBody"]["properties"])


def test_a_client_that_disconnects_mid_body_is_a_4xx_not_a_500():
    """Found by probing from outside: a body cut short (the client closed, or the server's body timeout
    closed it) raised starlette's ClientDisconnect out of the body reader, logged as an unhandled error
    and counted as a 500. The reader is driven here by the ASGI messages a server sends for that."""
    import asyncio

    from starlette.requests import Request

    from app.api.deps import read_limited
    from app.api.errors import ApiError

    messages = [{"type": "http.request", "body": b'{"x": ', "more_body": True}, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    request = Request({"type": "http", "method": "POST", "path": "/v1/conv/forward",
                       "headers": [(b"content-length", b"1000")]}, receive)
    with pytest.raises(ApiError) as err:
        asyncio.run(read_limited(request, 10_000))
    assert err.value.status == 400 and "closed after 6 bytes" in err.value.detail


def test_a_refused_value_is_not_echoed_whole(alone):
    """Found by probing from outside: a 5 MB string sent as padding_mode came back whole in the 422,
    and 200k unknown keys were each listed. Quoted values are cut, errors past 20 counted."""
    r = alone.post("/v1/conv/forward", json={"x": X, "W": W, "padding_mode": "z" * 100_000})
    assert r.status_code == 422 and r.json()["field"] == "padding_mode", r.text[:300]
    assert len(r.text) < 2_000 and "zzz...zzz" in r.json()["detail"]
    r = alone.post("/v1/conv/forward", json={"x": X, "W": W, **{f"k{i}": 1 for i in range(1000)}})
    assert r.status_code == 422 and len(r.text) < 10_000, r.text[:300]
    assert "and 980 more errors" in r.json()["detail"]
    r = alone.post("/v1/conv/forward", json={"x": X, "W": W, "k" * 300_000: 1})   # the field's name
    assert r.status_code == 422 and len(r.text) < 2_000 and "(300000 characters)" in r.json()["detail"]
    # nested just inside the JSON parser's depth: quoting it back (repr) once raised RecursionError, a 500
    body = json.dumps({"x": X, "W": W, "stride": 0}).replace('"stride": 0', '"stride": ' + "[" * 980 + "1" + "]" * 980)
    r = alone.post("/v1/conv/forward", content=body, headers=JSON)
    assert r.status_code == 422 and r.json()["field"].startswith("stride"), r.text[:300]
