"""JSON model specs: building layers from dicts and checking a whole network without arrays.

A spec is a list of layer dicts, or a graph {"graph": [...], "output": name} (topology.py). Each
layer dict has a "type" among ``LAYER_TYPES`` and that layer's options, e.g.
{"type": "conv", "out_channels": 8, "kernel_size": 3, "padding": "same"}.
Shapes here are per sample, without the batch axis: (c, d_1..d_N) or (features,).
"""
from __future__ import annotations

import inspect
import math

import numpy as np

from .layers import LAYER_TYPES, Merge
from .topology import Topology, chain, parse_graph


def construct(cls, options: dict, where: str):
    """``cls(**options)``, turning unknown options into a ValueError that lists the accepted ones."""
    params = {name: p for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"}
    accepted = list(params)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; accepted: {accepted}")
    missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in options
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:   # named as the job's options, not as Python's "__init__() missing 1 required positional argument"
        raise ValueError(f"{where}: missing required option(s) {missing}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def make_layer(where: str, item):
    """One layer from its spec dict; errors start with ``where`` (e.g. 'layer 3' or "node 3 'up1'")."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: a layer spec must be an object with a 'type', got {item!r}")
    kind = item.get("type")
    if not isinstance(kind, str) or kind not in LAYER_TYPES:   # a list or dict is not even a dict key
        raise ValueError(f"{where.split(' (')[0]}: unknown layer type {kind!r}; known types: {sorted(LAYER_TYPES)}")
    options = {k: v for k, v in item.items() if k != "type"}
    return construct(LAYER_TYPES[kind], options, where)


def build_layer(index: int, item):
    """One layer of a sequential spec; errors name the layer index and type."""
    kind = item.get("type") if isinstance(item, dict) else None
    return make_layer(f"layer {index} ({kind})" if isinstance(item, dict) else f"layer {index}", item)


def build_layers(spec) -> list:
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError(f"model must be a non-empty list of layer specs, got {spec!r}")
    layers = [build_layer(i, item) for i, item in enumerate(spec)]
    merges = [i for i, layer in enumerate(layers) if isinstance(layer, Merge)]
    if merges:
        raise ValueError(f"layer {merges[0]} ({layers[merges[0]].type_name}) joins several inputs: write the "
                         'model as a graph, {"graph": [...], "output": name}, with "inputs" on that node')
    return layers


def parse_model(spec) -> Topology:
    """A model spec (list or graph) -> its Topology of freshly built layers."""
    if isinstance(spec, dict):
        return parse_graph(spec, make_layer)
    return chain(build_layers(spec))


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


def node_input_shapes(topo: Topology, shapes: list, input_shape: tuple, i: int):
    """The per-sample shape node i reads (a list of shapes for merges)."""
    ins = [input_shape if s < 0 else shapes[s] for s in topo.sources[i]]
    return ins if isinstance(topo.layers[i], Merge) else ins[0]


def infer_shapes(topology, input_shape) -> list:
    """Per-sample output shape of each node; ValueError naming the node, its type and the shapes.

    ``topology``: a Topology, or a list of built layers (a sequential network).
    """
    topo = topology if isinstance(topology, Topology) else chain(topology)
    shape = check_input_shape(input_shape)
    shapes = []
    for i, layer in enumerate(topo.layers):
        ins = node_input_shapes(topo, shapes, shape, i)
        try:
            out = tuple(layer.output_shape(ins))
        except (TypeError, ValueError) as e:
            if isinstance(layer, Merge):
                listing = ", ".join(f"{tuple(s)} from '{topo.source_name(src)}'"
                                    for s, src in zip(ins, topo.sources[i]))
                raise ValueError(f"{topo.where(i)} cannot take input shapes [{listing}]: {e}") from None
            raise ValueError(f"{topo.where(i)} cannot take input shape {ins}: {e}") from None
        if not out or min(out) < 1:
            raise ValueError(f"{topo.where(i)} maps input shape {ins} to an empty output {out}")
        shapes.append(out)
    return shapes


def footprint(spec, input_shape, batch_size: int, itemsize: int = 4) -> dict:
    """Bytes a training step needs, estimated from the spec alone (no arrays allocated).

    Activations: every node's output for one batch, kept for backward, plus as much
    again for their gradients. Parameters: values, gradients and two optimizer moments.
    Returns {"activations", "parameters", "total", "largest_layer"} (index, type, bytes).
    """
    topo = parse_model(spec)
    shape = check_input_shape(input_shape)
    shapes = infer_shapes(topo, shape)
    sizes = [2 * batch_size * math.prod(out) * itemsize for out in shapes]
    params = sum(layer.param_count(node_input_shapes(topo, shapes, shape, i))
                 for i, layer in enumerate(topo.layers)) * 4 * itemsize
    biggest = max(range(len(topo.layers)), key=sizes.__getitem__)
    activations = sum(sizes) + 2 * batch_size * math.prod(shape) * itemsize
    return {"activations": activations, "parameters": params, "total": activations + params,
            "largest_layer": {"index": biggest, "type": topo.layers[biggest].type_name, "bytes": sizes[biggest],
                              "output_shape": list(shapes[biggest])}}


def validate_spec(spec, input_shape, n_classes: int | None = None) -> list:
    """Check a model spec against a per-sample input shape without allocating parameters.

    Returns the per-sample output shape of every node. With ``n_classes`` the network's
    output must be (n_classes,). Raises ValueError naming the node, its type and the shapes.
    """
    topo = parse_model(spec)
    shapes = infer_shapes(topo, input_shape)
    out = shapes[topo.output]
    if n_classes is not None and out != (int(n_classes),):
        raise ValueError(f"{topo.where(topo.output)} outputs shape {out} but the dataset has "
                         f"{n_classes} classes: the last layer must output ({n_classes},), "
                         f"e.g. a dense layer with out_features={n_classes}")
    return shapes
