"""JSON layer specs: building layers from dicts and checking a whole network without arrays.

A spec is a list of dicts, each with a "type" among ``LAYER_TYPES`` and that layer's
options, e.g. {"type": "conv", "out_channels": 8, "kernel_size": 3, "padding": "same"}.
Shapes here are per sample, without the batch axis: (c, d_1..d_N) or (features,).
"""
from __future__ import annotations

import math

import inspect

import numpy as np

from .layers import LAYER_TYPES


def construct(cls, options: dict, where: str):
    """``cls(**options)``, turning unknown options into a ValueError that lists the accepted ones."""
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; accepted: {accepted}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def build_layer(index: int, item):
    """One layer from its spec dict; errors name the layer index and type."""
    if not isinstance(item, dict):
        raise ValueError(f"layer {index}: a layer spec must be an object with a 'type', got {item!r}")
    kind = item.get("type")
    if kind not in LAYER_TYPES:
        raise ValueError(f"layer {index}: unknown layer type {kind!r}; known types: {sorted(LAYER_TYPES)}")
    options = {k: v for k, v in item.items() if k != "type"}
    return construct(LAYER_TYPES[kind], options, f"layer {index} ({kind})")


def build_layers(spec) -> list:
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError(f"model must be a non-empty list of layer specs, got {spec!r}")
    return [build_layer(i, item) for i, item in enumerate(spec)]


def check_input_shape(input_shape) -> tuple:
    """A per-sample input shape: a non-empty sequence of positive ints."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"input_shape must be a list of positive ints, got {input_shape!r}") from None
    if not shape or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1
                            for d in shape):
        raise ValueError(f"input_shape must be a non-empty list of positive ints, got {input_shape!r}")
    return tuple(int(d) for d in shape)


def infer_shapes(layers: list, input_shape) -> list:
    """Per-sample output shape of each layer; ValueError naming the layer index, type and shapes."""
    shape = check_input_shape(input_shape)
    shapes = []
    for i, layer in enumerate(layers):
        try:
            out = tuple(layer.output_shape(shape))
        except (TypeError, ValueError) as e:
            raise ValueError(f"layer {i} ({layer.type_name}) cannot take input shape {shape}: {e}") from None
        if not out or min(out) < 1:
            raise ValueError(f"layer {i} ({layer.type_name}) maps input shape {shape} to an empty output {out}")
        shapes.append(out)
        shape = out
    return shapes


def footprint(spec, input_shape, batch_size: int, itemsize: int = 4) -> dict:
    """Bytes a training step needs, estimated from the spec alone (no arrays allocated).

    Activations: every layer's output for one batch, kept for backward, plus as much
    again for their gradients. Parameters: values, gradients and two optimizer moments.
    Returns {"activations", "parameters", "total", "largest_layer"} (index, type, bytes).
    """
    layers = build_layers(spec)
    shapes = infer_shapes(layers, input_shape)
    ins = [check_input_shape(input_shape)] + shapes[:-1]
    sizes = [2 * batch_size * math.prod(out) * itemsize for out in shapes]
    params = sum(layer.param_count(shape) for layer, shape in zip(layers, ins)) * 4 * itemsize
    biggest = max(range(len(layers)), key=sizes.__getitem__)
    activations = sum(sizes) + 2 * batch_size * math.prod(ins[0]) * itemsize
    return {"activations": activations, "parameters": params, "total": activations + params,
            "largest_layer": {"index": biggest, "type": layers[biggest].type_name, "bytes": sizes[biggest],
                              "output_shape": list(shapes[biggest])}}


def validate_spec(spec, input_shape, n_classes: int | None = None) -> list:
    """Check a model spec against a per-sample input shape without allocating parameters.

    Returns the per-sample output shape of every layer. With ``n_classes`` the last
    output must be (n_classes,). Raises ValueError naming the layer, its type and the shapes.
    """
    layers = build_layers(spec)
    shapes = infer_shapes(layers, input_shape)
    if n_classes is not None and shapes[-1] != (int(n_classes),):
        i = len(layers) - 1
        raise ValueError(f"layer {i} ({layers[i].type_name}) outputs shape {shapes[-1]} but the dataset has "
                         f"{n_classes} classes: the last layer must output ({n_classes},), "
                         f"e.g. a dense layer with out_features={n_classes}")
    return shapes
