"""worker.codec alone: the one format of arrays in Redis. Expected bytes are written here by hand
(struct), not by the codec, so a change of byte order or layout fails."""
from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest

from worker import codec


@pytest.mark.parametrize("arr", [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.arange(6, dtype=">f8").reshape(3, 2),          # big-endian in, little-endian stored
    np.asarray(7, dtype=np.int64),                      # 0-d stays 0-d
    np.zeros((0, 4), np.float64),
    np.array([True, False]),
    np.asarray('{"layers": "é"}'),                      # a JSON spec as fixed-width unicode
    np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2],  # not contiguous
])
def test_round_trips_keep_values_shape_and_dtype(arr):
    back = codec.decode(codec.encode(arr))
    assert back.shape == arr.shape and back.dtype == arr.dtype.newbyteorder("<")
    np.testing.assert_array_equal(back, arr)
    arrays, meta = codec.unpack(codec.pack({"a": arr, "b": np.ones(2)}, {"history": [1, 2]}))
    assert list(arrays) == ["a", "b"] and meta == {"history": [1, 2]}
    assert arrays["a"].shape == arr.shape
    np.testing.assert_array_equal(arrays["a"], arr)


def test_hash_fields_are_raw_little_endian_bytes():
    fields = codec.encode(np.array([[1.5, -2.0]], dtype=">f4"))
    assert fields == {"dtype": "<f4", "shape": "[1, 2]", "data": struct.pack("<2f", 1.5, -2.0)}


def test_bundle_layout():
    data = codec.pack({"x": np.array([1.0, 2.0]), "y": np.array([3], dtype=np.int64)}, {"k": "v"})
    (n,) = struct.unpack_from("<I", data, 5)
    header = json.loads(data[9:9 + n])
    assert data[:5] == b"CNDA1" and header == {"meta": {"k": "v"}, "arrays": [
        {"name": "x", "dtype": "<f8", "shape": [2]}, {"name": "y", "dtype": "<i8", "shape": [1]}]}
    assert data[9 + n:] == struct.pack("<2dq", 1.0, 2.0, 3)


def test_objects_are_refused_not_pickled():
    with pytest.raises(codec.CodecError, match="pickle"):
        codec.pack({"o": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(codec.CodecError):
        codec.decode({b"dtype": b"|O", b"shape": b"[1]", b"data": b"\0" * 8})
    with pytest.raises(codec.CodecError, match="magic"):
        codec.unpack(pickle.dumps({"x": np.ones(2)}))


@pytest.mark.parametrize("damage", [
    lambda d: d[:-1],                       # truncated
    lambda d: d + b"\0",                    # trailing bytes
    lambda d: d[:5] + struct.pack("<I", 10**6) + d[9:],   # header length past the end
    lambda d: d[:9] + b"[" + d[10:],        # broken header JSON
    lambda d: b"",
])
def test_damaged_bundles_raise_codec_error(damage):
    data = codec.pack({"x": np.arange(4.0)})
    with pytest.raises(codec.CodecError):
        codec.unpack(damage(data))


def test_hash_with_wrong_length_or_shape_is_refused():
    good = codec.encode(np.arange(4.0))
    with pytest.raises(codec.CodecError, match="needs 32"):
        codec.decode({**good, "data": good["data"][:-8]})
    with pytest.raises(codec.CodecError, match="bad shape"):
        codec.decode({**good, "shape": "[-4]"})
    with pytest.raises(codec.CodecError, match="missing"):
        codec.decode({"dtype": "<f8", "shape": "[4]"})
