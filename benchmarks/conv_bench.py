"""Forward + backward wall time of convcore against PyTorch, JAX and the per-pair fftconvolve loop.

    python3 benchmarks/conv_bench.py [--quick] [--filter GLOB] [--threads T] [--samples S] [--device cpu|cuda]

For each layer in conv_configs.py: convcore ("auto" and every registered engine), then
each anchor, each run = forward + gx + gW + gb. Every side runs on the same ``--threads``
(default: the CPUs this process may use, affinity and cgroup quota): convcore
(CONVCORE_NUM_THREADS), PyTorch (set_num_threads), JAX (XLA_FLAGS, set before it is
imported) and the loop (a pool of that many threads); with fewer threads than CPUs the
process is pinned to that many CPUs. Sides are timed in turns (interleaved) after one
warm-up each, so load from other processes falls on all alike; reported time = median
of ``--samples`` timed runs (fewer only where a side would exceed ``--side-budget``
seconds; the run count is printed). Ratios are column time / convcore "auto" time
(> 1: convcore faster). Peak memory is that of one convcore "auto" call. Every anchor's
outputs are checked against convcore's once, so equal work is compared.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run as a script from anywhere

import anchor_loop  # noqa: E402
import anchors  # noqa: E402
import conv_configs  # noqa: E402
import conv_timing  # noqa: E402
import convcore  # noqa: E402
from convcore import autoselect, backend  # noqa: E402

ANCHORS = ("torch", "torch4d", "jax", "loop")
DIRECT_SKIP_S = 0.5
DIRECT_SKIP_FACTOR = 5.0
INVERTED = ("auto <= 1.2x best engine", "fft <= 1.5x its transforms")   # missed ratios shown as slowdowns
TOLERANCE = {np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-8}


def columns() -> tuple:
    """convcore's columns: "auto", then every registered engine."""
    return ("auto",) + tuple(convcore.engine_names())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few small configs")
    p.add_argument("--filter", help="glob or substring of config names, e.g. '3d-*' or k15")
    p.add_argument("--layer", action="append", default=[],
                   help="a layer outside the table instead, e.g. \"x=2,16,10,10,10,10 W=16,16,3,3,3,3 "
                        "padding=1\" (also stride=, dilation=, groups=); repeatable")
    p.add_argument("--threads", type=int, default=convcore.cpu_count(),
                   help="threads for every side (default: the CPUs this process may use)")
    p.add_argument("--samples", type=int, default=5, help="timed runs per side after its warm-up")
    p.add_argument("--side-budget", type=float, default=30.0,
                   help="seconds of timed runs per side and config; a slower side gets fewer samples")
    p.add_argument("--warm-ms", type=float, default=conv_timing.WARM_S * 1e3,
                   help="untimed calls of a fast side (under 0.25 s) right before each timed run, for at least "
                        "this long (0: one call)")
    p.add_argument("--max-run", type=float, default=anchors.MAX_SINGLE_RUN_S,
                   help="skip an anchor whose one run is predicted slower than this (seconds)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--json", help="also write every figure to this file")
    args = p.parse_args(argv)
    if args.threads < 1 or args.samples < 1:
        p.error("--threads and --samples must be >= 1")
    return args


