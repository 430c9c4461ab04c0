"""Dense targets through the service (issue 13): graph models with skip connections, per-voxel labels
(segmentation) and fields, the new losses and training options, uploads with dense y, dense
predictions in JSON and binary, and resuming a dense job with its best-epoch bookkeeping.

References: the same job run in-process with convcore.nn (seeded CPU training repeats bit for bit),
the downloaded model file, and NumPy (softmax, argmax)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from service_helpers import array, tensor
from support.stack import tiny_job, wait_job

from app.client import Client
from convcore import datasets, nn
from worker import checkpoints, tasks

OCTET = {"Content-Type": "application/octet-stream"}   # uploads are raw .npz bytes (or multipart)

# A two-level U-Net in miniature: pooled branch, transposed convolution back up, concatenated skip.
UNET = {"graph": [
    {"name": "skip", "type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same"},
    {"type": "relu"},
    {"type": "maxpool", "kernel_size": 2},
    {"type": "conv", "out_channels": 8, "kernel_size": 3, "padding": "same"},
    {"type": "relu"},
    {"name": "up", "type": "conv_transpose", "out_channels": 4, "kernel_size": 2, "stride": 2},
    {"name": "cat", "type": "concat", "inputs": ["up", "skip"]},
    {"name": "logits", "type": "conv", "out_channels": 4, "kernel_size": 1}], "output": "logits"}
SEG_JOB = {"model": UNET, "dataset": {"name": "segmentation3d", "n": 16, "size": 8, "seed": 1},
           "loss": "cross_entropy", "optimizer": {"type": "adam", "lr": 0.05}, "monitor": "val_dice",
           "keep_best": True, "schedule": {"type": "cosine", "warmup_epochs": 1}, "clip_norm": 5.0,
           "epochs": 2, "batch_size": 4, "seed": 0, "validation_split": 0.25}
# A residual step on a 2-D field: next = x + change(x).
RESNET = {"graph": [
    {"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same", "padding_mode": "circular"},
    {"type": "relu"},
    {"name": "change", "type": "conv", "out_channels": 1, "kernel_size": 1, "init": "zeros"},
    {"name": "next", "type": "add", "inputs": ["x", "change"]}], "output": "next"}
FIELD_JOB = {"model": RESNET, "dataset": {"name": "field", "ndim": 2, "n": 16, "size": 8, "seed": 0}, "loss": "l1",
             "optimizer": {"type": "adam", "lr": 0.01}, "epochs": 2, "batch_size": 4, "seed": 0,
             "validation_split": 0.25}


def library_run(job: dict, epochs: int | None = None):
    """The job in-process with convcore.nn: (model, optimizer, FitState, history)."""
    plan = nn.check_job(job)
    x, y, _ = datasets.load(job["dataset"])
    xt, yt, xv, yv = datasets.train_val_split(x, y, job["validation_split"], seed=job["seed"])
    model = nn.build_model(job["model"], x.shape[1:], seed=job["seed"])
    optimizer, state = nn.make_optimizer(job["optimizer"]), nn.FitState()
    history = nn.fit(model, xt, yt, optimizer, job["loss"], epochs or job["epochs"], job["batch_size"], job["seed"],
                     xv, yv, options=plan["options"], state=state)
    return model, optimizer, state, history


def served_model(client, job_id: str):
    r = client.get(f"/v1/jobs/{job_id}/model")
    assert r.status_code == 200, r.text
    return nn.io.load(io.BytesIO(r.content)), json.loads(str(np.load(io.BytesIO(r.content))["job"]))


@pytest.fixture(scope="module")
def segmented(client):
    """A finished segmentation job: (job view, the SSE events' views)."""
    r = client.post("/v1/train", json=SEG_JOB)
    assert r.status_code == 202, r.text
    views = []
    with client.stream("GET", f"/v1/jobs/{r.json()['id']}/events") as s:
        views = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
    return client.get(f"/v1/jobs/{r.json()['id']}").json(), views


def test_segmentation_graph_job_reports_dice_and_serves_the_best_epoch(segmented, client):
    job, views = segmented
    assert job["state"] == "succeeded", job
    hist = job["result"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    for h in hist:
        assert 0 <= h["val_dice"] <= 1 and 0 <= h["val_iou"] <= h["val_dice"]
        assert len(h["val_dice_per_class"]) == 4 and len(h["val_iou_per_class"]) == 4
        assert h["lr"] > 0 and h["best_epoch"] in (1, 2)
    assert views[-1]["state"] == "succeeded" and views[-1]["result"]["history"] == hist  # the SSE end event
    assert any(v["progress"].get("latest", {}) and "val_dice" in v["progress"]["latest"] for v in views)
    # The uninterrupted library run: same metrics, and (keep_best) the model file holds its best epoch.
    model, _, state, history = library_run(SEG_JOB)
    assert [h["val_dice"] for h in hist] == [h["val_dice"] for h in history]
    assert [h["val_dice_per_class"] for h in hist] == [h["val_dice_per_class"] for h in history]
    result = job["result"]
    assert result["best_val_dice"] == max(h["val_dice"] for h in history)
    assert result["monitor"] == "val_dice" and result["best_epoch"] == state.best_epoch + 1
    assert result["best_value"] == state.best_value
    served, meta = served_model(client, job["id"])
    assert meta["best_epoch"] == state.best_epoch + 1 and meta["epochs_trained"] == 2
    for k, v in model.parameters().items():  # fit leaves the best epoch's parameters in the model
        np.testing.assert_array_equal(served.parameters()[k], v, err_msg=k)


def test_segmentation_predict_returns_the_class_map_in_json_and_binary(segmented, client, api):
    job, _ = segmented
    served, _ = served_model(client, job["id"])
    x = datasets.load(SEG_JOB["dataset"])[0][:3]
    expected = served.predict(x)
    r = client.post(f"/v1/models/{job['id']}/predict", json={"x": tensor(x)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "segment" and body.get("predictions") is None
    assert body["classes"]["datatype"] == "INT64" and body["classes"]["shape"] == [3, 8, 8, 8]
    outputs = array(body["outputs"])
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    classes = np.asarray(body["classes"]["data"]).reshape(body["classes"]["shape"])
    np.testing.assert_array_equal(classes, outputs.argmax(axis=1))
    e = np.exp(expected - expected.max(axis=1, keepdims=True))
    np.testing.assert_allclose(array(body["probabilities"]), e / e.sum(axis=1, keepdims=True), atol=1e-5)
    with Client(api.url) as c:
        got = c.predict(job["id"], x, binary=True)
    assert got["classes"].dtype == np.int64 and got["outputs"].dtype == np.float32
    np.testing.assert_array_equal(got["classes"], classes)
    np.testing.assert_array_equal(got["outputs"], outputs)
    np.testing.assert_array_equal(got["probabilities"], array(body["probabilities"]))


def test_field_job_reports_mae_and_predicts_the_field(client):
    r = client.post("/v1/train", json=FIELD_JOB)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded", job
    hist = job["result"]["history"]
    _, _, _, history = library_run(FIELD_JOB)
    assert [h["val_mae"] for h in hist] == [h["val_mae"] for h in history]
    assert all(h["train_mae"] > 0 and h["train_accuracy"] is None and "val_dice" not in h for h in hist)
    assert job["result"]["best_val_mae"] == min(h["val_mae"] for h in history)
    served, _ = served_model(client, job["id"])
    x = datasets.load(FIELD_JOB["dataset"])[0][:2]
    body = client.post(f"/v1/models/{job['id']}/predict", json={"x": tensor(x)}).json()
    assert body["task"] == "regress" and body.get("classes") is None and body.get("probabilities") is None
    assert body["outputs"]["shape"] == [2, 1, 8, 8]
    np.testing.assert_allclose(array(body["outputs"]), served.predict(x), rtol=1e-5, atol=1e-6)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_uploads_with_dense_targets(train_api):
    c, rng = train_api.client, np.random.default_rng(0)
    x = rng.standard_normal((12, 1, 6, 6)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64) + (x[:, 0] > 1)  # a class per voxel, 3 classes
    r = c.post("/v1/datasets", content=_npz(x=x, y=labels), headers=OCTET)
    assert r.status_code == 201, r.text
    info = r.json()
    assert (info["target_shape"], info["task"], info["n_classes"]) == ([6, 6], "segment", 3)
    assert c.get(f"/v1/datasets/{info['id']}").json()["target_shape"] == [6, 6]
    net = [{"type": "conv", "out_channels": 3, "kernel_size": 3, "padding": "same"}]
    job = c.post("/v1/train", json=tiny_job(model=net, dataset={"id": info["id"]}, loss="dice", epochs=1,
                                            batch_size=4, validation_split=0.25))
    assert job.status_code == 202, job.text
    done = wait_job(c, job.json()["id"])
    assert done["state"] == "succeeded", done
    assert 0 <= done["result"]["history"][0]["val_dice"] <= 1 and done["result"]["val_samples"] == 3

    fields = c.post("/v1/datasets", content=_npz(x=x, y=np.stack([x[:, 0], -x[:, 0]], axis=1)), headers=OCTET)
    assert fields.status_code == 201, fields.text
    assert (fields.json()["target_shape"], fields.json()["task"], fields.json()["n_classes"]) == ([2, 6, 6],
                                                                                                 "regress", 0)
    r = c.post("/v1/train", json=tiny_job(model=net, dataset={"id": fields.json()["id"]}, loss="mse"))
    assert r.status_code == 422 and r.json()["field"] == "model" and "(2, 6, 6)" in r.json()["detail"]
    r = c.post("/v1/datasets", content=_npz(x=x, y=labels[:, :5, :5]), headers=OCTET)
    assert r.status_code == 422 and "(12, 5, 5)" in r.json()["detail"], r.text


def _seg(**changes) -> dict:
    return {**SEG_JOB, **changes}


def _graph(*edits) -> dict:
    nodes = [dict(n) for n in UNET["graph"]]
    for index, change in edits:
        nodes[index].update(change)
    return {"graph": nodes, "output": "logits"}


@pytest.mark.parametrize("job, field, words", [
    # the skip taken after pooling: (4, 4, 4, 4) does not concatenate with (4, 8, 8, 8)
    (_seg(model=_graph((2, {"name": "pooled"}), (6, {"inputs": ["up", "pooled"]}))), "model",
     ["node 6 'cat' (concat)", "(4, 8, 8, 8) from 'up'", "(4, 4, 4, 4) from 'pooled'", "spatial size"]),
    (_seg(model=_graph((6, {"inputs": ["up", "nowhere"]}))), "model", ["node 6 'cat'", "'nowhere'"]),
    (_seg(model=_graph((7, {"out_channels": 3}))), "model", ["node 7 'logits' (conv)", "(3, 8, 8, 8)",
                                                               "a label per voxel", "(4, 8, 8, 8)"]),
    (tiny_job(loss="dice"), "loss", ["'dice'", "per-voxel labels", "one label per sample"]),
    (_seg(loss={"type": "cross_entropy", "class_weights": [1, 2]}), "loss", ["class_weights", "4"]),
    (_seg(monitor="val_mae"), "monitor", ["val_mae", "val_dice"]),
    (_seg(validation_split=0.0), "monitor", ["validation"]),
    (_seg(schedule={"type": "cosine", "gamma": 0.5}), "schedule", ["gamma"]),
    (_seg(clip_norm=-1), "clip_norm", ["clip_norm", "-1"]),
    (_seg(early_stopping={"patience": 0}), "early_stopping", ["patience"]),
    (_seg(keep_best="yes"), "keep_best", ["keep_best"]),
    ({**FIELD_JOB, "loss": "dice"}, "loss", ["dice", "fields"]),
], ids=["skip-after-pool", "unknown-input", "output-channels", "dice-on-classes",
        "class-weights", "monitor-for-fields", "monitor-without-validation", "schedule-option", "clip-norm",
        "patience", "keep-best-type", "dice-on-fields"])
def test_impossible_dense_jobs_are_422_naming_the_field_and_node(app_client, job, field, words):
    r = app_client.post("/v1/train", json=job)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.json()
    for word in words:
        assert word in r.json()["detail"], (word, r.json()["detail"])


def test_resumed_dense_job_keeps_its_best_epoch_and_repeats_the_uninterrupted_run(worker_runtime):
    """A stored epoch-1 checkpoint (as a killed worker leaves it) of a job whose best val_dice is epoch 1:
    the resumed run must carry the FitState over, or the model file would be a later epoch's."""
    store = worker_runtime
    job_spec = _seg(epochs=3, optimizer={"type": "adam", "lr": 0.02}, schedule=None, clip_norm=None)
    model, _, state, history = library_run(job_spec)
    assert state.best_epoch == 0  # the premise: the best epoch comes before the resume point
    plan = nn.check_job(job_spec)
    job = store.create("train", "test", {**job_spec, "input_shape": [1, 8, 8, 8], "n_classes": 4,
                                         "target_shape": [8, 8, 8], "task": plan["task"],
                                         "output_shape": plan["output_shape"]})
    model1, optimizer1, state1, history1 = library_run(job_spec, epochs=1)
    rows = [{"epoch": 1, "train_loss": history1[0]["train_loss"], "train_accuracy": history1[0]["train_accuracy"],
             "val_loss": history1[0]["val_loss"], "val_accuracy": history1[0]["val_accuracy"],
             "val_dice": history1[0]["val_dice"], "seconds": history1[0]["seconds"]}]
    assert checkpoints.save_checkpoint(store, job["id"], nn.get_training_state(model1, optimizer1, 1, state1), rows)
    assert tasks.train(job["id"]) == "succeeded"
    done = store.get(job["id"])
    assert done["progress"]["resumed_from_epoch"] == 1 and done["result"]["best_epoch"] == 1
    assert [h["val_dice"] for h in done["result"]["history"]] == [h["val_dice"] for h in history]
    data, _ = checkpoints.model_file(store, job["id"], done)
    served = nn.io.load(io.BytesIO(data))
    for k, v in model.parameters().items():  # the best (first) epoch's parameters, as in the library run
        np.testing.assert_array_equal(served.parameters()[k], v, err_msg=k)


def test_follow_lines_show_dice_for_segmentation_and_mae_for_fields(segmented):
    from app.commands.train import end_line, epoch_line

    job, _ = segmented
    row = job["result"]["history"][-1]
    line = epoch_line(row, 2)
    assert f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} dice {row['val_dice']:.4f}" in line
    assert f"final val dice {row['val_dice']:.4f}" in end_line(job) and "best epoch" in end_line(job)
    field_row = {"epoch": 1, "train_loss": 0.5, "train_accuracy": None, "train_mae": 0.25, "val_loss": 0.125,
                 "val_accuracy": None, "val_mae": 0.0625, "seconds": 1.0}
    assert "train loss 0.5000 mae 0.2500  val loss 0.1250 mae 0.0625" in epoch_line(field_row, 3)


def test_predictions_run_in_batches_a_training_step_could_hold(worker_runtime, monkeypatch):
    """A job checked at batch_size 1 predicted in batches of 64 whatever its activations (a probe: 250 MB
    for one batch of a model whose training step was estimated at 8 MiB). The worker now asks
    nn.evaluation_batch of the job's batch_size: here 4 MiB a sample, so 16 a batch, not 64."""
    from worker import predict

    store = worker_runtime
    spec = [{"type": "upsample", "scale": 128}, {"type": "global_avgpool"}, {"type": "dense", "out_features": 2}]
    model = nn.build_model(spec, (1, 8, 8), seed=0)
    optimizer = nn.make_optimizer({"type": "sgd", "lr": 0.1})
    job = store.create("train", "test", {"model": spec, "loss": "cross_entropy", "batch_size": 1, "task": "classify"})
    assert checkpoints.save_checkpoint(store, job["id"], nn.get_training_state(model, optimizer, 1, nn.FitState()),
                                       [{"epoch": 1, "train_loss": 0.5}])
    seen = []
    real = nn.predict_outputs
    monkeypatch.setattr(nn, "predict_outputs", lambda *a, **k: seen.append(k["batch_size"]) or real(*a, **k))
    x = np.random.default_rng(0).standard_normal((20, 1, 8, 8)).astype(np.float32)
    meta, host = predict.predict_op(np, {"x": x}, {"model_id": job["id"]})
    assert seen == [nn.evaluation_batch(model, 1)] and seen[0] < 64, seen
    assert host["outputs"].shape == (20, 2) and len(meta["predictions"]) == 20
