"""Datasets for training jobs: built-in sets generated or loaded without download, the validation
split, and validation of uploaded arrays.

A job names a built-in set as {"name": "digits"}, {"name": "shapes3d", "n": 1000, "noise": 0.2},
{"name": "synthetic", "ndim": 4, "n": 600}, {"name": "segmentation3d", "n": 200, "size": 16} (per-voxel
labels) or {"name": "field", "ndim": 4, "n": 400} (field targets); ``load`` returns (x, y, n_classes)
(n_classes 0 for field targets) and ``info`` / ``describe`` say what a spec holds without generating
anything (for validating a job).
"""
from __future__ import annotations

import inspect
from typing import NamedTuple

from . import field as _field
from .digits import load_digits
from .field import make_field
from .segmentation3d import make_segmentation3d
from .shapes3d import make_shapes3d
from .split import train_val_split, validation_count
from .synthetic import DEFAULT_SIZE, make_synthetic
from .validate import MAX_BYTES, DatasetError, load_npz_bytes, target_kind, validate_arrays

BUILTIN = {"digits": load_digits, "shapes3d": make_shapes3d, "synthetic": make_synthetic,
           "segmentation3d": make_segmentation3d, "field": make_field}


class DatasetInfo(NamedTuple):
    """What a dataset holds, per sample: x (input_shape), y (target_shape: () for class labels,
    (d...) for per-voxel labels, (c, d...) for fields); n_classes (0 for fields); n samples."""
    input_shape: tuple
    target_shape: tuple
    n_classes: int
    n: int | None

    @property
    def task(self) -> str:
        """"classify", "segment" or "regress" (as ``convcore.nn.metrics``)."""
        if not self.n_classes:
            return "regress"
        return "segment" if self.target_shape else "classify"
MAX_SAMPLES = 20000


def _options(spec: dict):
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or spec["name"] not in BUILTIN:
        raise DatasetError(f"dataset must be an object with a 'name' among {sorted(BUILTIN)}, got {spec!r}")
    name = spec["name"]
    options = {k: v for k, v in spec.items() if k != "name"}
    accepted = [p for p in inspect.signature(BUILTIN[name]).parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"dataset {name!r}: unknown option(s) {unknown}; accepted: {accepted}")
    for key in ("n", "size", "ndim", "seed"):
        if key in options and (isinstance(options[key], bool) or not isinstance(options[key], int)):
            raise DatasetError(f"dataset {name!r}: {key} must be an int, got {options[key]!r}")
    if "n" in options and not 4 <= options["n"] <= MAX_SAMPLES:
        raise DatasetError(f"dataset {name!r}: n must be in [4, {MAX_SAMPLES}], got {options['n']}")
    if "seed" in options and not 0 <= options["seed"] < 2**63:   # NumPy's generators take no negative seed
        raise DatasetError(f"dataset {name!r}: seed must be in [0, 2**63 - 1], got {options['seed']}")
    if "size" in options and not 8 <= options["size"] <= 64:
        raise DatasetError(f"dataset {name!r}: size must be in [8, 64], got {options['size']}")
    if "noise" in options:
        noise = options["noise"]
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 10:
            raise DatasetError(f"dataset {name!r}: noise must be a number in [0, 10], got {noise!r}")
        options["noise"] = noise + 0.0   # -0.0 is 0 here, but NumPy's generators refuse its sign ("scale < 0")
    return name, options


def describe(spec: dict):
    """(per-sample input shape, n_classes) of a built-in dataset spec, checking its options."""
    found = info(spec)
    return found.input_shape, found.n_classes


def info(spec: dict) -> DatasetInfo:
    """The DatasetInfo of a built-in dataset spec, checking its options (nothing is generated)."""
    name, options = _options(spec)
    n = sample_count(spec)
    if name == "digits":
        return DatasetInfo((1, 8, 8), (), 10, n)
    if name == "shapes3d":
        return DatasetInfo((1,) + (options.get("size", 16),) * 3, (), 4, n)
    if name == "segmentation3d":
        spatial = (options.get("size", 16),) * 3
        return DatasetInfo((1,) + spatial, spatial, 4, n)
    ndim = options.get("ndim", 2)
    if name == "field":
        if ndim not in _field.DEFAULT_SIZE:
            raise DatasetError(f"dataset 'field': ndim must be in 2..4, got {ndim!r}")
        shape = (1,) + (options.get("size", _field.DEFAULT_SIZE[ndim]),) * ndim
        return DatasetInfo(shape, shape, 0, n)
    if ndim not in DEFAULT_SIZE:
        raise DatasetError(f"dataset 'synthetic': ndim must be in 1..4, got {ndim!r}")
    return DatasetInfo((1,) + (options.get("size", DEFAULT_SIZE[ndim]),) * ndim, (), 3, n)


def info_of_arrays(x, y, n_classes: int) -> DatasetInfo:
    """The DatasetInfo of validated arrays (``validate_arrays``'s output)."""
    return DatasetInfo(tuple(x.shape[1:]), tuple(y.shape[1:]), int(n_classes), int(x.shape[0]))


def sample_count(spec: dict) -> int:
    """How many samples a built-in dataset spec generates."""
    name, options = _options(spec)
    if name == "digits":
        return 1797
    # _options has checked n's type and range already
    return int(options.get("n", inspect.signature(BUILTIN[name]).parameters["n"].default))


def load(spec: dict):
    """(x float32 (n, c, d...), y, n_classes) for a built-in dataset spec: y int64 (n,) or (n, d...)
    labels, or float32 (n, c, d...) field targets with n_classes 0."""
    name, options = _options(spec)
    _, n_classes = describe(spec)
    x, y = BUILTIN[name](**options)
    return x, y, n_classes


__all__ = ["load", "describe", "info", "info_of_arrays", "DatasetInfo", "BUILTIN", "load_digits", "make_shapes3d",
           "make_synthetic", "make_segmentation3d", "make_field", "train_val_split", "validation_count", "validate_arrays",
           "load_npz_bytes", "target_kind", "DatasetError", "MAX_BYTES", "sample_count"]
