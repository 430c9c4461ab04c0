"""The one format for arrays kept in Redis: raw little-endian bytes plus shape and dtype.

Job inputs and outputs, checkpoints and uploaded datasets all go through here; nothing is
pickled, and decoding checks every length against the declared shape before it reads.

Two forms of the same description:
- one array as hash fields ``{"dtype": "<f4", "shape": "[2, 3]", "data": raw}``
  (``encode`` / ``decode``), one Redis hash per array;
- several arrays and a JSON document as one bytes value (``pack`` / ``unpack``):
  ``b"CNDA1"``, a 4-byte little-endian header length, the JSON header
  ``{"meta": {...}, "arrays": [{"name", "dtype", "shape"}, ...]}``, then the arrays' raw bytes
  in header order.
"""
from __future__ import annotations

import json
import math
import struct

import numpy as np

MAGIC = b"CNDA1"
# Numbers, booleans and fixed-width unicode (a model's JSON spec): never objects, which would need pickle.
ALLOWED_KINDS = "biufcU"


class CodecError(ValueError):
    """Bytes that are not a valid encoding (damaged, truncated, or not written by this module)."""


def _little(arr) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in ALLOWED_KINDS:
        raise CodecError(f"cannot store arrays of dtype {arr.dtype} (kind {arr.dtype.kind!r}) without pickle")
    # np.asarray keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d).
    return np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")


def _dtype(text: str) -> np.dtype:
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise CodecError(f"unknown dtype {text!r}") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.hasobject:
        raise CodecError(f"dtype {text!r} is not allowed")
    return dtype


def _shape(value) -> tuple:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise CodecError(f"bad shape {value!r}")
    return tuple(value)


def _from_raw(raw: bytes, dtype: np.dtype, shape: tuple) -> np.ndarray:
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise CodecError(f"{len(raw)} bytes for shape {list(shape)} {dtype.str}, which needs {need}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def encode(arr) -> dict:
    """ndarray -> hash fields {"dtype", "shape", "data"} (little-endian raw bytes)."""
    arr = _little(arr)
    return {"dtype": arr.dtype.str, "shape": json.dumps(list(arr.shape)), "data": arr.tobytes()}


def decode(fields: dict) -> np.ndarray:
    """Hash fields (bytes or str keys, as Redis returns them) -> a read-only ndarray."""
    get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    try:
        dtype = _dtype(get["dtype"].decode() if isinstance(get["dtype"], bytes) else get["dtype"])
        shape = _shape(json.loads(get["shape"]))
        return _from_raw(bytes(get["data"]), dtype, shape)
    except KeyError as exc:
        raise CodecError(f"missing field {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(str(exc)) from None


def pack(arrays: dict, meta: dict | None = None) -> bytes:
    """{name: ndarray} and a JSON-able ``meta`` -> one bytes value."""
    items = [(str(name), _little(arr)) for name, arr in arrays.items()]
    header = json.dumps({"meta": meta or {}, "arrays": [
        {"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)} for name, arr in items]}).encode()
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *(arr.tobytes() for _, arr in items)])


def unpack(data: bytes) -> tuple[dict, dict]:
    """What ``pack`` wrote -> ({name: read-only ndarray}, meta); CodecError for anything else."""
    data = bytes(data)
    start = len(MAGIC) + 4
    if len(data) < start or not data.startswith(MAGIC):
        raise CodecError("not an array bundle (bad magic)")
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    if start + n > len(data):
        raise CodecError(f"header of {n} bytes runs past the {len(data)}-byte value")
    try:
        header = json.loads(data[start:start + n])
        entries, meta = header["arrays"], header["meta"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CodecError(f"bad header: {exc}") from None
    out, offset = {}, start + n
    for entry in entries:
        try:
            dtype, shape = _dtype(entry["dtype"]), _shape(entry["shape"])
            name = str(entry["name"])
        except (KeyError, TypeError) as exc:
            raise CodecError(f"bad array entry {entry!r}: {exc}") from None
        size = math.prod(shape) * dtype.itemsize
        out[name] = _from_raw(data[offset:offset + size], dtype, shape)
        offset += size
    if offset != len(data):
        raise CodecError(f"{len(data) - offset} bytes follow the last array")
    return out, meta
