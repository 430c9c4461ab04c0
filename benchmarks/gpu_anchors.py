"""The anchors convcore is timed against in benchmarks/gpu_check.py, and the timing itself.

- ``torch_runner``: PyTorch's conv1d/2d/3d + autograd (cuDNN on a GPU, ``cudnn.benchmark`` on).
- ``recipe_runner``: the N-D layer (N >= 4) as PyTorch users build it from ``conv3d``.
- ``jax_in_child``: JAX (``jax.jit`` of ``jax.vjp`` over ``lax.conv_general_dilated``) timed in a
  child process (this file run as a script), because XLA aborts the process on layers it cannot
  compile.

Each runner takes (device "gpu" | "cpu", a layer with ``ndim`` and ``padding``, the float32 arrays
x, W, b, gy) and returns (run, sync, to_host): ``run()`` computes (y, gx, gW, gb) once.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Layer(NamedTuple):
    """What a runner needs of a table row (gpu_check.Row has both)."""
    ndim: int
    padding: int


def median_time(fn, sync, repeats: int, budget_s: float) -> tuple[float, int, object]:
    """Median seconds of ``fn()`` (+ sync) after two untimed warm-up calls; (median, runs, last output)."""
    out = fn()
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - start
    runs = max(1, min(repeats, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), runs, out


def torch_runner(device: str, row, arrays):
    import torch
    import torch.nn.functional as F

    torch.backends.cudnn.benchmark = True        # cuDNN picks its fastest algorithm (searched in the warm-up)
    torch.backends.cudnn.allow_tf32 = False      # full float32, as convcore computes
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda" if device == "gpu" else "cpu"
    if dev == "cpu":
        from convcore import cpu_count

        torch.set_num_threads(cpu_count())  # as many threads as convcore may use
    x, W, b, gy = (torch.tensor(a, device=dev) for a in arrays)
    for t in (x, W, b):
        t.requires_grad_(True)
    conv = (F.conv1d, F.conv2d, F.conv3d)[row.ndim - 1]

    def run():
        for t in (x, W, b):
            t.grad = None
        y = conv(x, W, b, padding=row.padding)
        y.backward(gy)
        return y, x.grad, W.grad, b.grad

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    return run, sync, lambda t: t.detach().cpu().numpy()


def recipe_runner(device: str, row, arrays):
    """The N-D layer (N >= 4) as PyTorch users build it: for each tap j of the first kernel axis ONE
    (N-1)-D convolution over all output frames at once (frames folded into the batch), recursively down
    to F.conv3d (cuDNN), + autograd. Stride 1, symmetric zero padding."""
    import torch
    import torch.nn.functional as F

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda" if device == "gpu" else "cpu"
    x, W, b, gy = (torch.tensor(a, device=dev) for a in arrays)
    p = row.padding

    def convnd(xs, Ws):
        """(n, c, d1..dN) valid-padded input, (O, c, k1..kN) -> (n, O, o1..oN)."""
        if Ws.dim() == 5:
            return F.conv3d(xs, Ws)
        n, k, o = xs.shape[0], Ws.shape[2], xs.shape[2] - Ws.shape[2] + 1
        y = None
        for j in range(k):
            frames = xs[:, :, j:j + o]                                     # (n, c, o, d2..dN)
            folded = frames.transpose(1, 2).reshape((n * o, xs.shape[1]) + tuple(xs.shape[3:]))
            part = convnd(folded, Ws[:, :, j])                              # (n*o, O, o2..oN)
            y = part if y is None else y + part
        return y.reshape((n, o) + tuple(y.shape[1:])).transpose(1, 2)

    def run():
        xs, Ws, bs = (t.detach().requires_grad_(True) for t in (x, W, b))
        y = convnd(F.pad(xs, [p] * (2 * row.ndim)), Ws) + bs.reshape((1, -1) + (1,) * row.ndim)
        y.backward(gy)
        return y, xs.grad, Ws.grad, bs.grad

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    return run, sync, lambda t: t.detach().cpu().numpy()


def jax_in_child(device: str, row, arrays, repeats: int, budget_s: float):
    """JAX timed in a child process: XLA's GPU compiler ABORTS the whole process (a failed CHECK, not an
    exception) on convolutions it does not support (cuDNN's, with more than 3 spatial dimensions, in
    jaxlib 0.11 on an H100); a child's death is reported in the row instead of ending the table.
    Returns (median seconds, runs, outputs) or raises RuntimeError with the reason."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_jax_") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, *arrays)
        argv = [sys.executable, str(Path(__file__).resolve()), "--jax-child", str(src), str(dst),
                "--device", device, "--repeats", str(repeats), "--budget", str(budget_s),
                "--layer", json.dumps([row.ndim, row.padding])]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError("JAX did not finish in 180 s") from None
        if done.returncode != 0 or not dst.exists():
            lines = (done.stderr or done.stdout).strip().splitlines()
            check = [ln for ln in lines if "Check failed" in ln or "Error" in ln]
            why = (check or lines or ["no output"])[0]
            raise RuntimeError(f"JAX's process died (exit {done.returncode}): {why[:200]}")
        with np.load(dst) as got:
            return float(got["seconds"]), int(got["runs"]), [got[f"out{i}"] for i in range(4)]


def _jax_child(argv: list[str]) -> int:
    """The child side of jax_in_child: time JAX on the arrays in IN, write the median and outputs to OUT."""
    p = argparse.ArgumentParser()
    p.add_argument("--jax-child", nargs=2, type=Path)
    p.add_argument("--device", default="gpu")
    p.add_argument("--repeats", type=int)
    p.add_argument("--budget", type=float)
    p.add_argument("--layer")
    args = p.parse_args(argv)
    row = Layer(*json.loads(args.layer))
    src, dst = args.jax_child
    with np.load(src) as got:
        arrays = [got[f"arr_{i}"] for i in range(4)]
    run, sync, to_host = jax_runner(args.device, row, arrays)
    seconds, runs, out = median_time(run, sync, args.repeats, args.budget)
    np.savez(dst, seconds=seconds, runs=runs, **{f"out{i}": to_host(a) for i, a in enumerate(out)})
    return 0


def jax_runner(device: str, row, arrays):
    import jax
    from jax import lax

    jax.config.update("jax_default_matmul_precision", "highest")  # full float32 (no TF32)
    dev = jax.devices("gpu" if device == "gpu" else "cpu")[0]
    x, W, b, gy = (jax.device_put(a, dev) for a in arrays)
    pad = [(row.padding, row.padding)] * row.ndim

    def layer(x, W, b):
        return lax.conv_general_dilated(x, W, (1,) * row.ndim, pad) + b.reshape((1, -1) + (1,) * row.ndim)

    def fwd_bwd(x, W, b, gy):
        y, vjp = jax.vjp(layer, x, W, b)
        return (y, *vjp(gy))

    compiled = jax.jit(fwd_bwd).lower(x, W, b, gy).compile()  # compiled once, not timed
    outputs = {}

    def run():
        outputs["last"] = compiled(x, W, b, gy)
        return outputs["last"]

    return run, lambda: jax.block_until_ready(outputs.get("last")), np.asarray


if __name__ == "__main__":
    sys.exit(_jax_child(sys.argv[1:]))
