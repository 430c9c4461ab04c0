"""``estimate_memory``: the bytes one convolution call will allocate, known before it runs.

A service can refuse a request before queueing it (413/422 naming the parameter)
instead of finding out in a worker: every count here is Python-int arithmetic on the
shapes (costs.py), so ``stride=10**12`` or ``padding=10**12`` give a number (or a
ValueError from the geometry naming the parameter), never an allocation or an overflow.
"""
from __future__ import annotations

import copy
import functools
import math

import numpy as np

from . import autoselect, costs, resources
from .conv import GRADIENTS, check_algorithm
from .engines import engine_names, get_engine, no_engine_runs, unsupported_reason
from .geometry import SUPPORTED_DTYPES, make_geometry

NEEDS = ("y",) + GRADIENTS
FIXED_BYTES = 32 * 2**10   # Python objects, views and small temporaries of any call
# Which call parameter sizes each allocation beyond the arrays themselves.
_SIZED_BY = {"padded_input": "padding", "gx_padding_fold": "padding", "gx_unread_cells": "padding",
             "polyphase_input": "stride", "gx_polyphase": "stride", "dilated_filters": "dilation",
             "gW_reduced": "dilation"}


def estimate_memory(x_shape, W_shape, dtype="float32", *, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros", algorithm="auto", need=("y",), memory_budget=None,
                    autotune=None, device=None) -> dict:
    """Bytes of every array a call allocates, without allocating: the caller's inputs and each engine buffer.

    x_shape (n, c_I, d_1..d_N), W_shape (c_O, c_I // groups, k_1..k_N). ``need`` names what
    the call computes: "y" (forward) and/or the gradients "x", "W", "b" (a backward call with
    x, W and gy). ``memory_budget`` defaults to what ``Convolution`` would use on the host
    (``device`` = an array module, e.g. cupy, for a GPU's budget and rates).

    Returns {"algorithm", "candidates", "budget", "inputs": {name: bytes},
    "allocations": {name: bytes}, "peak_bytes", "largest", "parameter"}: ``peak_bytes``
    bounds the call's peak (inputs plus every buffer of the engines ``auto`` may run, two
    at once while timing); ``largest`` names the biggest allocation and ``parameter`` the
    call parameter that sizes it ("x" when it is the input's own size). Raises ValueError /
    TypeError naming the parameter for arguments ``Convolution`` would refuse.
    """
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    need = (need,) if isinstance(need, str) else tuple(need)
    unknown = [v for v in need if v not in NEEDS]
    if unknown or not need:
        raise ValueError(f"need must name one or more of {NEEDS}, got {need!r}")
    check_algorithm(algorithm)
    params = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode)
    geom = make_geometry(x_shape, W_shape, **params)
    budget = memory_budget or resources.memory_budget(device)
    rates = costs.rates_for(device) if device is not None else costs.CPU_RATES
    autotune = resources.autotune_enabled() if autotune is None else autotune
    if algorithm == "auto":
        why = no_engine_runs(geom, rates.kind)
    else:
        why = unsupported_reason(algorithm, geom, rates.kind)
    if why:
        raise ValueError(why)
    forward, backward = "y" in need, bool({"x", "W"} & set(need))
    result = copy.deepcopy(_estimate(geom, dtype.itemsize, algorithm, budget, rates, autotune, forward, backward,
                                     need, tuple((n, get_engine(n)) for n in engine_names()),
                                     resources.fftw_requested()))
    result["parameter"] = _blame(geom, result["largest"])
    return result


# A pure function of hashable arguments (frozen geometry and rates; ``engines``: (name, class) of the
# registered engines, so registering or replacing one starts afresh; ``fftw``: CONVCORE_FFT asks for
# FFTW, whose plans the FFT engine's estimate counts), asked again and again for the same layers: a
# service checks every request with it (0.37 ms for a small layer, tens of us cached).
@functools.lru_cache(maxsize=1024)
def _estimate(geom, itemsize, algorithm, budget, rates, autotune, forward, backward, need, engines,
              fftw=False) -> dict:
    estimates = {name: cls.estimate(geom, itemsize, budget, rates) for name, cls in engines}
    if algorithm == "auto":
        seconds = {name: e.seconds for name, e in estimates.items()}
        best = min(seconds, key=seconds.get)
        candidates = [best] + (autoselect.close_calls(seconds, best) if autotune else [])
    else:
        best, candidates = algorithm, [algorithm]
    timed = len(candidates) > 1
    out_bytes = costs.output_bytes(geom, itemsize)
    inputs = {"x": math.prod(geom.in_shape) * itemsize, "W": math.prod(geom.kernel_shape) * itemsize}
    if backward or "b" in need:
        inputs["gy"] = out_bytes
    if "b" in need or forward:
        inputs["b"] = geom.out_channels * itemsize
    totals, allocations = {}, {}
    for name in candidates:
        e = estimates[name]
        # timing runs forward and backward whatever the call needs. Forward's working arrays are
        # gone when it returns: backward runs beside the shared arrays and y (the caller's) only
        if (forward or timed) and (backward or timed):
            parts = sum(e.shared.values()) + max(sum(e.forward.values()), out_bytes + sum(e.backward.values()))
        else:
            parts = e.bytes(forward, backward) if (forward or backward) else 0
        totals[name] = parts
        groups = [e.shared] * (forward or backward) + [e.forward] * (forward or timed) + [e.backward] * (backward or timed)
        for group in groups:
            for key, value in group.items():
                allocations[key] = max(allocations.get(key, 0), value)
    if "b" in need:
        allocations["gb"] = geom.out_channels * itemsize
    if timed:
        allocations["autotune_gy"] = out_bytes
    ranked = sorted(totals.values(), reverse=True)
    engines_peak = sum(ranked[:2])   # timing keeps the fastest engine so far while the next one runs
    allocations["fixed"] = FIXED_BYTES
    peak = FIXED_BYTES + sum(inputs.values()) + engines_peak + allocations.get("gb", 0) + allocations.get("autotune_gy", 0)
    everything = {**inputs, **allocations}
    largest = max(everything, key=everything.get)
    return {"algorithm": best if algorithm == "auto" else algorithm, "candidates": candidates,
            "budget": budget, "inputs": inputs, "allocations": allocations, "peak_bytes": peak,
            "largest": largest}


def _blame(geom, largest: str) -> str:
    """The call parameter that sizes the largest allocation: "x" when it is the input's own size."""
    if largest in _SIZED_BY:
        return _SIZED_BY[largest]
    if math.prod(geom.padded) >= 2 * math.prod(geom.spatial):
        return "padding"   # everything after the padding grows with it
    return "x"
