"""What a convolution job will allocate, checked before it is queued (convcore.estimate_memory).

Every count is Python-int arithmetic on the shapes, so ``stride=10**12`` or a padding of
billions is a 413/422 naming the parameter, never an allocation in the API or the worker.
"""
from __future__ import annotations

import math

import numpy as np

from app.api.errors import ApiError
from convcore import estimate_memory, make_geometry
from convcore.geometry import check_arrays
from worker.fastlane import Work, multiply_adds

# What each kind computes, in estimate_memory's words ("y" forward; "x", "W", "b" gradients).
FORWARD_NEEDS = ("y",)
GRADCHECK_NEEDS = ("y", "x", "W", "b")


PARAMETERS = ("stride", "padding_mode", "padding", "dilation", "groups", "algorithm", "x", "W", "b", "gy")


def named_parameter(message: str) -> str | None:
    """The parameter a convcore message starts with ("stride must be ..."), if any."""
    head = message.split(" ", 1)[0].split("=", 1)[0].rstrip(":,")
    return head if head in PARAMETERS else None


def check_conv(x_shape, W_shape, conv_kwargs: dict, dtype, need, settings, **arrays) -> Work:
    """convcore's shape and dtype checks (422 with its message), then 413 naming the parameter when one
    array the worker makes passes ``max_array_bytes`` or the whole call passes ``max_job_bytes``.
    Returns the job's size (multiply-adds and peak bytes: what decides whether it takes the fast lane).

    x_shape (n, c_I, d_1..d_N), W_shape (c_O, c_I // groups, k_1..k_N); ``dtype`` is the arrays'
    (counted at its real size: FP32 = 4 bytes a value)."""
    kwargs = {k: v for k, v in conv_kwargs.items() if k != "algorithm"}
    try:
        geom = make_geometry(x_shape, W_shape, **kwargs)
        if arrays:
            check_arrays(geom, **arrays)
        estimate = estimate_memory(x_shape, W_shape, dtype, algorithm=conv_kwargs.get("algorithm", "auto"),
                                   need=tuple(need), **kwargs)
    except (ValueError, TypeError) as exc:
        raise ApiError(422, str(exc), named_parameter(str(exc))) from None
    # A stride past the padded input selects its first window only: almost surely a mistake, and
    # refusing it keeps absurd values (10**12) out of every code path below.
    for j, (s, p) in enumerate(zip(geom.stride, geom.padded)):
        if s > p:
            raise ApiError(422, f"stride={s} in spatial dim {j} is longer than the padded input ({p}): it selects "
                                f"a single window; use a stride of at most {p} ({geom.describe()})", "stride")
    itemsize = np.dtype(dtype).itemsize
    padding_grows = math.prod(geom.padded) >= 2 * math.prod(geom.spatial)
    padded = geom.batch * geom.in_channels * math.prod(geom.padded)
    single = [("the output", math.prod(geom.out_shape), "padding" if padding_grows else "x")]
    if padding_grows:
        single.insert(0, ("the padded input", padded, "padding"))
    for what, count, field in single:
        if count * itemsize > settings.max_array_bytes:
            raise ApiError(413, f"{what} would hold {count} values ({count * itemsize} bytes as {np.dtype(dtype)}) "
                                f"for {geom.describe()}, over the limit of {settings.max_array_bytes} bytes per array",
                           field)
    if estimate["peak_bytes"] > settings.max_job_bytes:
        largest = estimate["largest"]
        size = {**estimate["inputs"], **estimate["allocations"]}[largest]
        raise ApiError(413, f"the job would need about {estimate['peak_bytes']} bytes of worker memory, over the "
                            f"limit of {settings.max_job_bytes} bytes; its largest array is {largest} "
                            f"({size} bytes), sized by {estimate['parameter']} ({geom.describe()})",
                       estimate["parameter"])
    return Work(multiply_adds(geom, need), estimate["peak_bytes"])
