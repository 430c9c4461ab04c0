"""ConvND: an N-D convolution layer that owns W and b and one ``convcore.Convolution`` op.

The op keeps what its forward pass computed (input and filter spectra for FFT,
the column matrix for the direct algorithm), so ``backward(gy)`` never
transforms x again.
    x (n, c_I, d_1..d_N) -> y (n, c_O, o_1..o_N);  W (c_O, c_I/groups, k_1..k_N), b (c_O,)
"""
from __future__ import annotations

import math

from ...conv import Convolution
from ...engines import unsupported_reason
from ...geometry import make_geometry
from ..init import check_init, init_weight
from .base import Layer, as_json, check_int, check_sizes, per_dim_option


class FilterLayer(Layer):
    """A layer that owns a filter W, an optional bias b and one op with ``forward(x, W, b)`` and
    ``backward(gy, need)`` (a convolution or a transposed one). Subclasses give ``self.op``,
    ``out_channels``, ``groups``, ``bias``, ``init`` and ``weight_shape(in_shape)``."""

    def param_count(self, in_shape):
        return math.prod(self.weight_shape(in_shape)) + (self.out_channels if self.bias else 0)

    def init_params(self, rng, dtype, xp):
        W = init_weight(rng, self.weight_shape(self.in_shape), self.init, dtype, self.groups)
        self.params["W"] = xp.asarray(W)
        if self.bias:
            self.params["b"] = xp.zeros((self.out_channels,), dtype=dtype)

    def forward(self, x, training=False):
        return self.op.forward(x, self.params["W"], self.params.get("b"))

    def backward(self, gy):
        need = ("x",) if self.input_grad else ()
        need += ("W", "b") if self.bias else ("W",)
        gx, gW, gb = self.op.backward(gy, need=need)  # reuses forward's spectra / columns
        self.grads["W"] = gW
        if self.bias:
            self.grads["b"] = gb
        return gx


class ConvND(FilterLayer):
    type_name = "conv"

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 padding_mode="zeros", bias=True, init="he", algorithm="auto"):
        super().__init__()
        self.out_channels = check_int("out_channels", out_channels)
        check_sizes("kernel_size", kernel_size)
        self.kernel_size = kernel_size
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups = check_int("groups", groups)
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be true or false, got {bias!r}")
        self.padding_mode, self.bias, self.algorithm = padding_mode, bias, algorithm
        self.init = check_init(init)
        # Convolution checks algorithm here; make_geometry (at build, and in validate_spec) checks
        # padding_mode and every size, naming the option, so nothing is checked twice.
        # "auto" decides by the cost model alone here: the choice depends only on the shapes,
        # so a seeded run trains bit for bit the same in any process (timing could differ).
        self.op = Convolution(stride=_as_tuple(stride), padding=_as_tuple(padding),
                              dilation=_as_tuple(dilation), groups=self.groups,
                              padding_mode=padding_mode, algorithm=algorithm, autotune=False)

    def weight_shape(self, in_shape: tuple) -> tuple:
        if len(in_shape) < 2:
            raise ValueError(f"conv needs an input (c_in, d_1, ..., d_N) with N >= 1, got {in_shape}")
        kernel = per_dim_option("kernel_size", self.kernel_size, len(in_shape) - 1)
        return (self.out_channels, in_shape[0] // self.groups) + kernel

    def output_shape(self, in_shape):
        # make_geometry checks channels, groups, padding and kernel-vs-input with named values; an
        # engine asked for by name that cannot run the layer says so here, when the model is built
        # (a training job's check, before it is queued), not at its first step.
        geom = make_geometry((1,) + tuple(in_shape), self.weight_shape(in_shape), **self.op.params)
        if self.algorithm != "auto":
            why = unsupported_reason(self.algorithm, geom, "cpu")
            if why:
                raise ValueError(why)
        return geom.out_shape[1:]

    def config(self):
        return {"out_channels": self.out_channels, "kernel_size": as_json(self.kernel_size),
                "stride": as_json(self.stride), "padding": as_json(self.padding),
                "dilation": as_json(self.dilation), "groups": self.groups,
                "padding_mode": self.padding_mode, "bias": self.bias, "init": self.init,
                "algorithm": self.algorithm}


def _as_tuple(value):
    """JSON lists (possibly nested, for (lo, hi) pads) to the tuples convcore expects."""
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value
