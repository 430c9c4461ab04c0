"""Sequential: a list of layers run in order, built from a JSON spec with shape inference.

    model = Sequential.from_spec(spec, input_shape=(1, 8, 8), seed=0)
    y = model.forward(x, training=True)      # x (n, 1, 8, 8) -> y (n, 10)
    model.backward(gy)                       # fills model.gradients()
A Graph whose every node reads the one before; parameters are "<layer index>.<name>" (e.g. "0.W").
"""
from __future__ import annotations

import numpy as np

from .graph import Graph
from .spec import build_layers
from .topology import chain


class Sequential(Graph):
    def __init__(self, layers: list, input_shape, seed: int = 0, dtype="float32", xp=np):
        super().__init__(chain(list(layers)), input_shape, seed=seed, dtype=dtype, xp=xp)

    @classmethod
    def from_spec(cls, spec, input_shape, seed: int = 0, dtype="float32", xp=np) -> Graph:
        """A Sequential for a list spec; a graph spec ({"graph": ...}) gives the Graph it describes."""
        if isinstance(spec, dict):
            return Graph.from_spec(spec, input_shape, seed=seed, dtype=dtype, xp=xp)
        return cls(build_layers(spec), input_shape, seed=seed, dtype=dtype, xp=xp)


def build_model(spec, input_shape, seed: int = 0, dtype="float32", xp=np) -> Graph:
    """The network of a model spec: a Sequential for a list, a Graph for {"graph": ..., "output": ...}."""
    return Sequential.from_spec(spec, input_shape, seed=seed, dtype=dtype, xp=xp)