def set_threads(threads: int) -> None:
    """Every side on ``threads`` threads; call before torch or jax is imported.

    With fewer threads than usable CPUs the process is also pinned to that many CPUs,
    so no library's own default (JAX sizes its pools from the affinity mask) exceeds it.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cpus and threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])
    os.environ["CONVCORE_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (f"{flags} --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                               f"intra_op_parallelism_threads={threads}").strip()


def make_arrays(cfg, geom, dtype, xp):
    """x, W, b, gy on the benchmark device, deterministic per config."""
    rng = np.random.default_rng(zlib.crc32(cfg.name.encode()))
    shapes = (cfg.x_shape, cfg.W_shape, (cfg.c_out,), geom.out_shape)
    return tuple(xp.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes)


def convcore_run(cfg, arrays, algorithm, xp, state):
    """A fresh Convolution per call, as a layer would make; records the algorithm it used."""
    x, W, b, gy = arrays
    sync = xp.cuda.Device().synchronize if xp.__name__ == "cupy" else (lambda: None)

    def run(fetch=False):
        op = convcore.Convolution(**cfg.params(), algorithm=algorithm)
        y = op.forward(x, W, b)
        g = op.backward(gy)
        sync()
        state["algorithm"] = op.algorithm_used
        return tuple(anchors.to_numpy(a) for a in (y, g.gx, g.gW, g.gb)) if fetch else None

    return run


def bench_config(cfg, args, xp, anchor_objs):
    """Every figure of one config as a dict (times in seconds, None when skipped)."""
    dtype = np.dtype(args.dtype)
    geom = convcore.make_geometry(cfg.x_shape, cfg.W_shape, **cfg.params())
    arrays = make_arrays(cfg, geom, dtype, xp)
    row = {"config": cfg.name, "kind": cfg.kind, "ndim": cfg.ndim, "x": cfg.x_shape, "W": cfg.W_shape,
           "stride": cfg.stride, "padding": cfg.padding, "dilation": cfg.dilation, "groups": cfg.groups,
           "times": {}, "runs": {}, "skipped": {}, "error": {}}
    row["skipped"].update(column_skips(geom, dtype))
    runs, state = {}, {}
    for name in columns():
        if name not in row["skipped"]:
            runs[name] = convcore_run(cfg, arrays, name, xp, state if name == "auto" else {})
    for anchor in anchor_objs:
        reason = anchor.skip_reason(cfg, geom)
        if reason:
            row["skipped"][anchor.name] = reason
        else:
            runs[anchor.name] = anchor.prepare(cfg, geom, arrays)
    timings = conv_timing.time_interleaved(runs, args.samples, args.side_budget, args.warm_ms / 1e3)
    reference = timings["auto"].outputs
    row["chosen"] = state["algorithm"]
    for name, t in timings.items():
        row["times"][name], row["runs"][name] = t.median, t.runs
        if name != "auto":
            row["error"][name] = conv_timing.max_relative_error(reference, t.outputs)
    measure = conv_timing.peak_bytes_cuda if args.device == "cuda" else conv_timing.peak_bytes_cpu
    row["peak_mib"] = measure(runs["auto"]) / 2**20
    auto = row["times"]["auto"]
    row["ratios"] = {a: row["times"][a] / auto for a in ANCHORS if a in row["times"]}
    engines = [row["times"][n] for n in columns()[1:] if n in row["times"]]
    if engines:
        row["ratios"]["best"] = min(engines) / auto
    if "fft" in runs:
        total, transforms = conv_timing.transform_seconds(runs["fft"], backend)
        row["fft_over_transforms"] = total / transforms if transforms else None
        if transforms:
            row["ratios"]["fft6T"] = transforms / total
    row["targets"] = judge(cfg, row) if args.device == "cpu" else []
    return row


def column_skips(geom, dtype) -> dict:
    """Forced-engine columns not worth running, with the reason.

    Where convcore's cost model is confident that an engine loses (estimate
    > DIRECT_SKIP_S and > DIRECT_SKIP_FACTOR x the best engine's), its column is
    skipped: such runs (direct on large kernels: seconds to a minute each) would cost
    minutes of benchmark time to show only that "auto" was right.
    """
    reasons = {}
    est = autoselect.estimate_seconds(geom, dtype.itemsize)
    best = min(est.values())
    for name, seconds in est.items():
        if seconds > anchors.MAX_SINGLE_RUN_S:
            reasons[name] = f"cost model predicts {seconds:.0f} s per run"
        elif seconds > DIRECT_SKIP_S and seconds > DIRECT_SKIP_FACTOR * best:
            reasons[name] = f"not timed: cost model says {name} {seconds:.2f} s vs best {best:.2f} s"
    return reasons


def judge(cfg, row):
    """(label, ratio or None, met) for each target that applies to this config."""
    verdicts = []
    for label, anchor, minimum in conv_configs.targets(cfg):
        if anchor == "fft6T" and row["chosen"] != "fft":
            continue   # the FFT engine's overheads matter where auto runs it
        ratio = row["ratios"].get(anchor)
        verdicts.append((label, ratio, None if ratio is None else ratio >= minimum))
    return verdicts


def _fmt_ratio(row, name):
    if name in row["ratios"]:
        ratio = row["ratios"][name]
        return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x"
    return _skip_cell(row, name)


def _skip_cell(row, name):
    """'n/a' where the column cannot apply (no conv4d in PyTorch...), 'skip' where it was left out."""
    why = row["skipped"].get(name)
    if why is None:
        return "-"
    return "n/a" if why.startswith("n/a") else "skip"


def _fmt_time(row, name):
    t = row["times"].get(name)
    if t is None:
        return _skip_cell(row, name)
    return f"{t:.3f}" if t < 100 else f"{t:.0f}"


def _fmt_targets(row):
    parts = []
    for label, _ratio, met in row["targets"]:
        if met is False:
            parts.append(f"MISS {label}")
    return "; ".join(parts) if parts else "all met"


def print_tables(rows, args):
    engines = columns()[1:]
    head = (f"{'config':<14} {'N':>1} {'auto s':>8} {'algo':<6} "
            + " ".join(f"{e + ' s':>8}" for e in engines)
            + f" {'fft/T':>5} {'torch':>7} {'torch4d':>7} {'jax':>7} {'loop':>7} {'peak MiB':>9}  targets")
    print("\nRatios = anchor time / convcore auto time (>1: convcore faster); "
          "fft/T = FFT engine time / its own six transform sets; "
          f"host transforms: {convcore.resources.fft_library()} (CONVCORE_FFT)")
    print(head)
    print("-" * len(head))
    for r in rows:
        fT = r.get("fft_over_transforms")
        print(f"{r['config']:<14} {r['ndim']:>1} {_fmt_time(r, 'auto'):>8} {r['chosen']:<6} "
              + " ".join(f"{_fmt_time(r, e):>8}" for e in engines)
              + f" {(f'{fT:.2f}' if fT else '-'):>5} {_fmt_ratio(r, 'torch'):>7} {_fmt_ratio(r, 'torch4d'):>7} "
              f"{_fmt_ratio(r, 'jax'):>7} {_fmt_ratio(r, 'loop'):>7} {r['peak_mib']:>9.1f}  {_fmt_targets(r)}")
    print("\nSeconds (median of the timed runs, their count in brackets; 0 = the warm-up was the only run) "
          "and max rel. error vs auto")
    names = list(columns()) + list(ANCHORS)
    print(f"{'config':<14} " + " ".join(f"{n + ' s':>13}" for n in names) + "  check")
    tol = TOLERANCE[np.dtype(args.dtype)]
    for r in rows:
        cells = [f"{r['times'][n]:.3f} ({r['runs'][n]})" if n in r["times"] else _skip_cell(r, n) for n in names]
        bad = {k: v for k, v in r["error"].items() if not v <= tol}
        check = "ok (max %.1e)" % max(r["error"].values(), default=0.0) if not bad else \
            "MISMATCH " + ", ".join(f"{k}={v:.1e}" for k, v in bad.items())
        print(f"{r['config']:<14} " + " ".join(f"{c:>13}" for c in cells) + f"  {check}")
    skipped = {}
    for r in rows:
        for what, why in r["skipped"].items():
            if not why.startswith("n/a"):   # n/a: PyTorch has no conv4d/conv5d; the recipe is 4-D only
                skipped.setdefault((what, why), []).append(r["config"])
    print("\nn/a: PyTorch has no conv4d/conv5d; the Conv3d recipe (torch4d) applies to N = 4 only")
    if skipped:
        print("Skipped:")
        for (what, why), names in skipped.items():
            print(f"  {what:<8} {why}: {', '.join(names)}")


def print_target_summary(rows, args):
    print("\n" + conv_configs.TARGET_TEXT)
    if args.device != "cpu":
        print("(targets are stated for the CPU; not judged on the GPU)")
        return
    tally = {}
    for r in rows:
        for label, ratio, met in r["targets"]:
            entry = tally.setdefault(label, {"met": 0, "missed": [], "not run": []})
            if met is None:
                entry["not run"].append(r["config"])
            elif met:
                entry["met"] += 1
            else:
                shown = f"{1 / ratio:.2f}x slower" if label in INVERTED else f"{ratio:.2f}x"
                entry["missed"].append(f"{r['config']} ({shown})")
    for label, e in tally.items():
        line = f"  {label:<24} met {e['met']}/{e['met'] + len(e['missed'])}"
        if e["missed"]:
            line += "; missed: " + ", ".join(e["missed"])
        if e["not run"]:
            line += "; anchor skipped: " + ", ".join(e["not run"])
        print(line)


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    if args.device == "cuda":
        import cupy as xp
    else:
        xp = np
    anchors.MAX_SINGLE_RUN_S = args.max_run
    anchor_objs = [anchors.TorchAnchor(args.device, args.threads), anchors.TorchConv4dAnchor(args.device, args.threads),
                   anchors.JaxAnchor(args.device, args.dtype),
                   anchor_loop.LoopAnchor(args.device, args.dtype, args.threads, args.max_run)]
    try:
        configs = [conv_configs.parse_layer(text) for text in args.layer] or \
            conv_configs.select(args.quick, args.filter)
    except ValueError as exc:
        sys.exit(str(exc))
    if not configs:
        sys.exit(f"--filter {args.filter!r} matches no config")
    print(f"convcore benchmark: device={args.device} dtype={args.dtype} threads={args.threads} (every side; "
          f"CPUs usable {convcore.cpu_count()}) samples={args.samples} side-budget={args.side_budget}s warm-ms={args.warm_ms:g}, "
          f"{len(configs)} configs, engines {', '.join(columns()[1:])}")
    warm = time.perf_counter()
    convcore.warm_up(xp)   # Numba's compiling (~20 s the first time on a machine) out of every timing
    print(f"compiled loops ready in {time.perf_counter() - warm:.1f} s")
    rows, start = [], time.perf_counter()
    for cfg in configs:
        t0 = time.perf_counter()
        rows.append(bench_config(cfg, args, xp, anchor_objs))
        print(f"  {cfg.name:<14} x{cfg.x_shape} W{cfg.W_shape} s={cfg.stride} p={cfg.padding} "
              f"d={cfg.dilation} g={cfg.groups}  [{time.perf_counter() - t0:.0f} s, load "
              f"{os.getloadavg()[0]:.1f}]", flush=True)
    print_tables(rows, args)
    print_target_summary(rows, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
