"""Saving models and training state as .npz, never pickle.

A model file holds its parameters and buffers under "param/<i>.<name>" and
"buffer/<i>.<name>", and under "spec" a JSON string (a 0-d unicode array)
{"layers": <the model spec, a list or a graph>, "input_shape": [...], "dtype": ..., "seed": ...}. Loading uses
``allow_pickle=False``, so a file cannot execute code.
"""
from __future__ import annotations

import io
import json

import numpy as np

from ..backend import to_host
from .graph import Graph
from .sequential import build_model

FORMAT = "convcore.nn/1"


def save_arrays(file, arrays: dict) -> None:
    """``np.savez`` of a flat dict of arrays (CuPy arrays are copied to the host)."""
    np.savez(file, **{k: to_host(v) for k, v in arrays.items()})


def load_arrays(file) -> dict:
    """All arrays of an .npz, read without pickle."""
    with np.load(file, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def arrays_to_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    save_arrays(buf, arrays)
    return buf.getvalue()


def arrays_from_bytes(data: bytes) -> dict:
    return load_arrays(io.BytesIO(data))


def model_arrays(model: Graph) -> dict:
    """The model as a flat dict of arrays, spec included: what ``save`` writes."""
    meta = {"format": FORMAT, "layers": model.spec(), "input_shape": list(model.input_shape),
            "dtype": model.dtype.name, "seed": model.seed}
    out = {"spec": np.array(json.dumps(meta))}
    out.update({"param/" + k: v for k, v in model.parameters().items()})
    out.update({"buffer/" + k: v for k, v in model.buffers().items()})
    return out


def model_from_arrays(arrays: dict, xp=np) -> Graph:
    if "spec" not in arrays:
        raise ValueError(f"not a convcore.nn model file: no 'spec' entry among {sorted(arrays)}")
    meta = json.loads(str(arrays["spec"]))
    if meta.get("format") != FORMAT:
        raise ValueError(f"model format must be {FORMAT!r}, got {meta.get('format')!r}")
    model = build_model(meta["layers"], meta["input_shape"], seed=meta["seed"], dtype=meta["dtype"], xp=xp)
    model.load_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("param/")},
                      {k[7:]: v for k, v in arrays.items() if k.startswith("buffer/")})
    return model


def save(file, model: Graph) -> None:
    """Write parameters, buffers and spec to ``file`` (a path or a binary file object)."""
    save_arrays(file, model_arrays(model))


def load(file, xp=np) -> Graph:
    """Rebuild a model written by ``save``."""
    return model_from_arrays(load_arrays(file), xp=xp)
