"""Arrays on the wire: Open Inference Protocol tensors, JSON or with binary data.

JSON form (KServe v2 / Triton), ``data`` row-major, flat or nested::

    {"shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}

Binary form (Triton binary-data extension): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by raw little-endian blobs;
a tensor carries ``"parameters": {"binary_data_size": N}`` instead of ``data``
and the blobs follow in the order those tensors appear in the header.
Arrays are never pickled.
"""
from __future__ import annotations

import json
import math

import numpy as np
import orjson

DATATYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
NAMES = {v: k for k, v in DATATYPES.items()}
NAMES[np.dtype("<i8")] = "INT64"  # answers only (a prediction's class map); inputs stay FP32/FP64
HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_DIMS = 64  # NumPy's limit: an array cannot have more axes
BINARY_CONTENT_TYPE = "application/octet-stream"


class TensorError(ValueError):
    """A malformed tensor (400) or one over the size limit (413), naming the field."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field, self.status = field, status


class UnencodableOutput(TensorError):
    """A result the JSON form cannot carry (NaN or Inf): 422 naming the output."""

    def __init__(self, field: str, message: str):
        super().__init__(field, message, 422)


def is_tensor(obj) -> bool:
    return isinstance(obj, dict) and "shape" in obj and "datatype" in obj


def decode_tensor(field: str, obj, max_bytes: int, blob: bytes | None = None) -> np.ndarray:
    """Tensor object -> ndarray of its datatype (float32/float64), validated."""
    if not is_tensor(obj):
        raise TensorError(field, 'must be a tensor object {"shape": [...], "datatype": "FP32"|"FP64", "data": [...]}')
    shape, datatype = obj["shape"], obj["datatype"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise TensorError(field, f"shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) > MAX_DIMS:
        raise TensorError(field, f"shape has {len(shape)} dimensions, at most {MAX_DIMS} are supported")
    if datatype not in DATATYPES:
        raise TensorError(field, f"datatype must be one of {sorted(DATATYPES)}, got {datatype!r}")
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    if count * dtype.itemsize > max_bytes:
        raise TensorError(field, f"{count * dtype.itemsize} bytes for shape {shape} exceeds the limit of "
                                 f"{max_bytes} bytes per array", status=413)
    if blob is not None:
        if len(blob) != count * dtype.itemsize:
            raise TensorError(field, f"binary data has {len(blob)} bytes, shape {shape} {datatype} needs "
                                     f"{count * dtype.itemsize}")
        arr = np.frombuffer(blob, dtype=dtype).reshape(shape)
    else:
        arr = _from_data(field, obj.get("data"), shape, count, dtype)
    if not np.isfinite(arr).all():
        raise TensorError(field, "data contains NaN or Inf")
    return arr


def _from_data(field, data, shape, count, dtype) -> np.ndarray:
    if not isinstance(data, list):
        raise TensorError(field, "needs a data list (or parameters.binary_data_size with a binary body)")
    try:
        arr = np.asarray(data)
    except ValueError:
        raise TensorError(field, "data is a ragged or too deeply nested list") from None
    except RecursionError:
        raise TensorError(field, "data is nested too deeply") from None
    if arr.dtype.kind not in "iuf" and arr.size:
        raise TensorError(field, f"data must hold numbers, got elements of kind {arr.dtype.kind!r}")
    if arr.ndim > 1 and list(arr.shape) != list(shape):
        raise TensorError(field, f"nested data has shape {list(arr.shape)}, but shape is {shape}")
    if arr.size != count:
        raise TensorError(field, f"data has {arr.size} elements, shape {shape} needs {count}")
    return arr.astype(dtype, copy=False).reshape(shape)


def encode_tensor(arr: np.ndarray, name: str = "output") -> dict:
    """ndarray -> JSON tensor object with flat data, to be written by ``dumps_json``: ``data`` stays a
    1-D array, so a float32 value is written in its shortest round-trip form ("0.33333334", read back as
    the same float32) instead of the 17 digits of the float64 it would become as a Python float.
    NaN and Inf (a float32 result can overflow) have no JSON form: 422 naming the output and the
    binary form, which carries them."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        raise UnencodableOutput(name, "holds NaN or Inf (the result overflowed its dtype?), which JSON cannot "
                                      "carry: ask for the binary form (binary_data_output) to receive it")
    # orjson writes only C-contiguous arrays of the machine's byte order.
    flat = np.ascontiguousarray(arr.ravel(), dtype=arr.dtype.newbyteorder("="))
    return {"shape": list(arr.shape), "datatype": NAMES[arr.dtype.newbyteorder("<")], "data": flat}


