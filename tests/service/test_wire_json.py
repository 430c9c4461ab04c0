"""JSON on the wire: the request parser (orjson with the standard parser behind it) accepts and refuses
exactly what ``json.loads`` does, and float32 answers written in their shortest form read back as the
very same float32 values, in the standard parser, tritonclient and against the binary form's raw bytes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton
from service_helpers import tensor
from test_binary import split_response

from app.core.tensors import TensorError, dumps_json, encode_tensor, parse_json

DOCS = [
    b'{"x": {"shape": [2], "datatype": "FP32", "data": [0.1, -2.5e-3]}, "padding": 1}',
    b'{"a": 18446744073709551616, "b": -9223372036854775809, "c": 100000000000000000000000000000}',
    b'{"a": 9223372036854775807, "b": 0.00012345678901234567}',
    b'{"a": [0.0058760265819728374, 1234567890123456789.5, 12345678901234567890e3, -1234567890123456789]}',
    b'{"id": "12345678901234567890123", "a": [1e-19, 18446744073709551615]}',
    b'{"a": NaN, "b": Infinity, "c": -Infinity}',
    b'{"a": 1e400}',
    b'{"a": "\\ud800"}',
    b'{"a": 1, "a": 2}',
    '{"a": [1, 2]}'.encode("utf-16"),
    b'{"a": ' + b"[" * 600 + b"1" + b"]" * 600 + b"}",
    b'{"a": ' + b"[" * 1500 + b"1" + b"]" * 1500 + b"}",
    b'[1, 2]', b'"text"', b'', b'{', b'\xff\xfe\x00', b'{"a": 01}',
]


@pytest.mark.parametrize("raw", DOCS, ids=range(len(DOCS)))
def test_parse_json_accepts_and_refuses_what_the_standard_parser_does(raw):
    try:
        expected = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        expected = None
    if not isinstance(expected, dict):
        with pytest.raises(TensorError) as err:
            parse_json(raw)
        assert err.value.field == "body" and err.value.status == 400
        return
    # repr tells ints from floats and shows NaN, which == would not compare
    assert repr(parse_json(raw)) == repr(expected)


def test_float32_written_shortest_reads_back_bit_exact():
    bits = np.random.default_rng(0).integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    a = bits.view(np.float32)
    a = a[np.isfinite(a)]
    a = np.append(a[: a.size // 4 * 4 - 4], np.float32([-0.0, 1e-45, 3.4028235e38, 16777217])).reshape(-1, 4)
    text = dumps_json({"y": encode_tensor(a, "y")})
    back = json.loads(text)["y"]
    assert back["shape"] == list(a.shape) and back["datatype"] == "FP32"
    read = np.asarray(back["data"], dtype=np.float32).reshape(a.shape)
    np.testing.assert_array_equal(read.view(np.uint32), a.view(np.uint32))
    assert len(text) < 0.7 * len(json.dumps(a.ravel().tolist()))   # 17-digit decimals before


@pytest.mark.parametrize("arr", [np.random.default_rng(1).standard_normal((3, 5))[:, ::2],   # not contiguous
                                 np.arange(-3, 4, dtype=np.int64), np.zeros((2, 0), np.float32),
                                 np.arange(6, dtype=">f8").reshape(2, 3)])                  # big-endian
def test_float64_int64_and_odd_layouts_round_trip(arr):
    back = json.loads(dumps_json({"y": encode_tensor(arr)}))["y"]
    assert back["shape"] == list(arr.shape)
    np.testing.assert_array_equal(np.asarray(back["data"], dtype=arr.dtype.newbyteorder("=")).reshape(arr.shape),
                                  arr)


def test_json_answers_equal_the_binary_bytes(client, api):
    """One job's float32 result, fetched as JSON and as raw bytes (the worker's exact output), and the
    same forward through tritonclient's JSON output: all bit-identical."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 9, 7)).astype(np.float32)
    W = (rng.standard_normal((5, 3, 3, 3)) / 7).astype(np.float32)
    r = client.post("/v1/conv/forward", json={"x": tensor(x), "W": tensor(W), "padding": 1})
    assert r.status_code == 200, r.text
    doc = r.json()
    y_json = np.asarray(doc["y"]["data"], dtype=np.float32).reshape(doc["y"]["shape"])
    header, blobs = split_response(client.get(f"/v1/jobs/{doc['job_id']}/result",
                                               headers={"Accept": "application/octet-stream"}))
    y_raw = np.frombuffer(blobs, "<f4").reshape(header["y"]["shape"])
    np.testing.assert_array_equal(y_json.view(np.uint32), y_raw.view(np.uint32))

    tc = triton.InferenceServerClient(api.url.removeprefix("http://"), network_timeout=60)
    try:
        inputs = []
        for name, a in (("x", x), ("W", W)):
            t = triton.InferInput(name, list(a.shape), "FP32")
            t.set_data_from_numpy(a, binary_data=False)
            inputs.append(t)
        out = tc.infer("conv_forward", inputs, parameters={"padding": 1},
                       outputs=[triton.InferRequestedOutput("y", binary_data=False)])
    finally:
        tc.close()
    y_triton = out.as_numpy("y")
    assert y_triton.dtype == np.float32
    # a second job of the same forward: the same engine on the same inputs gives the same bits
    np.testing.assert_array_equal(y_triton.view(np.uint32), y_raw.view(np.uint32))
