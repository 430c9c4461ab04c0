"""Saving/loading models and training state (.npz, no pickle), resuming, stopping and divergence."""
import io

import numpy as np
import pytest

from convcore import datasets, nn

SPEC = [
    {"type": "conv", "out_channels": 6, "kernel_size": 3, "padding": "same", "algorithm": "direct"},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool", "kernel_size": 2},
    {"type": "dropout", "rate": 0.2},
    {"type": "flatten"},
    {"type": "dense", "out_features": 10},
]


@pytest.fixture(scope="module")
def digits():
    x, y, _ = datasets.load({"name": "digits"})
    return datasets.train_val_split(x[:600], y[:600], 0.25, seed=0)


def fresh(seed=0):
    return nn.Sequential.from_spec(SPEC, (1, 8, 8), seed=seed), nn.Adam(lr=0.01)


def test_save_load_round_trip(tmp_path, digits):
    xt, yt, xv, yv = digits
    model, opt = fresh()
    nn.fit(model, xt, yt, opt, epochs=1, batch_size=64)
    path = tmp_path / "model.npz"
    nn.io.save(path, model)
    with np.load(path, allow_pickle=False) as npz:  # readable without pickle
        assert "param/0.W" in npz.files and "buffer/1.running_var" in npz.files and npz["spec"].dtype.kind == "U"
    loaded = nn.io.load(path)
    assert loaded.spec() == model.spec() and loaded.input_shape == (1, 8, 8)
    np.testing.assert_array_equal(loaded.predict(xv), model.predict(xv))
    # The running statistics travel too: without them evaluation outputs would differ.
    assert loaded.buffers()["1.running_mean"].any()


def test_load_rejects_files_without_spec():
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros(3))
    buf.seek(0)
    with pytest.raises(ValueError, match="not a convcore.nn model file: no 'spec' entry among \\['x'\\]"):
        nn.io.load(buf)


def test_load_arrays_checks_shapes():
    model, _ = fresh()
    params = dict(model.parameters())
    params["6.W"] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"param 6.W must have shape \(10, 96\), got \(3, 3\)"):
        model.load_arrays(params)


def test_seeded_runs_are_reproducible_and_resume_matches(digits):
    xt, yt, xv, yv = digits
    a, opt_a = fresh()
    nn.fit(a, xt, yt, opt_a, epochs=2, batch_size=32, seed=5)
    b, opt_b = fresh()
    nn.fit(b, xt, yt, opt_b, epochs=2, batch_size=32, seed=5)
    for k, v in a.parameters().items():
        np.testing.assert_array_equal(v, b.parameters()[k])
    # Stop after epoch 0, checkpoint through bytes, restore into new objects, run epoch 1.
    c, opt_c = fresh()
    nn.fit(c, xt, yt, opt_c, epochs=1, batch_size=32, seed=5)
    blob = nn.io.arrays_to_bytes(nn.get_training_state(c, opt_c, epoch=1))
    d, opt_d = fresh(seed=99)  # different init: everything must come from the checkpoint
    start = nn.set_training_state(d, opt_d, nn.io.arrays_from_bytes(blob))
    assert start == 1
    nn.fit(d, xt, yt, opt_d, epochs=2, batch_size=32, seed=5, start_epoch=start)
    for k, v in a.parameters().items():
        np.testing.assert_array_equal(v, d.parameters()[k], err_msg=k)
    np.testing.assert_array_equal(a.buffers()["1.running_var"], d.buffers()["1.running_var"])


def test_callback_stops_within_a_step_and_reports_progress(digits):
    xt, yt, xv, yv = digits
    model, opt = fresh()
    events = []

    def callback(event):
        events.append(event)
        return event["kind"] == "step" and event["step"] == 3

    history = nn.fit(model, xt, yt, opt, epochs=5, batch_size=50, x_val=xv, y_val=yv, callback=callback)
    assert [e["step"] for e in events] == [1, 2, 3] and events[0]["steps"] == 9
    assert len(history) == 1 and opt.steps == 3


def test_training_learns_digits(digits):
    xt, yt, xv, yv = digits
    model, opt = fresh()
    history = nn.fit(model, xt, yt, opt, epochs=4, batch_size=32, x_val=xv, y_val=yv)
    assert history[-1]["val_accuracy"] > 0.85 and history[-1]["train_loss"] < history[0]["train_loss"]


def test_divergence_names_the_layer(digits):
    xt, yt, _, _ = digits
    model, opt = fresh()
    model.layers[6].params["W"][0, 0] = np.nan
    with pytest.raises(nn.TrainingDiverged, match=r"epoch 0, step 0 \(counting from 0\): non-finite parameter W in layer 6 "
                                               r"\(dense\)") as e:
        nn.train_epoch(model, xt, yt, opt, batch_size=32)
    assert (e.value.epoch, e.value.layer, e.value.layer_type) == (0, 6, "dense")


def test_evaluation_batches_hold_no_more_than_a_training_step():
    """fit evaluates, and a service predicts, in batches whose activations stay within a training
    step's (activations and their gradients, which the service checks before queueing) or 64 MiB: a
    fixed 256 needed 128x the checked footprint for a batch_size 1 job (a probe measured 1 GiB)."""
    big = nn.build_model([{"type": "upsample", "scale": 128}, {"type": "global_avgpool"},
                          {"type": "dense", "out_features": 2}], (1, 8, 8))
    per_sample = 4 * (64 + 128 * 128 * 64 + 1 + 2)   # input, upsampled map, pooled, logits (float32)
    for batch_size in (1, 4, 16):
        b = nn.evaluation_batch(big, batch_size)
        assert b * per_sample <= max(2 * batch_size * per_sample, nn.train.EVAL_FLOOR_BYTES)
        assert (b + 1) * per_sample > max(2 * batch_size * per_sample, nn.train.EVAL_FLOOR_BYTES) or b == 256
    small = nn.build_model([{"type": "flatten"}, {"type": "dense", "out_features": 10}], (1, 8, 8))
    assert nn.evaluation_batch(small, 1) == 256


def test_fit_validates_in_bounded_batches(digits, monkeypatch):
    xt, yt, xv, yv = digits
    model = nn.build_model([{"type": "flatten"}, {"type": "dense", "out_features": 10}], (1, 8, 8))
    seen = []
    real = nn.train.evaluate
    monkeypatch.setattr(nn.train, "evaluate", lambda *a, **k: seen.append(a[4]) or real(*a, **k))
    monkeypatch.setattr(nn.train, "EVAL_FLOOR_BYTES", 0)   # so the training batch alone sets the bound
    nn.fit(model, xt, yt, nn.make_optimizer({"type": "sgd", "lr": 0.1}), epochs=1, batch_size=8,
           x_val=xv, y_val=yv)
    assert seen == [16]   # twice the training batch: a step's activations and their gradients
