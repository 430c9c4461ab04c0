"""Tensors of v2 inference requests and responses: named lists, JSON or binary-data extension.

A request carries ``inputs: [{"name", "shape", "datatype", "data" | "parameters": {"binary_data_size"}}]``;
the blobs of binary inputs follow the JSON header in the order those inputs are listed. A response
lists ``outputs`` the same way; an output asked for with ``"parameters": {"binary_data": true}`` (or
all of them with the request parameter ``binary_data_output``) comes as raw little-endian bytes.
Tensors are decoded and encoded by ``app.core.tensors`` (FP32/FP64 inputs, size limit, finite values;
outputs may also be INT64); this module adds the v2 framing: names, and blobs in input order.
"""
from __future__ import annotations

import numpy as np

from app.core.tensors import (
    TensorError,
    check_all_claimed,
    decode_tensor,
    dumps_json,
    encode_blob,
    encode_tensor,
    take_blob,
)


def decode_inputs(inputs: list[dict], model: str, allowed: tuple, max_bytes: int, binary: bytes = b"") -> dict:
    """``inputs`` (RequestInput dicts) -> {name: ndarray}; every name one of ``allowed``, each at most once."""
    arrays, offset = {}, 0
    for item in inputs:
        name = item["name"]
        if name not in allowed:
            raise TensorError(name, f"model {model} has no input {name!r}; its inputs are {', '.join(allowed)}")
        if name in arrays:
            raise TensorError(name, "is given twice")
        blob, offset = take_blob(name, item.get("parameters"), binary, offset)
        arrays[name] = decode_tensor(name, item, max_bytes, blob)
    check_all_claimed(binary, offset)
    return arrays


def require(arrays: dict, model: str, *names: str) -> None:
    for name in names:
        if name not in arrays:
            raise TensorError(name, f"is a required input of model {model}")


def encode_output(name: str, arr: np.ndarray, binary: bool) -> tuple[dict, bytes]:
    """(the output's JSON object, its raw bytes or b'' when the data is in the JSON)."""
    if not binary:
        return {"name": name, **encode_tensor(arr, name)}, b""
    head, raw = encode_blob(arr)
    return {"name": name, **head}, raw


def response_body(doc: dict, outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None): ``doc`` with its ``outputs`` list, the blobs after the header."""
    encoded, blobs = [], []
    for name, arr, binary in outputs:
        obj, raw = encode_output(name, arr, binary)
        encoded.append(obj)
        blobs.append(raw)
    head = dumps_json({**doc, "outputs": encoded})
    if not any(binary for _, _, binary in outputs):
        return head, None
    return head + b"".join(blobs), len(head)
