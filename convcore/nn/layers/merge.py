"""Layers with several inputs, for skip connections in graph models: ``add`` and ``concat``.

A merge layer takes a list of arrays and returns one; ``backward(gy)`` returns one gradient per
input. Shapes are per sample, (c, d_1..d_N).
"""
from __future__ import annotations

from ...backend import get_array_module
from .base import Layer


class Merge(Layer):
    """Base of the multi-input layers: ``output_shape`` and ``forward`` take lists."""

    def output_shape(self, in_shapes):
        shapes = [tuple(s) for s in in_shapes]
        if len(shapes) < 2:
            raise ValueError(f"{self.type_name} needs at least 2 inputs, got {len(shapes)}")
        return self.merged_shape(shapes)

    def merged_shape(self, shapes: list) -> tuple:
        raise NotImplementedError


class Add(Merge):
    """y = x_1 + x_2 + ...: every input has the same shape."""
    type_name = "add"

    def merged_shape(self, shapes):
        if len(set(shapes)) != 1:
            raise ValueError("add needs inputs of one shape")
        return shapes[0]

    def forward(self, xs, training=False):
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        self._count = len(xs)
        return y

    def backward(self, gy):
        return [gy] * self._count


class Concat(Merge):
    """y = the inputs stacked along the channel axis: (c_1 + c_2 + ..., d...); spatial sizes must match."""
    type_name = "concat"

    def merged_shape(self, shapes):
        if len({len(s) for s in shapes}) != 1 or len({s[1:] for s in shapes}) != 1:
            raise ValueError("concat needs the same spatial size (d_1..d_N) in every input; only the channels "
                             "may differ")
        return (sum(s[0] for s in shapes),) + shapes[0][1:]

    def forward(self, xs, training=False):
        self._splits = [x.shape[1] for x in xs]
        return get_array_module(*xs).concatenate(xs, axis=1)

    def backward(self, gy):
        out, lo = [], 0
        for c in self._splits:
            out.append(gy[:, lo:lo + c])
            lo += c
        return out
