"""Dense targets end to end: metrics, schedules and clipping against PyTorch, early stopping and
best-epoch parameters, a resumed run equal to the uninterrupted one, job checks and predictions."""
import numpy as np
import pytest
import torch

from convcore import datasets, nn
from convcore.nn.metrics import dice_iou

SEG = {"graph": [
    {"name": "e", "type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same", "algorithm": "direct"},
    {"type": "relu"},
    {"type": "maxpool", "kernel_size": 2},
    {"name": "up", "type": "conv_transpose", "out_channels": 4, "kernel_size": 2, "stride": 2},
    {"name": "cat", "type": "concat", "inputs": ["up", "e"]},
    {"type": "dropout", "rate": 0.1},
    {"type": "conv", "out_channels": 4, "kernel_size": 1},
], "output": "logits"}
SEG["graph"][-1]["name"] = "logits"


@pytest.fixture(scope="module")
def seg_data():
    x, y, _ = datasets.load({"name": "segmentation3d", "n": 24, "size": 8, "seed": 1})
    return datasets.train_val_split(x, y, 0.25, seed=0)


def test_dice_and_iou_from_a_hand_counted_map():
    truth = np.array([[0, 1, 1, 2], [2, 2, 0, 0]])
    pred = np.array([[0, 1, 2, 2], [2, 0, 0, 1]])
    out = np.eye(3)[pred].transpose(0, 2, 1)   # logits whose argmax is pred: (n, C, d)
    sums = nn.metrics.MetricSums("segment")
    sums.add(out, truth)
    r = sums.result()
    # class 1: TP 1, FP 1, FN 1 -> dice 2/4, iou 1/3; class 2: TP 2, FP 1, FN 1 -> 4/6, 2/4; class 0: TP 2, FP 1, FN 1
    assert r["dice_per_class"] == pytest.approx([4 / 6, 0.5, 4 / 6])
    assert r["iou_per_class"] == pytest.approx([0.5, 1 / 3, 0.5])
    assert r["dice"] == pytest.approx((0.5 + 4 / 6) / 2) and r["accuracy"] == pytest.approx(5 / 8)
    assert list(dice_iou(np.zeros((2, 2), int))[0]) == [1.0, 1.0]   # absent everywhere: nothing missed


@pytest.mark.parametrize("spec, torch_sched", [
    ({"type": "step", "step_size": 2, "gamma": 0.5},
     lambda opt, steps: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** ((t // steps) // 2))),
    ({"type": "cosine", "min_lr": 0.01},
     lambda opt, steps: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5 * steps, eta_min=0.01)),
    ({"type": "cosine", "warmup_epochs": 1},
     lambda opt, steps: torch.optim.lr_scheduler.SequentialLR(opt, [
         torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / steps, end_factor=1.0, total_iters=steps - 1),
         torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4 * steps)], milestones=[steps])),
])
def test_schedules_match_torch(spec, torch_sched):
    steps, epochs, base = 3, 5, 0.1
    sched = nn.Schedule.from_spec(spec)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    ts = torch_sched(opt, steps)
    for t in range(steps * epochs):
        ours = sched.lr(base, t // steps, t % steps, steps, epochs)
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), (spec, t)
        opt.step()
        ts.step()


def test_clip_global_norm_matches_torch():
    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    total = torch.nn.utils.clip_grad_norm_(tensors, 1.5)
    clipped, norm = nn.options.clip_global_norm(grads, 1.5, np)
    assert norm == pytest.approx(float(total), rel=1e-12)
    for t, g in zip(tensors, clipped.values()):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)


def _run(seg_data, options, epochs, start=None, state=None, seed=0):
    xt, yt, xv, yv = seg_data
    model = nn.build_model(SEG, xt.shape[1:], seed=seed)
    opt = nn.make_optimizer({"type": "adam", "lr": 0.02})
    fit_state = nn.FitState()
    start_epoch = nn.set_training_state(model, opt, state, fit_state) if state is not None else 0
    checkpoints = {}

    def callback(event):
        if event["kind"] == "epoch":
            checkpoints[event["epoch"] + 1] = nn.io.arrays_from_bytes(nn.io.arrays_to_bytes(
                nn.get_training_state(model, opt, event["epoch"] + 1, fit_state)))

    history = nn.fit(model, xt, yt, opt, "dice", epochs, 6, 3, xv, yv, callback, start_epoch,
                     options=options, state=fit_state)
    return model, history, checkpoints, fit_state


