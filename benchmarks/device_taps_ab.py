"""A GPU's direct passes: how many trailing kernel axes to gather, measured.

    python benchmarks/device_taps_ab.py [--filter GLOB] [--samples 7] [--rounds 2]

On a device the direct engine gathers the taps of the last m kernel axes into columns and runs
one cuBLAS product per remaining tap (direct_conv._run_taps); ``costs.device_grouped_axes``
picks m (DEVICE_GROUP_INNER). Per layer this times the direct engine (forced; forward + all
gradients, a fresh layer per call, medians, interleaved over ``--rounds``) with the rule's m and
with every m the rule may pick (0 .. N-1), the FFT engine, ``auto`` and PyTorch+cuDNN (N <= 3),
and prints each with the models' estimates. The outputs of every split are compared with the
rule's, and PyTorch's with the rule's. Needs CuPy with a CUDA device (and torch for the anchor).
"""
from __future__ import annotations

import argparse
import fnmatch
import statistics
import time

import numpy as np

import convcore
from convcore import backend, costs, make_geometry

LAYERS = [  # name, x, W, padding, stride, dilation, groups
    ("1d-k3", (16, 64, 8192), (64, 64, 3), 1, 1, 1, 1),
    ("1d-k3-c16", (32, 16, 4096), (16, 16, 3), 1, 1, 1, 1),
    ("1d-k5-c256", (8, 256, 4096), (256, 256, 5), 2, 1, 1, 1),
    ("2d-3x3", (32, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, 1),
    ("2d-3x3-c16-b64", (64, 16, 32, 32), (16, 16, 3, 3), 1, 1, 1, 1),
    ("2d-3x3-c128", (16, 128, 28, 28), (128, 128, 3, 3), 1, 1, 1, 1),
    ("2d-3x3-s2", (32, 64, 56, 56), (64, 64, 3, 3), 1, 2, 1, 1),
    ("2d-3x3-d2-g4", (32, 64, 56, 56), (64, 16, 3, 3), 2, 1, 2, 4),
    ("2d-5x5-c32", (16, 32, 48, 48), (32, 32, 5, 5), 2, 1, 1, 1),
    ("2d-7x7-c32", (16, 32, 64, 64), (32, 32, 7, 7), 3, 1, 1, 1),
    ("2d-9x9-c16", (16, 16, 64, 64), (16, 16, 9, 9), 4, 1, 1, 1),
    ("3d-3x3x3", (4, 32, 32, 32, 32), (32, 32, 3, 3, 3), 1, 1, 1, 1),
    ("3d-3x3x3-c8-b8", (8, 8, 32, 32, 32), (8, 8, 3, 3, 3), 1, 1, 1, 1),
    ("3d-3x3x3-c16", (16, 16, 24, 24, 24), (16, 16, 3, 3, 3), 1, 1, 1, 1),
    ("3d-3x3x3-c64", (2, 64, 24, 24, 24), (64, 64, 3, 3, 3), 1, 1, 1, 1),
    ("3d-5x5x5-c16", (4, 16, 32, 32, 32), (16, 16, 5, 5, 5), 2, 1, 1, 1),
    ("3d-7x7x7-c8", (4, 8, 32, 32, 32), (8, 8, 7, 7, 7), 3, 1, 1, 1),
    ("4d-3x3x3x3", (4, 8, 16, 16, 16, 16), (8, 8, 3, 3, 3, 3), 1, 1, 1, 1),
]


def median_seconds(fn, sync, samples: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_seconds(xp, layer, arrays, samples: int):
    """(seconds, outputs) of PyTorch+cuDNN, full float32, or (nan, None) for N > 3."""
    _, xs, _, pad, stride, dilation, groups = layer
    if len(xs) - 2 > 3:
        return float("nan"), None
    import torch
    import torch.nn.functional as F

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    x, W, b, gy = (torch.as_tensor(a, device="cuda") for a in arrays)
    for t in (x, W, b):
        t.requires_grad_(True)
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(xs) - 3]

    def run():
        for t in (x, W, b):
            t.grad = None
        y = conv(x, W, b, padding=pad, stride=stride, dilation=dilation, groups=groups)
        y.backward(gy)
        return y, x.grad, W.grad

    run()
    return median_seconds(run, torch.cuda.synchronize, samples), [xp.asarray(t.detach()) for t in run()]


def bench(xp, layer, samples: int, rounds: int) -> str:
    name, xs, ws, pad, stride, dilation, groups = layer
    rng = np.random.default_rng(0)
    geom = make_geometry(xs, ws, stride=stride, padding=pad, dilation=dilation, groups=groups)
    x, W, b, gy = (xp.asarray(rng.standard_normal(s).astype(np.float32))
                   for s in (geom.in_shape, geom.kernel_shape, (geom.out_channels,), geom.out_shape))
    chosen = {}

    def run(algorithm):
        op = convcore.Convolution(padding=pad, stride=stride, dilation=dilation, groups=groups, algorithm=algorithm)
        y = op.forward(x, W, b)
        grads = op.backward(gy)
        chosen["algorithm"] = op.algorithm_used
        return y, grads.gx, grads.gW

    rule = costs.device_grouped_axes
    splits = ["rule"] + list(range(len(xs) - 2))

    def use(split):
        costs.device_grouped_axes = rule if split == "rule" else (lambda qk, K, tap_bytes, budget: split)

    def rel_err(got, want):
        return max(float(xp.abs(a - c).max() / xp.abs(c).max()) for a, c in zip(got, want))

    try:
        use("rule")
        reference = run("direct")
        worst = 0.0
        for split in splits[1:]:
            use(split)
            worst = max(worst, rel_err(run("direct"), reference))
        times = {split: [] for split in splits}
        for _ in range(rounds):
            for split in splits:
                use(split)
                times[split].append(median_seconds(lambda: run("direct"), lambda: backend.synchronize(xp), samples))
    finally:
        use("rule")
    times = {split: min(t) for split, t in times.items()}
    fft = median_seconds(lambda: run("fft"), lambda: backend.synchronize(xp), samples)
    auto = median_seconds(lambda: run("auto"), lambda: backend.synchronize(xp), samples)
    auto_engine = chosen["algorithm"]
    arrays = [xp.asnumpy(a) for a in (x, W, b, gy)]
    anchor, theirs = torch_seconds(xp, layer, arrays, samples)
    anchor_err = rel_err(reference, theirs) if theirs is not None else float("nan")
    budget = 2**34
    model_direct = costs.direct_estimate(geom, 4, budget, costs.GPU_RATES).seconds
    model_fft = costs.fft_estimate(geom, 4, budget, costs.GPU_RATES).seconds
    fastest = min(times, key=times.get)
    splits_ms = ", ".join(f"{s}: {t * 1e3:.2f}" for s, t in times.items())
    return (f"| {name} | {splits_ms} | {times['rule'] / times[fastest]:.2f} | {fft * 1e3:.2f} | "
            f"{auto * 1e3:.2f} ({auto_engine}) | {anchor * 1e3:.2f} | {anchor / auto:.2f} | "
            f"{model_direct * 1e3:.2f} / {model_fft * 1e3:.2f} | {worst:.1e} / {anchor_err:.1e} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="*", help="layer names (glob)")
    parser.add_argument("--samples", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the splits (best round kept)")
    args = parser.parse_args(argv)
    import cupy as xp

    print(f"device: {backend.device_name(xp)}; direct ms per split (m gathered axes), forward + all gradients")
    print("| layer | direct ms: rule, m = 0 .. N-1 | rule / fastest | fft ms | auto ms (engine) | cuDNN ms | "
          "cuDNN / auto | model direct / fft ms | max rel. diff: splits / cuDNN |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer in LAYERS:
        if fnmatch.fnmatch(layer[0], args.filter):
            print(bench(xp, layer, args.samples, args.rounds), flush=True)
            xp.get_default_memory_pool().free_all_blocks()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
