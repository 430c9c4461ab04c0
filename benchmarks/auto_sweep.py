"""Does ``algorithm="auto"`` pick well on layers outside the benchmark table? A script that prints
figures (not a test).

    python3 benchmarks/auto_sweep.py                 # 30 random layers, seed 1
    python3 benchmarks/auto_sweep.py --layers 60 --seed 7 --samples 7
    python3 benchmarks/auto_sweep.py --small --model-only   # 3^N layers, the choice convcore.nn makes

Draws random layers (N = 1-4, kernels 3-129 by N, 1-32 channels, batch 1-8, stride 1-2, zero or
"same"-like padding; inputs above 64 MB are skipped), times forward + all three gradients with each
engine forced and with ``auto`` (a fresh ``Convolution`` per call, medians after one warm-up call),
and prints ``auto`` time / best engine time (issue 10: at most 1.2x). A line where ``auto`` chose
the best engine but still reads above 1.2x is the machine's noise, not a wrong choice: the
``chose`` column says which engine ``auto`` ran.

``--model-only`` runs ``auto`` with ``autotune=False``: the choice by the cost model alone, which
``convcore.nn``'s layers make (so that seeded training repeats bit for bit) and every call makes
under ``CONVCORE_AUTOTUNE=0``. ``--small`` draws the layers training networks are made of instead:
3^N kernels, "same" padding, 1-64 channels (where the direct and Winograd engines are near-ties).
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

import convcore
from convcore.engines import unsupported_reason

KERNELS = {1: [3, 9, 31, 65, 129], 2: [3, 5, 7, 9, 13], 3: [3, 5, 7], 4: [3, 5]}
SIDES = {1: [256, 1024, 4096], 2: [24, 48, 96], 3: [12, 20, 28], 4: [8, 10, 12]}


def draw(rng: random.Random):
    """One random layer: (x shape, W shape, stride, padding)."""
    N = rng.choice([1, 2, 2, 3, 3, 4])
    k = rng.choice(KERNELS[N])
    side = max(rng.choice(SIDES[N]), k)
    C, O, n = rng.choice([1, 4, 8, 16, 32]), rng.choice([4, 8, 16, 32]), rng.choice([1, 2, 4, 8])
    return (n, C) + (side,) * N, (O, C) + (k,) * N, rng.choice([1, 1, 1, 2]), rng.choice([0, k // 2])


def draw_small(rng: random.Random):
    """One random 3^N layer of a training network: (x shape, W shape, stride 1, padding 1)."""
    N = rng.choice([1, 2, 2, 3, 3, 3, 4])
    side = rng.choice({1: [64, 256, 1024, 4096], 2: [8, 16, 32, 64, 96], 3: [4, 8, 12, 16, 24], 4: [4, 6, 8, 10]}[N])
    C, O, n = rng.choice([1, 4, 8, 16, 32, 64]), rng.choice([4, 8, 16, 32, 64]), rng.choice([1, 2, 4, 8, 16])
    return (n, C) + (side,) * N, (O, C) + (3,) * N, 1, 1


def median_seconds(x, W, b, stride, padding, algorithm, samples, autotune=None):
    """(median seconds of forward + backward, the engine that ran)."""
    used = {}

    def call():
        op = convcore.Convolution(stride=stride, padding=padding, algorithm=algorithm, autotune=autotune)
        y = op.forward(x, W, b)
        op.backward(np.ones_like(y))
        used["engine"] = op.algorithm_used

    call()
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), used["engine"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--model-only", action="store_true", help="auto with autotune=False (convcore.nn's choice)")
    p.add_argument("--small", action="store_true", help="3^N layers of training networks (see above)")
    args = p.parse_args()
    rng, data = random.Random(args.seed), np.random.default_rng(args.seed)
    engines = convcore.engine_names()
    print(f"{'verdict':7s} {'auto/best':>9s}  layer  (ms: auto [chose], then each engine)")
    verdicts = []
    for _ in range(args.layers):
        xs, ws, stride, padding = (draw_small if args.small else draw)(rng)
        if np.prod(xs) * 4 > 64e6:
            continue
        x = data.standard_normal(xs).astype(np.float32)
        W = data.standard_normal(ws).astype(np.float32)
        b = np.zeros(ws[0], np.float32)
        auto_s, chose = median_seconds(x, W, b, stride, padding, "auto", args.samples,
                                       autotune=False if args.model_only else None)
        geom = convcore.make_geometry(xs, ws, stride=stride, padding=padding)
        # an engine that does not run this layer (winograd: 3^N kernels, stride 1) is n/a
        forced = {e: median_seconds(x, W, b, stride, padding, e, args.samples)[0] for e in engines
                  if unsupported_reason(e, geom, "cpu") is None}
        best = min(forced, key=forced.get)
        ratio = auto_s / forced[best]
        verdict = "ok" if ratio <= 1.2 else ("noise" if chose == best else "MISS")
        verdicts.append(verdict)
        cols = "  ".join(f"{e} {1e3 * forced[e]:.1f}" if e in forced else f"{e} n/a" for e in engines)
        print(f"{verdict:7s} {ratio:9.2f}  x{xs} W{ws} s{stride} p{padding}  auto {1e3 * auto_s:.1f} [{chose}]  {cols}",
              flush=True)
    print(f"\n{len(verdicts)} layers: ok {verdicts.count('ok')}, noise (auto ran the best engine) "
          f"{verdicts.count('noise')}, MISS (auto chose an engine > 1.2x slower) {verdicts.count('MISS')}")


if __name__ == "__main__":
    main()
