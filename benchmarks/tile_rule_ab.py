"""Overlap-save tiles: which rule picks the faster tiling?

    python benchmarks/tile_rule_ab.py [--device cpu|gpu] [--ndim nd|1] [--count 12] [--seed 0]

The rules are settings of the device's ``costs.Rates``: ``tile_gain_nd`` (tile only when the
model predicts the tiled time under that fraction of the whole's) and ``tile_windows_nd`` (the
candidate windows, in kernel lengths) for N >= 3; ``tile_gain_1d`` in one dim (``--ndim 1``).
Draws N = 3, 4 layers (or 1-D ones: long signals, kernels of 33-513 taps; seeded) on which the
rules in RULES (RULES_1D) choose different tilings, and times the FFT engine (forced; forward +
backward, a fresh layer per call) under each rule, interleaved, medians
(``conv_timing.time_interleaved``: a fast side runs untimed for 30 ms before each timed call, as in
conv_bench). Prints per layer each rule's tiling and time over the fastest rule's, then per rule
the median of that ratio and how often it was the fastest. Sets the rules through
``costs.set_rates``, so nothing else about the engine changes.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

import numpy as np
from conv_timing import time_interleaved  # beside this file

import convcore
from convcore import backend, costs, make_geometry

BUDGET = 2**31
RULES = {   # name -> Rates fields
    "40% any window": {"tile_gain_nd": 0.6, "tile_windows_nd": (2, 4, 8)},
    "50% any window": {"tile_gain_nd": 0.5, "tile_windows_nd": (2, 4, 8)},
    "60% any window": {"tile_gain_nd": 0.4, "tile_windows_nd": (2, 4, 8)},
    "40% windows >= 4k": {"tile_gain_nd": 0.6, "tile_windows_nd": (4, 8)},
    "50% windows >= 4k": {"tile_gain_nd": 0.5, "tile_windows_nd": (4, 8)},
    "60% windows >= 4k": {"tile_gain_nd": 0.4, "tile_windows_nd": (4, 8)},
}
RULES_1D = {   # the whole's modelled time a tiling must beat: 40 %, 65 %, 75 % saving; never for speed
    "40%": {"tile_gain_1d": 0.6},
    "65%": {"tile_gain_1d": 0.35},
    "75%": {"tile_gain_1d": 0.25},
    "never": {"tile_gain_1d": 0.0},
}


def draw_layer_1d(rng) -> tuple:
    k = int(rng.choice([33, 65, 129, 257, 513]))
    length = int(rng.choice([1024, 2048, 4096, 8192, 16384, 32768, 65536]))
    cin, cout = (int(c) for c in rng.choice([4, 8, 16, 32], 2))
    batch = int(rng.choice([1, 2, 4, 8, 16]))
    if batch * max(cin, cout) * length > 2**22:   # at most 16 MiB an operand: seconds, not minutes, a layer
        batch = max(1, 2**22 // (max(cin, cout) * length))
    padding = int(rng.choice([0, k // 2]))
    return (batch, cin, length), (cout, cin, k), padding


def draw_layer(rng) -> tuple:
    ndim = int(rng.choice([3, 3, 4]))
    k = int(rng.choice([3, 5, 7, 9] if ndim == 3 else [3, 5]))
    size = int(rng.choice([16, 20, 24, 32, 40, 48] if ndim == 3 else [10, 12, 16]))
    cin, cout = (int(c) for c in rng.choice([4, 8, 16, 32], 2))
    batch = int(rng.choice([1, 2, 4]))
    padding = int(rng.choice([0, k // 2]))
    return (batch, cin) + (size,) * ndim, (cout, cin) + (k,) * ndim, padding


def candidates(rates: dict, rng, count: int, draw=draw_layer) -> list:
    """Layers on which the rules disagree: (x shape, W shape, padding, {rule: tile})."""
    found, tries = [], 0
    while len(found) < count and tries < 20000:
        tries += 1
        x_shape, W_shape, padding = draw(rng)
        if min(x_shape[2:]) + 2 * padding < 2 * W_shape[-1]:
            continue
        geom = make_geometry(x_shape, W_shape, padding=padding)
        tiles = {name: costs.choose_tile(geom, 4, BUDGET, r) for name, r in rates.items()}
        if len(set(tiles.values())) > 1:
            found.append((x_shape, W_shape, padding, tiles))
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--ndim", choices=["nd", "1"], default="nd")
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=7)
    args = parser.parse_args(argv)
    if args.device == "gpu":
        import cupy as xp
    else:
        xp = np
    base = costs.rates_for(xp)
    rules = RULES_1D if args.ndim == "1" else RULES
    rates = {name: dataclasses.replace(base, **fields) for name, fields in rules.items()}
    rng = np.random.default_rng(args.seed)
    layers = candidates(rates, rng, args.count, draw_layer_1d if args.ndim == "1" else draw_layer)
    print(f"device {backend.device_name(xp)}; rates {base.kind}; {len(layers)} layers; FFT engine forced, "
          f"forward + backward, medians of {args.samples}; per rule: tile, time / the fastest rule's time")
    print("| x | W | pad | " + " | ".join(rules) + " |")
    print("|---|---|---|" + "---|" * len(rules))
    ratios = {name: [] for name in rules}
    for x_shape, W_shape, padding, tiles in layers:
        x, W = (xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in (x_shape, W_shape))
        b = xp.zeros(W_shape[0], np.float32)
        y_shape = convcore.Convolution(padding=padding).forward(x, W, b).shape
        gy = xp.asarray(rng.standard_normal(y_shape).astype(np.float32))

        def under(name, x=x, W=W, b=b, gy=gy, padding=padding, tiles=tiles):
            def run(fetch):
                costs.set_rates(xp, rates[name])
                op = convcore.Convolution(padding=padding, algorithm="fft", memory_budget=BUDGET)
                op.forward(x, W, b)
                op.backward(gy)
                backend.synchronize(xp)
                assert op._engine.tile == tiles[name], (op._engine.tile, tiles[name])
            return run

        distinct = {}   # one timing per distinct tiling
        for name, tile in tiles.items():
            distinct.setdefault(tile, name)
        times = time_interleaved({name: under(name) for name in distinct.values()}, args.samples, 20.0)
        costs.set_rates(xp, None)
        seconds = {name: times[distinct[tiles[name]]].median for name in rules}
        fastest = min(seconds.values())
        cells = []
        for name in rules:
            ratios[name].append(seconds[name] / fastest)
            cells.append(f"{'x'.join(map(str, tiles[name]))} {seconds[name] / fastest:.2f}")
        print(f"| {'x'.join(map(str, x_shape))} | {'x'.join(map(str, W_shape))} | {padding} | " + " | ".join(cells)
              + f" |   (fastest {fastest * 1e3:.2f} ms)")
    for name, r in ratios.items():
        if r:
            print(f"{name}: median time / fastest {statistics.median(r):.2f}, worst {max(r):.2f}, "
                  f"fastest (within 3 %) in {sum(v <= 1.03 for v in r)} of {len(r)}")


if __name__ == "__main__":
    main()
