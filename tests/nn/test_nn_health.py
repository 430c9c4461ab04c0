"""Layer health (convcore.nn.health): the per-epoch norms against NumPy computed here from the
layers' own arrays, the exploding flag, and a non-finite gradient stopping training while the
loss is still finite."""
from __future__ import annotations

import numpy as np
import pytest

from convcore import nn
from convcore.nn.health import GROWTH_LIMIT, LayerHealth, NonFiniteGradient

SPEC = [{"type": "conv", "out_channels": 3, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
        {"type": "flatten"}, {"type": "dense", "out_features": 4}]
SHAPE = (2, 6, 6)


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *SHAPE)).astype(np.float32), rng.integers(0, 4, n)


def norm(arrays) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in arrays)))


def test_epoch_rows_match_numpy():
    model = nn.Sequential.from_spec(SPEC, SHAPE, seed=1)
    x, y = data()
    start = {i: [p.copy() for p in layer.params.values()] for i, layer in enumerate(model.layers) if layer.params}
    grad_norms = {i: [] for i in start}

    def record(event):  # after each step: the layers still hold that step's gradients
        if event["kind"] == "step":
            for i in start:
                grad_norms[i].append(norm(model.layers[i].grads.values()))

    history = nn.fit(model, x, y, nn.SGD(lr=0.1), epochs=1, batch_size=8, callback=record, layer_health=True)
    rows = history[0]["layers"]
    assert [(r["index"], r["type"]) for r in rows] == [(0, "conv"), (3, "dense")]
    for r in rows:
        i = r["index"]
        now = list(model.layers[i].params.values())
        assert r["weight_norm"] == pytest.approx(norm(now), rel=1e-6)
        assert r["grad_norm"] == pytest.approx(np.mean(grad_norms[i]), rel=1e-6)
        assert r["update_ratio"] == pytest.approx(norm([a - b for a, b in zip(now, start[i])]) / norm(start[i]),
                                                  rel=1e-5)
        assert r["growth"] == pytest.approx(norm(now) / norm(start[i]), rel=1e-6)
        assert r["exploding"] is False and r["reason"] is None


def test_weight_norm_growing_tenfold_is_flagged():
    model = nn.Sequential.from_spec(SPEC, SHAPE, seed=1)
    health = LayerHealth(model)
    health.start_epoch()
    for p in model.layers[3].params.values():
        p *= 2 * GROWTH_LIMIT  # what an exploding optimizer step does to the dense layer
    rows = {r["index"]: r for r in health.epoch_rows()}
    assert rows[3]["exploding"] and "grew" in rows[3]["reason"]
    assert rows[3]["growth"] == pytest.approx(2 * GROWTH_LIMIT, rel=1e-6)
    assert not rows[0]["exploding"]


def test_non_finite_gradient_names_the_layer():
    model = nn.Sequential.from_spec(SPEC, SHAPE, seed=1)
    health = LayerHealth(model)
    health.start_epoch()
    for layer in model.layers:
        layer.grads = {k: np.ones_like(v) for k, v in layer.params.items()}
    health.add_gradients()
    model.layers[0].grads["W"][0, 0, 0, 0] = np.inf
    with pytest.raises(NonFiniteGradient) as err:
        health.add_gradients()
    assert (err.value.layer, err.value.layer_type) == (0, "conv")


def test_fit_stops_at_a_non_finite_gradient_before_the_loss_is_nan():
    model = nn.Sequential.from_spec(SPEC, SHAPE, seed=1)
    x, y = data()
    losses = []

    def finite_loss_nan_gradient(out, yb):  # a loss whose value is fine but whose gradient is not
        losses.append(1.0)
        return 1.0, np.full_like(out, np.nan)

    with pytest.raises(nn.TrainingDiverged) as err:
        nn.fit(model, x, y, nn.SGD(lr=0.1), loss=finite_loss_nan_gradient, epochs=1, batch_size=8,
               layer_health=True)
    assert (err.value.epoch, err.value.step, err.value.layer, err.value.layer_type) == (0, 0, 3, "dense")
    assert "gradient" in str(err.value) and losses == [1.0]
    assert all(np.isfinite(p).all() for p in model.parameters().values()), "stopped before the update"
