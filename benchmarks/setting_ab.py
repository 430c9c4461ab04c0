"""Before/after of one module-level setting of convcore, both sides timed in turns in one process.

    python3 benchmarks/setting_ab.py convcore.costs.FREQUENCY_LAST_MAX_MADDS 0 64 --filter '[45]d-k*'
    python3 benchmarks/setting_ab.py convcore.frequency_last.SPARE_BYTES 2**30 2**19 --filter 4d-k7 --algorithm fft

A rule's threshold (or any constant a call reads when it runs) is set to value A, then B, in
alternating order, a fresh ``convcore.Convolution`` each time (forward + all gradients), with a
short pause before each timed call, so load from other processes falls on both sides alike. On a
machine whose speed wanders by 2x within minutes (docs/benchmarks.md, "Tenth round"), this is the
comparison that holds where two separate runs of the table do not. The values are Python
expressions. Prints the median of each side, their ratio and the largest relative difference of the
two sides' outputs (the setting must change speed, not results).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import conv_configs

import convcore

PAUSE_S = 0.02


def run_layer(config, algorithm: str, x, W):
    op = convcore.Convolution(algorithm=algorithm, **config.params())
    y = op.forward(x, W)
    grads = op.backward(np.ones_like(y), x, W)
    return (y,) + tuple(grads)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("setting", help="module.NAME, e.g. convcore.costs.FREQUENCY_LAST_MAX_MADDS")
    p.add_argument("a", help="value A (a Python expression)")
    p.add_argument("b", help="value B (a Python expression)")
    p.add_argument("--filter", required=True, help="glob or substring of conv_configs.FULL names")
    p.add_argument("--algorithm", default="auto", help="the engine to run (default: auto)")
    p.add_argument("--rounds", type=int, default=9, help="timed calls per side")
    args = p.parse_args(argv)
    module_name, name = args.setting.rsplit(".", 1)
    module = importlib.import_module(module_name)
    values = (eval(args.a, {}), eval(args.b, {}))   # the user's own command line: Python expressions
    original = getattr(module, name)
    configs = conv_configs.select(False, args.filter)
    print(f"{args.setting}: A = {args.a}, B = {args.b}; {args.algorithm}, {args.rounds} timed calls per side, "
          f"{convcore.cpu_count()} threads")
    try:
        for config in configs:
            rng = np.random.default_rng(0)
            x = rng.standard_normal(config.x_shape).astype(np.float32)
            W = rng.standard_normal(config.W_shape).astype(np.float32)
            times, outputs = ([], []), [None, None]
            for r in range(args.rounds + 1):   # round 0 warms both sides up
                for side in ((0, 1) if r % 2 else (1, 0)):
                    setattr(module, name, values[side])
                    time.sleep(PAUSE_S)
                    start = time.perf_counter()
                    outputs[side] = run_layer(config, args.algorithm, x, W)
                    if r:
                        times[side].append(time.perf_counter() - start)
            diff = max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
                       for a, b in zip(*outputs) if a is not None)
            a, b = (float(np.median(t)) for t in times)
            print(f"{config.name:14s} A {a * 1e3:8.2f} ms   B {b * 1e3:8.2f} ms   A/B {a / b:5.2f}x   "
                  f"(max relative difference {diff:.1e})")
    finally:
        setattr(module, name, original)


if __name__ == "__main__":
    main()