def dumps_json(doc: dict) -> bytes:
    """A document holding ``encode_tensor`` objects -> JSON bytes (orjson, ~10x json.dumps; each
    float in its shortest round-trip form for its own dtype)."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def split_binary_body(body: bytes, header_length: str) -> tuple[dict, bytes]:
    """Split a binary-extension body into (JSON header, concatenated blobs)."""
    try:
        n = int(header_length)
    except ValueError:
        raise TensorError(HEADER_LENGTH, f"must be an integer, got {header_length!r}") from None
    if not 0 < n <= len(body):
        raise TensorError(HEADER_LENGTH, f"{n} is outside the body of {len(body)} bytes")
    return parse_json(body[:n]), body[n:]


# Integers are exact in orjson up to 64 bits; a longer one it reads as a float. An integer token of 19
# or more digits (one not part of a fraction or exponent) sends the document to the standard parser.
# Found with bytes.translate + find (memchr speed): a regex over a 30 kB body costs more than orjson.
_LONG_INT_DIGITS = 19
_CLASSES = bytes(ord("9") if chr(b).isdigit() and b < 128 else ord(".") if chr(b) in ".eE" else ord(" ")
                 for b in range(256))
_DIGIT_RUN = b"9" * _LONG_INT_DIGITS
# Fewer opening brackets than this: the document cannot nest deeper than the standard parser can
# (it recurses once per level, ~1000 levels minus the caller's stack), so both accept it.
_FAST_MAX_OPENERS = 512


def _may_hold_long_ints(raw: bytes) -> bool:
    """True when ``raw`` has a run of 19+ digits neither after a '.' nor before '.', 'e' or 'E'."""
    mapped = raw.translate(_CLASSES)
    start = mapped.find(_DIGIT_RUN)
    while start >= 0:
        end = start + _LONG_INT_DIGITS
        while end < len(mapped) and mapped[end] == ord("9"):
            end += 1
        if (start == 0 or mapped[start - 1] != ord(".")) and (end == len(mapped) or mapped[end] != ord(".")):
            return True
        start = mapped.find(_DIGIT_RUN, end)
    return False


def parse_json(raw: bytes) -> dict:
    """The body's JSON object, else 400 naming the body. orjson reads a typical body ~5x faster than
    the standard parser (0.11 vs 0.6 ms for 27 kB); a document it refuses (NaN literals, lone surrogates, UTF-16, invalid text),
    one that may hold integers past 64 bits or may nest deeper than the standard parser allows goes to
    the standard parser, so what is accepted and every error message stay those of ``json.loads``."""
    if raw.count(b"[") + raw.count(b"{") < _FAST_MAX_OPENERS and not _may_hold_long_ints(raw):
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(doc, dict):
                return doc
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TensorError("body", f"is not valid JSON ({exc})") from None
    except RecursionError:  # the parser recurses once per level
        raise TensorError("body", "is nested too deeply (JSON arrays/objects within each other)") from None
    if not isinstance(doc, dict):
        raise TensorError("body", f"must be a JSON object, got {type(doc).__name__}")
    return doc


def decode_tensors(doc: dict, fields: tuple, max_bytes: int, binary: bytes = b"") -> dict:
    """Replace the tensor objects of ``fields`` in ``doc`` by ndarrays, taking blobs in header order."""
    offset = 0
    arrays = {}
    for field, obj in doc.items():  # JSON object order = the order the blobs follow in
        if field not in fields or obj is None:
            continue
        params = obj.get("parameters") if isinstance(obj, dict) else None
        if params is not None and not isinstance(params, dict):
            raise TensorError(field, f"parameters must be an object such as {{\"binary_data_size\": N}}, "
                                     f"got {params!r}")
        blob, offset = take_blob(field, params, binary, offset)
        arrays[field] = decode_tensor(field, obj, max_bytes, blob)
    check_all_claimed(binary, offset)
    return arrays


def take_blob(field: str, params: dict | None, binary: bytes, offset: int) -> tuple[bytes | None, int]:
    """(this tensor's blob or None when its data is in the JSON, the offset of the next blob)."""
    size = (params or {}).get("binary_data_size")
    if size is None:
        return None, offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
        raise TensorError(field, f"binary_data_size {size!r} does not fit the {len(binary) - offset} "
                                 "binary bytes left in the body")
    return binary[offset:offset + size], offset + size


def check_all_claimed(binary: bytes, offset: int) -> None:
    """Every blob after the header belongs to some tensor: extra bytes are a malformed body."""
    if offset != len(binary):
        raise TensorError("body", f"{len(binary) - offset} binary bytes follow the header that no tensor claims")


def encode_blob(arr: np.ndarray) -> tuple[dict, bytes]:
    """ndarray -> (tensor object with ``parameters.binary_data_size`` instead of data, its raw bytes)."""
    arr = np.asarray(arr)
    dtype = arr.dtype.newbyteorder("<")
    raw = np.ascontiguousarray(arr, dtype=dtype).tobytes()
    return {"shape": list(arr.shape), "datatype": NAMES[dtype], "parameters": {"binary_data_size": len(raw)}}, raw


def encode_binary(doc: dict) -> tuple[bytes, int]:
    """Response with ndarray values -> (header + blobs, header length) for the binary extension."""
    header, blobs = {}, []
    for key, value in doc.items():
        if isinstance(value, np.ndarray):
            header[key], raw = encode_blob(value)
            blobs.append(raw)
        else:
            header[key] = value
    head = dumps_json(header)
    return head + b"".join(blobs), len(head)