def test_resume_with_schedule_early_stopping_and_best_repeats_the_run(seg_data):
    options = nn.TrainOptions.from_spec({"schedule": {"type": "cosine", "warmup_epochs": 1}, "clip_norm": 0.5,
                                         "monitor": "val_dice", "early_stopping": {"patience": 2,
                                                                                   "min_delta": 0.5},
                                         "keep_best": True})
    full, history, checkpoints, state = _run(seg_data, options, epochs=6)
    # min_delta 0.5 cannot be met after the first epoch: patience 2 stops after epoch 3 (index 2)
    assert [r["epoch"] for r in history] == [0, 1, 2] and history[-1]["early_stopped"]
    assert state.best_epoch == 0 and {"val_dice", "val_iou_per_class", "lr"} <= set(history[0])
    # lr of each epoch's last step: the warm-up reaches 0.02 at the end of epoch 0, then the cosine decays
    assert history[0]["lr"] == pytest.approx(0.02) and history[2]["lr"] < history[1]["lr"] < 0.02
    best = checkpoints[1]   # the best epoch's parameters are what the model holds at the end
    for k, v in full.parameters().items():
        np.testing.assert_array_equal(v, best["param/" + k], err_msg=k)
        np.testing.assert_array_equal(v, nn.final_model_arrays(checkpoints[3])["param/" + k])
    # Resume after epoch 2 from its checkpoint (new objects, different init): same end, same stop.
    resumed, rest, _, state2 = _run(seg_data, options, epochs=6, state=checkpoints[2], seed=9)
    assert [r["epoch"] for r in rest] == [2] and state2.early_stopped and state2.best_epoch == 0
    assert rest[0]["val_dice"] == history[2]["val_dice"]
    for k, v in full.parameters().items():
        np.testing.assert_array_equal(v, resumed.parameters()[k], err_msg=k)
    # Resuming from the final checkpoint of an early-stopped run trains nothing more.
    _, none, _, _ = _run(seg_data, options, epochs=6, state=checkpoints[3])
    assert none == []


def test_check_job_names_the_field_and_shapes():
    info = datasets.info({"name": "segmentation3d", "n": 20, "size": 8})
    ok = {"model": SEG, "loss": "dice", "optimizer": {"type": "adam", "lr": 0.01}, "monitor": "val_dice",
          "early_stopping": {"patience": 2}}
    plan = nn.check_job(ok, info)
    assert plan["task"] == "segment" and plan["output_shape"] == [4, 8, 8, 8]
    cases = [
        (dict(model={"graph": SEG["graph"][:-1]}), "model",
         r"node 5 \(dropout\) outputs shape \(8, 8, 8, 8\) but the targets are a label per voxel among 4 classes "
         r"over \(8, 8, 8\): the output must be \(4, 8, 8, 8\)"),
        (dict(loss={"type": "cross_entropy", "class_weights": [1, 2]}), "loss",
         r"class_weights needs one weight per class \(4\), got 2"),
        (dict(loss="hinge"), "loss", r"loss must be one of"),
        (dict(monitor="val_mae"), "monitor", r"'val_mae' is not measured for a label per voxel"),
        (dict(schedule={"type": "cosine", "gamma": 0.5}), "schedule", r"unknown option\(s\) \['gamma'\]"),
        (dict(clip_norm=0), "clip_norm", r"clip_norm: must be > 0"),
        (dict(early_stopping={"patience": 0}), "early_stopping", r"patience must be an int >= 1, got 0"),
        (dict(optimizer={"type": "adam", "lr": -1}), "optimizer", r"optimizer \(adam\): lr must be in"),
    ]
    for change, field, pattern in cases:
        with pytest.raises(nn.JobError, match=pattern) as err:
            nn.check_job({**ok, **change}, info)
        assert err.value.field == field
    field_info = datasets.info({"name": "field", "ndim": 3, "n": 8, "size": 8})
    with pytest.raises(nn.JobError, match=r"loss 'dice' needs class labels, but the targets are fields") as err:
        nn.check_job({"model": [{"type": "conv", "out_channels": 1, "kernel_size": 3, "padding": "same"}],
                      "loss": "dice"}, field_info)
    with pytest.raises(nn.JobError, match="needs validation data") as err:
        nn.check_job({**ok, "validation_split": 0.0}, info)
    with pytest.raises(nn.JobError, match=r"dataset: dataset 'field': ndim must be in 2..4, got 5") as err:
        nn.check_job({**ok, "dataset": {"name": "field", "ndim": 5}})
    assert err.value.field == "dataset"


def test_predict_outputs_dense(seg_data):
    xt, yt, xv, yv = seg_data
    model = nn.build_model(SEG, xt.shape[1:], seed=0)
    out = nn.predict_outputs(model, xv, loss="dice", task="segment")
    assert out["outputs"].shape == (len(xv), 4, 8, 8, 8) and out["classes"].shape == yv.shape
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(out["classes"], out["outputs"].argmax(axis=1))
    assert set(nn.predict_outputs(model, xv, loss="mse", task="regress")) == {"outputs"}


@pytest.mark.parametrize("name", ["unet-3d-segmentation", "resnet-4d-field", "digits-2d", "shapes-3d", "synthetic-4d"])
def test_example_jobs_check(name):
    import json
    import pathlib

    job = json.loads((pathlib.Path(__file__).resolve().parents[2] / "examples" / f"{name}.json").read_text())
    plan = nn.check_job(job)
    assert plan["task"] == {"unet-3d-segmentation": "segment", "resnet-4d-field": "regress"}.get(name, "classify")
