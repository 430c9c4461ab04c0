"""Graph: a network of layers wired by a Topology (a list or a graph spec), with shape inference.

    model = Graph.from_spec({"graph": [...], "output": "out"}, input_shape=(1, 16, 16, 16), seed=0)
    y = model.forward(x, training=True)      # x (n, *input_shape) -> y (n, *shapes[output])
    model.backward(gy)                       # fills model.gradients(); a node read twice sums its gradients
Parameters are addressed as "<node index>.<name>" (e.g. "0.W") in flat dicts that share the
layers' arrays, so an optimizer updating them in place updates the layers.
"""
from __future__ import annotations

import numpy as np

from ..geometry import SUPPORTED_DTYPES
from .layers import Merge
from .spec import check_input_shape, infer_shapes, node_input_shapes, parse_model
from .topology import Topology


class Graph:
    def __init__(self, topology: Topology, input_shape, seed: int = 0, dtype="float32", xp=np):
        self.topology = topology
        self.layers = topology.layers
        self.dtype = np.dtype(dtype)
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.seed = int(seed)
        self.xp = xp
        self.input_shape = check_input_shape(input_shape)
        self.shapes = infer_shapes(topology, self.input_shape)
        self.output_shape = self.shapes[topology.output]
        # After node i runs, the outputs whose last reader is i can be dropped.
        last_use = {}
        for i, src in enumerate(topology.sources):
            for s in src:
                last_use[s] = i
        self._free_after = [[s for s, j in last_use.items() if j == i and s != topology.output]
                            for i in range(len(self.layers))]
        self._build()

    @classmethod
    def from_spec(cls, spec, input_shape, seed: int = 0, dtype="float32", xp=np) -> "Graph":
        return cls(parse_model(spec), input_shape, seed=seed, dtype=dtype, xp=xp)

    def _build(self):
        # One independent stream per node: adding a node does not change the others' init.
        streams = np.random.SeedSequence(self.seed).spawn(len(self.layers))
        for i, (layer, ss) in enumerate(zip(self.layers, streams)):
            layer.build(node_input_shapes(self.topology, self.shapes, self.input_shape, i),
                        np.random.default_rng(ss), self.dtype, self.xp)
            layer.input_grad = any(s >= 0 for s in self.topology.sources[i])  # nothing upstream of x
        self.reseed(self.seed, 0)

    def reseed(self, seed: int, epoch: int) -> None:
        """Restart the layers' random streams (dropout) from (seed, epoch): a resumed run matches."""
        for i, layer in enumerate(self.layers):
            layer.reseed(np.random.SeedSequence([int(seed), int(epoch), i]))

    def spec(self):
        return self.topology.spec()

    def _check_input(self, x):
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x must have shape (n, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")

    def trace(self, x, training: bool = False):
        """Yield (node index, layer, output) in the order the nodes run."""
        self._check_input(x)
        outs = {-1: x}
        for i, (layer, src) in enumerate(zip(self.layers, self.topology.sources)):
            ins = [outs[s] for s in src]
            outs[i] = layer.forward(ins if isinstance(layer, Merge) else ins[0], training)
            for s in self._free_after[i]:
                outs.pop(s, None)
            yield i, layer, outs[i]

    def forward(self, x, training: bool = False):
        """x (n, *input_shape) -> the output node's (n, *output_shape)."""
        out = None
        for i, _, y in self.trace(x, training):
            if i == self.topology.output:
                out = y
        return out

    def backward(self, gy) -> None:
        """Back-propagate gy = dL/d(output); each layer's ``grads`` is overwritten."""
        pending = {self.topology.output: gy}
        for i in range(self.topology.output, -1, -1):
            g = pending.pop(i, None)
            if g is None:
                continue
            layer, src = self.layers[i], self.topology.sources[i]
            gin = layer.backward(g)
            for s, gs in zip(src, gin if isinstance(layer, Merge) else [gin]):
                if s >= 0 and gs is not None:
                    pending[s] = gs if s not in pending else pending[s] + gs   # a branch point sums

    def predict(self, x, batch_size: int = 256):
        """Outputs in evaluation mode, in batches."""
        xp = self.xp
        parts = [self.forward(xp.asarray(x[i:i + batch_size], dtype=self.dtype))
                 for i in range(0, len(x), batch_size)]
        return xp.concatenate(parts, axis=0)

    def _flat(self, attr: str) -> dict:
        return {f"{i}.{name}": a for i, layer in enumerate(self.layers) for name, a in getattr(layer, attr).items()}

    def parameters(self) -> dict:
        return self._flat("params")

    def gradients(self) -> dict:
        return self._flat("grads")

    def buffers(self) -> dict:
        return self._flat("buffers")

    def load_arrays(self, params: dict, buffers: dict | None = None) -> None:
        """Copy arrays (NumPy or CuPy) into the layers, checking names and shapes."""
        for attr, given in (("params", params), ("buffers", buffers or {})):
            own = self._flat(attr)
            missing, extra = sorted(set(own) - set(given)), sorted(set(given) - set(own))
            if (attr == "params" or given) and (missing or extra):
                raise ValueError(f"{attr} do not match the model: missing {missing}, unexpected {extra}")
            for key, a in given.items():
                if tuple(a.shape) != tuple(own[key].shape):
                    raise ValueError(f"{attr[:-1]} {key} must have shape {tuple(own[key].shape)}, got {tuple(a.shape)}")
                i, name = key.split(".", 1)
                getattr(self.layers[int(i)], attr)[name] = self.xp.asarray(a, dtype=self.dtype).copy()

    def describe(self) -> str:
        rows = [f"input {self.input_shape}"]
        rows += [f"{i:>3} {self.topology.where(i)} <- "
                 f"{', '.join(self.topology.source_name(s) for s in self.topology.sources[i])}: {layer!r} -> {shape}"
                 for i, (layer, shape) in enumerate(zip(self.layers, self.shapes))]
        return "\n".join(rows)

