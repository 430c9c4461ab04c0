"""ConvTransposeND: an N-D transposed convolution layer (PyTorch's ConvTransposeNd) owning W and b.

    x (n, c_I, d_1..d_N) -> y (n, c_O, o_1..o_N);  W (c_I, c_O/groups, k_1..k_N), b (c_O,)
    o_j = (d_j - 1) * stride_j - 2 * padding_j + dilation_j * (k_j - 1) + output_padding_j + 1
The op keeps x and W from forward; backward runs one convolution of gy for gx and reuses its
transforms for gW.
"""
from __future__ import annotations

from ...engines import unsupported_reason
from ...transpose import ConvTranspose, adjoint_geometry, make_transpose_geometry
from ..init import check_init
from .base import as_json, check_int, check_sizes, per_dim_option
from .conv import FilterLayer, _as_tuple


class ConvTransposeND(FilterLayer):
    type_name = "conv_transpose"

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                 bias=True, init="he", algorithm="auto"):
        super().__init__()
        self.out_channels = check_int("out_channels", out_channels)
        check_sizes("kernel_size", kernel_size)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.output_padding, self.dilation = output_padding, dilation
        self.groups = check_int("groups", groups)
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be true or false, got {bias!r}")
        self.bias, self.init = bias, check_init(init)
        self.algorithm = algorithm
        # The op checks algorithm; the geometry (at build) checks every size. autotune=False: the
        # choice depends only on the shapes, so seeded runs repeat bit for bit (see ConvND).
        self.op = ConvTranspose(stride=_as_tuple(stride), padding=_as_tuple(padding),
                                output_padding=_as_tuple(output_padding), dilation=_as_tuple(dilation),
                                groups=self.groups, algorithm=algorithm, autotune=False)

    def weight_shape(self, in_shape: tuple) -> tuple:
        if len(in_shape) < 2:
            raise ValueError(f"conv_transpose needs an input (c_in, d_1, ..., d_N) with N >= 1, got {in_shape}")
        if self.out_channels % self.groups:
            raise ValueError(f"groups={self.groups} must divide out_channels={self.out_channels}")
        kernel = per_dim_option("kernel_size", self.kernel_size, len(in_shape) - 1)
        return (in_shape[0], self.out_channels // self.groups) + kernel

    def output_shape(self, in_shape):
        geom = make_transpose_geometry((1,) + tuple(in_shape), self.weight_shape(in_shape), **self.op.params)
        if self.algorithm != "auto":   # as ConvND: named here, before a job is queued, not at its first step
            why = unsupported_reason(self.algorithm, adjoint_geometry(geom), "cpu")
            if why:
                raise ValueError(f"{why} (the convolution conv_transpose runs: its adjoint)")
        return geom.out_shape[1:]

    def config(self):
        return {"out_channels": self.out_channels, "kernel_size": as_json(self.kernel_size),
                "stride": as_json(self.stride), "padding": as_json(self.padding),
                "output_padding": as_json(self.output_padding), "dilation": as_json(self.dilation),
                "groups": self.groups, "bias": self.bias, "init": self.init, "algorithm": self.algorithm}
