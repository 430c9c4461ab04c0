"""Layer health: per epoch, each parametrised layer's weight norm, gradient norm and update size.

A layer whose weights explode shows it here epochs before the loss turns NaN: its weight norm
grows by orders of magnitude from one epoch to the next. ``LayerHealth`` watches every step's
gradients too, and a non-finite gradient stops training at once (``TrainingDiverged`` naming the
layer) while the weights, and so the loss, are still finite.

Per layer and epoch (``epoch_rows``):
    weight_norm   L2 norm of all the layer's parameters at the end of the epoch
    grad_norm     mean over the epoch's steps of the L2 norm of the layer's gradients
    update_ratio  ||params_end - params_start|| / ||params_start|| over the epoch
    growth        weight_norm / the weight norm at the start of the epoch
    exploding     growth > GROWTH_LIMIT or a non-finite weight or gradient; ``reason`` says which
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import to_host

GROWTH_LIMIT = 10.0  # weight norm growth within one epoch that counts as exploding


class NonFiniteGradient(Exception):
    """A layer's gradient holds inf or NaN; ``layer`` (index) and ``layer_type`` name it."""

    def __init__(self, layer: int, layer_type: str):
        super().__init__(f"non-finite gradient in layer {layer} ({layer_type})")
        self.layer, self.layer_type = layer, layer_type


class LayerHealth:
    """Accumulates one epoch's statistics of ``model``'s parametrised layers (any ``xp``).

    Call ``start_epoch()``, then ``add_gradients()`` after each backward pass (before the
    optimizer step), then ``epoch_rows()``. One host transfer per step: the squared gradient
    norms of all layers at once.
    """

    def __init__(self, model):
        self.model, self.xp = model, model.xp
        self.layers = [(i, layer.type_name) for i, layer in enumerate(model.layers) if layer.params]

    def _layer_params(self, i: int) -> list:
        return list(self.model.layers[i].params.values())

    def _sq_norms(self, arrays_per_layer) -> np.ndarray:
        """Squared L2 norm of each layer's arrays, as one host array (layers,)."""
        xp = self.xp
        if not arrays_per_layer:
            return np.zeros(0)
        sums = [sum(xp.vdot(a.ravel(), a.ravel()).real for a in arrays) for arrays in arrays_per_layer]
        return to_host(xp.stack([xp.asarray(s, dtype=xp.float64) for s in sums]))

    def start_epoch(self) -> None:
        self.start = [[p.copy() for p in self._layer_params(i)] for i, _ in self.layers]
        self.start_sq = self._sq_norms(self.start)
        self.grad_sum = np.zeros(len(self.layers))
        self.steps = 0

    def add_gradients(self) -> None:
        """Add this step's gradient norms. NonFiniteGradient names the layer nearest the loss whose
        gradient holds inf/NaN: backpropagation carries it from there to every layer before."""
        grads = [list(self.model.layers[i].grads.values()) for i, _ in self.layers]
        sq = self._sq_norms(grads)
        for (i, kind), value in reversed(list(zip(self.layers, sq))):
            if not math.isfinite(value):
                raise NonFiniteGradient(i, kind)
        self.grad_sum += np.sqrt(sq)
        self.steps += 1

    def epoch_rows(self) -> list[dict]:
        """One dict per parametrised layer (see the module docstring), JSON-ready floats."""
        now = [self._layer_params(i) for i, _ in self.layers]
        end_sq = self._sq_norms(now)
        moved_sq = self._sq_norms([[p - s for p, s in zip(ps, ss)] for ps, ss in zip(now, self.start)])
        rows = []
        for k, (i, kind) in enumerate(self.layers):
            w0, w1 = math.sqrt(self.start_sq[k]), math.sqrt(end_sq[k]) if math.isfinite(end_sq[k]) else math.inf
            growth = w1 / w0 if w0 > 0 else (math.inf if w1 > 0 else 1.0)
            reason = None
            if not math.isfinite(w1):
                reason = "non-finite weights"
            elif growth > GROWTH_LIMIT:
                reason = f"weight norm grew {growth:.3g}x in one epoch"
            rows.append({"index": i, "type": kind, "weight_norm": _finite(w1),
                         "grad_norm": _finite(self.grad_sum[k] / max(self.steps, 1)),
                         "update_ratio": _finite(math.sqrt(moved_sq[k]) / w0) if w0 > 0 else None,
                         "growth": _finite(growth), "exploding": reason is not None, "reason": reason})
        return rows


def _finite(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None
