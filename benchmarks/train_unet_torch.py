"""The same network as a job file's graph, trained in PyTorch (CPU): seconds per epoch beside
benchmarks/train_unet_convcore.py. Same data, split, batch size, optimizer type and lr; the loss is
cross-entropy for labels, MSE for fields; no schedule or early stopping (timing only). Each epoch
ends with a pass over the validation split (no gradients, batches of 256, the loss and, for labels,
the predicted classes), as convcore's fit does, so that both sides' epoch times hold the same work.

    python3 benchmarks/train_unet_torch.py examples/unet-3d-segmentation.json --epochs 3 [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from convcore import datasets


class GraphNet(torch.nn.Module):
    """A convcore graph spec (conv, conv_transpose, relu, maxpool, concat, add) as torch modules."""

    def __init__(self, spec: dict, in_shape: tuple):
        super().__init__()
        self.spec, nd = spec, len(in_shape) - 1
        conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[nd]
        conv_t = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}[nd]
        self.pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        channels, prev = {"x": in_shape[0]}, in_shape[0]
        self.mods = torch.nn.ModuleDict()
        for i, node in enumerate(spec["graph"]):
            kind = node["type"]
            if kind == "conv":
                self.mods[str(i)] = conv(prev, node["out_channels"], node["kernel_size"],
                                         padding=node.get("padding", 0), padding_mode=node.get("padding_mode", "zeros"))
                prev = node["out_channels"]
            elif kind == "conv_transpose":
                self.mods[str(i)] = conv_t(prev, node["out_channels"], node["kernel_size"],
                                           stride=node.get("stride", 1))
                prev = node["out_channels"]
            elif kind == "concat":
                prev = sum(channels[n] for n in node["inputs"])
            elif kind == "add":
                prev = channels[node["inputs"][0]]
            elif kind not in ("relu", "maxpool"):
                raise ValueError(f"layer type {kind!r} is not mirrored here")
            if "name" in node:
                channels[node["name"]] = prev

    def forward(self, x):
        outs, prev = {"x": x}, x
        for i, node in enumerate(self.spec["graph"]):
            kind = node["type"]
            ins = [outs[n] for n in node["inputs"]] if "inputs" in node else [outs[node["input"]] if "input" in node
                                                                             else prev]
            if kind in ("conv", "conv_transpose"):
                prev = self.mods[str(i)](ins[0])
            elif kind == "relu":
                prev = F.relu(ins[0])
            elif kind == "maxpool":
                prev = self.pool(ins[0], node["kernel_size"])
            elif kind == "concat":
                prev = torch.cat(ins, dim=1)
            else:
                prev = sum(ins[1:], ins[0])
            if "name" in node:
                outs[node["name"]] = prev
        return outs[self.spec["output"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("job")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    job = json.load(open(args.job))
    x, y, _ = datasets.load(job["dataset"])
    xt, yt, xv, yv = datasets.train_val_split(x, y, job["validation_split"], seed=job["seed"])
    net = GraphNet(job["model"], x.shape[1:])
    opt = torch.optim.Adam(net.parameters(), lr=job["optimizer"]["lr"])
    labels = y.dtype.kind in "iu"
    loss_fn = F.cross_entropy if labels else F.mse_loss
    xt_t, yt_t = torch.tensor(xt), torch.tensor(yt)
    xv_t, yv_t = torch.tensor(xv), torch.tensor(yv)
    bs = job["batch_size"]
    print(f"{args.job}: PyTorch {torch.__version__}, {args.threads} threads, {len(xt)} train samples, batch {bs}")
    times = []
    for epoch in range(args.epochs):
        order = torch.tensor(np.random.default_rng([job["seed"], epoch]).permutation(len(xt)))
        start = time.perf_counter()
        total = 0.0
        for lo in range(0, len(xt), bs):
            idx = order[lo:lo + bs]
            opt.zero_grad()
            loss = loss_fn(net(xt_t[idx]), yt_t[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        val_total, correct = 0.0, 0
        with torch.no_grad():
            for lo in range(0, len(xv), 256):
                out = net(xv_t[lo:lo + 256])
                val_total += loss_fn(out, yv_t[lo:lo + 256]).item() * len(out)
                if labels:
                    correct += int((out.argmax(1) == yv_t[lo:lo + 256]).sum())
        times.append(time.perf_counter() - start)
        print(f"epoch {epoch + 1}: train_loss {total / len(xt):.4g}  val_loss {val_total / max(1, len(xv)):.4g}  "
              f"seconds {times[-1]:.2f}", flush=True)
    print(f"median {np.median(times):.2f} s per epoch")


if __name__ == "__main__":
    main()
