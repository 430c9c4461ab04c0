"""The same job file as benchmarks/train_digits_convcore.py, trained with PyTorch (CPU, float32).

Same data split, batch order, architecture, loss and optimizer hyper-parameters; PyTorch's own
initialisation. Prints accuracy and time per epoch.
    python3 benchmarks/train_digits_torch.py [job.json]
"""
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch

from convcore import datasets

JOB = pathlib.Path(__file__).resolve().parent.parent / "examples" / "digits-2d.json"


def torch_model(spec, in_shape):
    """torch.nn.Sequential for the layer types of a convcore.nn spec (the subset the examples use)."""
    nd = len(in_shape) - 1
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[nd]
    pools = {"maxpool": {1: torch.nn.MaxPool1d, 2: torch.nn.MaxPool2d, 3: torch.nn.MaxPool3d}[nd],
             "avgpool": {1: torch.nn.AvgPool1d, 2: torch.nn.AvgPool2d, 3: torch.nn.AvgPool3d}[nd]}
    norm = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[nd]
    mods, shape = [], torch.zeros((1,) + tuple(in_shape))
    for layer in spec:
        kind = layer["type"]
        if kind == "conv":
            mods.append(conv(shape.shape[1], layer["out_channels"], layer["kernel_size"],
                             stride=layer.get("stride", 1), padding=layer.get("padding", 0)))
        elif kind in pools:
            mods.append(pools[kind](layer["kernel_size"], layer.get("stride")))
        elif kind == "batchnorm":
            mods.append(norm(shape.shape[1]) if shape.dim() > 2 else torch.nn.BatchNorm1d(shape.shape[1]))
        elif kind == "relu":
            mods.append(torch.nn.ReLU())
        elif kind == "flatten":
            mods.append(torch.nn.Flatten())
        elif kind == "global_avgpool":
            mods.append(torch.nn.Sequential(torch.nn.AdaptiveAvgPool3d(1) if nd == 3 else torch.nn.AdaptiveAvgPool2d(1),
                                            torch.nn.Flatten()))
        elif kind == "dropout":
            mods.append(torch.nn.Dropout(layer["rate"]))
        elif kind == "dense":
            mods.append(torch.nn.Linear(shape.shape[1], layer["out_features"]))
        else:
            raise ValueError(f"layer type {kind!r} not translated to PyTorch here")
        shape = mods[-1](shape)
    return torch.nn.Sequential(*mods)


def torch_optimizer(spec, params):
    options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "type"}
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[spec["type"]](params, **options)


def main(path=JOB):
    job = json.loads(pathlib.Path(path).read_text())
    start = time.perf_counter()
    torch.manual_seed(job["seed"])
    x, y, _ = datasets.load(job["dataset"])
    xt, yt, xv, yv = datasets.train_val_split(x, y, job["validation_split"], seed=job["seed"])
    xt, yt, xv, yv = map(torch.from_numpy, (xt, yt, xv, yv))
    model = torch_model(job["model"], x.shape[1:])
    optimizer = torch_optimizer(job["optimizer"], model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    bs, times, acc = job["batch_size"], [], 0.0
    for epoch in range(job["epochs"]):
        t0 = time.perf_counter()
        model.train()
        # The batch order convcore.nn.train_epoch uses.
        order = torch.from_numpy(np.random.default_rng([job["seed"], epoch]).permutation(len(xt)))
        for step in range(math.ceil(len(xt) / bs)):
            idx = order[step * bs:(step + 1) * bs]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            out = model(xv)
            val_loss, acc = loss_fn(out, yv).item(), (out.argmax(1) == yv).double().mean().item()
        times.append(time.perf_counter() - t0)
        print(f"epoch {epoch + 1:>3}  val loss {val_loss:.4f}  val acc {acc:.4f}  {times[-1]:.3f} s", flush=True)
    wall = time.perf_counter() - start
    print(f"torch: val accuracy {acc:.4f}  time/epoch {sum(times) / len(times):.3f} s  wall {wall:.1f} s  "
          f"(threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main(*sys.argv[1:])
