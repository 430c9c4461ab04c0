"""Array <-> tensor JSON for the tests, written independently of app.core.tensors."""
from __future__ import annotations

import numpy as np


def tensor(a: np.ndarray, nested: bool = False) -> dict:
    """ndarray -> OIP tensor JSON (independent of app.core.tensors on purpose)."""
    a = np.asarray(a)
    return {"shape": list(a.shape), "datatype": {"float32": "FP32", "float64": "FP64"}[str(a.dtype)],
            "data": a.tolist() if nested else a.ravel().tolist()}


def array(t: dict) -> np.ndarray:
    dtype = {"FP32": np.float32, "FP64": np.float64}[t["datatype"]]
    return np.asarray(t["data"], dtype=dtype).reshape(t["shape"])
