"""Task bodies called directly in this process against the real Redis-protocol server (no Celery
worker): every request parameter reaches convcore and changes the result; errors end the job with
the right status; training and prediction run end to end. References: PyTorch and NumPy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convcore import datasets, nn
from worker import checkpoints, tasks
from worker.kinds import KINDS

KIND_OF_TASK = {kind.task: kind.name for kind in KINDS.values()}

RNG = np.random.default_rng(11)
X = RNG.standard_normal((1, 2, 7, 6))
W = RNG.standard_normal((3, 2, 3, 3))


def _run(store, task, params: dict, **arrays) -> dict:
    """Queue a job in the store, run the task's body here; the finished job with its outputs."""
    job = store.create(KIND_OF_TASK[task.name], "test", params, arrays)
    state = task(job["id"])
    done = store.get(job["id"])
    assert done["state"] == state, (state, done)
    done["outputs"] = store.get_arrays(job["id"], "out", (done["result"] or {}).get("outputs", []))
    return done


def _torch_reflect(x, W, pad: int) -> np.ndarray:
    """Reference: PyTorch's reflect padding, then a valid correlation (someone else's code on both steps)."""
    padded = F.pad(torch.from_numpy(x), (pad,) * 4, mode="reflect")
    return F.conv2d(padded, torch.from_numpy(W)).numpy()


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
def test_padding_mode_and_algorithm_reach_convcore(worker_runtime, algorithm):
    """A reflect-padded result equals PyTorch's (and NumPy's pad) and differs from zero padding; the
    reported algorithm is the one asked for."""
    reflect = _run(worker_runtime, tasks.conv_forward, {"padding": 2, "padding_mode": "reflect",
                                                        "algorithm": algorithm}, x=X, W=W)
    zeros = _run(worker_runtime, tasks.conv_forward, {"padding": 2, "algorithm": algorithm}, x=X, W=W)
    assert reflect["state"] == zeros["state"] == "succeeded"
    assert reflect["result"]["algorithm"] == zeros["result"]["algorithm"] == algorithm
    y = reflect["outputs"]["y"]
    np.testing.assert_allclose(y, _torch_reflect(X, W, 2), rtol=1e-10, atol=1e-10)
    numpy_ref = F.conv2d(torch.from_numpy(np.pad(X, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")),
                         torch.from_numpy(W)).numpy()
    np.testing.assert_allclose(y, numpy_ref, rtol=1e-10, atol=1e-10)
    assert np.abs(y - zeros["outputs"]["y"]).max() > 0.1  # the mode changed the border


def test_every_geometry_parameter_reaches_convcore(worker_runtime):
    x, w = RNG.standard_normal((1, 4, 9, 8)), RNG.standard_normal((4, 2, 2, 3))
    params = {"stride": [2, 1], "padding": [1, 2], "dilation": [2, 1], "groups": 2, "padding_mode": "circular"}
    done = _run(worker_runtime, tasks.conv_forward, params, x=x, W=w)
    padded = F.pad(torch.from_numpy(x), (2, 2, 1, 1), mode="circular")
    ref = F.conv2d(padded, torch.from_numpy(w), stride=(2, 1), dilation=(2, 1), groups=2).numpy()
    np.testing.assert_allclose(done["outputs"]["y"], ref, rtol=1e-10, atol=1e-10)


def test_backward_computes_what_need_names(worker_runtime):
    gy = RNG.standard_normal((1, 3, 5, 4))
    done = _run(worker_runtime, tasks.conv_backward, {"need": ["W"], "algorithm": "fft"}, gy=gy, x=X, W=W)
    assert sorted(done["outputs"]) == ["gW"] and done["result"]["algorithm"] == "fft"
    tx, tW = torch.from_numpy(X), torch.tensor(W, requires_grad=True)
    F.conv2d(tx, tW).backward(torch.from_numpy(gy))
    np.testing.assert_allclose(done["outputs"]["gW"], tW.grad.numpy(), rtol=1e-10, atol=1e-10)


def _user_gW(gy):
    tW = torch.tensor(W, requires_grad=True)
    F.conv2d(torch.from_numpy(X), tW).backward(torch.from_numpy(gy))
    return tW.grad.numpy()


def test_gradcheck_tolerances_and_eps_reach_convcore(worker_runtime):
    """A user gW off by 0.1 %: fails at rtol 1e-5, passes at rtol 1e-2 or with a large atol; a step
    eps of 1e-14 drowns the finite differences in rounding error. Each setting is echoed as given."""
    gy = RNG.standard_normal((1, 3, 5, 4))
    off = _user_gW(gy) * 1.001
    base = {"samples": 4, "seed": 1}

    def report(**params):
        done = _run(worker_runtime, tasks.conv_gradcheck, {**base, **params}, x=X, W=W, gy=gy, gW=off)
        assert done["state"] == "succeeded", done
        rep = done["result"]["report"]
        for name, value in params.items():
            assert rep["settings"][name] == value, (name, rep["settings"])
        return rep

    assert report(rtol=1e-5)["user"]["gW"]["passed"] is False
    assert report(rtol=1e-2)["user"]["gW"]["passed"] is True
    assert report(rtol=0.0, atol=1.0)["user"]["gW"]["passed"] is True
    assert report(rtol=0.0, atol=1e-12)["user"]["gW"]["passed"] is False
    tiny = report(eps=1e-14)
    assert tiny["passed"] is False and not tiny["finite_differences"]["gx"]["passed"]
    assert report(eps=1e-6)["finite_differences"]["gx"]["passed"] is True


def test_gradcheck_from_shapes_uses_dtype_and_bias(worker_runtime):
    done = _run(worker_runtime, tasks.conv_gradcheck, {"x_shape": [1, 2, 5], "W_shape": [2, 2, 2], "bias": False,
                                                       "datatype": "FP32", "seed": 2, "samples": 3})
    rep = done["result"]["report"]
    assert set(rep["finite_differences"]) == {"gx", "gW"}  # no bias drawn
    assert all(g["checked"] == 3 for g in rep["finite_differences"].values())


def test_bad_arrays_fail_the_job_with_422(worker_runtime):
    done = _run(worker_runtime, tasks.conv_forward, {}, x=np.ones((1, 3, 4)), W=np.ones((1, 2, 2)))
    assert done["state"] == "failed" and done["error"]["status"] == 422
    assert "channels" in done["error"]["message"]


def test_a_job_delivered_too_often_fails_as_worker_lost(worker_runtime):
    store = worker_runtime
    job = store.create("conv.forward", "test", {}, {"x": np.ones((1, 1, 4)), "W": np.ones((1, 1, 2))})
    store.r.hset(store.job_key(job["id"]), "attempts", 3)  # three workers died running it
    assert tasks.conv_forward(job["id"]) == "failed"
    assert store.get(job["id"])["error"]["type"] == "WorkerLost"
    assert store.get_arrays(job["id"], "out", ["y"]) == {}


def test_cancelled_or_unknown_jobs_are_skipped(worker_runtime):
    store = worker_runtime
    job = store.create("conv.forward", "test", {}, {"x": np.ones((1, 1, 4)), "W": np.ones((1, 1, 2))})
    store.cancel(job["id"])
    assert tasks.conv_forward(job["id"]) == "skipped"
    assert store.get(job["id"])["state"] == "cancelled"
    assert tasks.conv_forward("0" * 32) == "skipped"


TRAIN = {"model": [{"type": "conv", "out_channels": 3, "kernel_size": 3, "padding": "same", "algorithm": "direct"},
                   {"type": "relu"}, {"type": "maxpool", "kernel_size": 2}, {"type": "flatten"},
                   {"type": "dense", "out_features": 10}],
         "dataset": {"name": "digits"}, "optimizer": {"type": "adam", "lr": 0.01}, "loss": "cross_entropy",
         "epochs": 3, "batch_size": 64, "seed": 5, "validation_split": 0.2}


def _library_run(epochs: int):
    """The same training in-process with convcore.nn: (model, history)."""
    x, y, _ = datasets.load(TRAIN["dataset"])
    xt, yt, xv, yv = datasets.train_val_split(x, y, TRAIN["validation_split"], seed=TRAIN["seed"])
    model = nn.Sequential.from_spec(TRAIN["model"], x.shape[1:], seed=TRAIN["seed"])
    optimizer = nn.make_optimizer(TRAIN["optimizer"])
    history = nn.fit(model, xt, yt, optimizer, TRAIN["loss"], epochs, TRAIN["batch_size"], TRAIN["seed"], xv, yv)
    return model, optimizer, history


def test_training_resumes_from_a_checkpoint_bit_for_bit_then_predicts(worker_runtime):
    """A job with a stored epoch-1 checkpoint (as a lost worker leaves it) resumes at epoch 2 and ends with
    exactly the parameters of an uninterrupted run; prediction uses the final model."""
    store = worker_runtime
    job = store.create("train", "test", {**TRAIN, "input_shape": [1, 8, 8], "n_classes": 10})
    model1, optimizer1, history1 = _library_run(1)
    rows = [{"epoch": 1, **{k: history1[0][k] for k in ("train_loss", "train_accuracy", "val_loss",
                                                        "val_accuracy", "seconds")}}]
    assert checkpoints.save_checkpoint(store, job["id"], nn.get_training_state(model1, optimizer1, 1), rows)
    assert tasks.train(job["id"]) == "succeeded"
    done = store.get(job["id"])
    assert done["progress"]["resumed_from_epoch"] == 1 and [h["epoch"] for h in done["result"]["history"]] == [1, 2, 3]
    model, _, history = _library_run(3)
    assert [h["val_accuracy"] for h in done["result"]["history"]] == [h["val_accuracy"] for h in history]
    arrays, _ = checkpoints.load_checkpoint(store, job["id"])
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(arrays[f"param/{k}"], v, err_msg=k)

    x = datasets.load(TRAIN["dataset"])[0][:20]
    predicted = _run(store, tasks.predict, {"model_id": job["id"]}, x=x)
    assert predicted["state"] == "succeeded" and predicted["result"]["epochs_trained"] == 3
    outputs = predicted["outputs"]["outputs"]
    np.testing.assert_allclose(outputs, model.predict(x), rtol=1e-6, atol=1e-6)
    e = np.exp(outputs - outputs.max(1, keepdims=True))
    np.testing.assert_allclose(predicted["outputs"]["probabilities"], e / e.sum(1, keepdims=True), rtol=1e-6)
    assert predicted["result"]["predictions"] == outputs.argmax(1).tolist()


def test_training_with_a_damaged_checkpoint_fails_with_the_reason(worker_runtime):
    store = worker_runtime
    job = store.create("train", "test", {**TRAIN, "input_shape": [1, 8, 8], "n_classes": 10})
    store.r.set(checkpoints.ckpt_key(store, job["id"]), b"not a checkpoint", ex=60)
    assert tasks.train(job["id"]) == "failed"
    error = store.get(job["id"])["error"]
    assert error["type"] == "ResumeFailed" and "cannot resume from the checkpoint" in error["message"]
