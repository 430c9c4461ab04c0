"""Sequential: a list of layers run in order, built from a JSON spec with shape inference.

    model = Sequential.from_spec(spec, input_shape=(1, 8, 8), seed=0)
    y = model.forward(x, training=True)      # x (n, 1, 8, 8) -> y (n, 10)
    model.backward(gy)                       # fills model.gradients()
Parameters are addressed as "<layer index>.<name>" (e.g. "0.W") in flat dicts that
share the layers' arrays, so an optimizer updating them in place updates the layers.
"""
from __future__ import annotations

import numpy as np

from ..geometry import SUPPORTED_DTYPES
from .spec import build_layers, infer_shapes


class Sequential:
    def __init__(self, layers: list, input_shape, seed: int = 0, dtype="float32", xp=np):
        self.layers = list(layers)
        self.dtype = np.dtype(dtype)
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.seed = int(seed)
        self.xp = xp
        self.shapes = infer_shapes(self.layers, input_shape)
        self.input_shape = tuple(int(d) for d in input_shape)
        self._build()

    @classmethod
    def from_spec(cls, spec, input_shape, seed: int = 0, dtype="float32", xp=np) -> "Sequential":
        return cls(build_layers(spec), input_shape, seed=seed, dtype=dtype, xp=xp)

    def _build(self):
        # One independent stream per layer: adding a layer does not change the others' init.
        streams = np.random.SeedSequence(self.seed).spawn(len(self.layers))
        shape = self.input_shape
        for i, (layer, ss) in enumerate(zip(self.layers, streams)):
            shape = layer.build(shape, np.random.default_rng(ss), self.dtype, self.xp)
            layer.input_grad = i > 0
        self.reseed(self.seed, 0)

    def reseed(self, seed: int, epoch: int) -> None:
        """Restart the layers' random streams (dropout) from (seed, epoch): a resumed run matches."""
        for i, layer in enumerate(self.layers):
            layer.reseed(np.random.SeedSequence([int(seed), int(epoch), i]))

    def spec(self) -> list:
        return [layer.spec() for layer in self.layers]

    def forward(self, x, training: bool = False):
        """x (n, *input_shape) -> output (n, *shapes[-1])."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x must have shape (n, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, gy) -> None:
        """Back-propagate gy = dL/d(output); each layer's ``grads`` is overwritten."""
        for layer in reversed(self.layers):
            gy = layer.backward(gy)

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
        rows += [f"{i:>3} {layer!r} -> {shape}" for i, (layer, shape) in enumerate(zip(self.layers, self.shapes))]
        return "\n".join(rows)
