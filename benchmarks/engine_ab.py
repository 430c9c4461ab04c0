"""Before/after: one convcore engine module at a git revision against the working tree.

    python3 benchmarks/engine_ab.py --rev 2cd8cf7 --module direct_conv [--filter GLOB] [--threads T]
    python3 benchmarks/engine_ab.py --rev 2cd8cf7 --module tiling --engine fft --filter '3d-*'

The old module's source is read with ``git show REV:convcore/MODULE.py`` and loaded inside
the current ``convcore`` package (its relative imports resolve to today's modules). For an
engine module the old engine class (``--engine``'s class) runs; for a helper module of an
engine (``tiling`` for ``fft``) today's engine runs with the old helper swapped in wherever a
convcore module imported it. Old and new are timed in turns in one process (forward + all
gradients, ``--samples`` each, median), their outputs compared, and PyTorch on the same threads
is timed alongside as the yardstick. Wall time and this process's CPU time are both printed: on a machine that
other work loads, CPU time is the steadier figure of the work itself. The peak memory of one
untimed call per side (tracemalloc, as conv_bench measures it) closes each row.

A helper swapped in from an older revision must still have what today's engine calls: against
revisions before a9cac48 (tiling.window_view) or c21b3ca (layout.phase_windows), ``--module tiling``
or ``--module layout`` fails with AttributeError; compare the engine module itself instead.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import conv_bench  # noqa: E402
import conv_configs  # noqa: E402

ENGINE_CLASSES = {"direct": ("direct_conv", "DirectConv"), "fft": ("fft_conv", "FFTConv")}


def old_module(rev: str, module: str):
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True).stdout.strip()
    source = subprocess.run(["git", "show", f"{rev}:convcore/{module}.py"], capture_output=True, text=True,
                            check=True, cwd=root).stdout
    spec = importlib.util.spec_from_loader(f"convcore._ab_{module}", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "convcore"
    exec(compile(source, f"{rev}:convcore/{module}.py", "exec"), mod.__dict__)
    return mod


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="git revision of the 'before' module")
    p.add_argument("--module", required=True, help="module under convcore/, e.g. direct_conv or tiling")
    p.add_argument("--engine", choices=sorted(ENGINE_CLASSES), default="direct")
    p.add_argument("--filter", help="glob or substring of conv_configs.FULL names")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--samples", type=int, default=5)
    args = p.parse_args(argv)
    import convcore

    threads = args.threads or convcore.cpu_count()
    conv_bench.set_threads(threads)
    import torch

    torch.set_num_threads(threads)
    from convcore import engines

    new_module_name, class_name = ENGINE_CLASSES[args.engine]
    new_mod = importlib.import_module(f"convcore.{new_module_name}")
    old = old_module(args.rev, args.module)
    holders = []
    if args.module != new_module_name:
        # Every module-level name bound to today's helper, not only the engine module's: the FFT
        # engine reaches frequency_kernel's sums through frequency_last, and swapping fft_conv's
        # name alone once timed the new loop on both sides.
        current = importlib.import_module(f"convcore.{args.module}")
        holders = [(mod, attr) for name, mod in list(sys.modules.items())
                   if name.startswith("convcore") and mod is not None and mod is not current
                   for attr, value in list(vars(mod).items()) if value is current]
        if not holders:
            raise SystemExit(f"no convcore module imports convcore.{args.module}: nothing to swap")
    print(f"before: {args.rev}:convcore/{args.module}.py  after: working tree;  engine {args.engine}, "
          f"threads {threads}, {args.samples} samples, load {os.getloadavg()[0]:.1f}")
    print(f"{'config':<14} {'before s':>9} {'after s':>9} {'torch s':>9} {'after/before':>12} "
          f"{'torch/after':>11} {'cpu before':>10} {'cpu after':>9}  max rel diff  peak MiB before / after")
    for cfg in conv_configs.select(False, args.filter):
        geom = convcore.make_geometry(cfg.x_shape, cfg.W_shape, **cfg.params())
        x, W, b, gy = conv_bench.make_arrays(cfg, geom, np.float32, np)

        def engine_run(swap, geom=geom, x=x, W=W, gy=gy):
            def run():
                if args.module == new_module_name:
                    cls = getattr(old, class_name) if swap else getattr(new_mod, class_name)
                    engine = cls(np, geom, x, W, 2**31)
                else:   # a helper module: swap it in every convcore module that imported it
                    if swap:
                        for holder, attr in holders:
                            setattr(holder, attr, old)
                    try:
                        engine = engines.make_engine(args.engine, np, geom, x, W, 2**31)
                        y = engine.forward()
                        return (y,) + tuple(engine.backward(gy, True, True))
                    finally:
                        for holder, attr in holders:
                            setattr(holder, attr, current)
                y = engine.forward()
                return (y,) + tuple(engine.backward(gy, True, True))
            return run

        torch_run = conv_bench.anchors.TorchAnchor("cpu", threads)
        runs = {"before": engine_run(True), "after": engine_run(False)}
        if not torch_run.skip_reason(cfg, geom):
            t = torch_run.prepare(cfg, geom, (x, W, b, gy))
            runs["torch"] = lambda t=t: t(fetch=False)
        outs = {k: r() for k, r in runs.items()}
        wall = {k: [] for k in runs}
        cpu = {k: [] for k in runs}
        names = list(runs)
        for i in range(args.samples):
            # Rotate the order and settle before each run, as conv_timing does: PyTorch's OpenMP
            # threads spin a while after their work, which would slow (and bill CPU time to)
            # whichever side always ran right after them.
            for k in names[i % len(names):] + names[:i % len(names)]:
                r = runs[k]
                time.sleep(conv_bench.conv_timing.SETTLE_S)
                w0, c0 = time.perf_counter(), time.process_time()
                r()
                wall[k].append(time.perf_counter() - w0)
                cpu[k].append(time.process_time() - c0)
        med = {k: statistics.median(v) for k, v in wall.items()}
        cmed = {k: statistics.median(v) for k, v in cpu.items()}
        diff = max(float(np.abs(a - b_).max() / max(np.abs(a).max(), 1e-30))
                   for a, b_ in zip(outs["before"], outs["after"]))
        peak = {k: conv_bench.conv_timing.peak_bytes_cpu(lambda fetch=False, r=runs[k]: r()) / 2**20
                for k in ("before", "after")}
        tt = med.get("torch")
        torch_cell = f"{tt:.4f}" if tt else "skip"
        ratio_cell = f"{tt / med['after']:.2f}" if tt else "-"
        print(f"{cfg.name:<14} {med['before']:>9.4f} {med['after']:>9.4f} {torch_cell:>9} "
              f"{med['after'] / med['before']:>12.2f} {ratio_cell:>11} "
              f"{cmed['before']:>10.4f} {cmed['after']:>9.4f}  {diff:.1e}"
              f"  {peak['before']:>7.1f} {peak['after']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
